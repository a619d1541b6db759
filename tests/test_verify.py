"""Stage verify (pipeline/verify.py): every exported form judged against the Keras model's outputs on
the raw test split, each damaged form or record failing it with one line. On the files exported from
an untrained model with hand-set weights (tests/helpers/exports.py): no training here."""

import shutil

import numpy as np
import onnx
import pytest

from pipeline.errors import PipelineError
from pipeline.params import parse_params
from pipeline.verify import check, check_exports

DEFAULT = parse_params({}).verify
FORMS = {"keras", "saved_model", "onnx", "onnx_int8", "litert", "litert_int8"}


@pytest.fixture(scope="module")
def recorded(tiny_exports, tmp_path_factory):
    """What evaluate and export record for verify, as they record it: the Keras model's outputs on the
    test split (verify's reference) and the SavedModel's outputs."""
    from pipeline.evaluate import predict_split, probe_probabilities
    from pipeline.parity import record_saved_model_outputs

    root = tmp_path_factory.mktemp("recorded")
    _, probs, _ = predict_split(tiny_exports.model, tiny_exports.data, "test", 512)
    np.save(
        root / "test_probabilities.npy",
        np.concatenate([probs, probe_probabilities(tiny_exports.model, tiny_exports.data)]),
    )
    record_saved_model_outputs(tiny_exports.directory / "saved_model", tiny_exports.data,
                               root / "saved_model_outputs.npz")  # fmt: skip
    return root


def verified(tiny_exports, recorded, exported=None, saved_model_outputs=None, reference=None, limits=DEFAULT,
             pyfunc=None) -> dict:  # fmt: skip
    """verify's report on the exported forms (by default the shared, untouched ones)."""
    return check_exports(
        reference or recorded / "test_probabilities.npy",
        exported or tiny_exports.directory,
        saved_model_outputs or recorded / "saved_model_outputs.npz",
        tiny_exports.data,
        limits,
        pyfunc,
    )


def copy_of_exported(tiny_exports, tmp_path):
    shutil.copytree(tiny_exports.directory, tmp_path / "exported")
    return tmp_path / "exported"


def test_every_form_export_wrote_passes(tiny_exports, recorded):
    report = verified(tiny_exports, recorded)
    assert report["passed"], report["failures"]
    assert set(report["formats"]) == FORMS and report["examples"] == 40
    for fmt in ("saved_model", "onnx", "litert"):
        r = report["formats"][fmt]
        assert r["max_abs_diff"] <= 1e-5 and r["argmax_agreement"] == 1.0 and r["batch_max_abs_diff"] <= 1e-6, fmt
    for fmt in ("onnx_int8", "litert_int8"):
        assert report["formats"][fmt]["accuracy_drop_vs_float32"] <= DEFAULT.max_int8_drop
        assert "batch_max_abs_diff" not in report["formats"][fmt]  # int8: judged by its accuracy alone
    assert report["formats"]["keras"] == {"accuracy": 1.0}
    assert set(report["latency"]["engines"]) == {"onnx", "onnx_int8", "litert", "litert_int8"}
    engines = report["latency"]["engines"].values()
    assert all(e["batch1_median_ms"] > 0 and e["batch256_images_per_s"] > 0 for e in engines)


def test_a_corrupted_onnx_weight_fails_verify(tiny_exports, recorded, tmp_path):
    exported = copy_of_exported(tiny_exports, tmp_path)
    onnx_model = onnx.load(str(exported / "model.onnx"))
    weight = max(onnx_model.graph.initializer, key=lambda t: np.prod(t.dims))
    array = onnx.numpy_helper.to_array(weight).copy()
    array.flat[: array.size // 2] *= -3.0
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    onnx.save(onnx_model, str(exported / "model.onnx"))
    report = verified(tiny_exports, recorded, exported=exported)
    assert not report["passed"]
    assert [f.split(":")[0] for f in report["failures"]] == ["onnx"]
    assert report["failures"][0].startswith("onnx: max |Δ|")


def test_the_saved_model_is_judged_by_the_outputs_export_recorded(tiny_exports, recorded, tmp_path):
    """verify never loads the SavedModel (no TensorFlow): it judges export's record of its outputs, so a
    record that departs from Keras fails it, and so does one whose batch sizes disagree."""
    with np.load(recorded / "saved_model_outputs.npz") as npz:
        arrays = dict(npz)
    off = {**arrays, "test": arrays["test"][:, ::-1].copy()}  # the classes in reverse order
    np.savez(tmp_path / "off.npz", **off)
    report = verified(tiny_exports, recorded, saved_model_outputs=tmp_path / "off.npz")
    assert not report["passed"] and report["failures"][0].startswith("saved_model: max |Δ|")
    assert report["formats"]["saved_model"]["argmax_agreement"] < 1.0

    uneven = {**arrays, "batch_1": arrays["batch_1"] + np.float32(1e-3)}
    np.savez(tmp_path / "uneven.npz", **uneven)
    report = verified(tiny_exports, recorded, saved_model_outputs=tmp_path / "uneven.npz")
    assert report["failures"] == [
        f"saved_model: batch sizes {list(DEFAULT.batch_sizes)} disagree by "
        f"{report['formats']['saved_model']['batch_max_abs_diff']:.3g}"
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        (np.zeros((3, 4), np.float32), r"holds float32 \(3, 4\), the test split needs float32 \(40, 4\)"),
        (b"\x93NUMPY garbage", "not the NumPy file evaluate writes"),
    ],
    ids=["another-split", "damaged"],
)
def test_a_reference_that_does_not_describe_the_test_split_is_one_line(content, message, tiny_exports, recorded,
                                                                       tmp_path):  # fmt: skip
    path = tmp_path / "test_probabilities.npy"
    path.write_bytes(content) if isinstance(content, bytes) else np.save(path, content)
    with pytest.raises(PipelineError, match=f"test_probabilities.npy: {message}.*rerun `dvc repro evaluate`"):
        verified(tiny_exports, recorded, reference=path)


