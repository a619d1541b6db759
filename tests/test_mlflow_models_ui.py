"""MLflow 3's model-centric view in a real headless browser (Debian's chromium driven by Playwright),
on the store of a real `dvc repro` (tiny data) to which a search and a run of the pipeline's earlier
kind were added: the experiment opens on the model-training view (its runs and models), the trained
and exported models are logged models with their metrics and datasets, the registered version points
at its model, a search's trials are nested under its run, and a run that predates all this opens as
before. Screenshots go to tmp_path (experiment_default, experiment, models, model, run, version,
search, search_plot, legacy_run).

MLflow 3.17's UI chooses between its GenAI and model-training views with one switch for the whole
browser (GenAI unless the user picks "Model training", or the link says `workflowType`); it reads the
experiment's `mlflow.experimentKind` tag only where that switch is off. The pipeline sets the tag, and
the README's link carries `workflowType=machine_learning`: the test opens the experiment by that link.
"""

import json
import shutil

import pytest

from helpers.browser import CHROMIUM_FLAGS, chromium_path
from helpers.commands import run_stages, set_params
from helpers.servers import mlflow_server

pytestmark = pytest.mark.slow

MODEL_TRAINING = "workflowType=machine_learning"


def legacy_run(client, experiment_id: str, name: str, onnx_model_dir) -> tuple[str, str]:
    """A run and a registered version as the pipeline made them before logged models: metrics on
    the run, the MLflow model in the run's onnx_model/ artifacts, the version's source runs:/..."""
    run = client.create_run(experiment_id, run_name="before-logged-models", tags={"model.preset": "cnn"})
    client.log_metric(run.info.run_id, "test.accuracy", 0.5)
    client.log_artifacts(run.info.run_id, str(onnx_model_dir), "onnx_model")
    client.set_terminated(run.info.run_id)
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/onnx_model", run_id=run.info.run_id)
    return run.info.run_id, str(version.version)


@pytest.fixture
def store(reproduced_copy, tmp_path):
    """The copied repo's store after `dvc repro`, with a tiny search and a legacy run added."""
    from mlflow.tracking import MlflowClient

    from pipeline.registry import Registry

    repo = reproduced_copy
    set_params(repo, "tune", enabled=True, trials=3, epochs=2, startup_trials=1,
               space={"learning_rate": {"choices": [0.01, 0.02]}})  # fmt: skip
    run_stages(repo, "tune")
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(uri)
    info = json.loads((repo / "models/mlflow_run.json").read_text())
    registration = json.loads((repo / "reports/export.json").read_text())
    name, version = registration["name"], registration["version"]
    model_dir = Registry(client, uri).download(name, version, tmp_path / "current")
    legacy_id, legacy_version = legacy_run(client, info["experiment_id"], name, model_dir)
    shutil.rmtree(tmp_path / "current")
    search = json.loads((repo / "reports/search.json").read_text())
    parent = [r for r in client.search_runs([info["experiment_id"]]) if r.data.tags.get("tune.study") == search["study"]
              and "mlflow.parentRunId" not in r.data.tags]  # fmt: skip
    return {"uri": uri, "client": client, "experiment": info["experiment_id"], "run_id": info["run_id"],
            "name": name, "version": version, "legacy": (legacy_id, legacy_version), "search": parent[0]}  # fmt: skip


