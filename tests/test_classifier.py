"""The exported classifier with its runtime alone (pipeline/classifier.py): its contract read from the
file's metadata, raw inputs in batches, top-k; a file this pipeline did not export refused with one
line. On tiny ONNX graphs built here with onnx.helper, and on the files exported from an untrained
hand-set model (tests/helpers/exports.py): no TensorFlow, no training."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.classifier import LiteRTClassifier, OnnxClassifier, open_classifier, raw_input
from pipeline.errors import PipelineError
from pipeline.kinds import IMAGE, TABLE

PROPERTIES = {
    "class_names": json.dumps(["cat", "dog", "eel"]),
    "input_shape": json.dumps(["batch", 4]),
    "input_layout": "NC",
    "feature_names": json.dumps(["a", "b", "c", "d"]),
}


def table_model(path, properties=PROPERTIES, input_type=TensorProto.FLOAT):
    """features (float32 [batch, 4]) -> MatMul -> Softmax: a three-class table classifier."""
    weights = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, -1]], np.float32)
    nodes = [helper.make_node("MatMul", ["features", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)]  # fmt: skip
    if input_type != TensorProto.FLOAT:
        nodes.insert(0, helper.make_node("Cast", ["raw"], ["features"], to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes,
        "table",
        [
            helper.make_tensor_value_info(
                "features" if input_type == TensorProto.FLOAT else "raw", input_type, ["batch", 4]
            )
        ],  # fmt: skip
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in properties.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def softmax(logits):
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_a_table_classifier_reads_its_contract_from_the_file(tmp_path):
    classifier = OnnxClassifier(table_model(tmp_path / "table.onnx"))
    assert classifier.class_names == ["cat", "dog", "eel"] and classifier.kind is TABLE
    assert classifier.input_shape == (4,) and classifier.feature_names == ["a", "b", "c", "d"]
    assert classifier.input_name == "features" and classifier.input_dtype == np.float32
    x = np.random.default_rng(0).normal(size=(10, 4))  # float64: taken as the model's float32
    weights = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, -1]])
    np.testing.assert_allclose(classifier.probabilities(x, batch_size=3), softmax(x @ weights), atol=1e-6)
    assert classifier.probabilities(np.zeros((0, 4))).shape == (0, 3)


def test_top_k_names_the_classes_most_probable_first_ties_in_class_order(tmp_path):
    classifier = OnnxClassifier(table_model(tmp_path / "table.onnx"))
    probs = np.array([[0.2, 0.5, 0.3], [0.4, 0.2, 0.4]])
    assert classifier.top_k(probs, 2) == [[("dog", 0.5), ("eel", 0.3)], [("cat", 0.4), ("eel", 0.4)]]


@pytest.mark.parametrize(
    "properties, message",
    [
        ({}, "metadata lacks class_names, input_shape, input_layout (not exported by this pipeline?)"),
        ({**PROPERTIES, "class_names": "[cat"}, "metadata is malformed"),
        (
            {**PROPERTIES, "input_layout": "NCHW"},
            "input layout NCHW (4,) is none of NHWC images, NC feature vectors, NB text bytes",
        ),  # fmt: skip
        ({**PROPERTIES, "input_layout": "NHWC"}, "input layout NHWC (4,) is none of"),
    ],
    ids=["no-metadata", "malformed", "unknown-layout", "layout-of-another-rank"],
)
def test_a_file_this_pipeline_did_not_export_is_one_line(properties, message, tmp_path):
    path = table_model(tmp_path / "foreign.onnx", properties)
    with pytest.raises(PipelineError) as error:
        OnnxClassifier(path)
    assert str(error.value).startswith(f"{path}: {message}")


def test_an_input_that_is_not_raw_pixels_or_features_is_refused(tmp_path):
    path = table_model(tmp_path / "float64.onnx", input_type=TensorProto.DOUBLE)
    with pytest.raises(PipelineError, match=r"float64\.onnx: input raw is tensor\(double\), not raw uint8 pixels"):
        OnnxClassifier(path)


def test_the_runtime_follows_the_file_suffix_and_a_missing_file_is_one_line(tmp_path, tiny_exports):
    assert isinstance(open_classifier(tiny_exports.onnx), OnnxClassifier)
    assert isinstance(open_classifier(tiny_exports.directory / "model.tflite", threads=1), LiteRTClassifier)
    with pytest.raises(PipelineError, match=r"model\.pt: not an exported model \(\.onnx or \.tflite\)$"):
        open_classifier(tmp_path / "model.pt")
    with pytest.raises(PipelineError, match=r"gone\.onnx: model file not found \(run `dvc repro export`\)$"):
        open_classifier(tmp_path / "gone.onnx")
    (tmp_path / "text.onnx").write_text("not a model")
    with pytest.raises(PipelineError, match=r"text\.onnx: onnxruntime cannot load it \("):
        open_classifier(tmp_path / "text.onnx")


def test_every_runtime_of_an_image_model_gives_the_same_answers(tiny_exports):
    """The ONNX and LiteRT files of one model read the same contract and agree on the raw pixels."""
    x, labels = tiny_exports.test_split()
    expected = tiny_exports.model.predict(x, verbose=0)
    for file in ("model.onnx", "model.tflite"):
        classifier = open_classifier(tiny_exports.directory / file, threads=1)
        assert classifier.kind is IMAGE and classifier.input_shape == (28, 28, 1)
        assert classifier.class_names == tiny_exports.data.meta.class_names and classifier.input_dtype == np.uint8
        np.testing.assert_allclose(classifier.probabilities(x, batch_size=7), expected, atol=1e-5)
        assert (classifier.probabilities(x).argmax(1) == labels).all()


def test_pixels_given_as_other_numbers_are_rounded_and_clipped_to_uint8():
    values = np.array([[-3.0, 0.4, 0.6, 254.5, 300.0]])
    assert raw_input(values, np.uint8).tolist() == [[0, 0, 1, 254, 255]]  # rint: half to even
    pixels = np.array([[1, 2]], np.uint8)
    assert raw_input(pixels, np.uint8) is pixels
    assert raw_input(np.array([[1, 2]]), np.float32).dtype == np.float32
