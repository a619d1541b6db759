"""The real `dvc repro` in a throwaway repo on tiny data: outputs, metrics, and a no-op second run."""

import json

import pytest

from conftest import run

pytestmark = pytest.mark.slow


def test_repro_data_stages_then_nothing_to_do(dvc_repo):
    run(["dvc", "repro", "fetch", "prepare"], dvc_repo)
    assert (dvc_repo / "data/prepared/meta.json").is_file()
    report = json.loads((dvc_repo / "reports/data.json").read_text())
    assert report["counts"] == {"train": 108, "val": 12, "test": 40}
    assert report["num_classes"] == 4

    again = run(["dvc", "repro", "fetch", "prepare"], dvc_repo)
    assert "Running stage" not in again.stdout
    status = run(["dvc", "status", "fetch", "prepare"], dvc_repo)
    assert "up to date" in status.stdout

    metrics = run(["dvc", "metrics", "show", "--json"], dvc_repo)
    shown = json.loads(metrics.stdout)[""]["data"]["reports/data.json"]["data"]
    assert shown["counts"] == report["counts"]


def test_repro_stops_on_bad_params_with_one_line(dvc_repo):
    params = (dvc_repo / "params.yaml").read_text().replace("val_fraction: 0.1", "val_fraction: 0")
    (dvc_repo / "params.yaml").write_text(params)
    proc = run(["dvc", "repro", "fetch", "prepare"], dvc_repo, check=False)
    assert proc.returncode != 0
    assert "error: params.yaml: prepare.val_fraction must be > 0.0, got 0" in proc.stderr
    assert not (dvc_repo / "data/prepared").exists()
