"""Export parity: for every preset and an explicit layer list, onnxruntime ≈ LiteRT ≈ Keras ≈ SavedModel."""

import json
import os
import re

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf

from pipeline.errors import PipelineError
from pipeline.model import build_model, float32_model
from pipeline.normalization import Normalization, preprocessing_layers
from pipeline.params import parse_params
from pipeline.prepared import PreparedData

from helpers.commands import call_core

pytestmark = pytest.mark.slow

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
# What evaluate writes when the gate passed: export reads nothing else of it.
GATE_PASSED = {"test": {"accuracy": 1.0, "macro_f1": 1.0}, "gate": {"passed": True, "reason": "all checks passed"}}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> PreparedData:
    from helpers.data import fetch_and_prepare, write_idx_dataset

    root = tmp_path_factory.mktemp("export")
    fetch_and_prepare(write_idx_dataset(root / "source"), root)
    return PreparedData.open(root / "prepared")


def trained_model(model_spec, data: PreparedData, path, test_time_flip: bool | None = False):
    """A model trained by the project's own training core for one epoch on the tiny data (so BatchNorm
    statistics are not the defaults); without the mirror pair unless asked (the preset's choice: None)."""
    from pipeline.presets import filled_from_preset
    from pipeline.training import train

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
    model = train(filled_from_preset(params.train), data, path.parent / "work", verbose=0).model
    model.save(path)
    return model


def export_stage(model_path, data: PreparedData, out, run, metrics: dict = GATE_PASSED, **export) -> dict:
    """The export stage's core on a model file, as its edge runs it (validated params, temporary
    places put in place; nothing published, so nothing registered): out/exported and
    out/saved_model_outputs.npz. Returns metadata.json's content."""
    from pipeline import export as stage

    (out / "metrics.json").write_text(json.dumps(metrics))
    inputs = {"prepared": data.directory, "model": model_path, "metrics": out / "metrics.json",
              "run_file": out / "mlflow_run.json"}  # fmt: skip
    outputs = {"out": out / "exported", "saved_model_outputs": out / "saved_model_outputs.npz",
               "registration": out / "export.json"}  # fmt: skip
    call_core(stage.STAGE, {"export": {"calibration_size": 40, **export}}, inputs, outputs, tracking=run)
    return json.loads((out / "exported/metadata.json").read_text())


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
def test_every_exported_form_matches_keras(model_spec, tolerance, rewrites, prepared, tmp_path, mlflow_run):
    model_spec, test_time_flip = model_spec if isinstance(model_spec, tuple) else (model_spec, False)
    model = trained_model(model_spec, prepared, tmp_path / "model.keras", test_time_flip)
    info = export_stage(tmp_path / "model.keras", prepared, tmp_path, mlflow_run)

    x, labels = prepared.arrays("test")  # raw uint8 pixels: the model normalises
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
    # What export records of the SavedModel for verify: its outputs on the test split, as served.
    with np.load(tmp_path / "saved_model_outputs.npz") as recorded:
        np.testing.assert_allclose(recorded["test"], got_saved, atol=1e-6)

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


