"""Stage `export`: the trained Keras model as a TensorFlow SavedModel, ONNX and LiteRT (float32 and
int8), with the metadata a deployer needs, then registered in MLflow as the `challenger`.

Every form takes the model's raw input (its normalisation is inside the graph) and returns
`probabilities` (float32 [batch, classes]):

    exported/saved_model/    serving signature: image (uint8 [batch, h, w, c]) or features (float32 [batch, n])
    exported/model.onnx      tf2onnx, the same input name and dtype with symbolic dim `batch`
    exported/model.int8.onnx onnxruntime static QDQ quantization, calibrated on a seeded raw train sample
    exported/model.tflite    LiteRT float32, and model.int8.tflite full-integer int8 on the same sample
                             (pipeline/litert.py); the metadata inside each file
    exported/metadata.json   input spec, class names, opset, provenance, sizes and sha256 of files

exported/ is this stage's alone and is replaced as a whole (the old set or the new one). The MLflow
version is registered only once it is in place, and recorded in the registration report, with the
SavedModel's parity on the test split against the Keras model's outputs (evaluate's record,
pipeline/parity.py): measured here, where TensorFlow is loaded already, and judged by verify.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cli import end_process, environment_kept
from pipeline.errors import PipelineError
from pipeline.hashing import file_sha256, tree_sha256
from pipeline.litert import export_litert
from pipeline.records import OUTPUT_NAME
from pipeline.stage import Stage, StageResult, read_output, run_stage

FILES = ("model.onnx", "model.int8.onnx", "model.tflite", "model.int8.tflite", "saved_model")
BATCH_DIM = "batch"
# Largest |Δ| of a probability the graph rewrites may cause on the calibration sample (measured on the
# default model: 1.9e-6 over the 10,000 test images); verify then holds every form to Keras.
SIMPLIFY_TOLERANCE = 1e-5
LAYOUT = "NHWC"


def model_input(model) -> tuple[str, str, tuple[int, ...]]:
    """The model's raw input: name, dtype and shape without the batch dimension."""
    (tensor,) = model.inputs
    return tensor.name, str(tensor.dtype), tuple(int(d) for d in tensor.shape[1:])


def serving_function(model):
    """A tf.function over the model's raw input, named as the model names it, any batch size."""
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


def input_layout(meta) -> str:
    return LAYOUT if meta.is_image else "NC"


