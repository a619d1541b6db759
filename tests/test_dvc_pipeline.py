"""The real `dvc repro` in a throwaway repo on tiny data, from raw files to verified exports."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from helpers.commands import run, set_params, stage_argv

pytestmark = pytest.mark.slow


def test_repro_stops_on_bad_params_with_one_line(dvc_repo):
    """The whole file is validated by the first stage that runs, whatever keys it reads itself."""
    set_params(dvc_repo, "evaluate", batch_size=0)
    proc = run(["dvc", "repro", "prepare"], dvc_repo, check=False)
    assert proc.returncode != 0
    assert "error: params.yaml: evaluate.batch_size must be >= 1, got 0" in proc.stderr
    assert not (dvc_repo / "data/raw").exists() and not (dvc_repo / "data/prepared").exists()


NOISE = re.compile(r"^[IWE]\d{4} |cuInit|NodeDef mentions|oneDNN custom operations|shuffle=True|WARNING", re.M)
STAGES = ("fetch", "prepare", "train", "evaluate", "export", "verify", "promote")
FORMS = {"keras", "saved_model", "onnx", "onnx_int8", "litert", "litert_int8", "mlflow_pyfunc"}

# The tests below share one `dvc repro` of the tiny data (tests/conftest.py: `reproduced`) and only read
# what it made; each proves one claim about it. Those that change anything take `reproduced_copy`.


def read_json(repo: Path, path: str):
    return json.loads((repo / path).read_text())


def store(repo: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")


def the_run(repo: Path):
    return store(repo).get_run(read_json(repo, "models/mlflow_run.json")["run_id"])


def test_the_console_shows_each_stage_s_line_and_nothing_else(reproduced):
    """No TensorFlow/absl start-up lines, no warnings: each stage's result, and Keras' epochs."""
    repro = reproduced.console
    assert not NOISE.search(repro.stderr + repro.stdout), repro.stderr
    for stage in STAGES:
        assert re.search(rf"^{stage}: ", repro.stdout, re.M), stage
    assert re.search(r"^Epoch 6/6$", repro.stdout, re.M)


def test_evaluate_reports_metrics_predictions_and_figures(reproduced):
    repo = reproduced.repo
    metrics = read_json(repo, "reports/metrics.json")
    assert metrics["gate"]["passed"] and metrics["test"]["accuracy"] >= 0.5
    assert set(metrics["test"]["per_class"]) == {f"class_{i}" for i in range(4)}
    assert len((repo / "reports/predictions.csv").read_text().splitlines()) == 41
    assert sorted(p.name for p in (repo / "reports/figures").iterdir()) == [
        "confusion_matrix.png",
        "training_curves.png",
        "worst_errors.png",
    ]


def test_a_stranger_gets_the_evaluated_accuracy_from_raw_pixels(reproduced):
    assert_a_stranger_gets_the_evaluated_accuracy_from_raw_pixels(reproduced.repo, reproduced.source)


def test_verify_proves_every_form_against_keras_on_the_test_split(reproduced):
    parity = read_json(reproduced.repo, "reports/parity.json")
    assert parity["passed"] and parity["examples"] == 40
    assert set(parity["formats"]) == FORMS
    assert parity["formats"]["onnx"]["max_abs_diff"] <= 1e-4
    for fmt in ("saved_model", "onnx", "litert", "mlflow_pyfunc"):
        assert parity["formats"][fmt]["argmax_agreement"] == 1.0, fmt


def test_the_saved_model_is_judged_by_verify_on_the_outputs_export_recorded(reproduced):
    """export records the SavedModel's outputs (it has TensorFlow loaded); verify measures that record
    against evaluate's record of the Keras model's: the figures in parity.json are those two files'."""
    repo = reproduced.repo
    keras = np.load(repo / "models/test_probabilities.npy")
    with np.load(repo / "models/saved_model_outputs.npz") as recorded:
        saved_model = recorded["test"]
    assert saved_model.shape == keras.shape == (40, 4)
    measured = read_json(repo, "reports/parity.json")["formats"]["saved_model"]
    assert measured["max_abs_diff"] == pytest.approx(float(np.abs(saved_model.astype(np.float64) - keras).max()))
    assert measured["argmax_agreement"] == 1.0
    assert "saved_model_parity" not in read_json(repo, "reports/export.json")  # verify's verdict alone


