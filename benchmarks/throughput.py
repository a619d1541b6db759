"""Training throughput: the pipeline's `train()` against a plain Keras script of the same model, side by
side, for every preset; and, for the default model, the FLOP rate against this machine's peak.

    python benchmarks/throughput.py [--presets NAME ...] [--epochs 2] [--repeats 1] [--merge]
                                    [--no-peak] [--out reports/throughput.json]

For each preset, one process tree runs, alternately and `--repeats` times:
- plain: the seed tutorials' way: the same Keras model (`pipeline.model.model_for_data`), optimizer
  and precision policy, `model.fit(x, y, batch_size, epochs)` on NumPy arrays, nothing else;
- plain_same_work: that script doing the pipeline's work too, the way the Keras guides write it: the
  preset's augmentation as Keras layers in front of the model (RandomFlip, RandomTranslation) and
  `validation_data=(x_val, y_val)`, so validation runs every epoch;
- pipeline: `pipeline.train.train()` with the preset's params: tf.data from the prepared TFRecords,
  augmentation, validation every epoch, the epoch recorder, BackupAndRestore and early stopping.
Both train the same examples for `--epochs` epochs (batch-4 and batch-8 presets on a slice of
~1,700 batches an epoch, so a run takes seconds, not hours); examples/s is examples × epochs over
the seconds of `fit` alone (both build their model first, outside the clock). Presets made for other
inputs get the prepared Fashion-MNIST images reshaped to fit them: padded to 32×32 and repeated to 3
channels (`lenet`, `cnn4`), flattened to 784 features (`tabular_mlp`); throughput does not depend
on the pixels.

`--peak` (on by default) measures what the CPU can do: a float32 matmul (2,048²) and a 3×3 conv
(batch 128, 14×14, 64→64 channels) in TensorFlow; the default model's training FLOP rate is its
forward FLOPs (convolutions and dense layers, counted from the layer shapes) × 3 (forward, and
the two backward products) × examples/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BATCHES_PER_EPOCH = 1700  # cap for tiny-batch presets (54,000 examples at batch 32)
PRESET_OWNED = ("batch_size", "optimizer", "learning_rate", "momentum", "schedule", "label_smoothing", "augment")


# ----------------------------------------------------------------------------- data
def write_prepared(out: Path, x_train, y_train, x_val, y_val, class_names) -> None:
    """A prepared directory (the layout `prepare` writes) holding these arrays."""
    from pipeline.atomic import write_json
    from pipeline.normalization import measure
    from pipeline.prepared import META_FILE, PreparedMeta
    from pipeline.records import write_split

    shards = {
        "train": write_split(out / "train", x_train, y_train, 10_000),
        "val": write_split(out / "val", x_val, y_val, 10_000),
    }
    meta = PreparedMeta(
        kind="table" if x_train.ndim == 2 else "image",
        input_shape=tuple(x_train.shape[1:]),
        class_names=list(class_names),
        statistics=measure(x_train, 1 / 255 if x_train.dtype == np.uint8 else 1.0),
        counts={"train": len(y_train), "val": len(y_val)},
        shards=shards,
        shard_bytes={split: [(out / split / name).stat().st_size for name in names] for split, names in shards.items()},
        dtype=str(x_train.dtype),
        feature_names=[f"px{i}" for i in range(x_train.shape[1])] if x_train.ndim == 2 else None,
    )
    write_json(out / META_FILE, meta.to_dict())


def reshaped(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "rgb32":
        return np.repeat(np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))), 3, axis=-1)
    if kind == "vector":
        return x.reshape(len(x), -1).astype(np.float32)
    return x


def input_kind(preset: str) -> str:
    from pipeline.presets import PRESETS

    p = PRESETS[preset]
    if "image" not in p.kinds:
        return "vector"
    return "rgb32" if p.channels == 3 else "grey28"


def prepared_for(preset: str, source: Path, scratch: Path, examples: int) -> Path:
    """The prepared data for `preset`: `examples` training examples of the right shape (cached per shape)."""
    from pipeline.prepared import PreparedData

    kind = input_kind(preset)
    out = scratch / f"{kind}-{examples}"
    if not out.exists():
        data = PreparedData.open(source)
        (x, y), (xv, yv) = data.arrays("train"), data.arrays("val")
        write_prepared(out, reshaped(x[:examples], kind), y[:examples], reshaped(xv, kind), yv, data.meta.class_names)
    return out


# ----------------------------------------------------------------------------- one run
def preset_params(preset: str, params_path: Path, epochs: int, overrides: dict):
    from pipeline.params import parse_params

    raw = yaml.safe_load(params_path.read_text())
    # The preset's own hyperparameters, not the ones params.yaml may set for the default model.
    kept = {k: v for k, v in raw["train"].items() if k not in PRESET_OWNED}
    raw["train"] = {**kept, "model": preset, "epochs": epochs, "early_stopping_patience": 0, **overrides}
    return parse_params(raw)


def run_plain(preset: str, prepared: Path, params_path: Path, epochs: int, same_work: bool = False) -> dict:
    """The plain script: model.fit on NumPy arrays, no callbacks; with `same_work`, the preset's
    augmentation layers in front of the model and validation every epoch."""
    import keras
    import tensorflow as tf

    from pipeline.devices import precision_policy
    from pipeline.model import model_for_data
    from pipeline.prepared import PreparedData
    from pipeline.presets import filled_from_preset
    from pipeline.training import make_loss, make_optimizer

    p = filled_from_preset(
        preset_params(preset, params_path, epochs, {}).train
    )  # the preset's batch size, augmentation
    data = PreparedData.open(prepared)
    meta = data.meta
    x, y = data.arrays("train")
    keras.utils.set_random_seed(p.seed)
    # The same arithmetic as the pipeline's (bfloat16 where this CPU has it, with train.mixed_precision: auto),
    # given to the layers as the pipeline gives it: no global policy.
    precision = precision_policy(p.mixed_precision, on_gpu=bool(tf.config.list_physical_devices("GPU")))
    model = model_for_data(p, data, precision)
    validation = None
    if same_work:
        augmentation = []
        if p.augment.horizontal_flip:
            augmentation.append(keras.layers.RandomFlip("horizontal", seed=p.seed))
        if p.augment.translate:
            t = p.augment.translate
            augmentation.append(keras.layers.RandomTranslation(t, t, fill_mode="constant", seed=p.seed + 1))
        model = keras.Sequential([keras.Input(x.shape[1:], dtype=x.dtype), *augmentation, model])
        validation = data.arrays("val")
    steps = -(-len(x) // p.batch_size)
    optimizer = make_optimizer(p, steps, precision)
    model.compile(optimizer=optimizer, loss=make_loss(p, meta.num_classes), metrics=["accuracy"])
    started = time.perf_counter()
    history = model.fit(x, y, batch_size=p.batch_size, epochs=epochs, validation_data=validation, verbose=0)
    seconds = time.perf_counter() - started
    return {
        "examples_per_second": round(len(x) * epochs / seconds, 1),
        "fit_seconds": round(seconds, 2),
        "accuracy": round(float(history.history["accuracy"][-1]), 4),
        "examples": len(x),
    }


def run_pipeline(preset: str, prepared: Path, params_path: Path, epochs: int, overrides: dict) -> dict:
    """The pipeline's own train(), as the `train` stage calls it."""
    from pipeline.prepared import PreparedData
    from pipeline.presets import filled_from_preset
    from pipeline.training import train

    p = filled_from_preset(preset_params(preset, params_path, epochs, overrides).train)
    data = PreparedData.open(prepared)
    meta = data.meta
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as work:
        result = train(p, data, Path(work), verbose=0)
    return {
        "examples_per_second": result.report["examples_per_second"],
        "fit_seconds": result.report["training_seconds"],
        "accuracy": round(result.history[-1]["accuracy"], 4),
        "examples": meta.counts["train"],
        "steps_per_execution": result.report["steps_per_execution"],
        "forward_flops": forward_flops(result.model),
    }


