"""Stage `verify`: prove on the whole test split that the exported models compute what Keras computes.

Runs the Keras model, the SavedModel (tf.saved_model.load, no project code) and each ONNX file
(onnxruntime, CPU provider) in batches, and records per format the max/mean |Δ| of probabilities
against Keras, argmax agreement and accuracy, plus a dynamic-batch check. float32 formats must be
within `max_abs_diff` with 100% agreement; int8 may lose at most `export.max_int8_drop` accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.atomic import write_json
from pipeline.cli import run_cli, stage_parser
from pipeline.errors import PipelineError
from pipeline.params import load_params

MAX_ABS_DIFF = 1e-4
BATCH_SIZES = (1, 7, 256)
BATCH_CHECK_EXAMPLES = 263  # 1 * 263, 7 * 37 + 4, 256 + 7: every size leaves a ragged last batch


def predict_in_batches(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([np.asarray(fn(x[i:i + batch]), dtype=np.float64) for i in range(0, len(x), batch)])


def onnx_predictor(path: Path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def saved_model_predictor(path: Path):
    import tensorflow as tf

    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    return lambda x: signature(image=tf.constant(x))["probabilities"].numpy()


def compare(reference: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    diff = np.abs(probs - reference)
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "argmax_agreement": float(np.mean(probs.argmax(1) == reference.argmax(1))),
        "accuracy": float(np.mean(probs.argmax(1) == labels)),
    }


def batch_consistency(fn, x: np.ndarray) -> float:
    """Largest per-example difference between batch sizes 1, 7 and 256 on the same inputs."""
    outputs = [predict_in_batches(fn, x, b) for b in BATCH_SIZES]
    return float(max(np.abs(o - outputs[-1]).max() for o in outputs))


def check(results: dict[str, dict], max_int8_drop: float) -> list[str]:
    failures = []
    for fmt, r in results.items():
        if fmt == "keras":
            continue
        if fmt.endswith("int8"):
            drop = results["onnx"]["accuracy"] - r["accuracy"]
            r["accuracy_drop_vs_float32"] = drop
            if drop > max_int8_drop:
                failures.append(f"{fmt}: accuracy {r['accuracy']:.4f} is {drop:.4f} below float32 ONNX "
                                f"{results['onnx']['accuracy']:.4f}, more than export.max_int8_drop {max_int8_drop}")
        else:
            if r["max_abs_diff"] > MAX_ABS_DIFF or r["argmax_agreement"] < 1.0:
                failures.append(f"{fmt}: max |Δ| {r['max_abs_diff']:.3g} (limit {MAX_ABS_DIFF:g}), "
                                f"argmax agreement {r['argmax_agreement']:.4%} (need 100%)")
        if r.get("batch_max_abs_diff", 0.0) > MAX_ABS_DIFF / 10:
            failures.append(f"{fmt}: batch sizes {BATCH_SIZES} disagree by {r['batch_max_abs_diff']:.3g}")
    return failures


def verify(model_path: Path, exported: Path, prepared_dir: str, batch_size: int, max_int8_drop: float) -> dict:
    from pipeline.model import load_keras_model
    from pipeline.records import read_meta, read_split_arrays

    meta = read_meta(prepared_dir)
    images, labels = read_split_arrays(prepared_dir, meta, "test")
    x = meta.normalization.apply(images.astype(np.float32)).astype(np.float32)

    model = load_keras_model(str(model_path))
    reference = predict_in_batches(lambda b: model(b, training=False).numpy(), x, batch_size)
    predictors = {"saved_model": saved_model_predictor(exported / "saved_model")}
    for name, path in (("onnx", exported / "model.onnx"), ("onnx_int8", exported / "model.int8.onnx")):
        if path.exists():
            try:
                predictors[name] = onnx_predictor(path)
            except Exception as exc:  # onnxruntime rejects a damaged file with its own exception types
                raise PipelineError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0]})") from None
    if "onnx" not in predictors:
        raise PipelineError(f"{exported / 'model.onnx'}: not found (run `dvc repro export`)")

    results = {"keras": {"accuracy": float(np.mean(reference.argmax(1) == labels))}}
    for fmt, fn in predictors.items():
        results[fmt] = compare(reference, predict_in_batches(fn, x, batch_size), labels)
        if fmt != "onnx_int8":
            results[fmt]["batch_max_abs_diff"] = batch_consistency(fn, x[:BATCH_CHECK_EXAMPLES])
    failures = check(results, max_int8_drop)
    return {"examples": int(len(labels)), "max_abs_diff_limit": MAX_ABS_DIFF, "batch_sizes": list(BATCH_SIZES),
            "formats": results, "passed": not failures, "failures": failures}


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("verify", __doc__)
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--model", default="models/model.keras")
    parser.add_argument("--exported", default="exported")
    parser.add_argument("--run-file", default="models/mlflow_run.json")
    parser.add_argument("--report", default="reports/parity.json")
    args = parser.parse_args(argv)

    params = load_params(args.params).export
    report = verify(Path(args.model), Path(args.exported), args.prepared, params.batch_size, params.max_int8_drop)
    write_json(args.report, report)

    from pipeline.tracking import Tracker

    tracker = Tracker.resume(args.run_file)
    tracker.log_metrics({f"parity.{fmt}.{k}": v for fmt, r in report["formats"].items() for k, v in r.items()})
    verdict = "passed" if report["passed"] else "failed"
    tracker.set_tags({"verify.parity": verdict})
    registered = json.loads((Path(args.exported) / "metadata.json").read_text()).get("mlflow_registered_model")
    if registered:
        tracker.tag_model_version(registered["name"], registered["version"], {
            "parity": verdict,
            "parity.onnx.max_abs_diff": f"{report['formats']['onnx']['max_abs_diff']:.3g}",
            "parity.examples": report["examples"],
        })
    lines = [f"{fmt}: accuracy {r['accuracy']:.4f}" + (f", max |Δ| {r['max_abs_diff']:.2g}, agreement "
             f"{r['argmax_agreement']:.2%}" if "max_abs_diff" in r else "") for fmt, r in report["formats"].items()]
    print("verify: " + "; ".join(lines))
    if report["failures"]:
        raise PipelineError("parity check failed: " + "; ".join(report["failures"]))


if __name__ == "__main__":
    run_cli(main)
