"""Faults at the train stage's edges (issue 36's rows): a damaged, locked or read-only tracking store,
Ctrl-C mid-epoch, a layer too large for the machine and an unknown preset are each one `error:` line
naming the file or key, a non-zero exit, no traceback and no half-written output."""

import contextlib
import json
import signal
import sqlite3
import subprocess
import time

import pytest
import yaml

from helpers.commands import REPO, run, set_params, stage_argv, tool_env
from helpers.hostile import PYTHON

pytestmark = pytest.mark.slow


def train(project, **env):
    return run(stage_argv("train", PYTHON), project, check=False, PYTHONPATH=str(REPO), **env)


def store_of(project):
    uri = yaml.safe_load((project / "params.yaml").read_text())["mlflow"]["tracking_uri"]
    return uri, uri.removeprefix("sqlite:///")


def assert_one_line_and_nothing_written(proc, project, expected_end):
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: MLflow store sqlite:///") and last.endswith(expected_end), last
    assert not (project / "models/model.keras").exists() and not (project / "models/.train-state").exists()


def test_a_damaged_store_is_one_line_before_any_training(project):
    _, path = store_of(project)
    with open(path, "wb") as damaged:
        damaged.write(b"not sqlite at all\n" * 512)
    assert_one_line_and_nothing_written(
        train(project),
        project,
        "mlflow.db: not a database MLflow can read (damaged?): move it aside (a new one is made) or restore a copy",
    )


def test_a_store_another_process_holds_locked_is_one_line(project, empty_mlflow_store):
    _, path = store_of(project)
    with open(empty_mlflow_store, "rb") as source, open(path, "wb") as copy:
        copy.write(source.read())
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as holder:
        holder.execute("BEGIN EXCLUSIVE")  # as a long write by another training would
        proc = train(project)
    assert_one_line_and_nothing_written(proc, project, "mlflow.db: locked by another process: retry once it is done")


def test_a_read_only_store_s_error_is_named_with_what_to_do(tmp_path):
    """Root (as CI runs) writes any file whatever its mode, so the stage cannot be shown a read-only
    store: SQLite's own error for one, opened read-only, is."""
    from pipeline.errors import PipelineError
    from pipeline.tracking import store_access

    path = tmp_path / "mlflow.db"
    with contextlib.closing(sqlite3.connect(path)) as store:
        store.execute("CREATE TABLE runs (id TEXT)")
    read_only = contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True))
    with pytest.raises(PipelineError) as error, store_access(f"sqlite:///{path}"), read_only as store:
        store.execute("INSERT INTO runs VALUES ('a')")
    assert str(error.value).endswith("mlflow.db: cannot be written (read-only?): make the file and its folder writable")


def test_ctrl_c_mid_epoch_is_one_line_ends_the_run_killed_and_keeps_what_resumes(project):
    from mlflow.tracking import MlflowClient

    set_params(project, "train", epochs=200, early_stopping_patience=0, schedule="constant")
    state = project / "models/.train-state"
    proc = subprocess.Popen(
        stage_argv("train", PYTHON),
        cwd=project,
        env=tool_env(PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=""),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not ((state / "history.csv").exists() and (state / "backup").exists()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "error: interrupted" and "Traceback" not in stderr
    assert not (project / "models/model.keras").exists(), "an interrupted training published a model"
    run_id = json.loads((state / "fingerprint.json").read_text())["run_id"]
    uri, _ = store_of(project)
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"


def test_a_layer_too_large_for_the_machine_is_refused_before_it_is_allocated(project):
    set_params(project, "train", model=[{"Flatten": {}}, {"Dense": {"units": 1_000_000_000}}])
    started = time.monotonic()
    proc = train(project)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: params.yaml: train.model[1]: Dense would have 785,000,000,000 weights; training ")
    assert last.endswith(" GiB available"), last
    assert time.monotonic() - started < 120  # refused, not swapped to death
    assert not (project / "models/.train-state").exists()


def test_an_unknown_preset_is_refused_naming_the_key_and_the_choices(project):
    set_params(project, "train", model="resnet9000")
    proc = train(project)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: params.yaml: train.model must be a preset, ") and "'cnn'" in last, last
