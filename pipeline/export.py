"""Stage `export`: the trained Keras model as a TensorFlow SavedModel, ONNX and LiteRT (float32 and
int8), with the metadata a deployer needs, then registered in MLflow as the `challenger`.

Every form takes the model's raw input (its preprocessing is inside the graph, pipeline/kinds.py)
and returns `probabilities` (float32 [batch, classes]):

    exported/saved_model/    serving signature: image (uint8 [batch, h, w, c]), features (float32
                             [batch, n]) or text (tf.string [batch])
    exported/model.onnx      tf2onnx, the raw input (text: its UTF-8 bytes) with symbolic dim `batch`
    exported/model.int8.onnx onnxruntime static QDQ quantization, calibrated on a seeded raw train sample
    exported/model.tflite    LiteRT float32, and model.int8.tflite full-integer int8 on the same sample
                             (pipeline/litert.py); the metadata inside each file
    exported/triton/<name>/  a Triton model repository for the ONNX file (pipeline/triton.py)
    exported/metadata.json   input spec, class names, opset, provenance, sizes and sha256 of files

exported/ is this stage's alone and is replaced as a whole (the old set or the new one). The MLflow
version is registered as the stage publishes, and recorded in the registration report. The
SavedModel's outputs on the test split are recorded here, where TensorFlow is loaded already
(models/saved_model_outputs.npz): verify judges them with every other form.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cli import end_process
from pipeline.errors import PipelineError
from pipeline.hashing import file_sha256, tree_sha256
from pipeline.kinds import OUTPUT_NAME
from pipeline.onnx_export import BATCH_DIM, export_onnx, quantize_int8
from pipeline.stage import Stage, StageResult, log_into_run, read_output, resume_training_run

FILES = ("model.onnx", "model.int8.onnx", "model.tflite", "model.int8.tflite", "saved_model", "triton")


def model_input(model) -> tuple[str, str, tuple[int, ...]]:
    """The model's raw input: name, dtype and shape without the batch dimension."""
    (tensor,) = model.inputs
    return tensor.name, str(tensor.dtype), tuple(int(d) for d in tensor.shape[1:])


def serving_function(model):
    """A tf.function over the model's raw input, named as the model names it, any batch size: what
    the ONNX and LiteRT files are converted from, and (but for text) what the SavedModel serves."""
    import tensorflow as tf

    name, dtype, shape = model_input(model)
    spec = tf.TensorSpec([None, *shape], tf.as_dtype(dtype), name=name)

    @tf.function(input_signature=[spec])
    def serve(inputs):
        return {OUTPUT_NAME: model(inputs, training=False)}

    return serve


def export_saved_model(model, serve, out: Path) -> None:
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve)
    archive.write_out(str(out), verbose=False)


def saved_model_function(model, kind: str):
    """What the SavedModel serves: the raw input, or for text one tf.string per text (what TF Serving
    users send), turned into its UTF-8 bytes inside the graph."""
    if kind == "text":
        from pipeline.text_layers import string_serving_function

        return string_serving_function(model)
    return serving_function(model)


def export_metadata(meta, model, run_id: str | None, opset: int) -> dict[str, Any]:
    """What a deployer needs to know of every exported form: the input and output contract, the
    classes, what the graph does to the input (information only), producers, provenance. Built once:
    metadata.json holds it (with the files' hashes), each ONNX file carries it flattened."""
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx

    from pipeline.mirror import averages_mirrors
    from pipeline.model import applied_normalization

    input_name, input_dtype, _ = model_input(model)
    kind = meta.data_kind
    metadata = {
        "input": {
            "name": input_name,
            "dtype": input_dtype,
            "shape": [BATCH_DIM, *meta.input_shape],
            "layout": kind.layout,
            "feature_names": meta.feature_names,
            "range": [0, 255] if kind.name == "image" else None,
            "meaning": kind.meaning,
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": [BATCH_DIM, meta.num_classes],
            "meaning": "softmax probabilities over class_names",
        },
        "class_names": meta.class_names,
        # Information only: the graph applies it (no consumer needs to).
        "normalization_inside": applied_normalization(model),
        # Information only: the graph also scores each image's mirror and averages (2 passes an image).
        "test_time_flip": averages_mirrors(model),
        "opset": opset,
        "producer_versions": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "tf2onnx": tf2onnx.__version__,
            "onnx": onnx.__version__,
        },  # fmt: skip
        "mlflow_run_id": run_id,
    }
    if kind.name == "text":
        from pipeline.text_layers import text_contract

        metadata["text"] = text_contract(model)
    return metadata


