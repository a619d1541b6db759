"""The MLflow UI in a real headless browser (Debian's chromium driven by Playwright): the run the
pipeline made, its test metrics and its logged figures are on the page. Screenshots go to tmp_path."""

import json

import pytest

from helpers.browser import CHROMIUM_FLAGS
from helpers.servers import mlflow_server

pytestmark = pytest.mark.slow


@pytest.fixture
def pipeline_run(reproduced):
    """The run the real stages made in the shared reproduced repo, from train to promote."""
    info = json.loads((reproduced.repo / "models/mlflow_run.json").read_text())
    return {**info, "tracking_uri": f"sqlite:///{reproduced.repo / 'mlflow.db'}"}


def shown_metric(page, key: str) -> float:
    """The value the run page's metrics table shows in the row whose name cell is `key`."""
    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=key, exact=True)).first
    row.wait_for(timeout=30_000)
    # MLflow 3's metrics table: name, value, and the logged model a metric belongs to (if any).
    name, value, *_ = (cell.inner_text() for cell in row.get_by_role("cell").all())
    assert name == key
    return float(value)


def test_ui_shows_the_pipeline_run_its_metrics_and_figures(pipeline_run, chromium, tmp_path):
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import sync_playwright

    client = MlflowClient(pipeline_run["tracking_uri"])
    mlrun = client.get_run(pipeline_run["run_id"])
    experiment, run_id = pipeline_run["experiment_id"], pipeline_run["run_id"]

    with (
        mlflow_server(pipeline_run["tracking_uri"], tmp_path / "served", tmp_path / "server.log") as url,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        try:
            page.goto(f"{url}/#/experiments/{experiment}/runs/{run_id}")
            page.get_by_text(mlrun.info.run_name).first.wait_for(timeout=90_000)
            page.get_by_text("test.accuracy", exact=True).first.wait_for(timeout=30_000)
            # Each value in its own row, as the store holds it: the accuracy (1.0 here), and the loss,
            # which no other figure on the page shares.
            for key in ("test.accuracy", "test.loss"):
                assert shown_metric(page, key) == pytest.approx(mlrun.data.metrics[key], rel=1e-9), key
            # Lineage: the datasets the run used, and its description.
            page.get_by_text("source/train").first.wait_for(timeout=30_000)
            page.screenshot(path=str(tmp_path / "run.png"), full_page=True)
            page.get_by_text(mlrun.data.tags["mlflow.note.content"][:40]).first.wait_for(timeout=30_000)
            page.screenshot(path=str(tmp_path / "run.png"), full_page=True)

            # The registered model: which version is champion.
            page.goto(f"{url}/#/models/source-classifier")
            page.get_by_text("champion").first.wait_for(timeout=60_000)
            page.get_by_text("challenger").first.wait_for(timeout=30_000)
            page.screenshot(path=str(tmp_path / "registry.png"), full_page=True)

            page.goto(f"{url}/#/experiments/{experiment}/runs/{run_id}/artifacts")
            page.get_by_text("figures", exact=True).first.click(timeout=60_000)
            page.get_by_text("confusion_matrix.png", exact=True).first.click(timeout=30_000)
            page.get_by_text("figures/confusion_matrix.png", exact=True).first.wait_for(timeout=30_000)
            # The viewer fetches the artifact and shows it from a blob: URL.
            image = page.locator("img[src^='blob:']").first
            image.wait_for(state="visible", timeout=30_000)
            page.wait_for_function(
                "img => img.complete && img.naturalWidth > 100", arg=image.element_handle(), timeout=30_000
            )
            page.screenshot(path=str(tmp_path / "figure.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "run.png").stat().st_size > 10_000
    assert (tmp_path / "figure.png").stat().st_size > 10_000
    assert (tmp_path / "registry.png").stat().st_size > 10_000