def input_description(meta) -> str:
    if meta.is_image:
        return "decoded pixels 0..255 as Pillow, OpenCV or an IDX/CIFAR file give them; normalised inside the model"
    return "raw feature values in feature_names order; normalised inside the model"


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
    return {
        "input": {
            "name": input_name,
            "dtype": input_dtype,
            "shape": [BATCH_DIM, *meta.input_shape],
            "layout": input_layout(meta),
            "feature_names": meta.feature_names,
            "range": [0, 255] if meta.is_image else None,
            "meaning": input_description(meta),
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


def export_onnx(serve, opset: int, metadata: dict[str, str], sample: np.ndarray, out: Path) -> list[str]:
    """tf2onnx's graph, simplified (pipeline/onnx_graph.py) where that keeps its outputs on `sample`;
    returns the rewrites applied."""
    import onnx

    model_proto = tf2onnx_graph(serve, opset, out)
    del model_proto.metadata_props[:]
    for key, value in metadata.items():
        model_proto.metadata_props.add(key=key, value=value)
    keep_used_domains(model_proto)
    onnx.checker.check_model(model_proto, full_check=True)
    model_proto, applied = simplified(model_proto, sample)
    onnx.save_model(model_proto, str(out), save_as_external_data=False)
    return applied


def tf2onnx_graph(serve, opset: int, out: Path):
    """The serving function as tf2onnx converts it, named as the contract says (benchmarks/inference.py
    times it beside the simplified file)."""
    import tf2onnx

    with environment_kept("TF_CPP_MIN_LOG_LEVEL"):  # tf2onnx sets it process-wide (to "3")
        model_proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=opset)
    (graph_input,) = model_proto.graph.input
    (graph_output,) = model_proto.graph.output
    if graph_input.name != serve.input_signature[0].name or graph_output.name != OUTPUT_NAME:
        raise PipelineError(f"{out}: tf2onnx named the graph {graph_input.name} -> {graph_output.name}")
    for value in (graph_input, graph_output):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    model_proto.doc_string = "Classifier exported by the Keras → ONNX pipeline"
    model_proto.producer_name = "tf2onnx"
    return model_proto


def simplified(model_proto, sample: np.ndarray):
    """The model after onnx_graph's rewrites, if its probabilities stay within SIMPLIFY_TOLERANCE of
    the original's on `sample` (else the original, with a warning: a pattern matched wrongly)."""
    import logging

    import onnx

    from pipeline.onnx_graph import simplify

    candidate = onnx.ModelProto()
    candidate.CopyFrom(model_proto)
    applied = simplify(candidate)
    if not applied:
        return model_proto, []
    onnx.checker.check_model(candidate, full_check=True)
    departure = float(np.max(np.abs(onnx_outputs(candidate, sample) - onnx_outputs(model_proto, sample))))
    if departure > SIMPLIFY_TOLERANCE:
        logging.getLogger(__name__).warning(
            "export: the simplified ONNX graph (%s) departs from tf2onnx's by %.2g; keeping tf2onnx's",
            ", ".join(applied), departure,
        )  # fmt: skip
        return model_proto, []
    return candidate, applied


def onnx_outputs(model_proto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def keep_used_domains(model_proto) -> None:
    """Drop opset imports that no node uses (quant_pre_process leaves onnxruntime-internal ones),
    so another runtime is not asked for domains the file never needs. The default domain stays."""
    used = {node.domain or "" for node in model_proto.graph.node}
    for function in model_proto.functions:
        used |= {node.domain or "" for node in function.node}
    keep = [o for o in model_proto.opset_import if (o.domain or "") in used or (o.domain or "") == ""]
    del model_proto.opset_import[:]
    model_proto.opset_import.extend(keep)


def preprocessing_nodes(model_proto) -> list[str]:
    """The nodes before the first weighted layer: the input cast and normalisation. Quantizing their
    Mul/Add would add Quantize/Dequantize pairs around two cheap element-wise ops (measured: int8
    batch-1 latency +50 %); left in float32, the first quantization sits at the first layer's input."""
    names = []
    for node in model_proto.graph.node:  # topologically sorted (ONNX requires it)
        if node.op_type in ("Conv", "MatMul", "Gemm", "LSTM", "Transpose", "Reshape", "Flatten"):
            break
        names.append(node.name)
    return names


def calibration_sample(prepared_dir: str, meta, size: int, seed: int) -> np.ndarray:
    """A seeded sample of `size` raw train inputs, as the deployed model receives them: the positions
    are drawn first, then picked out as the train split streams by (only the sample is kept)."""
    from pipeline.records import iter_batches

    count = meta.counts["train"]
    wanted = np.sort(np.random.default_rng(seed).choice(count, size=min(size, count), replace=False))
    picked, position = [], 0
    for x, _ in iter_batches(prepared_dir, meta, "train", meta.examples_in(16 << 20)):
        here = wanted[(wanted >= position) & (wanted < position + len(x))] - position
        picked.append(x[here])
        position += len(x)
        if position > wanted[-1]:
            break
    return np.concatenate(picked)


def calibration_batches(sample: np.ndarray, batch: int = 50) -> list[np.ndarray]:
    return [sample[i : i + batch] for i in range(0, len(sample), batch)]


def quantize_int8(
    fp32_path: Path, input_name: str, batches: list[np.ndarray], out: Path, metadata: dict[str, str]
) -> None:
    """onnxruntime static quantization (QDQ, int8 weights in a 7-bit range, uint8 activations) after
    quant_pre_process."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    pre = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(fp32_path), str(pre))
    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        # Weights in 7 bits: x86 CPUs without VNNI (AVX2, AVX-512F) multiply uint8 × int8 pairs into a
        # saturating int16, which with full-range weights loses whole predictions (measured on an AVX2
        # EPYC: test accuracy 0.930 -> 0.900, the first conv's fault; with 7 bits 0.930). The file must
        # hold on any CPU it is deployed to.
        reduce_range=True,
        nodes_to_exclude=preprocessing_nodes(onnx.load(str(pre))),
    )
    pre.unlink()
    model = onnx.load(str(out))
    del model.metadata_props[:]
    for key, value in {**metadata, "quantization": "static QDQ int8 (onnxruntime), 7-bit weight range"}.items():
        model.metadata_props.add(key=key, value=value)
    keep_used_domains(model)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(out), save_as_external_data=False)


def file_facts(path: Path) -> dict[str, Any]:
    """Size and content hash of an exported file or directory."""
    if path.is_dir():
        return {"bytes": sum(p.stat().st_size for p in path.rglob("*") if p.is_file()), "sha256": tree_sha256(path)}
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def write_saved_model(model, out: Path) -> None:
    export_saved_model(model, serving_function(model), out)


def build_exports(model, meta, prepared_dir: str, params, metadata: dict[str, Any], out: Path) -> dict[str, Any]:
    """Every exported form into `out` (a fresh directory), and metadata.json; returns the metadata."""
    serve = serving_function(model)
    properties = onnx_properties(metadata)
    export_saved_model(model, serve, out / "saved_model")
    sample = calibration_sample(prepared_dir, meta, params.calibration_size, params.seed)
    batches = calibration_batches(sample)
    rewrites = export_onnx(serve, params.opset, properties, sample, out / "model.onnx")
    quantize_int8(out / "model.onnx", metadata["input"]["name"], batches, out / "model.int8.onnx", properties)
    in_float32 = export_litert(
        model, out / "saved_model", write_saved_model, batches, metadata["input"]["name"], properties, out
    )
    files = {name: file_facts(out / name) for name in FILES}
    full = {**metadata, "files": files, "onnx_rewrites": rewrites, "litert_int8_float_ops": in_float32}
    (out / "metadata.json").write_text(json.dumps(full, indent=2) + "\n")
    return full


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


def export_model(model_path: Path, prepared_dir: str, out_dir: Path, params, run_id: str | None = None) -> dict:
    """Every exported form of the model at `model_path` into `out_dir`, atomically; returns the
    metadata (the stage does the same, registering the result)."""
    from pipeline.atomic import atomic_dir
    from pipeline.records import read_meta

    meta = read_meta(prepared_dir)
    model = load_for_export(model_path, meta)
    with atomic_dir(out_dir) as tmp:
        return build_exports(model, meta, prepared_dir, params, export_metadata(meta, model, run_id, params.opset), tmp)


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


STAGE = Stage(
    "export",
    __doc__,
    # verify's batch settings: the SavedModel's parity is measured here as verify measures the rest
    params=(
        "export",
        "mlflow.registered_model_name",
        "verify.batch_size",
        "verify.batch_sizes",
        "verify.batch_check_examples",
    ),
    inputs=("prepared", "model", "metrics", "probabilities", "run_file"),
    outputs=("out", "registration"),
)


def export(paths: dict[str, Path], params, run) -> StageResult:
    """exported/ whole (written atomically by the edge), then, once it is in place, a new registry
    version of the ONNX model as `challenger`, recorded in the registration report."""
    from pipeline.records import read_meta
    from pipeline.registry import CHALLENGER, registered_model_name

    evaluation = read_evaluation(paths["metrics"])
    meta = read_meta(paths["prepared"])
    model = load_for_export(paths["model"], meta)
    metadata = export_metadata(meta, model, run.run_id, params.export.opset)
    built: dict[str, Any] = {}
    name = registered_model_name(params.mlflow.registered_model_name, meta)

    def build(directory: Path) -> None:
        built.update(build_exports(model, meta, str(paths["prepared"]), params.export, metadata, directory))
        built["saved_model_parity"] = saved_model_parity(directory / "saved_model", paths, meta, params.verify)

    def register(run) -> list[str]:
        from pipeline.stage import write_output

        sizes = ", ".join(f"{file} {facts['bytes'] / 1024:,.0f} KiB" for file, facts in built["files"].items())
        registry = run.registry
        extra = tuple(paths["out"] / file for file in ("model.int8.onnx", "model.tflite", "model.int8.tflite"))
        version = registry.register_onnx(run.run_id, paths["out"] / "model.onnx", name, metadata, extra)
        registry.tag_version(name, version, version_tags(evaluation, run.run_id, meta.name))
        registry.set_alias(name, CHALLENGER, version)
        from pipeline.tracking import portable_uri

        write_output(paths["registration"], {
            "name": name, "version": version, "run_id": run.run_id, "tracking_uri": portable_uri(run.tracking_uri),
            "files": built["files"], "saved_model_parity": built["saved_model_parity"],
        })  # fmt: skip
        return [f"{sizes}; registered {name} v{version} as {CHALLENGER}"]

    return StageResult(outputs={"out": build}, summary="", artifacts={"out": "export"}, publish=register)


def saved_model_parity(saved_model: Path, paths: dict[str, Path], meta, limits) -> dict[str, float]:
    """The written SavedModel, loaded back as TensorFlow Serving loads it, against the Keras model's
    outputs on the test split (verify's measurement of every other form, pipeline/parity.py)."""
    from pipeline.parity import keras_reference, measure, saved_model_predictor

    reference = keras_reference(paths["probabilities"], meta)
    predictor = saved_model_predictor(saved_model, meta.input_name)
    _, results = measure(reference, {"saved_model": predictor}, str(paths["prepared"]), meta, limits)
    return results["saved_model"]


def main(argv: list[str] | None = None) -> None:
    run_stage(STAGE, export, argv)


if __name__ == "__main__":
    main()
    end_process()