def onnx_properties(metadata: dict[str, Any]) -> dict[str, str]:
    """The metadata as ONNX `metadata_props` (strings), the keys onnxruntime-only readers use."""
    inp = metadata["input"]
    return {
        "class_names": json.dumps(metadata["class_names"]),
        "input_layout": inp["layout"],
        "input_shape": json.dumps(inp["shape"]),
        "input_dtype": inp["dtype"],
        "input": inp["meaning"],
        "normalization_inside": json.dumps(metadata["normalization_inside"]),
        "test_time_flip": json.dumps(metadata["test_time_flip"]),
        "feature_names": json.dumps(inp["feature_names"] or []),
        "output": f"{OUTPUT_NAME}: softmax over class_names",
        "producer_versions": json.dumps(metadata["producer_versions"]),
        "mlflow_run_id": metadata["mlflow_run_id"] or "",
    }


def calibration_sample(data, size: int, seed: int) -> np.ndarray:
    """A seeded sample of `size` raw train inputs of `data` (PreparedData), as the deployed model
    receives them: the positions are drawn first, then picked out as the train split streams by
    (only the sample is kept)."""
    count = data.meta.counts["train"]
    wanted = np.sort(np.random.default_rng(seed).choice(count, size=min(size, count), replace=False))
    picked, position = [], 0
    for x, _ in data.batches("train", data.meta.examples_in(16 << 20)):
        here = wanted[(wanted >= position) & (wanted < position + len(x))] - position
        picked.append(x[here])
        position += len(x)
        if position > wanted[-1]:
            break
    return np.concatenate(picked)


def calibration_batches(sample: np.ndarray, batch: int = 50) -> list[np.ndarray]:
    return [sample[i : i + batch] for i in range(0, len(sample), batch)]


def file_facts(path: Path) -> dict[str, Any]:
    """Size and content hash of an exported file or directory."""
    if path.is_dir():
        return {"bytes": sum(p.stat().st_size for p in path.rglob("*") if p.is_file()), "sha256": tree_sha256(path)}
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def build_exports(model, data, params, metadata: dict[str, Any], out: Path, name: str) -> dict[str, Any]:
    """Every exported form into `out` (a fresh directory), the ONNX file's Triton repository under
    `name`, and metadata.json; returns the metadata."""
    from pipeline.litert import export_litert
    from pipeline.triton import write_model_repository

    serve = serving_function(model)
    properties = onnx_properties(metadata)
    export_saved_model(model, saved_model_function(model, data.kind.name), out / "saved_model")
    sample = calibration_sample(data, params.calibration_size, params.seed)
    batches = calibration_batches(sample)
    rewrites = export_onnx(serve, params.opset, properties, sample, out / "model.onnx")
    quantize_int8(out / "model.onnx", metadata["input"]["name"], batches, out / "model.int8.onnx", properties)
    write_model_repository(out / "model.onnx", out / "triton", name)
    numeric = data.kind.name != "text"  # the exported SavedModel serves the raw input LiteRT converts
    in_float32 = export_litert(model, out / "saved_model" if numeric else None, write_numeric_saved_model, batches,
                               metadata["input"]["name"], properties, out)  # fmt: skip
    files = {name: file_facts(out / name) for name in FILES}
    full = {**metadata, "files": files, "onnx_rewrites": rewrites, "litert_int8_float_ops": in_float32}
    (out / "metadata.json").write_text(json.dumps(full, indent=2) + "\n")
    return full


def write_numeric_saved_model(model, out: Path) -> None:
    """A SavedModel serving the raw numeric input (LiteRT converts from one)."""
    export_saved_model(model, serving_function(model), out)


def load_for_export(model_path: Path, meta):
    """The trained model in float32, checked against the prepared data it will be fed."""
    from pipeline.model import float32_model, load_keras_model

    model = float32_model(load_keras_model(str(model_path)))
    _, input_dtype, input_shape = model_input(model)
    if input_shape != tuple(meta.input_shape) or input_dtype != meta.dtype:
        raise PipelineError(
            f"{model_path}: model input {input_dtype} {input_shape} does not match the prepared "
            f"data's {meta.dtype} {tuple(meta.input_shape)} (rerun `dvc repro train`)"
        )
    return model