def test_onnx_file_carries_what_a_deployer_needs(prepared, tmp_path, monkeypatch, mlflow_run):
    trained_model("mlp", prepared, tmp_path / "model.keras")
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    info = export_stage(tmp_path / "model.keras", prepared, tmp_path, mlflow_run, calibration_size=60)
    # tf2onnx sets it process-wide; kept, the next stage started from this process would take it
    # for the user's choice and leave its console unfiltered.
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    model = onnx.load(str(tmp_path / "exported/model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["class_names"]) == [f"class_{i}" for i in range(4)]
    assert props["input_layout"] == "NHWC" and props["mlflow_run_id"] == mlflow_run.run_id
    assert props["input_dtype"] == "uint8" and "normalised inside the model" in props["input"]
    assert set(json.loads(props["normalization_inside"])) == {"formula", "scale", "offset"}
    assert "tensorflow" in json.loads(props["producer_versions"])
    assert model.opset_import[0].version == 17
    assert not list((tmp_path / "exported").glob("*.data"))  # one file, no external data

    metadata = json.loads((tmp_path / "exported/metadata.json").read_text())
    assert set(metadata["files"]) == {"model.onnx", "model.int8.onnx", "model.tflite", "model.int8.tflite",
                                      "saved_model", "triton"}  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "exported").iterdir()) == [
        "metadata.json", "model.int8.onnx", "model.int8.tflite", "model.onnx", "model.tflite", "saved_model", "triton"
    ]  # fmt: skip
    assert metadata["input"]["shape"] == ["batch", 28, 28, 1] and metadata["opset"] == 17
    assert metadata == info and metadata["mlflow_run_id"] == mlflow_run.run_id
    assert metadata["input"]["dtype"] == "uint8" and metadata["input"]["name"] == "image"
    int8 = onnx.load(str(tmp_path / "exported/model.int8.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    # Each file declares only the opset domains its nodes use (no onnxruntime-internal leftovers).
    for proto in (model, int8):
        used = {n.domain for n in proto.graph.node} | {""}
        assert {o.domain for o in proto.opset_import} == used


def test_litert_files_carry_the_onnx_metadata_and_take_any_batch(prepared, tmp_path, mlflow_run):
    """Inside each .tflite file, read back with ai-edge-litert's schema alone: what the ONNX file
    says; the batch dimension follows the input; int8 is full-integer (int8 weights and activations)."""
    from ai_edge_litert import schema_py_generated as schema

    from pipeline.classifier import LiteRTClassifier
    from pipeline.litert import operator_names, read_metadata

    trained_model("cnn2", prepared, tmp_path / "model.keras")
    export_stage(tmp_path / "model.keras", prepared, tmp_path, mlflow_run, calibration_size=60)
    onnx_props = {p.key: p.value for p in onnx.load(str(tmp_path / "exported/model.onnx")).metadata_props}
    assert read_metadata(tmp_path / "exported/model.tflite") == onnx_props
    quantized = read_metadata(tmp_path / "exported/model.int8.tflite")
    assert quantized.pop("quantization").startswith("full-integer int8") and quantized == onnx_props

    x, _ = prepared.arrays("test")
    for file in ("model.tflite", "model.int8.tflite"):
        classifier = LiteRTClassifier(tmp_path / "exported" / file, threads=1)
        assert classifier.class_names == [f"class_{i}" for i in range(4)] and classifier.input_shape == (28, 28, 1)
        whole = classifier.run(x)
        one_by_one = np.concatenate([classifier.run(x[i : i + 1]) for i in range(5)])
        np.testing.assert_allclose(one_by_one, whole[:5], atol=1e-6)
    ops = operator_names((tmp_path / "exported/model.int8.tflite").read_bytes())
    conv = [types for name, types in ops if name == "CONV_2D"]
    assert conv and all(types[:2] == [schema.TensorType.INT8, schema.TensorType.INT8] for types in conv)


def test_a_layer_litert_cannot_convert_is_one_line_naming_it(prepared, tmp_path, mlflow_run):
    """Bicubic resizing has no LiteRT built-in op (ONNX has one): export stops with one line and
    leaves no exported/ behind."""
    spec = [{"Resizing": {"height": 14, "width": 14, "interpolation": "bicubic"}}, {"Flatten": {}}]
    normalization = preprocessing_layers(Normalization(mean=0.3, std=0.35))
    build_model(spec, (28, 28, 1), 4, normalization).save(tmp_path / "model.keras")
    with pytest.raises(PipelineError) as error:
        export_stage(tmp_path / "model.keras", prepared, tmp_path, mlflow_run, calibration_size=20)
    assert re.fullmatch(  # Keras numbers a layer's default name in a process that made one before
        r"train\.model: layer resizing(_\d+)? \(Resizing\) cannot be converted to LiteRT: it needs "
        r"TensorFlow's ResizeBicubic, which LiteRT's built-in ops lack",
        str(error.value),
    ), str(error.value)
    assert not (tmp_path / "exported").exists() and not list(tmp_path.glob(".exported*"))
    assert not (tmp_path / "saved_model_outputs.npz").exists() and not list(tmp_path.glob(".saved_model*"))


def test_fp32_onnx_runs_in_the_onnx_reference_evaluator(prepared, tmp_path, mlflow_run):
    """A second runtime with the spec's own semantics: the file is portable beyond onnxruntime."""
    from onnx.reference import ReferenceEvaluator

    trained_model("cnn2", prepared, tmp_path / "model.keras")
    export_stage(tmp_path / "model.keras", prepared, tmp_path, mlflow_run)
    x, _ = prepared.arrays("test")
    path = str(tmp_path / "exported/model.onnx")
    reference = ReferenceEvaluator(path).run(None, {"image": x[:8]})[0]
    runtime = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"image": x[:8]})[0]
    np.testing.assert_allclose(reference, runtime, atol=1e-5)


