"""Export parity: for every preset and an explicit layer list, onnxruntime ≈ LiteRT ≈ Keras ≈ SavedModel."""

import json
import os
import re
from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf

from pipeline.errors import PipelineError
from pipeline.export import export_model
from pipeline.model import build_model, float32_model
from pipeline.normalization import Normalization
from pipeline.params import parse_params
from pipeline.records import read_meta, read_split_arrays
from pipeline.verify import check_exports

pytestmark = pytest.mark.slow
LOOSE_INT8 = parse_params({"verify": {"max_int8_drop": 0.5}}).verify

EXPLICIT = [
    {"Conv2D": {"filters": 6, "kernel_size": 3}},
    {"BatchNormalization": {}},
    {"Activation": {"activation": "relu"}},
    {"MaxPooling2D": {}},
    {"Dropout": {"rate": 0.3}},
    {"Flatten": {}},
    {"Dense": {"units": 16}},
    {"BatchNormalization": {}},
    {"Dropout": {"rate": 0.3}},
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from helpers.data import fetch_and_prepare, write_idx_dataset

    root = tmp_path_factory.mktemp("export")
    fetch_and_prepare(write_idx_dataset(root / "source"), root)
    return str(root / "prepared")


def trained_model(model_spec, prepared: str, path, test_time_flip: bool | None = False):
    """A model trained by the project's own training core for one epoch on the tiny data (so BatchNorm
    statistics are not the defaults); without the mirror pair unless asked (the preset's choice: None)."""
    from pipeline.train import train

    params = parse_params(
        {
            "train": {
                "model": model_spec,
                "epochs": 1,
                "batch_size": 16,
                "shuffle_buffer": 64,
                "learning_rate": 0.01,
                "early_stopping_patience": 0,
                "test_time_flip": test_time_flip,
            }
        }
    )
    model = train(params, Path(prepared), path.parent / "work", verbose=0).model
    model.save(path)
    return model


ALL_REWRITES = ["static_reshapes", "fold_layout_into_matmul", "fold_affine_into_layers", "fold_input_affine"]


@pytest.mark.parametrize(
    "model_spec, tolerance, rewrites",
    [
        ("mlp", 1e-5, ["fold_input_affine"]),
        ("cnn", 1e-5, ALL_REWRITES),
        # `cnn` as the preset trains it: averaging each image with its mirror (pipeline/mirror.py: a
        # Gather, a Concat, a Split); the normalisation stays in front of the mirror.
        (("cnn", None), 1e-5, ["static_reshapes", "fold_layout_into_matmul", "fold_affine_into_layers"]),
        # LSTM: ONNX's fused LSTM op and TF's unrolled kernel sum the gates in another order, and 28
        # recurrent steps compound float32 rounding; 1e-4 still catches any real difference.
        ("rnn", 1e-4, None),
        (EXPLICIT, 1e-5, ALL_REWRITES),
    ],
    ids=["mlp", "cnn", "cnn-mirrored", "rnn", "explicit-bn-dropout"],
)
def test_every_exported_form_matches_keras(model_spec, tolerance, rewrites, prepared, tmp_path):
    model_spec, test_time_flip = model_spec if isinstance(model_spec, tuple) else (model_spec, False)
    model = trained_model(model_spec, prepared, tmp_path / "model.keras", test_time_flip)
    params = parse_params({"export": {"calibration_size": 40}}).export
    info = export_model(tmp_path / "model.keras", prepared, tmp_path / "exported", params, run_id="run-123")

    meta = read_meta(prepared)
    x, labels = read_split_arrays(prepared, meta, "test")  # raw uint8 pixels: the model normalises
    expected = model(x, training=False).numpy()

    session = ort.InferenceSession(str(tmp_path / "exported/model.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape) == ("image", "tensor(uint8)", ["batch", 28, 28, 1])
    assert (out.name, out.type, out.shape) == ("probabilities", "tensor(float)", ["batch", 4])
    got_onnx = session.run(None, {"image": x})[0]
    np.testing.assert_allclose(got_onnx, expected, atol=tolerance, rtol=tolerance)

    signature = tf.saved_model.load(str(tmp_path / "exported/saved_model")).signatures["serving_default"]
    got_saved = signature(image=tf.constant(x))["probabilities"].numpy()
    np.testing.assert_allclose(got_saved, expected, atol=tolerance, rtol=tolerance)

    from pipeline.classifier import LiteRTClassifier

    litert = LiteRTClassifier(tmp_path / "exported/model.tflite")  # ai-edge-litert's interpreter
    assert (litert.input_name, litert.input_dtype, litert.output_name) == ("image", np.uint8, "probabilities")
    got_litert = litert.run(x)
    np.testing.assert_allclose(got_litert, expected, atol=tolerance, rtol=tolerance)
    for got in (got_onnx, got_saved, got_litert):
        assert (got.argmax(1) == expected.argmax(1)).all()
    int8 = LiteRTClassifier(tmp_path / "exported/model.int8.tflite").run(x)
    assert int8.shape == expected.shape and np.allclose(int8.sum(1), 1, atol=1e-2)
    assert info["litert_int8_float_ops"] == [], "full-integer quantization left float32 ops"
    assert info["files"]["model.onnx"]["bytes"] == (tmp_path / "exported/model.onnx").stat().st_size
    print(model_spec, info["onnx_rewrites"])
    if rewrites is not None:  # pipeline/onnx_graph.py: the normalisation and layout ops folded into weights
        assert info["onnx_rewrites"] == rewrites
        ops = [node.op_type for node in onnx.load(str(tmp_path / "exported/model.onnx")).graph.node]
        mirror = {"Gather", "Concat", "Mul"} if test_time_flip is None else set()
        assert not ({"Shape", "Gather", "Concat", "Transpose", "Mul"} - mirror) & set(ops), ops


def test_onnx_file_carries_what_a_deployer_needs(prepared, tmp_path, monkeypatch):
    trained_model("mlp", prepared, tmp_path / "model.keras")
    params = parse_params({"export": {"calibration_size": 60}}).export
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    info = export_model(tmp_path / "model.keras", prepared, tmp_path / "exported", params, run_id="run-123")
    # tf2onnx sets it process-wide; kept, the next stage started from this process would take it
    # for the user's choice and leave its console unfiltered.
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    model = onnx.load(str(tmp_path / "exported/model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["class_names"]) == [f"class_{i}" for i in range(4)]
    assert props["input_layout"] == "NHWC" and props["mlflow_run_id"] == "run-123"
    assert props["input_dtype"] == "uint8" and "normalised inside the model" in props["input"]
    assert set(json.loads(props["normalization_inside"])) == {"formula", "scale", "offset"}
    assert "tensorflow" in json.loads(props["producer_versions"])
    assert model.opset_import[0].version == 17
    assert not list((tmp_path / "exported").glob("*.data"))  # one file, no external data

    metadata = json.loads((tmp_path / "exported/metadata.json").read_text())
    assert set(metadata["files"]) == {"model.onnx", "model.int8.onnx", "model.tflite", "model.int8.tflite",
                                      "saved_model"}  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "exported").iterdir()) == [
        "metadata.json", "model.int8.onnx", "model.int8.tflite", "model.onnx", "model.tflite", "saved_model"
    ]  # fmt: skip
    assert metadata["input"]["shape"] == ["batch", 28, 28, 1] and metadata["opset"] == 17
    assert metadata == json.loads(json.dumps(info))
    assert metadata["input"]["dtype"] == "uint8" and metadata["input"]["name"] == "image"
    int8 = onnx.load(str(tmp_path / "exported/model.int8.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    # Each file declares only the opset domains its nodes use (no onnxruntime-internal leftovers).
    for proto in (model, int8):
        used = {n.domain for n in proto.graph.node} | {""}
        assert {o.domain for o in proto.opset_import} == used


def test_litert_files_carry_the_onnx_metadata_and_take_any_batch(prepared, tmp_path):
    """Inside each .tflite file, read back with ai-edge-litert's schema alone: what the ONNX file
    says; the batch dimension follows the input; int8 is full-integer (int8 weights and activations)."""
    from ai_edge_litert import schema_py_generated as schema

    from pipeline.classifier import LiteRTClassifier
    from pipeline.litert import operator_names, read_metadata

    trained_model("cnn2", prepared, tmp_path / "model.keras")
    export_model(tmp_path / "model.keras", prepared, tmp_path / "exported",
                 parse_params({"export": {"calibration_size": 60}}).export, run_id="run-123")  # fmt: skip
    onnx_props = {p.key: p.value for p in onnx.load(str(tmp_path / "exported/model.onnx")).metadata_props}
    assert read_metadata(tmp_path / "exported/model.tflite") == onnx_props
    quantized = read_metadata(tmp_path / "exported/model.int8.tflite")
    assert quantized.pop("quantization").startswith("full-integer int8") and quantized == onnx_props

    x, _ = read_split_arrays(prepared, read_meta(prepared), "test")
    for file in ("model.tflite", "model.int8.tflite"):
        classifier = LiteRTClassifier(tmp_path / "exported" / file, threads=1)
        assert classifier.class_names == [f"class_{i}" for i in range(4)] and classifier.input_shape == (28, 28, 1)
        whole = classifier.run(x)
        one_by_one = np.concatenate([classifier.run(x[i : i + 1]) for i in range(5)])
        np.testing.assert_allclose(one_by_one, whole[:5], atol=1e-6)
    ops = operator_names((tmp_path / "exported/model.int8.tflite").read_bytes())
    conv = [types for name, types in ops if name == "CONV_2D"]
    assert conv and all(types[:2] == [schema.TensorType.INT8, schema.TensorType.INT8] for types in conv)


def test_a_layer_litert_cannot_convert_is_one_line_naming_it(prepared, tmp_path):
    """Bicubic resizing has no LiteRT built-in op (ONNX has one): export stops with one line and
    leaves no exported/ behind."""
    from pipeline.model import build_model
    from pipeline.normalization import Normalization

    spec = [{"Resizing": {"height": 14, "width": 14, "interpolation": "bicubic"}}, {"Flatten": {}}]
    build_model(spec, (28, 28, 1), 4, Normalization(mean=0.3, std=0.35)).save(tmp_path / "model.keras")
    params = parse_params({"export": {"calibration_size": 20}}).export
    with pytest.raises(PipelineError) as error:
        export_model(tmp_path / "model.keras", prepared, tmp_path / "exported", params)
    assert re.fullmatch(  # Keras numbers a layer's default name in a process that made one before
        r"train\.model: layer resizing(_\d+)? \(Resizing\) cannot be converted to LiteRT: it needs "
        r"TensorFlow's ResizeBicubic, which LiteRT's built-in ops lack",
        str(error.value),
    ), str(error.value)
    assert not (tmp_path / "exported").exists() and not list(tmp_path.glob(".exported*"))


def test_fp32_onnx_runs_in_the_onnx_reference_evaluator(prepared, tmp_path):
    """A second runtime with the spec's own semantics: the file is portable beyond onnxruntime."""
    from onnx.reference import ReferenceEvaluator

    trained_model("cnn2", prepared, tmp_path / "model.keras")
    export_model(tmp_path / "model.keras", prepared, tmp_path / "exported",
                 parse_params({"export": {"calibration_size": 40}}).export)  # fmt: skip
    x, _ = read_split_arrays(prepared, read_meta(prepared), "test")
    path = str(tmp_path / "exported/model.onnx")
    reference = ReferenceEvaluator(path).run(None, {"image": x[:8]})[0]
    runtime = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"image": x[:8]})[0]
    np.testing.assert_allclose(reference, runtime, atol=1e-5)


def keras_probabilities(model, prepared: str, path: Path) -> Path:
    """The reference verify reads: the Keras model's test-split outputs as evaluate records them."""
    from pipeline.evaluate import predict_split

    _, probs, _ = predict_split(model, prepared, read_meta(prepared), "test", 512)
    np.save(path, probs)
    return path


def test_verify_passes_then_fails_on_a_corrupted_weight(prepared, tmp_path):
    model = trained_model("cnn", prepared, tmp_path / "model.keras")
    reference = keras_probabilities(model, prepared, tmp_path / "test_probabilities.npy")
    params = parse_params({"export": {"calibration_size": 60}}).export
    export_model(tmp_path / "model.keras", prepared, tmp_path / "exported", params, run_id=None)
    report = check_exports(reference, tmp_path / "exported", prepared, LOOSE_INT8)
    assert report["passed"], report["failures"]
    assert report["formats"]["onnx"]["argmax_agreement"] == 1.0
    assert report["formats"]["saved_model"]["max_abs_diff"] <= 1e-5
    assert set(report["latency"]["engines"]) == {"onnx", "onnx_int8", "litert", "litert_int8"}
    assert report["formats"]["litert"]["max_abs_diff"] <= 1e-5 and report["formats"]["litert"]["argmax_agreement"] == 1

    onnx_model = onnx.load(str(tmp_path / "exported/model.onnx"))
    weight = max(onnx_model.graph.initializer, key=lambda t: np.prod(t.dims))
    array = onnx.numpy_helper.to_array(weight).copy()
    array.flat[: array.size // 2] *= -3.0
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    onnx.save(onnx_model, str(tmp_path / "exported/model.onnx"))
    report = check_exports(reference, tmp_path / "exported", prepared, LOOSE_INT8)
    assert not report["passed"]
    assert any(f.startswith("onnx: max |Δ|") for f in report["failures"])


@pytest.mark.parametrize(
    "content, message",
    [
        (np.zeros((3, 4), np.float32), r"holds float32 \(3, 4\), the test split needs float32 \(\d+, 4\)"),
        (b"\x93NUMPY garbage", "not a NumPy array file"),
    ],
    ids=["another-split", "damaged"],
)
def test_verify_names_a_reference_that_does_not_describe_the_test_split(content, message, prepared, tmp_path):
    path = tmp_path / "test_probabilities.npy"
    path.write_bytes(content) if isinstance(content, bytes) else np.save(path, content)
    with pytest.raises(PipelineError, match=f"test_probabilities.npy: {message}.*rerun `dvc repro evaluate`"):
        check_exports(path, tmp_path / "exported", prepared, LOOSE_INT8)


def test_export_refuses_what_is_not_a_keras_model(prepared, tmp_path):
    params = parse_params({}).export
    (tmp_path / "model.keras").write_text("not a model")
    with pytest.raises(PipelineError, match=r"model\.keras: not a Keras model file"):
        export_model(tmp_path / "model.keras", prepared, tmp_path / "exported", params, run_id=None)
    assert not (tmp_path / "exported").exists()


def test_lambda_layers_are_not_loaded(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2), keras.layers.Dense(2)])
    model.save(tmp_path / "lambda.keras")
    from pipeline.model import load_keras_model

    with pytest.raises(PipelineError, match=r"lambda\.keras: cannot load Keras model \(.*safe_mode"):
        load_keras_model(str(tmp_path / "lambda.keras"))


def test_mixed_precision_models_export_in_float32():
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        mixed = build_model(EXPLICIT, (28, 28, 1), 4, Normalization(mean=0.3, std=0.35))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert mixed.layers[1].dtype_policy.name == "mixed_float16"
    plain = float32_model(mixed)
    assert all(layer.dtype_policy.name == "float32" for layer in plain.layers)
    assert plain.inputs[0].dtype == "uint8"  # the raw input stays raw
    x = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    np.testing.assert_allclose(plain(x).numpy(), mixed(x).numpy().astype(np.float32), atol=2e-2)


def test_the_calibration_sample_is_drawn_while_the_train_split_streams(prepared):
    """The same seeded positions as drawing from the whole split in memory, without holding it."""
    from pipeline.export import calibration_sample

    meta = read_meta(prepared)
    x, _ = read_split_arrays(prepared, meta, "train")
    for size, seed in ((40, 0), (40, 1), (1000, 0)):
        wanted = np.sort(np.random.default_rng(seed).choice(len(x), size=min(size, len(x)), replace=False))
        np.testing.assert_array_equal(calibration_sample(prepared, meta, size, seed), x[wanted])


@pytest.mark.parametrize("recorded", ["not a dict", {"max_abs_diff": 0.0}, {"max_abs_diff": "x"}])
def test_verify_names_a_malformed_saved_model_measurement(recorded, tmp_path):
    from pipeline.verify import saved_model_measurement

    with pytest.raises(PipelineError, match=r"export\.json: saved_model_parity is malformed .*dvc repro export"):
        saved_model_measurement({"saved_model_parity": recorded}, tmp_path / "export.json")
    assert saved_model_measurement({}, tmp_path / "export.json") is None
