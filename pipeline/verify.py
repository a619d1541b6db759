"""Stage `verify`: prove on the whole test split that the exported models compute what Keras computes,
all fed the same raw inputs (uint8 pixels or raw features) that a deployer would feed them.

Runs the Keras model, the SavedModel (tf.saved_model.load, no project code), each ONNX file
(onnxruntime, CPU provider) and the registered MLflow model loaded back with `mlflow.pyfunc` in
batches, and records per format the max/mean |Δ| of probabilities against Keras, argmax agreement
and accuracy, plus a dynamic-batch check. float32 formats must be within `max_abs_diff` with 100%
agreement; int8 may lose at most `export.max_int8_drop` accuracy. When every check passes, writes
the model card (exported/MODEL_CARD.md, pipeline/model_card.py) and makes it the registered
version's description.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_file, write_json
from pipeline.cli import run_cli, stage_parser
from pipeline.errors import PipelineError, first_line
from pipeline.model_card import CardInputs
from pipeline.model_card import render as render_card
from pipeline.params import load_params

OUTPUT_NAME = "probabilities"

MAX_ABS_DIFF = 1e-4
BATCH_SIZES = (1, 7, 256)
BATCH_CHECK_EXAMPLES = 263  # 1 * 263, 7 * 37 + 4, 256 + 7: every size leaves a ragged last batch


def predict_in_batches(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([np.asarray(fn(x[i : i + batch]), dtype=np.float64) for i in range(0, len(x), batch)])


def onnx_predictor(path: Path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def saved_model_predictor(path: Path, input_name: str):
    import tensorflow as tf

    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    return lambda x: signature(**{input_name: tf.constant(x)})[OUTPUT_NAME].numpy()


def pyfunc_predictor(model, input_name: str):
    """An MLflow pyfunc model, fed as `mlflow models serve` feeds it: a dict of named tensors."""

    def predict(x: np.ndarray) -> np.ndarray:
        out = model.predict({input_name: x})
        return out[OUTPUT_NAME] if isinstance(out, dict) else np.asarray(out)

    return predict


class Agreement:
    """One form's outputs against the reference's, accumulated batch by batch: nothing per example
    is kept, so the test split can be of any size."""

    def __init__(self):
        self.max_abs, self.sum_abs, self.values, self.agree, self.correct, self.examples = 0.0, 0.0, 0, 0, 0, 0

    def add(self, reference: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> None:
        diff = np.abs(np.asarray(probs, dtype=np.float64) - reference)
        self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
        self.sum_abs += float(diff.sum())
        self.values += diff.size
        predicted = np.asarray(probs).argmax(1)
        self.agree += int(np.sum(predicted == reference.argmax(1)))
        self.correct += int(np.sum(predicted == labels))
        self.examples += len(labels)

    def result(self) -> dict[str, float]:
        return {
            "max_abs_diff": self.max_abs,
            "mean_abs_diff": self.sum_abs / max(self.values, 1),
            "argmax_agreement": self.agree / max(self.examples, 1),
            "accuracy": self.correct / max(self.examples, 1),
        }


def batch_consistency(fn, x: np.ndarray) -> float:
    """Largest per-example difference between batch sizes 1, 7 and 256 on the same inputs."""
    outputs = [predict_in_batches(fn, x, b) for b in BATCH_SIZES]
    return float(max(np.abs(o - outputs[-1]).max() for o in outputs))


def int8_drops(results: dict[str, dict]) -> dict[str, float]:
    """Accuracy lost by each int8 format against float32 ONNX."""
    return {fmt: results["onnx"]["accuracy"] - r["accuracy"] for fmt, r in results.items() if fmt.endswith("int8")}


def check(results: dict[str, dict], max_int8_drop: float) -> list[str]:
    """One failure line per format outside its limit; `results` is left as it is."""
    failures = []
    drops = int8_drops(results)
    for fmt, r in results.items():
        if fmt == "keras":
            continue
        if fmt in drops:
            drop = drops[fmt]
            if drop > max_int8_drop:
                failures.append(
                    f"{fmt}: accuracy {r['accuracy']:.4f} is {drop:.4f} below float32 ONNX "
                    f"{results['onnx']['accuracy']:.4f}, more than export.max_int8_drop {max_int8_drop}"
                )
        else:
            if r["max_abs_diff"] > MAX_ABS_DIFF or r["argmax_agreement"] < 1.0:
                failures.append(
                    f"{fmt}: max |Δ| {r['max_abs_diff']:.3g} (limit {MAX_ABS_DIFF:g}), "
                    f"argmax agreement {r['argmax_agreement']:.4%} (need 100%)"
                )
        if r.get("batch_max_abs_diff", 0.0) > MAX_ABS_DIFF / 10:
            failures.append(f"{fmt}: batch sizes {BATCH_SIZES} disagree by {r['batch_max_abs_diff']:.3g}")
    return failures


def verify(
    model_path: Path, exported: Path, prepared_dir: str, batch_size: int, max_int8_drop: float, registered=None
) -> dict:
    """Parity of every exported form on the raw test split; `registered` is the MLflow pyfunc model."""
    from pipeline.model import input_name, load_keras_model
    from pipeline.records import iter_batches, read_meta

    meta = read_meta(prepared_dir)
    feed = input_name(meta.input_shape)

    model = load_keras_model(str(model_path))
    predictors = {"saved_model": saved_model_predictor(exported / "saved_model", feed)}
    for name, path in (("onnx", exported / "model.onnx"), ("onnx_int8", exported / "model.int8.onnx")):
        if path.exists():
            try:
                predictors[name] = onnx_predictor(path)
            except Exception as exc:  # onnxruntime rejects a damaged file with its own exception types
                raise PipelineError(f"{path}: onnxruntime cannot load it ({first_line(exc)})") from None
    if "onnx" not in predictors:
        raise PipelineError(f"{exported / 'model.onnx'}: not found (run `dvc repro export`)")
    if registered is not None:
        predictors["mlflow_pyfunc"] = pyfunc_predictor(registered, feed)

    # One pass over the raw test split, as a deployer has it: every form on each batch.
    keras, agreements, first = Agreement(), {fmt: Agreement() for fmt in predictors}, []
    for x, labels in iter_batches(prepared_dir, meta, "test", batch_size):
        reference = model(x, training=False).numpy().astype(np.float64)
        keras.add(reference, reference, labels)
        for fmt, fn in predictors.items():
            agreements[fmt].add(reference, fn(x), labels)
        if sum(map(len, first)) < BATCH_CHECK_EXAMPLES:
            first.append(x)
    sample = np.concatenate(first)[:BATCH_CHECK_EXAMPLES]
    results = {"keras": {"accuracy": keras.result()["accuracy"]}}
    for fmt, fn in predictors.items():
        results[fmt] = agreements[fmt].result()
        if fmt != "onnx_int8":
            results[fmt]["batch_max_abs_diff"] = batch_consistency(fn, sample)
    failures = check(results, max_int8_drop)
    for fmt, drop in int8_drops(results).items():
        results[fmt]["accuracy_drop_vs_float32"] = drop
    return {
        "examples": keras.examples,
        "max_abs_diff_limit": MAX_ABS_DIFF,
        "batch_sizes": list(BATCH_SIZES),
        "formats": results,
        "passed": not failures,
        "failures": failures,
    }


def read_registered(exported: Path) -> dict | None:
    """The registry name and version that export recorded in metadata.json, if any."""
    path = exported / "metadata.json"
    try:
        return json.loads(path.read_text()).get("mlflow_registered_model")
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found (run `dvc repro export`)") from None
    except json.JSONDecodeError:
        raise PipelineError(f"{path}: not valid JSON") from None


def read_json(path: Path, stage: str, optional: bool = False) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if optional:
            return None
        raise PipelineError(f"{path}: not found (run `dvc repro {stage}`)") from None
    except json.JSONDecodeError:
        raise PipelineError(f"{path}: not valid JSON") from None


def card_inputs(args, params, tracker, registered: dict | None, report: dict) -> CardInputs:
    """Everything the model card shows, from the stages' reports, params and the MLflow run."""
    run = tracker.client.get_run(tracker.run_id)
    evaluation = read_json(Path(args.metrics), "evaluate")
    training = read_json(Path(args.train_report), "train")
    data = params.data
    return CardInputs(
        registered=registered,
        run={
            "run_id": tracker.run_id,
            "commit": run.data.tags.get("mlflow.source.git.commit", "unknown"),
            "summary": run.data.tags.get("mlflow.note.content", ""),
        },
        data={
            "name": data.dataset_name,
            "format": data.format,
            "source": data.source,
            "checksums": data.selected.sha256 or {},
            "sha256": run.data.tags.get("data.sha256", ""),
            "test_sha256": evaluation.get("data", {}).get("test_sha256", ""),
            "report": read_json(Path(args.data_report), "prepare"),
        },
        metadata=read_json(Path(args.exported) / "metadata.json", "export"),
        training=training,
        hyper=training.get("hyperparameters", {}),
        evaluation=evaluation,
        parity={**report, "max_int8_drop": params.export.max_int8_drop},
        benchmark=read_json(Path(args.benchmark), "", optional=True),
    )


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("verify", __doc__)
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--model", default="models/model.keras")
    parser.add_argument("--exported", default="exported")
    parser.add_argument("--run-file", default="models/mlflow_run.json")
    parser.add_argument("--report", default="reports/parity.json")
    parser.add_argument("--metrics", default="reports/metrics.json", help="evaluate's (for the model card)")
    parser.add_argument("--data-report", default="reports/data.json", help="prepare's (for the model card)")
    parser.add_argument("--train-report", default="reports/train.json", help="train's (for the model card)")
    parser.add_argument("--benchmark", default="reports/bench.json", help="latency for the card, read if present")
    parser.add_argument("--card", default="exported/MODEL_CARD.md")
    args = parser.parse_args(argv)

    all_params = load_params(args.params)
    params = all_params.export
    from pipeline.tracking import Tracker

    tracker = Tracker.resume(args.run_file)
    registered = read_registered(Path(args.exported))
    pyfunc = tracker.load_registered_model(registered["name"], registered["version"]) if registered else None
    report = verify(
        Path(args.model), Path(args.exported), args.prepared, params.batch_size, params.max_int8_drop, registered=pyfunc
    )
    write_json(args.report, report)

    tracker.log_metrics({f"parity.{fmt}.{k}": v for fmt, r in report["formats"].items() for k, v in r.items()})
    verdict = "passed" if report["passed"] else "failed"
    tracker.set_tags({"verify.parity": verdict})
    if registered:
        tracker.registry.tag_version(
            registered["name"],
            registered["version"],
            {
                "parity": verdict,
                "parity.onnx.max_abs_diff": f"{report['formats']['onnx']['max_abs_diff']:.3g}",
                "parity.examples": report["examples"],
            },
        )
    lines = [
        f"{fmt}: accuracy {r['accuracy']:.4f}"
        + (f", max |Δ| {r['max_abs_diff']:.2g}, agreement {r['argmax_agreement']:.2%}" if "max_abs_diff" in r else "")
        for fmt, r in report["formats"].items()
    ]
    print("verify: " + "; ".join(lines))
    if report["failures"]:
        raise PipelineError("parity check failed: " + "; ".join(report["failures"]))

    card = render_card(card_inputs(args, all_params, tracker, registered, report))
    with atomic_file(args.card) as tmp:
        tmp.write_text(card)
    tracker.log_artifact(args.card, "export")
    if registered:
        tracker.registry.set_description(registered["name"], registered["version"], card)
    print(f"verify: model card {args.card}")


if __name__ == "__main__":
    run_cli(main)
