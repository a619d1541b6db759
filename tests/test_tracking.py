"""MLflow tracking: where runs go (DVC_ROOT, env, params), tags DVC experiments carry, fail-fast."""

import json
import socket
import subprocess
import time

import pytest

from pipeline.errors import PipelineError
from pipeline.lineage import dvc_experiment_tags, git_state
from pipeline.tracking import Run, portable_uri, resolve_tracking_uri


def test_default_store_is_mlflow_db_at_the_dvc_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"
    # A queued `dvc exp run` works in a copy under .dvc/tmp/; DVC points DVC_ROOT at the real repo.
    copy = tmp_path / ".dvc/tmp/exps/run/abc"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri("sqlite:///stores/team.db") == f"sqlite:///{tmp_path}/stores/team.db"


def test_environment_wins_over_params(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri("sqlite:////elsewhere.db") == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri("sqlite:////elsewhere.db") == "sqlite:////elsewhere.db"


def test_dvc_experiment_tags(monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "brave-lion")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    assert dvc_experiment_tags() == {"dvc.experiment": "brave-lion", "dvc.baseline_rev": "a" * 40}


def test_git_state_reports_commit_and_dirty(tmp_path):
    assert git_state(tmp_path) == {}
    for cmd in (["init", "-q"], ["config", "user.email", "t@e"], ["config", "user.name", "t"]):
        subprocess.run(["git", *cmd], cwd=tmp_path, check=True)
    (tmp_path / "f").write_text("1")
    subprocess.run(["git", "add", "f"], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-qm", "x"], cwd=tmp_path, check=True)
    state = git_state(tmp_path)
    assert len(state["mlflow.source.git.commit"]) == 40 and state["git.dirty"] == "false"
    (tmp_path / "f").write_text("2")
    assert git_state(tmp_path)["git.dirty"] == "true"
    assert git_state(tmp_path)["git.dirty_paths"] == "f"


def test_what_dvc_writes_does_not_make_the_tree_dirty(tmp_path):
    """dvc.lock and the stages' git-tracked outputs change under every `dvc repro`: not the user's edits."""
    for cmd in (["init", "-q"], ["config", "user.email", "t@e"], ["config", "user.name", "t"]):
        subprocess.run(["git", *cmd], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: x\n    outs: [{models/history.csv: {cache: false}}]\n"
        "    metrics: [{reports/m.json: {cache: false}}]\n"
    )
    for name in ("dvc.lock", "models/history.csv", "reports/m.json", "code.py"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("1")
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-qm", "x"], cwd=tmp_path, check=True)
    for name in ("dvc.lock", "models/history.csv", "reports/m.json"):
        (tmp_path / name).write_text("2")
    assert git_state(tmp_path)["git.dirty"] == "false"
    (tmp_path / "code.py").write_text("2")
    state = git_state(tmp_path)
    assert state["git.dirty"] == "true" and state["git.dirty_paths"] == "code.py"


def test_run_file_names_the_embedded_store_relative_to_the_project(monkeypatch, tmp_path):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert portable_uri(f"sqlite:///{tmp_path}/mlflow.db") == "sqlite:///mlflow.db"
    assert portable_uri("sqlite:////elsewhere/team.db") == "sqlite:////elsewhere/team.db"
    assert portable_uri("http://mlflow.internal:5000") == "http://mlflow.internal:5000"
    tracker = Run.start(None, "exp")
    assert tracker.run_file() == {
        "run_id": tracker.run_id, "experiment_id": tracker.experiment_id, "tracking_uri": "sqlite:///mlflow.db"
    }  # fmt: skip


def test_a_run_the_reachable_store_lacks_is_one_line_and_creates_nothing(monkeypatch, tmp_path):
    """A clone that got the run file, but not the store, through DVC/git: say what to do, touch nothing."""
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    run_file = tmp_path / "run.json"
    run_file.write_text('{"run_id": "abc123", "experiment_id": "1", "tracking_uri": "sqlite:///mlflow.db"}')
    with pytest.raises(PipelineError) as error:
        Run.resume(run_file)
    message = str(error.value)
    assert "MLflow run abc123 is in the embedded store sqlite:///mlflow.db, which this clone does not have" in message
    assert "MLFLOW_TRACKING_URI" in message and "dvc repro train" in message
    assert list(tmp_path.iterdir()) == [run_file]
    # A store that exists but lacks the run (another machine's run): one line too.
    Run.start(None, "exp")
    with pytest.raises(PipelineError, match="MLflow run abc123 is not in the store sqlite:///mlflow.db"):
        Run.resume(run_file)


def test_runs_are_distinct_and_resumable(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = Run.start(uri, "exp", run_name="a", tags={"k": "v"})
    second = Run.start(uri, "exp", run_name="b")
    assert first.run_id != second.run_id and first.experiment_id == second.experiment_id
    (tmp_path / "run.json").write_text(json.dumps(first.run_file()))
    again = Run.resume(tmp_path / "run.json")
    again.log_metrics({"m": 1.5}, step=2)
    assert again.client.get_run(first.run_id).data.metrics["m"] == 1.5
    reopened = Run.start(uri, "exp", resume_run_id=first.run_id)
    assert reopened.run_id == first.run_id


def test_missing_or_bad_run_file(tmp_path):
    with pytest.raises(PipelineError, match=r"run\.json: MLflow run file not found"):
        Run.resume(tmp_path / "run.json")
    (tmp_path / "run.json").write_text('{"run_id": 1}')
    with pytest.raises(PipelineError, match=r"run\.json: not an MLflow run file"):
        Run.resume(tmp_path / "run.json")


def test_unreachable_server_fails_fast(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    started = time.monotonic()
    with pytest.raises(PipelineError, match=rf"MLflow tracking server http://127.0.0.1:{port} is unreachable"):
        Run.start(f"http://127.0.0.1:{port}", "exp")
    assert time.monotonic() - started < 10


def test_artifacts_of_a_temp_experiment_copy_land_in_the_real_repo(monkeypatch, tmp_path):
    """A queued `dvc exp run` works in .dvc/tmp/exps/...; its artifacts must outlive that copy."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    copy = tmp_path / ".dvc/tmp/exps/run/abc"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    tracker = Run.start(None, "exp")
    tracker.log_text("hello", "notes/hello.txt")
    location = tracker.client.get_experiment(tracker.experiment_id).artifact_location
    assert location == (tmp_path / "mlartifacts").as_uri()
    assert (tmp_path / "mlartifacts" / tracker.run_id / "artifacts/notes/hello.txt").read_text() == "hello"
    assert (tmp_path / "mlflow.db").is_file() and not (copy / "mlflow.db").exists()
