"""LiteRT files (pipeline/litert.py): the metadata inside the flatbuffer, written and read back with
ai-edge-litert's schema alone; what int8 quantization left in float32; recurrent layers unrolled
for the converter; a converter failure as one line naming the layer. On the files exported from an
untrained hand-set model (tests/helpers/exports.py): no training here."""

import json

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.litert import (
    METADATA_NAME,
    conversion_problem,
    float_ops,
    litert_ready,
    operator_names,
    read_metadata,
    with_metadata,
)


def onnx_properties(path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_each_file_carries_the_onnx_file_s_metadata(tiny_exports):
    onnx_props = onnx_properties(tiny_exports.onnx)
    assert read_metadata(tiny_exports.directory / "model.tflite") == onnx_props
    quantized = read_metadata(tiny_exports.directory / "model.int8.tflite")
    assert quantized.pop("quantization") == "full-integer int8 (TensorFlow Lite converter)"
    assert quantized == onnx_props
    assert json.loads(onnx_props["class_names"]) == tiny_exports.data.meta.class_names


def test_metadata_is_replaced_not_repeated_and_read_back_exactly(tiny_exports, tmp_path):
    flat = (tiny_exports.directory / "model.tflite").read_bytes()
    again = with_metadata(with_metadata(flat, {"a": "1"}), {"b": "2", "ü": "ß"})
    (tmp_path / "again.tflite").write_bytes(again)
    assert read_metadata(tmp_path / "again.tflite") == {"b": "2", "ü": "ß"}
    assert again[4:8] == b"TFL3"
    assert operator_names(again) == operator_names(flat)  # the graph untouched


def test_a_file_without_the_entry_has_no_metadata_and_a_damaged_one_is_one_line(tiny_exports, tmp_path):
    from ai_edge_litert import schema_py_generated as schema

    flat = (tiny_exports.directory / "model.tflite").read_bytes()
    model = schema.ModelT.InitFromPackedBuf(bytearray(flat), 0)
    model.metadata = [m for m in model.metadata or [] if m.name != METADATA_NAME.encode()]
    import flatbuffers

    builder = flatbuffers.Builder(len(flat))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    (tmp_path / "bare.tflite").write_bytes(bytes(builder.Output()))
    assert read_metadata(tmp_path / "bare.tflite") == {}

    (tmp_path / "cut.tflite").write_bytes(flat[:3000])
    with pytest.raises(PipelineError, match=r"cut\.tflite: damaged or truncated LiteRT file$"):
        read_metadata(tmp_path / "cut.tflite")
    (tmp_path / "onnx.tflite").write_bytes(tiny_exports.onnx.read_bytes())
    with pytest.raises(PipelineError, match=r"onnx\.tflite: not a LiteRT \(\.tflite\) flatbuffer$"):
        read_metadata(tmp_path / "onnx.tflite")


def test_full_integer_quantization_leaves_no_float_computation(tiny_exports):
    from ai_edge_litert import schema_py_generated as schema

    quantized = (tiny_exports.directory / "model.int8.tflite").read_bytes()
    assert float_ops(quantized) == [] and tiny_exports.metadata["litert_int8_float_ops"] == []
    fully_connected = [types for name, types in operator_names(quantized) if name == "FULLY_CONNECTED"]
    assert fully_connected and all(types[:2] == [schema.TensorType.INT8] * 2 for types in fully_connected)
    assert "FULLY_CONNECTED" in float_ops((tiny_exports.directory / "model.tflite").read_bytes())


def test_recurrent_layers_are_unrolled_for_the_converter_and_nothing_else_changes():
    import keras

    from pipeline.model import build_model
    from pipeline.normalization import Normalization, preprocessing_layers

    normalization = preprocessing_layers(Normalization(mean=0.3, std=0.35))
    spec = [{"Reshape": {"target_shape": [8, 8]}}, {"Bidirectional": {"layer": {"LSTM": {"units": 4}}}}]
    recurrent = build_model(spec, (8, 8, 1), 3, normalization)
    ready = litert_ready(recurrent)
    bidirectional = next(layer for layer in ready.layers if isinstance(layer, keras.layers.Bidirectional))
    assert bidirectional.forward_layer.unroll and bidirectional.backward_layer.unroll
    x = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 1), dtype=np.uint8)
    np.testing.assert_allclose(ready(x).numpy(), recurrent(x).numpy(), atol=1e-6)  # the same weights
    plain = build_model([{"Flatten": {}}], (8, 8, 1), 3, normalization)
    assert litert_ready(plain) is plain


def test_a_converter_error_is_one_line_naming_the_layer_it_came_from():
    from pipeline.model import build_model
    from pipeline.normalization import Normalization, preprocessing_layers

    spec = [{"Resizing": {"height": 4, "width": 4, "interpolation": "bicubic", "name": "shrink"}}, {"Flatten": {}}]
    model = build_model(spec, (8, 8, 1), 3, preprocessing_layers(Normalization(mean=0.3, std=0.35)))
    message = (
        'loc(fused["ResizeBicubic:", "custom/shrink_1/resize/ResizeBicubic@__inference_serve_12"]): error: '
        "'tf.ResizeBicubic' op is neither a custom op nor a flex op\nerror: failed while converting: 'main': \n"
        "Some ops are not supported by the native TFLite runtime, you can enable TF kernels fallback using "
        "TF Select. See instructions: https://www.tensorflow.org/lite/guide/ops_select \nTF Select ops: "
        "ResizeBicubic\nDetails:\n\ttf.ResizeBicubic(tensor<?x8x8x1xf32>) -> (tensor<?x4x4x1xf32>)"
    )
    assert conversion_problem(message, model) == (
        "train.model: layer shrink (Resizing) cannot be converted to LiteRT: it needs TensorFlow's "
        "ResizeBicubic, which LiteRT's built-in ops lack"
    )
    assert conversion_problem("error: something else went wrong\nmore", model) == (
        "train.model: the model cannot be converted to LiteRT: something else went wrong"
    )
