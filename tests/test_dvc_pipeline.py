"""The real `dvc repro` in a throwaway repo on tiny data, from raw files to verified exports."""

import json
from pathlib import Path

import numpy as np
import pytest

from helpers.commands import run, set_params

pytestmark = pytest.mark.slow


def test_repro_data_stages_then_nothing_to_do(dvc_repo):
    run(["dvc", "repro", "prepare"], dvc_repo)
    assert (dvc_repo / "data/prepared/meta.json").is_file()
    report = json.loads((dvc_repo / "reports/data.json").read_text())
    assert report["counts"] == {"train": 108, "val": 12, "test": 40}
    assert report["num_classes"] == 4

    again = run(["dvc", "repro", "prepare"], dvc_repo)
    assert "Running stage" not in again.stdout
    metrics = run(["dvc", "metrics", "show", "--json"], dvc_repo)
    shown = json.loads(metrics.stdout)[""]["data"]["reports/data.json"]["data"]
    assert shown["counts"] == report["counts"]


def test_repro_stops_on_bad_params_with_one_line(dvc_repo):
    set_params(dvc_repo, "prepare", val_fraction=0)
    proc = run(["dvc", "repro", "prepare"], dvc_repo, check=False)
    assert proc.returncode != 0
    assert "error: params.yaml: prepare.val_fraction must be > 0.0, got 0" in proc.stderr
    assert not (dvc_repo / "data/prepared").exists()


def test_full_pipeline_metrics_plots_mlflow_and_registry(dvc_repo, tmp_path):
    from mlflow.tracking import MlflowClient

    set_params(dvc_repo, "train", epochs=6, learning_rate=0.01, early_stopping_patience=0)
    set_params(dvc_repo, "evaluate", gate={"min_accuracy": 0.5})
    set_params(dvc_repo, "export", calibration_size=60)
    run(["dvc", "repro"], dvc_repo)

    metrics = json.loads((dvc_repo / "reports/metrics.json").read_text())
    assert metrics["gate"]["passed"] and metrics["test"]["accuracy"] >= 0.5
    assert set(metrics["test"]["per_class"]) == {f"class_{i}" for i in range(4)}
    assert len((dvc_repo / "reports/predictions.csv").read_text().splitlines()) == 41
    assert sorted(p.name for p in (dvc_repo / "reports/figures").iterdir()) == [
        "confusion_matrix.png",
        "training_curves.png",
        "worst_errors.png",
    ]
    parity = json.loads((dvc_repo / "reports/parity.json").read_text())
    assert parity["passed"] and parity["examples"] == 40
    assert parity["formats"]["onnx"]["max_abs_diff"] <= 1e-4
    assert set(parity["formats"]) == {"keras", "saved_model", "onnx", "onnx_int8", "mlflow_pyfunc"}
    assert parity["formats"]["mlflow_pyfunc"]["argmax_agreement"] == 1.0
    assert (dvc_repo / "exported/model.onnx").is_file() and (dvc_repo / "exported/saved_model").is_dir()

    again = run(["dvc", "repro"], dvc_repo)
    assert "Running stage" not in again.stdout

    shown = json.loads(run(["dvc", "metrics", "show", "--json"], dvc_repo).stdout)[""]["data"]
    assert shown["reports/metrics.json"]["data"]["test"]["accuracy"] == metrics["test"]["accuracy"]
    assert shown["reports/parity.json"]["data"]["passed"] is True
    plots = run(["dvc", "plots", "show", "--json"], dvc_repo)
    rendered = json.loads(plots.stdout)["data"]
    assert {"Loss per epoch", "Accuracy per epoch", "Confusion matrix (test)"} <= set(rendered)
    assert any("confusion_matrix.png" in key for key in rendered)
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], dvc_repo)
    assert (tmp_path / "plots/index.html").stat().st_size > 1000

    run_info = json.loads((dvc_repo / "models/mlflow_run.json").read_text())
    assert run_info["tracking_uri"] == f"sqlite:///{dvc_repo / 'mlflow.db'}"
    client = MlflowClient(run_info["tracking_uri"])
    mlrun = client.get_run(run_info["run_id"])
    assert mlrun.data.metrics["test.accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert "test.per_class.class_0.f1" in mlrun.data.metrics
    assert mlrun.data.tags["evaluate.gate"] == "passed" and mlrun.data.tags["verify.parity"] == "passed"
    figures = {a.path for a in client.list_artifacts(run_info["run_id"], "figures")}
    assert "figures/confusion_matrix.png" in figures
    versions = client.search_model_versions("name='fashion-mnist-classifier'")
    assert len(versions) == 1 and versions[0].tags["parity"] == "passed"
    assert versions[0].run_id == run_info["run_id"]
    # metadata.json is written once, registry version included, and MLflow holds that same file.
    metadata = (dvc_repo / "exported/metadata.json").read_text()
    assert json.loads(metadata)["mlflow_registered_model"] == {"name": "fashion-mnist-classifier", "version": "1"}
    logged = client.download_artifacts(run_info["run_id"], "export/metadata.json", str(tmp_path))
    assert Path(logged).read_text() == metadata

    import mlflow.pyfunc
    import onnxruntime as ort
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(run_info["tracking_uri"])
    pyfunc = mlflow.pyfunc.load_model(f"models:/fashion-mnist-classifier/{versions[0].version}")
    x = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28, 1), dtype=np.uint8)  # raw pixels
    served = pyfunc.predict({"image": x})["probabilities"]
    local = ort.InferenceSession(str(dvc_repo / "exported/model.onnx")).run(None, {"image": x})[0]
    np.testing.assert_allclose(np.asarray(served), local, atol=1e-6)
    # The signature carries dtype and shape: wrong input is MLflow's schema error, not the model's.
    with pytest.raises(MlflowException, match="dtype of input float32 does not match expected dtype uint8"):
        pyfunc.predict({"image": x.astype(np.float32)})
    with pytest.raises(MlflowException, match="Model is missing inputs"):
        pyfunc.predict({"pixels": x})