def test_exported_holds_export_s_files_alone(reproduced):
    assert sorted(p.name for p in (reproduced.repo / "exported").iterdir()) == [
        "metadata.json", "model.int8.onnx", "model.int8.tflite", "model.onnx", "model.tflite", "saved_model", "triton"
    ]  # one owner: export's alone  # fmt: skip


def test_a_second_repro_has_nothing_to_run(reproduced):
    assert json.loads(run(["dvc", "status", "--json"], reproduced.repo).stdout) == {}
    dry = run(["dvc", "repro", "--dry"], reproduced.repo)
    assert "Running stage" not in dry.stdout, dry.stdout


def test_dvc_shows_the_metrics_and_the_plots(reproduced):
    repo = reproduced.repo
    metrics = read_json(repo, "reports/metrics.json")
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)[""]["data"]
    assert shown["reports/metrics.json"]["data"]["test"]["accuracy"] == metrics["test"]["accuracy"]
    assert shown["reports/parity.json"]["data"]["passed"] is True
    rendered = json.loads(run(["dvc", "plots", "show", "--json"], repo).stdout)["data"]
    assert {"Loss per epoch", "Accuracy per epoch", "Confusion matrix (test)"} <= set(rendered)
    assert any("confusion_matrix.png" in key for key in rendered)


def test_the_plots_page_draws_offline_in_chromium(reproduced, chromium, tmp_path):
    """`dvc plots show` on the page template `python -m pipeline.plots_page` wrote (Vega inlined)."""
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], reproduced.repo)
    assert_plots_draw_offline(tmp_path / "plots/index.html", tmp_path / "plots.png", chromium)


def test_the_run_file_names_the_store_relative_to_the_project_and_the_run_holds_the_results(reproduced):
    """The run file means the same in any clone; the run holds evaluate's metrics, tags and figures."""
    repo = reproduced.repo
    run_info = read_json(repo, "models/mlflow_run.json")
    assert run_info["tracking_uri"] == "sqlite:///mlflow.db"
    mlrun = the_run(repo)
    evaluated = read_json(repo, "reports/metrics.json")["test"]["accuracy"]
    assert mlrun.data.metrics["test.accuracy"] == pytest.approx(evaluated)
    assert "test.per_class.class_0.f1" in mlrun.data.metrics
    assert mlrun.data.tags["evaluate.gate"] == "passed" and mlrun.data.tags["verify.parity"] == "passed"
    figures = {a.path for a in store(repo).list_artifacts(run_info["run_id"], "figures")}
    assert "figures/confusion_matrix.png" in figures


def test_the_run_records_the_splits_it_used_as_mlflow_datasets(reproduced):
    """Lineage: the three splits as MLflow datasets, digest = the split's content hash, source = data.source."""
    from pipeline.hashing import tree_sha256

    repo = reproduced.repo
    inputs = {d.tags[0].value: d.dataset for d in the_run(repo).inputs.dataset_inputs}
    assert set(inputs) == {"train", "val", "test"}
    for split, dataset in inputs.items():
        assert dataset.digest == tree_sha256(repo / "data/prepared" / split)[:32]
        assert dataset.name == f"source/{split}" and json.loads(dataset.source)["uri"] == params_source(repo)
        assert json.loads(dataset.profile)["num_rows"] == {"train": 108, "val": 12, "test": 40}[split]


def test_the_run_records_its_commit_its_description_and_system_metrics(reproduced):
    """A clean tree despite the dvc.lock and outputs DVC wrote; the description names model and data."""
    repo = reproduced.repo
    mlrun = the_run(repo)
    head = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    assert mlrun.data.tags["mlflow.source.git.commit"] == head
    assert mlrun.data.tags["git.dirty"] == "false"
    assert mlrun.data.tags["mlflow.note.content"].startswith("custom (")
    assert (
        "on source (idx, 108 train / 12 validation / 40 test examples, 4 classes)"
        in mlrun.data.tags["mlflow.note.content"]
    )
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(mlrun.data.metrics)


