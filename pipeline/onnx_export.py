"""The ONNX files export writes: tf2onnx's conversion of the model's serving function, simplified
where onnxruntime cannot simplify it itself (pipeline/onnx_graph.py), with the deployer's metadata in
`metadata_props`; and its int8 twin, onnxruntime's static QDQ quantization calibrated on a raw train
sample. Checked with onnx's own checker, and against tf2onnx's graph on the calibration sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.cli import environment_kept
from pipeline.errors import PipelineError
from pipeline.kinds import OUTPUT_NAME

BATCH_DIM = "batch"
# Largest |Δ| of a probability the graph rewrites may cause on the calibration sample (measured on the
# default model: 1.9e-6 over the 10,000 test images); verify then holds every form to Keras.
SIMPLIFY_TOLERANCE = 1e-5


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
    try:
        quant_pre_process(str(fp32_path), str(pre))
    except Exception:  # onnxruntime's symbolic shape inference gives up on a text model's top-k: ONNX's own suffices
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
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