def read_idx(path):
    """An IDX file as a stranger reads it: gzip, a big-endian header, then raw bytes."""
    import gzip
    import struct

    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def test_a_stranger_gets_the_evaluated_accuracy_from_raw_pixels(dvc_repo, tiny_data):
    """No project code: onnxruntime alone, fed uint8 pixels straight from the IDX file, with class
    names from the file's own metadata, answers with the accuracy `evaluate` reported."""
    import onnxruntime as ort

    set_params(dvc_repo, "train", epochs=4, learning_rate=0.01, early_stopping_patience=0)
    set_params(dvc_repo, "evaluate", gate={"min_accuracy": 0.0})
    set_params(dvc_repo, "export", calibration_size=60)
    run(["dvc", "repro"], dvc_repo)
    source = Path(tiny_data["source"])
    images = read_idx(source / "t10k-images-idx3-ubyte.gz")[..., np.newaxis]
    labels = read_idx(source / "t10k-labels-idx1-ubyte.gz")

    reported = json.loads((dvc_repo / "reports/metrics.json").read_text())["test"]["accuracy"]
    for name in ("model.onnx", "model.int8.onnx"):
        session = ort.InferenceSession(str(dvc_repo / "exported" / name), providers=["CPUExecutionProvider"])
        class_names = json.loads(session.get_modelmeta().custom_metadata_map["class_names"])
        (probs,) = session.run(["probabilities"], {"image": images})
        if name == "model.onnx":
            assert float(np.mean(probs.argmax(1) == labels)) == reported
        else:
            assert abs(float(np.mean(probs.argmax(1) == labels)) - reported) <= 0.1
        assert len(class_names) == probs.shape[1] == 4


def test_failing_gate_stops_before_export(dvc_repo):
    set_params(dvc_repo, "train", epochs=1, learning_rate=1e-7, early_stopping_patience=0)
    set_params(dvc_repo, "evaluate", gate={"min_accuracy": 0.99})
    proc = run(["dvc", "repro"], dvc_repo, check=False)
    assert proc.returncode != 0
    assert "error: quality gate failed: test.accuracy" in proc.stderr
    assert "is below evaluate.gate.min_accuracy 0.9900" in proc.stderr
    verdict = json.loads((dvc_repo / "reports/metrics.json").read_text())["gate"]
    assert verdict["passed"] is False
    assert not (dvc_repo / "exported").exists()
