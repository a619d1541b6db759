"""LiteRT (TensorFlow Lite) files: made at export by TensorFlow's converter, read back by the runtime.

    exported/model.tflite       float32, the SavedModel's serving signature converted as it is
    exported/model.int8.tflite  full-integer post-training quantization (int8 weights and activations),
                                calibrated on the same raw train sample as model.int8.onnx; an op with
                                no int8 kernel, and a table's input normalisation (its columns' scales
                                differ too much for one int8 scale), stay float32, named in metadata.json

Both keep the raw-input contract of every exported form: signature `serving_default`, input named as
the model's (uint8 pixels or float32 features, batch dimension resizable), output `probabilities`.
The metadata the ONNX file carries (class names, input shape and layout, what the input means) is
inside each file too, as one JSON entry of the flatbuffer's `metadata` list; `read_metadata` reads it
with the flatbuffer schema that ships with `ai-edge-litert`, so a deployer needs nothing beside the
file. Recurrent layers are converted unrolled (their time steps are fixed by the input shape): the
same arithmetic as straight-line builtin ops, where the loop form needs TensorFlow's own kernels,
which the LiteRT runtime lacks.

Conversion imports TensorFlow; reading (`read_metadata`, `float_ops`) needs only ai-edge-litert.
"""

from __future__ import annotations

import contextlib
import json
import re
import struct
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

METADATA_NAME = "keras_classifier_pipeline"  # the flatbuffer metadata entry holding the JSON
SIGNATURE = "serving_default"
FILE_IDENTIFIER = b"TFL3"
# Ops that move values between float32 and the integer domain, or only reshape them: not "float
# computation" when counting what int8 quantization left in float32.
BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE", "CAST", "RESHAPE", "SHAPE", "STRIDED_SLICE", "PACK", "CONCATENATION"}


def litert_ready(model):
    """The model as LiteRT converts it: recurrent layers unrolled (the same weights and arithmetic)."""
    from pipeline.rebuild import layer_configs, rebuilt

    def unrolled(config) -> None:
        for layer in layer_configs(config):  # Bidirectional's RNNs too
            if "unroll" in layer["config"] and not layer["config"]["unroll"]:
                layer["config"]["unroll"] = True

    return rebuilt(model, unrolled)


def convert(saved_model: Path, batches: list[np.ndarray] | None, input_name: str, model,
            keep_float: list[str] = ()) -> tuple[bytes, list[str]]:  # fmt: skip
    """The SavedModel's serving signature as a .tflite flatbuffer: float32, or full-integer int8
    calibrated on `batches`, but for the ops producing the tensors `keep_float` names; returns it
    with the ops left in float32 (int8 only). A converter failure becomes one line naming the layer
    it came from."""
    import tensorflow as tf

    def converter(ops):
        c = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[SIGNATURE])
        if batches is not None:
            c.optimizations = [tf.lite.Optimize.DEFAULT]
            c.representative_dataset = calibration
            c.target_spec.supported_ops = ops
        return c

    def calibration():
        return ({input_name: batch} for batch in batches)

    with warnings.catch_warnings():  # the calibrator runs TensorFlow's own, deprecated interpreter
        warnings.simplefilter("ignore")
        if batches is None:
            return guarded(converter(None).convert, model), []
        if keep_float:  # selective quantization: TensorFlow's documented route is its debugger
            options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(keep_float))
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter([tf.lite.OpsSet.TFLITE_BUILTINS_INT8]), debug_dataset=calibration,
                debug_options=options,
            )  # fmt: skip
            flat = guarded(debugger.get_nondebug_quantized_model, model)
            return flat, float_ops(flat)
        try:
            return converter([tf.lite.OpsSet.TFLITE_BUILTINS_INT8]).convert(), []
        except Exception:  # an op without an int8 kernel: keep it float32, quantize the rest
            flat = guarded(converter([tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]).convert,
                           model)  # fmt: skip
            return flat, float_ops(flat)


def guarded(convert_fn, model) -> bytes:
    try:
        return convert_fn()
    except Exception as exc:
        raise PipelineError(conversion_problem(str(exc), model)) from None


def conversion_problem(message: str, model) -> str:
    """The converter's error as one line: the layer whose op failed (the converter's locations are
    the traced op paths, `<model>/<layer>/.../<op>`), and the op or the first error."""
    names = {layer.name: layer for layer in model.layers}
    located = re.findall(r'fused\["(\w+):", "([^"@]+)@', message)
    # Tracing uniquifies name scopes (`resizing` becomes `resizing_1`): try the part as it is, then without.
    parts = [candidate for _, path in located for part in path.split("/")[1:]
             for candidate in (part, re.sub(r"_\d+$", "", part))]  # fmt: skip
    layer = next((names[part] for part in parts if part in names), None)
    select = re.search(r"TF Select ops: (.+)", message)
    if select:
        reason = f"it needs TensorFlow's {select.group(1).strip()}, which LiteRT's built-in ops lack"
    else:
        errors = [line for line in message.splitlines() if "error:" in line] or message.strip().splitlines()[:1]
        reason = re.sub(r"\s+", " ", re.sub(r"^.*?error: ", "", errors[0] if errors else "")).strip()[:300]
    what = f"layer {layer.name} ({type(layer).__name__})" if layer is not None else "the model"
    return f"train.model: {what} cannot be converted to LiteRT: {reason}"


