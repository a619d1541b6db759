"""Candidates for the default model (`train.model: cnn`): each trained through the pipeline's own
`train()` on the prepared data (`dvc repro prepare` first), scored on the test split. Writes
reports/default_model.json, the numbers of the README's "Choosing the default model" table.

    python benchmarks/default_model.py [--candidates NAME ...] [--jobs 2] [--timing-epochs 4]
    python benchmarks/default_model.py --test-time-flip models/model.keras

Two measurements per candidate, because accuracy is deterministic here and time is not:
- accuracy: the full training (the candidate's epochs, early stopping as in params.yaml), `--jobs`
  candidates at a time, each on cores/jobs intra-op threads;
- time: `--timing-epochs` epochs alone on every core; the median epoch (the first, which traces the
  graph, left out) times the epochs, plus the first epoch, projects the training seconds.
Results merge into the existing file, so candidates can be measured in several sittings.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BN = {"BatchNormalization": {"momentum": 0.9}}
POOL = {"MaxPooling2D": {"pool_size": 2}}


def conv(filters: int) -> list[dict]:
    return [
        {"Conv2D": {"filters": filters, "kernel_size": 3, "padding": "same", "use_bias": False}},
        BN,
        {"Activation": {"activation": "relu"}},
    ]


def head(units: int, dropout: float = 0.3) -> list[dict]:
    return [
        {"Flatten": {}},
        {"Dropout": {"rate": dropout}},
        {"Dense": {"units": units, "use_bias": False}},
        BN,
        {"Activation": {"activation": "relu"}},
        {"Dropout": {"rate": dropout}},
    ]


@dataclass(frozen=True)
class Candidate:
    why: str
    train: dict = field(default_factory=dict)  # train.* overrides; `model` may be a layer list
    # An exponential moving average of the weights (Keras optimizers' use_ema) with this momentum,
    # swapped in when fit ends. It leaves the training itself as it was, so the run also scores the
    # weights it trained (test_accuracy_without_ema): both from one deterministic run.
    ema: float | None = None


SLIM = [*conv(16), POOL, *conv(64), POOL, *conv(128), *conv(128), POOL, *head(256)]
CNN_V1 = [*conv(32), POOL, *conv(64), POOL, *conv(128), POOL, *head(128)]  # the `cnn` preset until round five
MID_64X2 = [*conv(16), POOL, *conv(64), *conv(64), POOL, *conv(128), POOL, *head(128)]
MID_64X2_192 = [*conv(16), POOL, *conv(64), *conv(64), POOL, *conv(192), POOL, *head(128)]
SLIM_256 = [*conv(16), POOL, *conv(64), POOL, *conv(128), POOL, *conv(256), *head(256)]
FLIP = {"augment": {"horizontal_flip": True}}
V1 = {"model": CNN_V1, "augment": {"horizontal_flip": True}}  # its layers and flips (its other settings: CUSTOM's)
FLOAT32 = {"mixed_precision": "off"}  # the arithmetic of the runs before bfloat16 (round five)
BF16 = {"mixed_precision": "bfloat16"}
NO_STOP = {"early_stopping_patience": 0}
RECIPE = {"label_smoothing": 0.1, "augment": {"translate": 0.1}}
CANDIDATES: dict[str, Candidate] = {
    "cnn-v1": Candidate(
        "the previous default: 32-64-128 conv/BN blocks, Dense 128, flip, cosine Adam, 20 epochs", {**V1}
    ),
    "cnn-v1+recipe": Candidate(
        "the same network with label smoothing 0.1 and random translation ±10%",
        {"model": CNN_V1, **RECIPE},
    ),
    "slim-stem": Candidate(
        "16 filters at 28×28 (the costliest layer per MAC), a second 128 conv at 7×7, Dense 256; "
        "recipe, no flip (a layer list's default)",
        {"model": SLIM, **RECIPE},
    ),
    "slim-stem-256": Candidate(
        "16 filters at 28×28, 64 at 14×14, 128 at 7×7, 256 at 3×3, Dense 256; recipe, no flip",
        {"model": SLIM_256, **RECIPE},
    ),
    "slim-stem-256-plain": Candidate(
        "slim-stem-256 with flip only, like the previous default (translation cost 1.2 points at 20 epochs)",
        {"model": SLIM_256, **FLIP},
    ),
    "slim-stem-256+ls": Candidate(
        "slim-stem-256 with flip and label smoothing 0.1", {"model": SLIM_256, "label_smoothing": 0.1, **FLIP}
    ),
    "slim-stem-plain": Candidate("slim-stem with flip only", {"model": SLIM, **FLIP}),
    "slim-stem-256-16ep": Candidate(
        "slim-stem-256 with flip only, 16 epochs (time)", {"model": SLIM_256, "epochs": 16, **FLIP}
    ),
    # Early stopping (val_loss, patience 5) stopped the larger nets mid-schedule, before the cosine
    # decay's last low-rate epochs: these run every epoch.
    "slim-stem-full": Candidate(
        "slim-stem with flip, all 20 epochs (no early stopping)", {"model": SLIM, **FLIP, **NO_STOP}
    ),
    "cnn-v1+ls-full": Candidate(
        "the previous default with label smoothing 0.1, all 20 epochs", {**V1, "label_smoothing": 0.1, **NO_STOP}
    ),
    "slim-stem+ls+shift-full": Candidate(
        "slim-stem with flip, label smoothing 0.1, translation ±5% (±1 px), all 20 epochs",
        {"model": SLIM, "label_smoothing": 0.1, "augment": {"horizontal_flip": True, "translate": 0.05}, **NO_STOP},
    ),
    "cnn-v1+ls+shift-full": Candidate(
        "the previous default with label smoothing 0.1, translation ±5% (±1 px), all 20 epochs",
        {"model": CNN_V1, "label_smoothing": 0.1, "augment": {"translate": 0.05}, **NO_STOP},
    ),
    # Early stopping's restore would put the trained weights back over the average: every epoch runs.
    "cnn+ema-0.99": Candidate(
        "cnn-v1 with an EMA of the weights (momentum 0.99, ~100 steps), all 20 epochs", {**V1, **NO_STOP}, ema=0.99
    ),
    "cnn+ema-0.999": Candidate(
        "cnn-v1 with an EMA of the weights (momentum 0.999, ~1,000 steps: the last 2.4 epochs), all 20 epochs",
        {**V1, **NO_STOP},
        ema=0.999,
    ),
    # Round five (Zen 4 EPYC): every run also scores flip averaging at test time.
    "mid-64x2": Candidate(
        "16 filters at 28×28 (the 32 there cost as much time as a conv at 14×14), two 64 convs at 14×14, "
        "128 at 7×7, Dense 128; flip, all 20 epochs",
        {"model": MID_64X2, **FLIP, **NO_STOP, **FLOAT32},
    ),
    "mid-64x2-24ep": Candidate(
        "mid-64x2 for 24 epochs", {"model": MID_64X2, "epochs": 24, **FLIP, **NO_STOP, **FLOAT32}
    ),
    "mid-64x2-192": Candidate(
        "mid-64x2 with 192 filters at 7×7, 20 epochs", {"model": MID_64X2_192, **FLIP, **NO_STOP, **FLOAT32}
    ),
    # bfloat16 from here on (train.mixed_precision: auto on this CPU).
    "mid-64x2+wd": Candidate(
        "mid-64x2 with AdamW, weight decay 0.05 (×lr per step), bfloat16",
        {"model": MID_64X2, **FLIP, **NO_STOP, **BF16, "optimizer": "adamw", "weight_decay": 0.05},
    ),
    "mid-64x2-192+wd": Candidate(
        "mid-64x2-192 with AdamW, weight decay 0.05 (×lr per step), bfloat16",
        {"model": MID_64X2_192, **FLIP, **NO_STOP, **BF16, "optimizer": "adamw", "weight_decay": 0.05},
    ),
    "cnn+erase-0.5": Candidate(
        "the previous default with random erasing (p 0.5, 2-33 % of the image, noise), all 20 epochs",
        {**V1, "augment": {"horizontal_flip": True, "erase": 0.5}, **NO_STOP, **FLOAT32},
    ),
}


def merged(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def candidate_params(name: str, params_path: Path, epochs: int | None):
    from pipeline.params import parse_params

    raw = yaml.safe_load(params_path.read_text())
    # The trained network alone: run_one scores it with and without flip averaging (pipeline/mirror.py).
    raw["train"] = merged(raw["train"], {**CANDIDATES[name].train, "test_time_flip": False})
    if epochs is not None:
        raw["train"]["epochs"] = epochs
        raw["train"]["early_stopping_patience"] = 0
    return parse_params(raw)


def with_ema(momentum: float) -> None:
    """Every optimizer pipeline.training builds in this process keeps a moving average of the weights."""
    import pipeline.training

    build = pipeline.training.make_optimizer

    def make_optimizer(params, steps_per_epoch, precision="float32"):
        optimizer = build(params, steps_per_epoch, precision)
        return type(optimizer).from_config({**optimizer.get_config(), "use_ema": True, "ema_momentum": momentum})

    pipeline.training.make_optimizer = make_optimizer


def run_one(name: str, params_path: Path, prepared: Path, epochs: int | None) -> dict:
    """One training in this process: epoch times, validation and test accuracy."""
    from pipeline.dataset import make_dataset
    from pipeline.prepared import PreparedData
    from pipeline.presets import filled_from_preset
    from pipeline.training import train

    candidate = CANDIDATES[name]
    if candidate.ema is not None:
        with_ema(candidate.ema)
    p = filled_from_preset(candidate_params(name, params_path, epochs).train)
    data = PreparedData.open(prepared)
    test = make_dataset(data, "test", 512, training=False)
    marks = [time.perf_counter()]
    built, trained = [], {}

    def on_epoch(epoch, row):
        marks.append(time.perf_counter())
        if candidate.ema is not None and epoch == p.epochs:  # before fit swaps the average in
            trained["test_accuracy_without_ema"] = round(float(built[0].evaluate(test, verbose=0)[1]), 4)

    with tempfile.TemporaryDirectory(prefix="bench-default-") as work:
        result = train(p, data, Path(work), verbose=0, on_start=built.append, on_epoch=on_epoch)
    epoch_seconds = [round(b - a, 2) for a, b in zip(marks, marks[1:], strict=False)]
    scores = flip_scores(result.model, data)  # float32, as train saves it
    return {
        **trained,
        "epochs": p.epochs,
        "epochs_run": result.report["epochs_run"],
        "best_epoch": result.report["best_epoch"],
        "best_val_accuracy": round(result.report["best"].get("val_accuracy", float("nan")), 4),
        "test_accuracy": scores["test_accuracy"],
        "test_accuracy_flip_averaged": scores["test_accuracy_flip_averaged"],
        "parameters": result.report["parameters"],
        "training_seconds": result.report["training_seconds"],
        "epoch_seconds": epoch_seconds,
        "threads": int(os.environ.get("TF_NUM_INTRAOP_THREADS", "0")) or os.cpu_count(),
        "precision": result.devices.precision,
    }


def spawn(name: str, args, threads: int, epochs: int | None) -> dict:
    """run_one in a fresh Python (TensorFlow's threads are fixed at start-up)."""
    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": str(max(1, threads))}
    command = [sys.executable, __file__, "--run-one", name, "--params", args.params, "--prepared", args.prepared]
    if epochs is not None:
        command += ["--epochs", str(epochs)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def timing(result: dict, epochs: int) -> dict:
    seconds = result["epoch_seconds"]
    median = statistics.median(seconds[1:])
    return {
        "epoch_seconds": seconds,
        "median_epoch_seconds": round(median, 2),
        "projected_training_seconds": round(seconds[0] + median * (epochs - 1), 1),
    }


def test_time_flip(model_path: Path, prepared: Path) -> dict:
    """The trained model's test accuracy alone and with its prediction averaged over the image and its
    mirror (test-time augmentation, which an exported graph would pay for with twice the inference)."""
    from pipeline.hashing import file_sha256
    from pipeline.model import load_keras_model
    from pipeline.prepared import PreparedData

    return {"model_sha256": file_sha256(model_path),
            **flip_scores(load_keras_model(str(model_path)), PreparedData.open(prepared))}  # fmt: skip


def flip_scores(model, data) -> dict:
    """Test accuracy of the network alone and averaged with each image's mirror, each scored as
    evaluate scores a model (the mirror pair of pipeline/mirror.py, added or taken away)."""
    from pipeline.evaluate import predict_split
    from pipeline.mirror import single_pass, with_mirrors

    scores = {}
    for key, network in (("test_accuracy", single_pass(model)), ("test_accuracy_flip_averaged", with_mirrors(model))):
        labels, probs, _ = predict_split(network, data, "test", 512)
        scores[key] = round(float((probs.argmax(1) == labels).mean()), 4)
    return {**scores, "inference_cost": 2.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--prepared", default=str(REPO / "data/prepared"))
    parser.add_argument("--jobs", type=int, default=2, help="accuracy runs at a time")
    parser.add_argument("--timing-epochs", type=int, default=4, help="epochs of each solo timing run (>= 4)")
    parser.add_argument("--skip", choices=["accuracy", "timing"], help="leave one measurement as it was")
    parser.add_argument("--out", default=str(REPO / "reports/default_model.json"))
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--test-time-flip", metavar="MODEL", help="only measure flip averaging at test time of a trained model"
    )
    args = parser.parse_args()

    if args.test_time_flip:
        out = Path(args.out)
        report = json.loads(out.read_text()) if out.exists() else {"candidates": {}}
        report["test_time_flip"] = test_time_flip(Path(args.test_time_flip), Path(args.prepared))
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report["test_time_flip"]))
        return

    if args.run_one:
        print(json.dumps(run_one(args.run_one, Path(args.params), Path(args.prepared), args.epochs)))
        return

    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {"candidates": {}}
    results = report["candidates"]
    cores = os.cpu_count() or 1
    if args.skip != "accuracy":
        threads = max(1, cores // args.jobs)
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            runs = {name: pool.submit(spawn, name, args, threads, None) for name in args.candidates}
            for name, run in runs.items():
                results.setdefault(name, {})["accuracy_run"] = run.result()
                print(name, json.dumps(results[name]["accuracy_run"]), flush=True)
    if args.skip != "timing":
        for name in args.candidates:
            run = spawn(name, args, cores, args.timing_epochs)
            from pipeline.presets import filled_from_preset

            epochs = filled_from_preset(candidate_params(name, Path(args.params), None).train).epochs
            results.setdefault(name, {})["timing_run"] = (
                run if "error" in run else {**timing(run, epochs), "threads": cores}
            )
            print(name, json.dumps(results[name]["timing_run"]), flush=True)
    for name, result in results.items():
        result["why"] = CANDIDATES[name].why if name in CANDIDATES else result.get("why", "")
        result["train"] = CANDIDATES[name].train if name in CANDIDATES else result.get("train", {})
    report["machine"] = {"cpus": cores, "platform": platform.platform(), "python": platform.python_version()}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