def forward_flops(model) -> int:
    """Multiply-adds × 2 of the convolutions and dense layers, per example."""
    import keras

    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            flops += 2 * h * w * kh * kw * layer.input.shape[-1] * c_out
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.input.shape[-1] * layer.units
        elif isinstance(layer, keras.layers.LSTM):
            steps, features = layer.input.shape[1:]
            flops += 2 * steps * 4 * layer.units * (features + layer.units)
    return int(flops)


def peak() -> dict:
    """What TensorFlow reaches on this CPU for one big matmul and one conv (float32, GFLOP/s)."""
    import tensorflow as tf

    def rate(fn, flops: float, seconds: float = 3.0) -> float:
        fn()
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            fn()
            runs += 1
        return round(flops * runs / (time.perf_counter() - started) / 1e9, 1)

    n = 2048
    a, b = tf.random.normal((n, n)), tf.random.normal((n, n))
    matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    x, k = tf.random.normal((128, 14, 14, 64)), tf.random.normal((3, 3, 64, 64))
    conv = tf.function(lambda: tf.reduce_sum(tf.nn.conv2d(x, k, 1, "SAME")))
    return {
        "matmul_2048_gflops": rate(matmul, 2 * n**3),
        "conv3x3_64_gflops": rate(conv, 2 * 128 * 14 * 14 * 9 * 64 * 64),
    }


