"""Data of any size: memory and seconds of `prepare` as the data grows, and of the stages after it.

Generates image folders of 128×128 RGB JPEGs in 10 class folders (--sizes, default 4k, 16k and 64k
images), then runs the stages as dvc.yaml calls them, in a scratch project per size:

- `prepare` with one process (`prepare.workers: 1`), with every core (`workers: auto`) and on
  Beam's in-process runner in multi-process mode (one worker per core);
- at the smallest and the largest size, the rest of the pipeline on the prepared data: one epoch
  of a small CNN (`train`), `evaluate`, `export`, `verify`, `promote`.

Memory is the peak resident set of the whole process tree (every worker summed), sampled every
50 ms with psutil: /usr/bin/time reports the largest single process only. Writes
reports/scale.json and prints a table.

    python benchmarks/scale.py [--sizes 4000 16000 64000] [--work /tmp/scale] [--before DIR]

--before DIR also times the `prepare` of another checkout (e.g. `git worktree add DIR 3f4312c`)
on the sizes up to 16k, for a before/after table (it holds every image in memory).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
SIDE, CLASSES = 128, 10
TINY_CNN = [
    {"Conv2D": {"filters": 8, "kernel_size": 3, "strides": 2, "activation": "relu"}},
    {"MaxPooling2D": {"pool_size": 4}},
    {"Flatten": {}},
]


def generate(root: Path, count: int, seed: int = 0) -> Path:
    """`count` JPEGs in CLASSES folders: each class its own colour blob on noise (learnable)."""
    from PIL import Image

    done = root / f".complete-{count}"
    if done.exists():
        return root
    rng = np.random.default_rng(seed)
    for i in range(count):
        label = i % CLASSES
        image = rng.integers(0, 80, (SIDE, SIDE, 3), dtype=np.uint8)
        y, x = 12 * (label % 5) + 10, 40 * (label // 5) + 20
        image[y : y + 40, x : x + 40, label % 3] = 230
        folder = root / "train" / f"class-{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:06d}.jpg", quality=90)
    done.touch()
    return root


def tree_rss(process) -> int:
    import psutil

    total = 0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def measured(command: list[str], cwd: Path, env: dict) -> dict:
    """Seconds and peak resident memory of the whole process tree of `command`."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, tree_rss(watched))
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{shlex.join(command)} failed:\n{out[-2000:]}\n{err[-2000:]}")
    return {"seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": round(peak / 2**20, 1)}


def stage_command(stage: str, dvc_yaml: Path) -> list[str]:
    argv = shlex.split(yaml.safe_load(dvc_yaml.read_text())["stages"][stage]["cmd"])
    return [sys.executable, *argv[1:]]


def project(where: Path, source: Path, **prepare) -> None:
    where.mkdir(parents=True, exist_ok=True)
    params = {
        "data": {"format": "image_folder", "source": str(source),
                 "image_folder": {"image_size": [SIDE, SIDE], "color_mode": "rgb", "test": None}},
        "prepare": prepare,
        "train": {"model": TINY_CNN, "epochs": 1, "batch_size": 128, "early_stopping_patience": 0},
        "evaluate": {"gate": {"min_accuracy": 0.0, "max_drop": None}},
        "mlflow": {"tracking_uri": f"sqlite:///{where / 'mlflow.db'}"},
    }  # fmt: skip
    (where / "params.yaml").write_text(yaml.safe_dump(params))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4000, 16000, 64000])
    parser.add_argument("--work", default="/tmp/scale")
    parser.add_argument("--before", help="another checkout whose prepare to time (sizes up to 16k)")
    parser.add_argument("--out", default=str(REPO / "reports/scale.json"))
    args = parser.parse_args()

    work, env = Path(args.work), {**os.environ, "PYTHONPATH": str(REPO)}
    cores = len(os.sched_getaffinity(0))
    runs = {
        "one process": {"workers": 1},
        "every core": {"workers": "auto"},
        "beam": {"runner": "beam", "beam_options": ["--direct_running_mode=multi_processing",
                                                    f"--direct_num_workers={cores}"]},
    }  # fmt: skip
    results: dict = {"prepare": {}, "stages": {}}
    for size in args.sizes:
        source = generate(work / f"images-{size}", size)
        results["prepare"][size] = {}
        for name, settings in runs.items():
            where = work / f"run-{size}-{name.replace(' ', '-')}"
            project(where, source, **settings)
            subprocess.run(stage_command("fetch", REPO / "dvc.yaml"), cwd=where, env=env, check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
            figures = measured(stage_command("prepare", REPO / "dvc.yaml"), where, env)
            figures["images_per_second"] = round(size / figures["seconds"], 1)
            results["prepare"][size][name] = figures
            print(f"prepare {size:>6} {name:<12} {figures}", flush=True)
        if args.before and size <= 16000:
            where = work / f"run-{size}-before"
            project(where, source)
            before_env = {**os.environ, "PYTHONPATH": str(Path(args.before).resolve())}
            dvc_yaml = Path(args.before) / "dvc.yaml"
            subprocess.run(stage_command("fetch", dvc_yaml), cwd=where, env=before_env, check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
            figures = measured(stage_command("prepare", dvc_yaml), where, before_env)
            figures["images_per_second"] = round(size / figures["seconds"], 1)
            results["prepare"][size]["before"] = figures
            print(f"prepare {size:>6} {'before':<12} {figures}", flush=True)
        if size in (min(args.sizes), max(args.sizes)):
            where = work / f"run-{size}-every-core"
            results["stages"][size] = {}
            for stage in ("train", "evaluate", "export", "verify", "promote"):
                figures = measured(stage_command(stage, REPO / "dvc.yaml"), where, env)
                results["stages"][size][stage] = figures
                print(f"{stage:<8} {size:>6} {figures}", flush=True)
    report = {
        "machine": {"cpus": cores, "platform": platform.platform(), "python": platform.python_version()},
        "images": f"{SIDE}x{SIDE} RGB JPEG, {CLASSES} class folders, test: null",
        "memory": "peak RSS of the whole process tree, sampled every 50 ms (MB)",
        **results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