def test_the_first_model_is_registered_as_champion_with_its_card(reproduced):
    """The registry: names follow the data; the first model is champion; the card is its description."""
    repo = reproduced.repo
    client, run_info = store(repo), read_json(repo, "models/mlflow_run.json")
    versions = client.search_model_versions("name='source-classifier'")
    assert len(versions) == 1 and versions[0].tags["parity"] == "passed"
    assert versions[0].run_id == run_info["run_id"] and versions[0].tags["gate"] == "passed"
    assert sorted(client.get_model_version("source-classifier", "1").aliases) == ["challenger", "champion"]
    assert client.get_experiment(run_info["experiment_id"]).name == "source"
    card = (repo / "reports/model_card.md").read_text()
    assert card.startswith("# Model card: source-classifier v1") and versions[0].description == card
    for section in ("## Data", "## Model", "## Results", "## Intended use and limits", "Leakage check"):
        assert section in card
    promotion = read_json(repo, "reports/promotion.json")
    assert promotion["promoted"] and promotion["reason"] == "first model: no champion yet"


def test_the_registered_version_holds_the_exported_files_byte_for_byte(reproduced, tmp_path):
    """The registered version is recorded once exported/ is in place; MLflow holds the same files."""
    repo = reproduced.repo
    client, run_info = store(repo), read_json(repo, "models/mlflow_run.json")
    registration = read_json(repo, "reports/export.json")
    assert (registration["name"], registration["version"]) == ("source-classifier", "1")
    assert registration["tracking_uri"] == "sqlite:///mlflow.db" and registration["run_id"] == run_info["run_id"]
    metadata = (repo / "exported/metadata.json").read_text()
    assert json.loads(metadata)["files"] == registration["files"]
    logged = client.download_artifacts(run_info["run_id"], "export/metadata.json", str(tmp_path))
    assert Path(logged).read_text() == metadata
    from pipeline.registry import Registry

    version_dir = Registry(client, f"sqlite:///{repo / 'mlflow.db'}").download("source-classifier", "1", tmp_path / "v")
    for name in ("model.int8.onnx", "model.tflite", "model.int8.tflite"):
        assert (version_dir / "files" / name).read_bytes() == (repo / "exported" / name).read_bytes(), name


def test_the_champion_served_by_mlflow_answers_as_the_onnx_file_does(reproduced, monkeypatch):
    """`models:/...@champion` loaded as a deployer loads it (MLFLOW_TRACKING_URI names the store); its
    signature carries dtype and shape: a wrong input is MLflow's schema error, not the model's."""
    import mlflow.pyfunc
    import onnxruntime as ort
    from mlflow.exceptions import MlflowException

    repo = reproduced.repo
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlflow.db'}")
    pyfunc = mlflow.pyfunc.load_model("models:/source-classifier@champion")
    x = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28, 1), dtype=np.uint8)  # raw pixels
    served = pyfunc.predict({"image": x})["probabilities"]
    local = ort.InferenceSession(str(repo / "exported/model.onnx")).run(None, {"image": x})[0]
    np.testing.assert_allclose(np.asarray(served), local, atol=1e-6)
    with pytest.raises(MlflowException, match="dtype of input float32 does not match expected dtype uint8"):
        pyfunc.predict({"image": x.astype(np.float32)})
    with pytest.raises(MlflowException, match="Model is missing inputs"):
        pyfunc.predict({"pixels": x})