def with_metadata(flatbuffer: bytes, properties: dict[str, str]) -> bytes:
    """The flatbuffer with `properties` as JSON in its metadata list (replacing an earlier entry)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(properties, sort_keys=True).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != METADATA_NAME.encode()] + [entry]
    builder = flatbuffers.Builder(len(flatbuffer) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _model(data: bytes, path: Path):
    from ai_edge_litert import schema_py_generated as schema

    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise PipelineError(f"{path}: not a LiteRT (.tflite) flatbuffer")
    return schema.Model.GetRootAsModel(data, 0)


def read_metadata(path: Path) -> dict[str, str]:
    """The properties `with_metadata` put in the file at `path` ({} when it has none)."""
    data = Path(path).read_bytes()
    model = _model(data, Path(path))
    try:  # offsets past the end: a truncated or damaged file
        entries = [model.Metadata(i) for i in range(model.MetadataLength())]
        blob = next((model.Buffers(e.Buffer()).DataAsNumpy() for e in entries if e.Name() == METADATA_NAME.encode()),
                    None)  # fmt: skip
    except (struct.error, IndexError, AttributeError):
        raise PipelineError(f"{path}: damaged or truncated LiteRT file") from None
    if blob is None:
        return {}
    try:
        return json.loads(np.asarray(blob).tobytes())
    except (ValueError, AttributeError):
        raise PipelineError(f"{path}: its {METADATA_NAME} metadata is malformed") from None


def operator_names(flatbuffer: bytes) -> list[tuple[str, list[int]]]:
    """Each operator of the main subgraph: its builtin name and its input tensors' types."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = _model(flatbuffer, Path("<flatbuffer>"))
    graph = model.Subgraphs(0)
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        types = [graph.Tensors(t).Type() for t in op.InputsAsNumpy() if t >= 0]
        ops.append((names.get(builtin, str(builtin)), types))
    return ops


def float_ops(flatbuffer: bytes) -> list[str]:
    """The ops that still compute in float32 in a quantized file (none after full-integer quantization)."""
    from ai_edge_litert import schema_py_generated as schema

    return sorted({name for name, types in operator_names(flatbuffer)
                   if name not in BOUNDARY_OPS and schema.TensorType.FLOAT32 in types})  # fmt: skip


@contextlib.contextmanager
def saved_model_of(model, saved_model: Path | None, write_saved_model) -> Iterator[Path]:
    """The SavedModel to convert: the exported one when it serves the raw numeric input and needs no
    change, else one `write_saved_model` makes of the LiteRT-ready model (recurrent layers unrolled;
    a text model's raw bytes, where the exported SavedModel takes strings)."""
    ready = litert_ready(model)
    if ready is model and saved_model is not None:
        yield saved_model
        return
    with tempfile.TemporaryDirectory(prefix="litert-") as tmp:
        write_saved_model(ready, Path(tmp) / "saved_model")
        yield Path(tmp) / "saved_model"


def normalization_outputs(flatbuffer: bytes, model) -> list[str]:
    """The tensors the model's input normalisation produces, fused or not with the first layer.

    Raw float features (a table's) differ in scale by orders of magnitude from one column to the
    next, and int8 quantizes a tensor with one scale: quantized before normalisation, the small
    columns become 0 (measured: breast-cancer test accuracy 0.965 -> 0.632). Those ops stay float32.
    Raw uint8 pixels are exact in int8's range, so an image model keeps none."""
    first = next((layer for layer in model.layers if type(layer).__name__ == "Rescaling"), None)
    if first is None or str(model.inputs[0].dtype) == "uint8":
        return []
    pattern = re.compile(rf"(^|/){re.escape(first.name)}(_\d+)?/")
    return sorted({name for name in tensor_names(flatbuffer) if pattern.search(name)})


def tensor_names(flatbuffer: bytes) -> list[str]:
    """The names of the tensors the main subgraph's operators produce."""
    model = _model(flatbuffer, Path("<flatbuffer>"))
    graph = model.Subgraphs(0)
    return [graph.Tensors(int(t)).Name().decode() for i in range(graph.OperatorsLength())
            for t in graph.Operators(i).OutputsAsNumpy()]  # fmt: skip


def export_litert(model, saved_model: Path | None, write_saved_model, batches: list[np.ndarray], input_name: str,
                  properties: dict[str, str], out: Path) -> list[str]:  # fmt: skip
    """model.tflite and model.int8.tflite into `out`, converted from `saved_model` (None: one
    `write_saved_model` writes); returns the ops int8 left in float32."""
    with saved_model_of(model, saved_model, write_saved_model) as source:
        flat, _ = convert(source, None, input_name, model)
        (out / "model.tflite").write_bytes(with_metadata(flat, properties))
        keep = normalization_outputs(flat, model)
        quantized, left = convert(source, batches, input_name, model, keep_float=keep)
    quantization = "full-integer int8 (TensorFlow Lite converter)" + (
        f"; in float32: {', '.join(left)}" if left else ""
    )
    (out / "model.int8.tflite").write_bytes(with_metadata(quantized, {**properties, "quantization": quantization}))
    return left
