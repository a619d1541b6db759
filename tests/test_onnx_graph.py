"""The export's graph rewrites (pipeline/onnx_graph.py) on small hand-built ONNX graphs: each one
folds what it matches with the same outputs in onnxruntime, and leaves what it does not match alone."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline import onnx_graph
from pipeline.onnx_export import SIMPLIFY_TOLERANCE, simplified

RNG = np.random.default_rng(0)


def const(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def image_graph(conv_attrs, channel_shape=(1, 4, 1, 1), offset=-0.8):
    """uint8 NHWC image -> Cast -> x*a+b -> Reshape to NCHW -> Conv -> per-channel Mul/Add -> Relu ->
    NCHW->NHWC Transpose -> Reshape to [batch, n] computed from Shape (Flatten as tf2onnx writes it)
    -> MatMul -> Softmax."""
    conv = helper.make_node("Conv", ["nchw", "w", "b"], ["conv"], kernel_shape=[3, 3], **conv_attrs)
    nodes = [
        helper.make_node("Cast", ["image"], ["float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["float", "a"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offset"], ["normalised"]),
        helper.make_node("Reshape", ["normalised", "to_nchw"], ["nchw"]),
        conv,
        helper.make_node("Mul", ["conv", "bn_scale"], ["bn_mul"]),
        helper.make_node("Add", ["bn_mul", "bn_shift"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["relu"]),
        helper.make_node("Transpose", ["relu"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Shape", ["nhwc"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "zero_axis"], ["batch_1d"]),
        helper.make_node("Concat", ["batch_1d", "features"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["nhwc", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "dense"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    side = 6 if conv_attrs.get("pads") == [0, 0, 0, 0] else 8
    initializers = [
        const("a", 1 / 255),
        const("offset", offset),
        numpy_helper.from_array(np.array([-1, 1, 8, 8], np.int64), "to_nchw"),
        const("w", RNG.normal(size=(4, 1, 3, 3))),
        const("b", RNG.normal(size=4)),
        const("bn_scale", RNG.uniform(0.5, 2, size=channel_shape)),
        const("bn_shift", RNG.normal(size=channel_shape)),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([0], np.int64), "zero_axis"),
        numpy_helper.from_array(np.array([side * side * 4], np.int64), "features"),
        const("dense", RNG.normal(size=(side * side * 4, 3))),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 8, 8, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def table_graph():
    """float features -> (x - mean) * (1/std) written as Mul then Sub -> MatMul + bias -> Softmax."""
    nodes = [
        helper.make_node("Mul", ["features", "inv_std"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "mean_over_std"], ["normalised"]),
        helper.make_node("MatMul", ["normalised", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    initializers = [
        const("inv_std", RNG.uniform(0.01, 2, size=5)),
        const("mean_over_std", RNG.normal(size=5) * 10),
        const("w", RNG.normal(size=(5, 2))),
        const("b", RNG.normal(size=2)),
    ]
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 5])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def simplified_copy(model):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    applied = onnx_graph.simplify(copy)
    onnx.checker.check_model(copy, full_check=True)
    return copy, applied


def ops(model):
    return [node.op_type for node in model.graph.node]


PIXELS = RNG.integers(0, 256, size=(32, 8, 8, 1), dtype=np.uint8)


@pytest.mark.parametrize("pads", [[1, 1, 1, 1], [0, 0, 0, 0]], ids=["same-padding", "valid"])
def test_an_image_graph_folds_to_cast_reshape_conv_with_the_same_outputs(pads):
    model = image_graph({"pads": pads})
    folded, applied = simplified_copy(model)
    assert applied == ["static_reshapes", "fold_layout_into_matmul", "fold_affine_into_layers", "fold_input_affine"]
    expected = ["Cast", "Reshape", *(["Pad"] if any(pads) else []), "Conv", "Relu", "Reshape", "MatMul", "Softmax"]
    assert ops(folded) == expected
    np.testing.assert_allclose(run(folded, PIXELS), run(model, PIXELS), atol=SIMPLIFY_TOLERANCE)
    if any(pads):  # the border: zero after normalising is the raw value -b/a
        (pad_value,) = [t for t in folded.graph.initializer if t.name.endswith("/raw_pad_value")]
        assert numpy_helper.to_array(pad_value) == pytest.approx(0.8 * 255)


def test_a_conv_padded_by_auto_pad_keeps_its_normalisation():
    model = image_graph({"auto_pad": "SAME_UPPER"})
    folded, applied = simplified_copy(model)
    assert "fold_input_affine" not in applied and ops(folded)[:3] == ["Cast", "Mul", "Add"]
    np.testing.assert_allclose(run(folded, PIXELS), run(model, PIXELS), atol=SIMPLIFY_TOLERANCE)


def test_a_constant_that_broadcasts_along_width_is_not_taken_for_a_channel_scale():
    # [4] against an NCHW output scales the last axis (width), not the channels.
    model = image_graph({"pads": [1, 1, 1, 1]}, channel_shape=(8,))
    folded, applied = simplified_copy(model)
    assert "fold_affine_into_layers" not in applied
    np.testing.assert_allclose(run(folded, PIXELS), run(model, PIXELS), atol=SIMPLIFY_TOLERANCE)


def test_a_table_models_per_feature_normalisation_stays_in_front_of_its_first_matmul():
    # Folded, the int8 file would quantize raw features of unlike ranges with one scale.
    model = table_graph()
    folded, applied = simplified_copy(model)
    assert applied == [] and ops(folded) == ["Mul", "Sub", "MatMul", "Add", "Softmax"]


def test_one_scale_for_every_input_folds_into_the_first_matmul():
    model = table_graph()
    for name, value in (("inv_std", 1 / 255), ("mean_over_std", 0.4)):  # as pixels have them
        (tensor,) = [t for t in model.graph.initializer if t.name == name]
        tensor.CopyFrom(const(name, value))
    folded, applied = simplified_copy(model)
    assert applied == ["fold_input_affine"] and ops(folded) == ["MatMul", "Add", "Softmax"]
    features = RNG.uniform(0, 255, size=(64, 5)).astype(np.float32)
    np.testing.assert_allclose(run(folded, features), run(model, features), atol=SIMPLIFY_TOLERANCE)


def test_a_graph_nothing_matches_is_left_as_it_was():
    model = table_graph()
    del model.graph.node[:2]  # no normalisation in front of the MatMul
    model.graph.node[0].input[0] = "features"
    before = model.SerializeToString()
    after, applied = simplified_copy(model)  # simplify works on the copy: the copy is what must be unchanged
    assert applied == [] and after.SerializeToString() == before


def test_export_keeps_tf2onnx_graph_when_a_rewrite_would_change_the_outputs(monkeypatch, caplog):
    def wrong(g):  # a rewrite with a bug: it flips the weights' sign
        g.set_constant("w", -g.constant("w"))
        return 1

    monkeypatch.setattr(onnx_graph, "REWRITES", (wrong,))
    model = table_graph()
    kept, applied = simplified(model, RNG.normal(size=(16, 5)).astype(np.float32))
    assert applied == [] and kept is model
    assert "departs from tf2onnx's" in caplog.text
