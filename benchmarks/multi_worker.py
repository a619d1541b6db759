"""Two tf.distribute workers on loopback against one process, on the prepared data, same global batch.

Runs `python -m pipeline.train` three times in scratch copies of the project: as two workers of one
TF_CONFIG cluster (per-replica batch B, global 2B) and as one process with batch 2B, then writes
reports/multi_worker.json with each one's epochs, wall time, final training and validation
accuracy, and the largest per-epoch difference between the two histories. On one machine the two
workers share its cores: this shows the workers train the model one process would, not speed.

    python benchmarks/multi_worker.py [--epochs 2] [--batch-size 64] [--model cnn]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workdir(root: Path, name: str, params: dict, prepared: Path) -> Path:
    directory = root / name
    (directory / "data").mkdir(parents=True)
    os.symlink(prepared.resolve(), directory / "data/prepared")
    (directory / "params.yaml").write_text(yaml.safe_dump(params))
    return directory


def run_training(directory: Path, workers: int) -> float:
    """Wall seconds of `workers` train processes (0: one process, no TF_CONFIG)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{directory / 'mlflow.db'}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    started = time.perf_counter()
    if not workers:
        subprocess.run([sys.executable, "-m", "pipeline.train"], cwd=directory, env=env, check=True)
        return time.perf_counter() - started
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(workers)]}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline.train"],
            cwd=directory,
            env={**env, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})},
        )
        for i in range(workers)
    ]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a worker failed: exit codes {codes}")
    return time.perf_counter() - started


def history(directory: Path) -> list[dict[str, float]]:
    with open(directory / "models/history.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64, help="per replica; one process gets twice this")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--out", default="reports/multi_worker.json")
    args = parser.parse_args()

    base = yaml.safe_load(Path(args.params).read_text())
    train = {**base["train"], "model": args.model, "epochs": args.epochs, "early_stopping_patience": 0}
    with tempfile.TemporaryDirectory(prefix="multi-worker-") as scratch:
        root = Path(scratch)
        two = workdir(root, "two", {**base, "train": {**train, "batch_size": args.batch_size}}, Path(args.prepared))
        one = workdir(root, "one", {**base, "train": {**train, "batch_size": 2 * args.batch_size}}, Path(args.prepared))
        seconds = {"two_workers": run_training(two, 2), "one_process": run_training(one, 0)}
        runs = {"two_workers": history(two), "one_process": history(one)}
        dirs = {"two_workers": two, "one_process": one}
        reports = {name: json.loads((d / "reports/train.json").read_text()) for name, d in dirs.items()}
        shutil.rmtree(root, ignore_errors=True)
    pairs = zip(runs["two_workers"], runs["one_process"], strict=True)
    diff = max(abs(a[k] - b[k]) for a, b in pairs for k in a if k != "epoch")
    result = {
        "model": args.model,
        "epochs": args.epochs,
        "global_batch_size": 2 * args.batch_size,
        "machine": {"logical_cpus": os.cpu_count()},
        "note": "two workers share this machine's cores on loopback: a correctness check, not a speed test",
        "runs": {
            name: {
                "wall_seconds": round(seconds[name], 1),
                "training_seconds": reports[name]["training_seconds"],
                "training_loop": reports[name]["training_loop"],
                "workers": reports[name]["devices"]["workers"],
                "final": runs[name][-1],
            }
            for name in runs
        },
        "max_history_difference": diff,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
