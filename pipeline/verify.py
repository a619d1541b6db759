"""Stage `verify`: prove on the whole test split that the exported models compute what Keras computes,
all fed the same raw inputs (uint8 pixels or raw features) that a deployer would feed them.

The reference is the Keras model's own output on the test split, as evaluate recorded it (so the
Keras model is not loaded again; pipeline/parity.py). Runs each ONNX file (onnxruntime, CPU
provider), each LiteRT file (ai-edge-litert's interpreter, as a phone runs it) and the registered
MLflow model loaded back with `mlflow.pyfunc`, one pass over the test split in batches, and records
per form the max/mean |Δ| of probabilities against Keras, argmax agreement and accuracy, plus a
batch-size check. The SavedModel was measured the same way by export, which had TensorFlow loaded
(reports/export.json): verify judges it with the rest and never starts TensorFlow.

Float32 forms must be within `verify.max_abs_diff` with 100 % argmax agreement; an int8 file may
lose at most `verify.max_int8_drop` accuracy against the float32 file of its runtime. It also times
each ONNX and LiteRT file here (batch 1 and 256). When every check passes it writes the model card
(pipeline/model_card.py) and makes it the registered version's description.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.classifier import open_classifier
from pipeline.cli import end_process
from pipeline.errors import PipelineError
from pipeline.model_card import CardInputs
from pipeline.model_card import render as render_card
from pipeline.parity import FLOAT32_ROW, keras_reference, measure, saved_model_predictor
from pipeline.records import OUTPUT_NAME
from pipeline.stage import Stage, StageResult, read_output, run_stage


def pyfunc_predictor(model, input_name: str):
    """An MLflow pyfunc model, fed as `mlflow models serve` feeds it: a dict of named tensors."""

    def predict(x: np.ndarray) -> np.ndarray:
        out = model.predict({input_name: x})
        return out[OUTPUT_NAME] if isinstance(out, dict) else np.asarray(out)

    return predict


def float32_of(fmt: str) -> str:
    """The float32 form an int8 form is measured against: the same runtime's ("litert_int8": "litert")."""
    return fmt.removesuffix("_int8")


def int8_drops(results: dict[str, dict]) -> dict[str, float]:
    """Accuracy lost by each int8 form against its runtime's float32 form."""
    return {fmt: results[float32_of(fmt)]["accuracy"] - r["accuracy"] for fmt, r in results.items()
            if fmt.endswith("_int8")}  # fmt: skip


def check(results: dict[str, dict], limits) -> list[str]:
    """One failure line per form outside its limit (`limits`: the verify params)."""
    failures = []
    drops = int8_drops(results)
    for fmt, r in results.items():
        if fmt == "keras":
            continue
        if fmt in drops:
            if drops[fmt] > limits.max_int8_drop:
                failures.append(
                    f"{fmt}: accuracy {r['accuracy']:.4f} is {drops[fmt]:.4f} below {float32_of(fmt)}'s "
                    f"{results[float32_of(fmt)]['accuracy']:.4f}, more than verify.max_int8_drop {limits.max_int8_drop}"
                )
        elif r["max_abs_diff"] > limits.max_abs_diff or r["argmax_agreement"] < 1.0:
            failures.append(
                f"{fmt}: max |Δ| {r['max_abs_diff']:.3g} (verify.max_abs_diff {limits.max_abs_diff:g}), "
                f"argmax agreement {r['argmax_agreement']:.4%} (need 100%)"
            )
        if r.get("batch_max_abs_diff", 0.0) > limits.max_abs_diff / 10:
            failures.append(f"{fmt}: batch sizes {list(limits.batch_sizes)} disagree by {r['batch_max_abs_diff']:.3g}")
    return failures