def version_tags(evaluation: dict, run_id: str, data_name: str) -> dict[str, Any]:
    """What the registered version carries from evaluate: its gate verdict and the test split it was
    measured on (promote and the next evaluate's gate compare only on the same split)."""
    test, gate = evaluation["test"], evaluation["gate"]
    return {
        "gate": "passed" if gate["passed"] else "failed",
        "gate.reason": gate["reason"],
        "test.accuracy": test["accuracy"],
        "test.macro_f1": test["macro_f1"],
        "data.name": data_name,
        "data.test_sha256": evaluation.get("data", {}).get("test_sha256", ""),
        "mlflow.run_id": run_id,
    }


def read_evaluation(path: Path) -> dict:
    evaluation = read_output(path, "evaluate", "test.accuracy and gate.passed")
    try:
        passed, reason = bool(evaluation["gate"]["passed"]), evaluation["gate"]["reason"]
        float(evaluation["test"]["accuracy"])
    except (KeyError, TypeError, ValueError):
        raise PipelineError(f"{path}: not an evaluate metrics file (needs test.accuracy and gate.passed)") from None
    if not passed:
        raise PipelineError(f"{path}: the quality gate failed ({reason}); nothing to export")
    return evaluation


def export(inputs: dict[str, Path], params, outputs: dict[str, Path], run) -> StageResult:
    """Every exported form into `outputs["out"]`, and the SavedModel's outputs on the test split
    (loaded back as TensorFlow Serving loads it) for verify to judge."""
    from pipeline.parity import record_saved_model_outputs
    from pipeline.prepared import PreparedData
    from pipeline.registry import registered_model_name

    evaluation = read_evaluation(inputs["metrics"])
    data = PreparedData.open(inputs["prepared"])
    model = load_for_export(inputs["model"], data.meta)
    metadata = export_metadata(data.meta, model, run.run_id, params.export.opset)
    name = registered_model_name(params.mlflow.registered_model_name, data.meta)
    built = build_exports(model, data, params.export, metadata, outputs["out"], name)
    record_saved_model_outputs(outputs["out"] / "saved_model", data, outputs["saved_model_outputs"])
    sizes = ", ".join(f"{file} {facts['bytes'] / 1024:,.0f} KiB" for file, facts in built["files"].items())
    return StageResult(
        sizes,
        artifacts={"out": "export"},
        facts={
            "metadata": metadata,
            "files": built["files"],
            "evaluation": evaluation,
            "data": data.meta,
            "name": registered_model_name(params.mlflow.registered_model_name, data.meta),
        },  # fmt: skip
    )


def register(result: StageResult, run, outputs: dict[str, Path]) -> dict[str, Any]:
    """The exported files logged into the run, the ONNX model registered as a new version and made
    the `challenger`; the registration report records it."""
    from pipeline.registry import CHALLENGER
    from pipeline.tracking import portable_uri

    log_into_run(result, run, outputs)
    facts, out = result.facts, outputs["out"]
    meta, name = facts["data"], facts["name"]
    registry = run.registry
    extra = tuple(out / file for file in ("model.int8.onnx", "model.tflite", "model.int8.tflite"))
    from pipeline.mlflow_model import save_mlflow_model

    # The version's logged model carries the test metrics evaluate measured (verify proves every form
    # gives the Keras model's outputs), linked to the test split as evaluate's dataset names it.
    evaluation = facts["evaluation"]
    test = {f"test.{k}": v for k, v in evaluation["test"].items() if isinstance(v, (int, float)) and k != "examples"}
    digest = evaluation.get("data", {}).get("test_sha256", meta.split_sha256["test"])[:32]
    version = registry.register(
        run, lambda local: save_mlflow_model(out / "model.onnx", local, facts["metadata"]), name, extra,
        metrics=test, datasets=dict.fromkeys(test, (f"{meta.name}/test", digest)),
        params={"opset": facts["metadata"]["opset"], "input": facts["metadata"]["input"]["name"]},
    )  # fmt: skip
    registry.tag_version(name, version, version_tags(facts["evaluation"], run.run_id, meta.name))
    registry.set_alias(name, CHALLENGER, version)
    result.summary += f"; registered {name} v{version} as {CHALLENGER}"
    return {"registration": {"name": name, "version": version, "run_id": run.run_id,
                             "tracking_uri": portable_uri(run.tracking_uri), "files": facts["files"]}}  # fmt: skip


STAGE = Stage(
    "export",
    __doc__,
    params=("export", "mlflow.registered_model_name"),
    inputs=("prepared", "model", "metrics", "run_file"),
    outputs=("out", "saved_model_outputs", "registration"),
    core=export,
    tracking=resume_training_run,
    publish=register,
)


def main(argv: list[str] | None = None) -> None:
    STAGE.run(argv)


if __name__ == "__main__":
    main()
    end_process()
