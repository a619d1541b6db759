"""Two processes on one study, Optuna's distributed mode on the databases the team has: the stage
with `tune.workers: 2` on the SQLite file beside the embedded store, and the stage plus
`python -m pipeline.tune_worker` (the README's command for another machine) on the PostgreSQL of a
team tracking server. Each trial runs once, in one process, as one MLflow run; none is lost."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers.commands import set_params, stage_argv, tool_env
from helpers.servers import mlflow_server, postgres_bin, postgres_cluster

pytestmark = pytest.mark.slow

TRIALS = 6
SEARCH = {
    "enabled": True,
    "space": {"learning_rate": {"low": 0.005, "high": 0.05, "log": True}},  # a value of its own per trial
    "trials": TRIALS,
    "epochs": 2,
    "pruner": "none",
}


def check_every_trial_ran_once(study, tracking_uri: str, parent_run_id: str) -> set[str]:
    """The study holds exactly its trials, each complete with values of its own, and each is one
    MLflow run nested under the search's run; returns the processes that ran them."""
    from mlflow.tracking import MlflowClient

    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(TRIALS))
    assert [t.state.name for t in trials] == ["COMPLETE"] * TRIALS
    assert len({t.params["learning_rate"] for t in trials}) == TRIALS  # distinct trials
    client = MlflowClient(tracking_uri)
    experiment = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=100)
    assert sorted(int(r.data.tags["tune.trial"]) for r in runs) == list(range(TRIALS))  # none lost, none twice
    by_trial = {int(r.data.tags["tune.trial"]): r for r in runs}
    for t in trials:
        run = by_trial[t.number]
        assert run.info.run_id == t.user_attrs["mlflow_run_id"] and run.info.status == "FINISHED"
        assert run.data.tags["tune.worker"] == t.user_attrs["worker"]
        assert float(run.data.params["train.learning_rate"]) == pytest.approx(t.params["learning_rate"])
    trials_csv = client.download_artifacts(parent_run_id, "search/trials.csv")
    assert len(Path(trials_csv).read_text().strip().splitlines()) == TRIALS + 1
    return {t.user_attrs["worker"] for t in trials}


def test_two_local_workers_share_the_sqlite_study(project):
    import optuna

    set_params(project, "tune", **SEARCH, workers=2)
    proc = subprocess.run(stage_argv("tune"), cwd=project, env=tool_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "database is locked" not in proc.stdout + proc.stderr
    report = json.loads((project / "reports/search.json").read_text())
    assert report["trials"] == {"complete": TRIALS, "pruned": 0, "failed": 0, "budget": TRIALS}
    tracking_uri = yaml.safe_load((project / "params.yaml").read_text())["mlflow"]["tracking_uri"]
    storage = tracking_uri.replace("mlflow.db", "mlflow.optuna.db")  # the sibling file of the store
    study = optuna.load_study(study_name=report["study"], storage=storage)
    parent = yaml.safe_load((project / "models/tuned.yaml").read_text())["search"]["mlflow_parent_run_id"]
    workers = check_every_trial_ran_once(study, tracking_uri, parent)
    assert len(workers) == 2, workers  # the stage's process and the worker it started both ran trials
    assert 0 < report["trials_run_here"] < TRIALS


@pytest.fixture
def postgres_available():
    if postgres_bin() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is missing: .ci/run must install Debian's postgresql")
        pytest.skip("PostgreSQL not installed (apt-get install postgresql)")


def test_the_stage_and_another_machines_worker_share_the_team_servers_postgres(postgres_available, project, tmp_path):
    """As the README's team setup: MLflow's server on PostgreSQL, the study in the same database (its
    schema optuna, since both keep an alembic_version table), the stage on one machine and
    `python -m pipeline.tune_worker` started at the same time on another."""
    import optuna
    import sqlalchemy

    with (
        postgres_cluster(tmp_path / "pg") as database,
        mlflow_server(database, tmp_path / "artifacts", tmp_path / "mlflow.log", workers=2) as url,
    ):
        set_params(project, "tune", **SEARCH, storage=database)
        env = tool_env(MLFLOW_TRACKING_URI=url)
        worker_argv = ["python", "-m", "pipeline.tune_worker", "--params", "params.yaml", "--prepared", "data/prepared",
                       "--wait", "300"]  # fmt: skip
        procs = [
            subprocess.Popen(argv, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for argv in (worker_argv, stage_argv("tune"))
        ]
        outputs = [proc.communicate(timeout=900)[0] for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0], "\n".join(output[-3000:] for output in outputs)
        assert "tune worker:" in outputs[0] and "trial" in outputs[0]

        report = json.loads((project / "reports/search.json").read_text())
        assert report["trials"]["complete"] == TRIALS
        study = optuna.load_study(study_name=report["study"], storage=optuna.storages.RDBStorage(
            database, engine_kwargs={"connect_args": {"options": "-csearch_path=optuna"}}))  # fmt: skip
        parent = yaml.safe_load((project / "models/tuned.yaml").read_text())["search"]["mlflow_parent_run_id"]
        workers = check_every_trial_ran_once(study, url, parent)
        assert len(workers) == 2, workers  # both machines' processes ran trials

        engine = sqlalchemy.create_engine(database)
        with engine.connect() as connection:
            tables = set(connection.execute(sqlalchemy.text(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_name IN ('trials', 'runs', 'alembic_version')"
            )).all())  # fmt: skip
        engine.dispose()
        assert tables == {("optuna", "trials"), ("optuna", "alembic_version"), ("public", "runs"),
                          ("public", "alembic_version")}  # fmt: skip