def parity(reference: np.ndarray, predictors: dict[str, Callable], prepared_dir: str, meta, limits,
           measured: dict[str, dict] | None = None) -> dict[str, Any]:  # fmt: skip
    """Every form against Keras's `reference` outputs in one pass over the raw test split, as a
    deployer has it, with `measured` (forms export measured already: the SavedModel) beside them."""
    examples, results = measure(reference, predictors, prepared_dir, meta, limits)
    results = {"keras": results.pop("keras"), **(measured or {}), **results}
    failures = check(results, limits)
    for fmt, drop in int8_drops(results).items():
        results[fmt]["accuracy_drop_vs_float32"] = drop
    return {
        "examples": examples,
        "max_abs_diff_limit": limits.max_abs_diff,
        "max_int8_drop": limits.max_int8_drop,
        "batch_sizes": list(limits.batch_sizes),
        "formats": results,
        "passed": not failures,
        "failures": failures,
    }


def latency(engines: dict[str, Callable], sample: np.ndarray, calls: int = 200) -> dict[str, Any]:
    """Each deployable file timed here, on this machine, in its runtime's default session: batch-1
    median over `calls` calls, batch-256 throughput (the model card quotes these, for exactly the
    files it describes). One engine at a time, each with a batch-1 and a batch-256 instance (LiteRT
    reallocates its tensors when the batch size changes)."""
    from importlib.metadata import version

    timed = {}
    batch = np.resize(sample, (256, *sample.shape[1:]))
    for fmt, make in engines.items():
        one_engine, batch_engine = make(), make()
        for _ in range(20):
            one_engine(sample[:1])
        batch_engine(batch)
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            one_engine(sample[:1])
            times.append(time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(4):
            batch_engine(batch)
        timed[fmt] = {
            "batch1_median_ms": round(statistics.median(times) * 1000, 4),
            "batch256_images_per_s": round(4 * 256 / (time.perf_counter() - started), 1),
        }
    runtimes = {name: version(name) for name in ("onnxruntime", "ai-edge-litert")}
    return {**runtimes, "cpus": os.cpu_count(), "engines": timed}


STAGE = Stage(
    "verify",
    __doc__,
    params=("verify",),
    inputs=(
        "prepared",
        "probabilities",
        "exported",
        "registration",
        "run_file",
        "metrics",
        "data_report",
        "train_report",
    ),
    outputs=("report", "card"),
)


def check_exports(
    reference: Path, exported: Path, prepared_dir: str, limits, pyfunc=None, saved_model: dict | None = None
) -> dict[str, Any]:
    """Parity of every exported form in `exported` (and the registered `pyfunc` model) against the
    Keras model's outputs in `reference` (evaluate's probabilities file), and each deployable file's
    latency here: the report. `saved_model`: the SavedModel's parity as export measured it (None:
    measured here, with TensorFlow)."""
    from pipeline.records import iter_batches, read_meta

    meta = read_meta(prepared_dir)
    expected = keras_reference(reference, meta)
    for name in ("saved_model", *DEPLOYABLE.values()):
        if not (exported / name).exists():
            raise PipelineError(f"{exported / name}: not found (run `dvc repro export`)")
    # Each file in the runtime a deployer runs it with (pipeline/classifier.py), fed the raw inputs;
    # a damaged file is one line now, before any pass over the test split. On every core: LiteRT's
    # interpreter takes one thread unless told (its two forms' pass: 2.4 s here, 1.1 s on two cores).
    classifiers = {fmt: open_classifier(exported / file, os.cpu_count()) for fmt, file in DEPLOYABLE.items()}
    predictors = {fmt: classifier.run for fmt, classifier in classifiers.items()}
    measured = {"saved_model": saved_model} if saved_model is not None else {}
    if not measured:
        predictors = {"saved_model": saved_model_predictor(exported / "saved_model", meta.input_name), **predictors}
    if pyfunc is not None:
        predictors["mlflow_pyfunc"] = pyfunc_predictor(pyfunc, meta.input_name)
    report = parity(expected, predictors, prepared_dir, meta, limits, measured)
    sample, _ = next(iter_batches(prepared_dir, meta, "test", 256))
    report["latency"] = latency({fmt: partial(fresh_run, c.path) for fmt, c in classifiers.items()}, sample)
    return report


# The files a deployer runs, by the name each form has in the report.
DEPLOYABLE = {
    "onnx": "model.onnx",
    "onnx_int8": "model.int8.onnx",
    "litert": "model.tflite",
    "litert_int8": "model.int8.tflite",
}


def fresh_run(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """A new runtime instance of the file (latency times each batch size on its own instance)."""
    return open_classifier(path).run


def saved_model_measurement(registered: dict, path: Path) -> dict | None:
    """The SavedModel's parity as export recorded it (None in an older report: verify measures it)."""
    measured = registered.get("saved_model_parity")
    if measured is None:
        return None
    try:
        return {key: float(measured[key]) for key in FLOAT32_ROW}
    except (KeyError, TypeError, ValueError):
        raise PipelineError(f"{path}: saved_model_parity is malformed (rerun `dvc repro export`)") from None


def verify(paths: dict[str, Path], params, run) -> StageResult:
    registered = read_output(paths["registration"], "export", "name and version")
    with tempfile.TemporaryDirectory(prefix="verify-") as tmp:
        pyfunc = run.registry.load_pyfunc(registered["name"], registered["version"], Path(tmp))
        report = check_exports(
            paths["probabilities"], paths["exported"], str(paths["prepared"]), params.verify, pyfunc,
            saved_model_measurement(registered, paths["registration"]),
        )  # fmt: skip
    verdict = "passed" if report["passed"] else "failed"
    lines = [
        f"{fmt}: accuracy {r['accuracy']:.4f}"
        + (f", max |Δ| {r['max_abs_diff']:.2g}, agreement {r['argmax_agreement']:.2%}" if "max_abs_diff" in r else "")
        for fmt, r in report["formats"].items()
    ]
    outputs: dict[str, Any] = {"report": report}
    card = None
    if report["passed"]:
        card = render_card(card_inputs(paths, run, registered, report))
        outputs["card"] = card

    def publish(run) -> list[str]:
        registry = run.registry
        registry.tag_version(registered["name"], registered["version"], {
            "parity": verdict,
            "parity.onnx.max_abs_diff": f"{report['formats']['onnx']['max_abs_diff']:.3g}",
            "parity.litert.max_abs_diff": f"{report['formats']['litert']['max_abs_diff']:.3g}",
            "parity.examples": report["examples"],
        })  # fmt: skip
        if card is not None:
            run.log_artifact(paths["card"], "export")
            registry.set_description(registered["name"], registered["version"], card)
            return [f"model card {paths['card']}"]
        return []

    return StageResult(
        outputs=outputs,
        summary="; ".join(lines),
        metrics={f"parity.{fmt}.{k}": v for fmt, r in report["formats"].items() for k, v in r.items()},
        tags={"verify.parity": verdict},
        publish=publish,
        failure=None if report["passed"] else "parity check failed: " + "; ".join(report["failures"]),
    )


def card_inputs(paths: dict[str, Path], run, registered: dict, report: dict) -> CardInputs:
    """Everything the model card shows, from the stages' reports and the MLflow run."""
    tags = run.client.get_run(run.run_id).data.tags
    evaluation = read_output(paths["metrics"], "evaluate")
    training = read_output(paths["train_report"], "train")
    data = read_output(paths["data_report"], "prepare")
    return CardInputs(
        registered=registered,
        run={
            "run_id": run.run_id,
            "commit": tags.get("mlflow.source.git.commit", "unknown"),
            "summary": tags.get("mlflow.note.content", ""),
        },  # fmt: skip
        data={
            **data.get("source", {}),
            "sha256": tags.get("data.sha256", ""),
            "test_sha256": evaluation.get("data", {}).get("test_sha256", ""),
            "report": data,
        },  # fmt: skip
        metadata=read_output(paths["exported"] / "metadata.json", "export"),
        training=training,
        hyper=training.get("hyperparameters", {}),
        evaluation=evaluation,
        parity=report,
    )


def main(argv: list[str] | None = None) -> None:
    run_stage(STAGE, verify, argv)


if __name__ == "__main__":
    main()
    end_process()