def spawn(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()
        return {"error": tail[-1] if tail else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    from pipeline.presets import PRESET_NAMES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESET_NAMES), choices=PRESET_NAMES)
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--prepared", default=str(REPO / "data/prepared"), help="the default data, prepared")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a train.* override for the pipeline runs"
    )
    parser.add_argument("--no-peak", action="store_true")
    parser.add_argument("--merge", action="store_true", help="keep the other presets' results already in --out")
    parser.add_argument("--out", default=str(REPO / "reports/throughput.json"))
    parser.add_argument("--one", nargs=3, metavar=("MODE", "PRESET", "PREPARED"), help=argparse.SUPPRESS)
    parser.add_argument("--peak-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}

    if args.peak_only:
        print(json.dumps(peak()))
        return
    if args.one:
        mode, preset, prepared = args.one
        if mode.startswith("plain"):
            same_work = mode == "plain_same_work"
            print(json.dumps(run_plain(preset, Path(prepared), Path(args.params), args.epochs, same_work)))
        else:
            print(json.dumps(run_pipeline(preset, Path(prepared), Path(args.params), args.epochs, overrides)))
        return

    from pipeline.presets import PRESETS

    common = ["--params", args.params, "--epochs", str(args.epochs), *(f"--set={s}" for s in args.set)]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-throughput-data-") as scratch:
        for preset in args.presets:
            examples = min(54_000, PRESETS[preset].hyper.batch_size * BATCHES_PER_EPOCH)
            prepared = prepared_for(preset, Path(args.prepared), Path(scratch), examples)
            runs: dict[str, list[dict]] = {"plain": [], "plain_same_work": [], "pipeline": []}
            for _ in range(args.repeats):
                for mode in runs:
                    runs[mode].append(spawn([*common, "--one", mode, preset, str(prepared)]))
            errors = [r["error"] for rs in runs.values() for r in rs if "error" in r]
            if errors:
                results[preset] = {"error": errors[0]}
            else:
                rate = {mode: statistics.median(r["examples_per_second"] for r in rs) for mode, rs in runs.items()}
                results[preset] = {
                    "epochs": args.epochs,
                    "repeats": args.repeats,
                    **runs,
                    "ratio": round(rate["pipeline"] / rate["plain"], 3),
                    # the goal's measure: the pipeline against a plain script doing the same work
                    "ratio_same_work": round(rate["pipeline"] / rate["plain_same_work"], 3),
                }
            print(preset, json.dumps(results[preset]), flush=True)

    previous = json.loads(Path(args.out).read_text()) if args.merge and Path(args.out).exists() else {}
    report: dict = {
        **previous,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "overrides": overrides,
        "presets": {**previous.get("presets", {}), **results},
    }
    for key in ("epochs", "repeats"):  # each preset's own
        report.pop(key, None)
    default = yaml.safe_load(Path(args.params).read_text())["train"]["model"]
    # The default's FLOP rate and the peak it is a share of belong together: both come from this run
    # when it trains the default; a --merge run without it keeps the earlier pair.
    if not args.no_peak and (not args.merge or (isinstance(default, str) and default in results)):
        report.pop("default_model", None)
        report["peak"] = spawn(["--peak-only"])
        if isinstance(default, str) and "error" not in results.get(default, {"error": 1}):
            pipe = results[default]["pipeline"][-1]
            achieved = (
                3
                * pipe["forward_flops"]
                * statistics.median(r["examples_per_second"] for r in results[default]["pipeline"])
            )
            report["default_model"] = {
                "preset": default,
                "forward_mflops_per_example": round(pipe["forward_flops"] / 1e6, 2),
                "training_gflops": round(achieved / 1e9, 1),
                "of_matmul_peak": round(achieved / 1e9 / report["peak"]["matmul_2048_gflops"], 3),
                "of_conv_peak": round(achieved / 1e9 / report["peak"]["conv3x3_64_gflops"], 3),
            }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