def assert_plots_draw_offline(page_path: Path, screenshot: Path, chromium: str) -> None:
    """`dvc plots show`'s page in Chromium with the network off: every Vega chart is drawn."""
    from playwright.sync_api import sync_playwright

    from helpers.browser import CHROMIUM_FLAGS

    requested = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(offline=True, viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.goto(page_path.as_uri())
            charts = ["#Loss_per_epoch", "#Accuracy_per_epoch", "#Confusion_matrix__test_"]
            for chart in charts:  # Vega draws each chart as an SVG of class "marks" into its div
                page.wait_for_selector(f"{chart} svg.marks", timeout=30_000)
            drawn = page.evaluate(
                "ids => ids.map(id => { const r = document.querySelector(id + ' svg.marks').getBoundingClientRect();"
                " return r.width * r.height })",
                charts,
            )
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert all(area > 10_000 for area in drawn), drawn
    assert not [url for url in requested if url.startswith(("http:", "https:"))], requested


def params_source(repo: Path) -> str:
    import yaml

    return yaml.safe_load((repo / "params.yaml").read_text())["data"]["source"]


def read_idx(path):
    """An IDX file as a stranger reads it: gzip, a big-endian header, then raw bytes."""
    import gzip
    import struct

    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def assert_a_stranger_gets_the_evaluated_accuracy_from_raw_pixels(repo: Path, source: Path) -> None:
    """No project code: onnxruntime alone, fed uint8 pixels straight from the IDX file, with class
    names from the file's own metadata, answers with the accuracy `evaluate` reported."""
    import onnxruntime as ort

    images = read_idx(source / "t10k-images-idx3-ubyte.gz")[..., np.newaxis]
    labels = read_idx(source / "t10k-labels-idx1-ubyte.gz")
    reported = json.loads((repo / "reports/metrics.json").read_text())["test"]["accuracy"]
    for name in ("model.onnx", "model.int8.onnx"):
        session = ort.InferenceSession(str(repo / "exported" / name), providers=["CPUExecutionProvider"])
        class_names = json.loads(session.get_modelmeta().custom_metadata_map["class_names"])
        (probs,) = session.run(["probabilities"], {"image": images})
        if name == "model.onnx":
            assert float(np.mean(probs.argmax(1) == labels)) == reported
        else:  # int8: no more below than verify allows (verify.max_int8_drop)
            assert float(np.mean(probs.argmax(1) == labels)) >= reported - 0.01
        assert len(class_names) == probs.shape[1] == 4


def test_verify_judges_every_form_without_starting_tensorflow(reproduced_copy):
    probe = (
        "import sys; from pipeline.verify import main; main(sys.argv[1:]);"
        "assert 'tensorflow' not in sys.modules, 'verify imported tensorflow'"
    )
    run(["python", "-c", probe, *stage_argv("verify")[3:]], reproduced_copy)
    parity = json.loads((reproduced_copy / "reports/parity.json").read_text())
    assert parity["passed"] and set(parity["formats"]) >= {"keras", "saved_model", "onnx", "litert", "mlflow_pyfunc"}


def test_failing_gate_stops_before_export(reproduced_copy, reproduced):
    """Only tune (off: it writes no values), train and evaluate rerun (the data did not change); export
    never sees the model. The copy's
    new run keeps its artifacts in the copy: the shared repo's store and artifacts are untouched."""
    shared_artifacts = sorted(p.relative_to(reproduced.repo) for p in (reproduced.repo / "mlartifacts").rglob("*"))
    before = (reproduced_copy / "exported/model.onnx").read_bytes()
    set_params(reproduced_copy, "train", epochs=1, learning_rate=1e-7, early_stopping_patience=0)
    set_params(reproduced_copy, "evaluate", gate={"min_accuracy": 0.99})
    proc = run(["dvc", "repro"], reproduced_copy, check=False)
    assert proc.returncode != 0
    assert re.findall(r"Running stage '(\w+)'", proc.stdout) == ["tune", "train", "evaluate"]  # tune: off, a second
    assert "error: quality gate failed: test.accuracy" in proc.stderr
    assert "is below evaluate.gate.min_accuracy 0.9900" in proc.stderr
    verdict = json.loads((reproduced_copy / "reports/metrics.json").read_text())["gate"]
    assert verdict["passed"] is False
    assert (reproduced_copy / "exported/model.onnx").read_bytes() == before  # the previous export stands
    assert sorted(p.relative_to(reproduced.repo) for p in (reproduced.repo / "mlartifacts").rglob("*")) == (
        shared_artifacts
    )
    new_run = json.loads((reproduced_copy / "models/mlflow_run.json").read_text())["run_id"]
    assert (reproduced_copy / "mlartifacts" / new_run / "artifacts/training/history.csv").is_file()