def test_the_experiment_opens_on_its_runs_and_models_with_logged_models_linked(store, tmp_path):
    from playwright.sync_api import sync_playwright

    from pipeline.registry import Registry

    client, experiment, run_id = store["client"], store["experiment"], store["run_id"]
    assert client.get_experiment(experiment).tags["mlflow.experimentKind"] == "custom_model_development"
    models = {m.name: m for m in client.search_logged_models([experiment]) if m.source_run_id == run_id}
    assert set(models) == {"keras-model", "onnx-model"}
    keras, onnx = models["keras-model"], models["onnx-model"]
    assert {m.dataset_name.rsplit("/", 1)[1] for m in keras.metrics if m.key.startswith("val_")} == {"val"}
    assert {m.dataset_name.rsplit("/", 1)[1] for m in onnx.metrics} == {"test"}
    version = client.get_model_version(store["name"], store["version"])
    assert version.source == f"models:/{onnx.model_id}"
    assert {o.model_id for o in client.get_run(run_id).outputs.model_outputs} == {keras.model_id, onnx.model_id}
    # The version made before logged models still downloads, as promote and verify read it.
    legacy_id, legacy_version = store["legacy"]
    assert Registry(client, store["uri"]).download_onnx(store["name"], legacy_version, tmp_path / "legacy").is_file()

    run = client.get_run(run_id)
    search = store["search"]
    trials = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{search.info.run_id}'")
    assert len(trials) == 3
    shots = {}
    with (
        mlflow_server(store["uri"], tmp_path / "served", tmp_path / "server.log") as url,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})

        def shot(name: str) -> None:
            shots[name] = tmp_path / f"{name}.png"
            page.screenshot(path=str(shots[name]), full_page=True)

        try:
            # Opened with no link or choice, MLflow 3.17 shows its GenAI view whatever the experiment's kind.
            page.goto(f"{url}/#/experiments/{experiment}")
            page.get_by_text("Model training").first.wait_for(timeout=90_000)
            shot("experiment_default")

            # The experiment by the README's link: its runs (the model-training view), not GenAI's overview.
            page.goto(f"{url}/#/experiments/{experiment}?{MODEL_TRAINING}")
            page.wait_for_url(f"**/experiments/{experiment}/runs*", timeout=90_000)
            page.get_by_text(run.info.run_name).first.wait_for(timeout=60_000)
            page.get_by_text("Model registry").first.wait_for(timeout=30_000)
            assert page.get_by_text("Token Usage").count() == 0
            shot("experiment")

            # Its Models tab: the trained and the exported model.
            page.get_by_role("link", name="Models", exact=True).first.click(timeout=30_000)
            page.get_by_text("keras-model").first.wait_for(timeout=60_000)
            page.get_by_text("onnx-model").first.wait_for(timeout=30_000)
            shot("models")

            # The exported model: its test metrics on the test split, its run, its registered version.
            page.goto(f"{url}/#/experiments/{experiment}/models/{onnx.model_id}?{MODEL_TRAINING}")
            page.get_by_text("test.accuracy", exact=True).first.wait_for(timeout=60_000)
            page.get_by_text("/test (#").first.wait_for(timeout=30_000)
            page.get_by_text(run.info.run_name).first.wait_for(timeout=30_000)
            page.get_by_text(store["name"]).first.wait_for(timeout=30_000)
            shot("model")

            # The training run lists both as its logged models (where its page said "Logged models: —"),
            # and its metrics name the model each belongs to.
            page.goto(f"{url}/#/experiments/{experiment}/runs/{run_id}?{MODEL_TRAINING}")
            page.get_by_text(run.info.run_name).first.wait_for(timeout=60_000)
            logged = page.get_by_text("Logged models (2)").first
            logged.wait_for(timeout=30_000)
            logged.scroll_into_view_if_needed()
            page.get_by_text("keras-model").first.wait_for(timeout=30_000)
            page.get_by_text("onnx-model").first.wait_for(timeout=30_000)
            shot("run")

            # The registered version names the logged model it was made from.
            page.goto(f"{url}/#/models/{store['name']}/versions/{store['version']}?{MODEL_TRAINING}")
            page.get_by_text("Source Model").first.wait_for(timeout=60_000)
            page.get_by_text("onnx-model").first.wait_for(timeout=30_000)
            shot("version")

            # A search: its trials nested under its run, and its plots.
            page.goto(f"{url}/#/experiments/{experiment}/runs?{MODEL_TRAINING}")
            row = page.get_by_text(search.info.run_name).first
            row.wait_for(timeout=60_000)
            page.locator("[role=row]", has_text=search.info.run_name).locator("button").first.click(timeout=30_000)
            for trial in trials:
                page.get_by_text(trial.info.run_name).first.wait_for(timeout=30_000)
            shot("search")
            page.goto(f"{url}/#/experiments/{experiment}/runs/{search.info.run_id}/artifacts?{MODEL_TRAINING}")
            page.get_by_text("search", exact=True).first.click(timeout=60_000)
            page.get_by_text("optimization_history.png", exact=True).first.click(timeout=30_000)
            image = page.locator("img[src^='blob:']").first
            image.wait_for(state="visible", timeout=30_000)
            page.wait_for_function(
                "img => img.complete && img.naturalWidth > 100", arg=image.element_handle(), timeout=30_000
            )
            shot("search_plot")

            # A run from before logged models opens as it did.
            page.goto(f"{url}/#/experiments/{experiment}/runs/{legacy_id}?{MODEL_TRAINING}")
            page.get_by_text("before-logged-models").first.wait_for(timeout=60_000)
            page.get_by_text("test.accuracy").first.wait_for(timeout=30_000)
            shot("legacy_run")
        finally:
            browser.close()
    for path in shots.values():
        assert path.stat().st_size > 10_000, path
