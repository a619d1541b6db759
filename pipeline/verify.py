"""Stage `verify`: prove on the whole test split that the exported models compute what Keras computes,
all fed the same raw inputs (uint8 pixels or raw features) that a deployer would feed them.

The reference is the Keras model's own output on the test split, as evaluate recorded it (so the
Keras model is not loaded again; pipeline/parity.py). Runs each ONNX file (onnxruntime, CPU
provider), each LiteRT file (ai-edge-litert's interpreter, as a phone runs it) and the registered
MLflow model loaded back with `mlflow.pyfunc`, one pass over the test split in batches, and records
per form the max/mean |Δ| of probabilities against Keras, argmax agreement and accuracy, plus a
batch-size check. The SavedModel's outputs were recorded by export, which had TensorFlow loaded
(models/saved_model_outputs.npz): verify measures and judges that record with the rest, and never
starts TensorFlow. Every `verify.*` key is verify's alone.

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
from pipeline.kinds import OUTPUT_NAME
from pipeline.model_card import CardInputs
from pipeline.model_card import render as render_card
from pipeline.parity import Recorded, keras_reference, measure
from pipeline.stage import Stage, StageResult, json_text, log_into_run, read_output, resume_training_run


def pyfunc_predictor(model, kind, input_name: str):
    """An MLflow pyfunc model, fed as `mlflow models serve` feeds it: a dict of named tensors (texts
    as strings)."""

    def predict(x: np.ndarray) -> np.ndarray:
        if kind.name == "text":
            from pipeline.text import decode_text

            x = np.asarray([decode_text(row) for row in x], dtype=object)
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
        if (
            fmt not in drops
            and "probe_max_abs_diff" in r
            and (r["probe_max_abs_diff"] > limits.max_abs_diff or r["probe_argmax_agreement"] < 1.0)
        ):
            failures.append(
                f"{fmt}: on the awkward texts max |Δ| {r['probe_max_abs_diff']:.3g}, argmax agreement "
                f"{r['probe_argmax_agreement']:.0%} (pipeline/text.py: AWKWARD_TEXTS)"
            )
        if r.get("batch_max_abs_diff", 0.0) > limits.max_abs_diff / 10:
            failures.append(f"{fmt}: batch sizes {list(limits.batch_sizes)} disagree by {r['batch_max_abs_diff']:.3g}")
    return failures


def parity(reference: np.ndarray, predictors: dict[str, Callable], data, limits) -> dict[str, Any]:
    """Every form against Keras's `reference` outputs in one pass over the raw test split of `data`
    (PreparedData), as a deployer has it, each judged against `limits` (the verify params)."""
    examples, results = measure(reference, predictors, data, limits)
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


def check_exports(reference: Path, exported: Path, saved_model_outputs: Path, data, limits, pyfunc=None) -> dict:
    """Parity of every exported form in `exported` (the SavedModel through export's record of its
    outputs, and the registered `pyfunc` model) against the Keras model's outputs in `reference`
    (evaluate's probabilities file) on the test split of `data` (PreparedData), and each deployable
    file's latency here: the report."""
    expected = keras_reference(reference, data.meta)
    for name in ("saved_model", *DEPLOYABLE.values()):
        if not (exported / name).exists():
            raise PipelineError(f"{exported / name}: not found (run `dvc repro export`)")
    # Each file in the runtime a deployer runs it with (pipeline/classifier.py), fed the raw inputs;
    # a damaged file is one line now, before any pass over the test split. On every core: LiteRT's
    # interpreter takes one thread unless told (its two forms' pass: 2.4 s here, 1.1 s on two cores).
    classifiers = {fmt: open_classifier(exported / file, os.cpu_count()) for fmt, file in DEPLOYABLE.items()}
    predictors = {"saved_model": Recorded(saved_model_outputs, data.meta)}
    predictors.update({fmt: classifier.run for fmt, classifier in classifiers.items()})
    if pyfunc is not None:
        predictors["mlflow_pyfunc"] = pyfunc_predictor(pyfunc, data.kind, data.meta.input_name)
    report = parity(expected, predictors, data, limits)
    sample, _ = next(data.batches("test", 256))
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


def verify(inputs: dict[str, Path], params, outputs: dict[str, Path], run) -> StageResult:
    """The parity report, and the model card when every form passed."""
    from pipeline.prepared import PreparedData

    registered = read_output(inputs["registration"], "export", "name and version")
    data = PreparedData.open(inputs["prepared"])
    with tempfile.TemporaryDirectory(prefix="verify-") as tmp:
        pyfunc = run.registry.load_pyfunc(registered["name"], registered["version"], Path(tmp))
        report = check_exports(
            inputs["probabilities"], inputs["exported"], inputs["saved_model_outputs"], data, params.verify, pyfunc
        )
    outputs["report"].write_text(json_text(report))
    if report["passed"]:
        outputs["card"].write_text(render_card(card_inputs(inputs, run, registered, report)))
    lines = [
        f"{fmt}: accuracy {r['accuracy']:.4f}"
        + (f", max |Δ| {r['max_abs_diff']:.2g}, agreement {r['argmax_agreement']:.2%}" if "max_abs_diff" in r else "")
        for fmt, r in report["formats"].items()
    ]
    verdict = "passed" if report["passed"] else "failed"
    return StageResult(
        "; ".join(lines),
        metrics={f"parity.{fmt}.{k}": v for fmt, r in report["formats"].items() for k, v in r.items()},
        tags={"verify.parity": verdict},
        facts={"registered": registered, "report": report},
        failure=None if report["passed"] else "parity check failed: " + "; ".join(report["failures"]),
    )


def publish(result: StageResult, run, outputs: dict[str, Path]) -> dict:
    """The run's metrics and tags; the version's parity tags; the model card as the version's
    description and an artifact of the run."""
    log_into_run(result, run, outputs)
    registered, report = result.facts["registered"], result.facts["report"]
    registry = run.registry
    registry.tag_version(registered["name"], registered["version"], {
        "parity": "passed" if report["passed"] else "failed",
        "parity.onnx.max_abs_diff": f"{report['formats']['onnx']['max_abs_diff']:.3g}",
        "parity.litert.max_abs_diff": f"{report['formats']['litert']['max_abs_diff']:.3g}",
        "parity.examples": report["examples"],
    })  # fmt: skip
    if report["passed"]:
        run.log_artifact(outputs["card"], "export")
        registry.set_description(registered["name"], registered["version"], outputs["card"].read_text())
        result.summary += f"\nverify: model card {outputs['card'].name}"
    return {}


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


STAGE = Stage(
    "verify",
    __doc__,
    params=("verify",),
    inputs=(
        "prepared",
        "probabilities",
        "saved_model_outputs",
        "exported",
        "registration",
        "run_file",
        "metrics",
        "data_report",
        "train_report",
    ),  # fmt: skip
    outputs=("report", "card"),
    core=verify,
    tracking=resume_training_run,
    publish=publish,
)


def main(argv: list[str] | None = None) -> None:
    STAGE.run(argv)


if __name__ == "__main__":
    main()
    end_process()
