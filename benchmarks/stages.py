"""Seconds per DVC stage: each stage of dvc.yaml, in order, through `dvc repro --single-item`, then a
no-op `dvc repro` (median of three). Writes reports/stages.json, the README's stage table.

    python benchmarks/stages.py [--force] [--resume]
    python benchmarks/stages.py --force --except-train   # reports/stages_overhead.json

Run it in the project (it updates the outputs and dvc.lock as `dvc repro` would). --force reruns
every stage, the figures of a run from scratch; without it, a stage whose inputs have not changed
costs only DVC's check. Each stage's seconds include its process start (Python, TensorFlow or
onnxruntime imports) and DVC's own hashing; `train`'s include the training itself, which
reports/train.json times apart. Should a stage fail, fix it and rerun with --resume: the stages
timed before it keep their seconds (reports/stages.partial.json holds them meanwhile).

--except-train forces every stage but `train` (whose outputs must be current): the stage overhead
of a forced run without its half hour of training; the train stage's own start-up, outside its
training seconds, is the full run's figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def timed(command: list[str]) -> float:
    # dvc.yaml's commands start `python`: this interpreter's (the venv's), activated or not.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rerun every stage (a run from scratch)")
    parser.add_argument("--out", default=str(REPO / "reports/stages.json"))
    parser.add_argument(
        "--resume", action="store_true", help="continue a run of this script that a failed stage stopped"
    )
    parser.add_argument("--except-train", action="store_true", help="leave train as it is (not forced)")
    args = parser.parse_args()
    if args.except_train and args.out == parser.get_default("out"):
        args.out = str(REPO / "reports/stages_overhead.json")

    dvc = str(Path(sys.executable).with_name("dvc"))
    stages = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    partial = Path(args.out).with_suffix(".partial.json")
    seconds = json.loads(partial.read_text()) if args.resume and partial.exists() else {}
    for stage in stages:
        if stage in seconds:
            print(f"{stage}: {seconds[stage]} s (this run, before it stopped)", flush=True)
            continue
        force = args.force and not (args.except_train and stage == "train")
        seconds[stage] = round(timed([dvc, "repro", "--single-item", *(["--force"] if force else []), stage]), 1)
        print(f"{stage}: {seconds[stage]} s", flush=True)
        partial.write_text(json.dumps(seconds, indent=2) + "\n")  # what --resume keeps
    partial.unlink(missing_ok=True)
    no_op = [timed([dvc, "repro"]) for _ in range(3)]
    train = json.loads((REPO / "reports/train.json").read_text())
    total = sum(seconds.values())
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "forced": args.force,
        "train_forced": args.force and not args.except_train,
        "stage_seconds": seconds,
        "total_seconds": round(total, 1),
        "training_seconds": train["training_seconds"],
        "total_minus_training_seconds": round(
            total - (train["training_seconds"] if args.force and not args.except_train else seconds["train"]), 1
        ),
        "no_op_repro_seconds": round(statistics.median(no_op), 2),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