@pytest.mark.parametrize(
    "damage",
    [
        "missing",
        "garbage",
        "another-split",
        "no-batch-record",
    ],
)
def test_a_damaged_saved_model_record_is_one_line(damage, tiny_exports, recorded, tmp_path):
    path = tmp_path / "saved_model_outputs.npz"
    with np.load(recorded / "saved_model_outputs.npz") as npz:
        arrays = dict(npz)
    if damage == "garbage":
        path.write_bytes(b"PK\x03\x04 not a zip")
    elif damage == "another-split":
        np.savez(path, **{**arrays, "test": arrays["test"][:7]})
    elif damage == "no-batch-record":
        np.savez(path, test=arrays["test"])
    with pytest.raises(PipelineError) as error:
        verified(tiny_exports, recorded, saved_model_outputs=path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "dvc repro export" in message


def test_a_missing_exported_file_is_one_line_before_any_pass(tiny_exports, recorded, tmp_path):
    exported = copy_of_exported(tiny_exports, tmp_path)
    (exported / "model.int8.tflite").unlink()
    with pytest.raises(PipelineError, match=r"model\.int8\.tflite: not found \(run `dvc repro export`\)$"):
        verified(tiny_exports, recorded, exported=exported)


def test_the_registered_mlflow_model_is_judged_as_mlflow_serves_it(tiny_exports, recorded, tmp_path):
    """The MLflow model export registers (pipeline/mlflow_model.py), loaded back with mlflow.pyfunc and
    fed named tensors, is one more form held to Keras."""
    import mlflow.pyfunc

    from pipeline.mlflow_model import save_mlflow_model

    save_mlflow_model(tiny_exports.onnx, tmp_path / "mlflow_model", tiny_exports.metadata)
    report = verified(tiny_exports, recorded, pyfunc=mlflow.pyfunc.load_model(str(tmp_path / "mlflow_model")))
    assert report["passed"], report["failures"]
    assert set(report["formats"]) == FORMS | {"mlflow_pyfunc"}
    assert report["formats"]["mlflow_pyfunc"]["max_abs_diff"] <= 1e-5


def row(max_abs=0.0, agreement=1.0, accuracy=0.9, batch=0.0) -> dict:
    return {"max_abs_diff": max_abs, "argmax_agreement": agreement, "accuracy": accuracy, "batch_max_abs_diff": batch}


def test_each_limit_is_one_failure_line_naming_the_form_and_the_key():
    limits = parse_params({"verify": {"max_abs_diff": 1e-4, "max_int8_drop": 0.01}}).verify
    int8 = {"accuracy": 0.9}
    assert check({"keras": {"accuracy": 0.9}, "onnx": row(), "onnx_int8": int8}, limits) == []
    assert check({"onnx": row(max_abs=2e-4), "onnx_int8": int8}, limits) == [
        "onnx: max |Δ| 0.0002 (verify.max_abs_diff 0.0001), argmax agreement 100.0000% (need 100%)"
    ]
    assert check({"litert": row(agreement=0.99)}, limits)[0].startswith("litert: max |Δ| 0 ")
    assert check({"onnx": row(), "onnx_int8": {"accuracy": 0.85}}, limits) == [
        "onnx_int8: accuracy 0.8500 is 0.0500 below onnx's 0.9000, more than verify.max_int8_drop 0.01"
    ]
    assert check({"saved_model": row(batch=2e-5)}, limits) == [
        f"saved_model: batch sizes {list(limits.batch_sizes)} disagree by 2e-05"
    ]
