"""Seconds per DVC stage of one `dvc repro` process, as README command 1 runs it, then a no-op
`dvc repro` (median of three). Writes reports/stages.json, the README's stage table.

    python benchmarks/stages.py [--force]
    python benchmarks/stages.py --force --except-train   # reports/stages_overhead.json

Run it in the project (it updates the outputs and dvc.lock as `dvc repro` would). --force reruns
every stage, the figures of a run from scratch; without it, a stage whose inputs have not changed
costs only DVC's check. A stage's seconds run from DVC's "Running stage" line to the next stage's
(its process start, TensorFlow's or onnxruntime's imports, and DVC's hashing and lock update);
`train`'s include the training itself, which reports/train.json times apart. The total is the whole
`dvc repro` process, DVC's own start included. Should a stage fail, fix it and run again without
--force: DVC skips the stages already done.

--except-train forces every stage but `train` (whose outputs must be current), in one `dvc repro
--single-item --force <stages>`: the stage overhead of a forced run without its training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RUNNING = re.compile(r"^Running stage '([^']+)'")


def venv_env() -> dict[str, str]:
    # dvc.yaml's commands start `python`: this interpreter's (the venv's), activated or not.
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, env=venv_env())
    return time.perf_counter() - started


def timed_stages(command: list[str]) -> tuple[float, dict[str, float]]:
    """The whole command's seconds, and each stage's, from the moments DVC announces them."""
    marks: list[tuple[str, float]] = []
    started = time.perf_counter()
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True, env=venv_env()) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            if match := RUNNING.match(line):
                marks.append((match.group(1), time.perf_counter()))
    ended = time.perf_counter()
    if proc.returncode != 0:
        sys.exit(f"stages: {' '.join(command)} failed (exit status {proc.returncode})")
    ends = [t for _, t in marks[1:]] + [ended]
    return ended - started, {stage: round(end - t, 1) for (stage, t), end in zip(marks, ends, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rerun every stage (a run from scratch)")
    parser.add_argument("--out", default=str(REPO / "reports/stages.json"))
    parser.add_argument("--except-train", action="store_true", help="leave train as it is (not forced)")
    args = parser.parse_args()
    if args.except_train and args.out == parser.get_default("out"):
        args.out = str(REPO / "reports/stages_overhead.json")

    dvc = str(Path(sys.executable).with_name("dvc"))
    if args.except_train:
        stages = [stage for stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"] if stage != "train"]
        command = [dvc, "repro", "--single-item", "--force", *stages]
    else:
        command = [dvc, "repro", *(["--force"] if args.force else [])]
    total, seconds = timed_stages(command)
    no_op = [timed([dvc, "repro"]) for _ in range(3)]
    train = json.loads((REPO / "reports/train.json").read_text())
    trained = "train" in seconds  # ran in this command (not with --except-train, nor when it was current)
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "forced": args.force,
        "train_forced": args.force and not args.except_train,
        "command": " ".join(["dvc", *command[1:]]),
        "stage_seconds": seconds,
        "total_seconds": round(total, 1),
        "training_seconds": train["training_seconds"] if trained else 0.0,
        "total_minus_training_seconds": round(total - (train["training_seconds"] if trained else 0.0), 1),
        "no_op_repro_seconds": round(statistics.median(no_op), 2),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
