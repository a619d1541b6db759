"""What each preset scores: the whole pipeline (fetch → prepare → train → evaluate → export → verify)
per preset, with the preset's own epochs, optimizer, batch size and normalisation, on the data set
of params.yaml (default: Fashion-MNIST). Writes reports/presets.json, the numbers of the README's
preset table.

    python benchmarks/presets.py [--presets keras_mlp mlp_128_64 cnn2 rnn mlp] [--out reports/presets.json]

Each preset runs in its own scratch directory with its own MLflow store; the quality gate is off
(this measures, it does not judge). Presets made for other inputs get the same IDX data rewritten
in a format they take, read back through the pipeline's own readers: `lenet` and `cnn4` (made for
32×32×3 CIFAR-10, which this offline machine cannot download) get an image folder of PNGs,
resized to 32×32 and converted to RGB by prepare; `tabular_mlp` gets a CSV table of the 784 pixel
values. Their numbers say what the presets do on these images, not what they score on CIFAR-10.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # helpers.writers: the formats' writers the tests use too

# `cnn`, the default, is what `dvc repro` itself measures (reports/metrics.json).
DEFAULT_PRESETS = ["keras_mlp", "mlp_128_64", "cnn2", "rnn", "mlp", "tabular_mlp", "lenet", "cnn4"]
AS_IMAGE_FOLDER = {"lenet", "cnn4"}
AS_TABLE = {"tabular_mlp"}


def idx_arrays(data: dict) -> dict:
    from pipeline.formats.idx import read_idx

    def images(path):
        x = read_idx(path, (3, 4))
        return x[..., None] if x.ndim == 3 else x

    source, idx = Path(data["source"]), data["idx"]
    return {
        part: (images(source / idx[f"{part}_images"]), read_idx(source / idx[f"{part}_labels"], (1,)))
        for part in ("train", "test")
    }


def as_image_folder(data: dict, out: Path) -> dict:
    """The IDX images as <out>/{train,test}/<class>/<i>.png; prepare resizes them to 32×32 RGB."""
    from PIL import Image

    for part, (images, labels) in idx_arrays(data).items():
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = out / part / f"{label:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[..., 0]).save(folder / f"{i:05d}.png")
    return {
        "format": "image_folder",
        "source": str(out),
        "image_folder": {
            "image_size": [32, 32],
            "color_mode": "rgb",
            "class_names": [f"{i:02d}" for i in range(len(data["idx"]["class_names"]))],
        },
    }


def as_table(data: dict, out: Path) -> dict:
    """The IDX images as CSV tables of 784 pixel columns and a label column."""
    from helpers.writers import write_table

    out.mkdir(parents=True, exist_ok=True)
    names = data["idx"]["class_names"]
    for part, (images, labels) in idx_arrays(data).items():
        flat = images.reshape(len(images), -1)
        write_table(out / f"{part}.csv", flat, [names[y] for y in labels], [f"px{i}" for i in range(flat.shape[1])])
    return {"format": "csv", "source": str(out), "csv": {"class_names": names}}


def run_preset(preset: str, base: dict, work: Path) -> dict:
    from helpers.commands import run_stages

    params = json.loads(json.dumps(base))
    params["train"]["model"] = preset
    if preset in AS_IMAGE_FOLDER | AS_TABLE and params["data"]["format"] == "idx":
        convert = as_image_folder if preset in AS_IMAGE_FOLDER else as_table
        params["data"] = convert(params["data"], work / "source")
    params["evaluate"]["gate"] = {"min_accuracy": 0.0, "max_drop": None, "baseline": None}
    params["mlflow"] = {
        "tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        "experiment_name": "presets",
        "registered_model_name": f"bench-{preset}",
    }
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    started = time.perf_counter()
    try:  # each stage with the command line dvc.yaml gives it, in this process
        run_stages(work, "fetch", "prepare", "train", "evaluate", "export", "verify")
    except SystemExit as exc:  # a stage's one-line error is on stderr; a failed parity check still reports
        if not (work / "reports/parity.json").exists():
            return {"refused": f"exit status {exc.code} (its error is above)"}
    total = time.perf_counter() - started
    trained = json.loads((work / "reports/train.json").read_text())
    metrics = json.loads((work / "reports/metrics.json").read_text())["test"]
    parity = json.loads((work / "reports/parity.json").read_text())
    exported = json.loads((work / "exported/metadata.json").read_text())
    files, forms = exported["files"], parity["formats"]
    from pipeline.params import load_params
    from pipeline.presets import filled_from_preset

    train_params = filled_from_preset(
        load_params(work / "params.yaml").train
    )  # the preset's values, as train used them
    return {
        "hyperparameters": {
            k: getattr(train_params, k)
            for k in ("epochs", "batch_size", "optimizer", "learning_rate", "momentum", "schedule")
        },
        "epochs_run": trained["epochs_run"],
        "parameters": trained["parameters"],
        "training_seconds": trained["training_seconds"],
        "test_accuracy": metrics["accuracy"],
        "test_macro_f1": metrics["macro_f1"],
        "test_loss": metrics["loss"],
        "int8_test_accuracy": forms.get("onnx_int8", {}).get("accuracy"),
        "onnx_max_abs_diff": forms["onnx"]["max_abs_diff"],
        "litert_max_abs_diff": forms["litert"]["max_abs_diff"],
        "litert_argmax_agreement": forms["litert"]["argmax_agreement"],
        "litert_int8_test_accuracy": forms["litert_int8"]["accuracy"],
        "litert_int8_float_ops": exported.get("litert_int8_float_ops", []),
        "parity_passed": parity["passed"],
        "parity_failures": parity["failures"],
        "bytes": {name: info["bytes"] for name, info in files.items()},
        "pipeline_seconds": round(total, 1),
        "data": {
            "format": params["data"]["format"],
            **({"rewritten_from": "idx"} if params["data"] != base["data"] else {}),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=DEFAULT_PRESETS)
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--out", default=str(REPO / "reports/presets.json"))
    args = parser.parse_args()

    base = yaml.safe_load(Path(args.params).read_text())
    base["data"]["source"] = (
        str(Path(base["data"]["source"]).resolve()) if "://" not in base["data"]["source"] else base["data"]["source"]
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-presets-") as scratch:
        for preset in args.presets:
            print(f"== {preset}", flush=True)
            results[preset] = run_preset(preset, base, Path(scratch) / preset)
            print(json.dumps(results[preset]), flush=True)
    report = {
        "data": {"format": base["data"]["format"], "source": base["data"]["source"]},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "presets": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