def test_export_refuses_what_is_not_a_keras_model(prepared, tmp_path, mlflow_run):
    (tmp_path / "model.keras").write_text("not a model")
    with pytest.raises(PipelineError, match=r"model\.keras: not a Keras model file"):
        export_stage(tmp_path / "model.keras", prepared, tmp_path, mlflow_run)
    assert not (tmp_path / "exported").exists()


def test_export_refuses_a_model_whose_gate_failed(prepared, tmp_path, mlflow_run):
    """Only a model that passed evaluate's gate is exported (dvc.yaml runs export after evaluate;
    this holds when export is run by hand)."""
    failed = {"test": {"accuracy": 0.3}, "gate": {"passed": False, "reason": "test.accuracy 0.3000 is below 0.5"}}
    with pytest.raises(PipelineError, match=r"metrics\.json: the quality gate failed \(test\.accuracy 0\.3000 is "
                       r"below 0\.5\); nothing to export$"):  # fmt: skip
        export_stage(tmp_path / "model.keras", prepared, tmp_path, mlflow_run, metrics=failed)
    assert not (tmp_path / "exported").exists()


def test_lambda_layers_are_not_loaded(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2), keras.layers.Dense(2)])
    model.save(tmp_path / "lambda.keras")
    from pipeline.model import load_keras_model

    with pytest.raises(PipelineError, match=r"lambda\.keras: cannot load Keras model \(.*safe_mode"):
        load_keras_model(str(tmp_path / "lambda.keras"))


def test_mixed_precision_models_export_in_float32():
    normalization = preprocessing_layers(Normalization(mean=0.3, std=0.35))
    mixed = build_model(EXPLICIT, (28, 28, 1), 4, normalization, precision="mixed_float16")
    assert mixed.layers[1].dtype_policy.name == "mixed_float16"
    plain = float32_model(mixed)
    assert all(layer.dtype_policy.name == "float32" for layer in plain.layers)
    assert plain.inputs[0].dtype == "uint8"  # the raw input stays raw
    x = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    np.testing.assert_allclose(plain(x).numpy(), mixed(x).numpy().astype(np.float32), atol=2e-2)


def test_the_calibration_sample_is_drawn_while_the_train_split_streams(prepared):
    """The same seeded positions as drawing from the whole split in memory, without holding it."""
    from pipeline.export import calibration_sample

    x, _ = prepared.arrays("train")
    for size, seed in ((40, 0), (40, 1), (1000, 0)):
        wanted = np.sort(np.random.default_rng(seed).choice(len(x), size=min(size, len(x)), replace=False))
        np.testing.assert_array_equal(calibration_sample(prepared, size, seed), x[wanted])
