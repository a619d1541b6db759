"""A team tracking server: `mlflow server` on a throwaway PostgreSQL cluster, two trainings logging
to it at the same time, every epoch of both read back."""

import json
import shutil
import subprocess

import pytest

from helpers.commands import missing_tool, set_params, stage_argv, tool_env
from helpers.servers import mlflow_server, postgres_bin, postgres_cluster

pytestmark = pytest.mark.slow


@pytest.fixture
def postgres_available():
    if postgres_bin() is None:
        missing_tool("PostgreSQL", "apt-get install postgresql")


def test_two_trainings_at_once_against_a_postgres_backed_server(postgres_available, project, tmp_path):
    from mlflow.tracking import MlflowClient

    epochs = 4
    set_params(project, "train", epochs=epochs, early_stopping_patience=0)
    second = tmp_path / "second"
    shutil.copytree(project, second, ignore=shutil.ignore_patterns("store"))
    set_params(second, "train", learning_rate=0.003)

    with (
        postgres_cluster(tmp_path / "pg") as database,
        mlflow_server(database, tmp_path / "artifacts", tmp_path / "mlflow.log", workers=2) as url,
    ):
        procs = [
            subprocess.Popen(
                stage_argv("train"),
                cwd=directory,
                env=tool_env(MLFLOW_TRACKING_URI=url),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for directory in (project, second)
        ]
        outputs = [proc.communicate(timeout=600)[0] for proc in procs]
        for proc, output in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, output[-3000:]
            assert "database is locked" not in output

        client = MlflowClient(url)
        run_ids = []
        for directory in (project, second):
            info = json.loads((directory / "models/mlflow_run.json").read_text())
            assert info["tracking_uri"] == url
            run = client.get_run(info["run_id"])
            assert run.info.status == "FINISHED"
            for key in ("loss", "val_loss", "accuracy", "val_accuracy", "learning_rate"):
                assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == list(
                    range(1, epochs + 1)
                ), key
            artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "training")}
            assert "training/history.csv" in artifacts
            run_ids.append(run.info.run_id)
        assert run_ids[0] != run_ids[1]
        assert client.get_run(run_ids[1]).data.params["train.learning_rate"] == "0.003"
    # The artifacts went through the server to its own artifact root.
    assert any((tmp_path / "artifacts").rglob("history.csv"))
