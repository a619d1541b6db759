"""Shared fixtures: a tiny IDX data set, a prepared project directory, and throwaway git + DVC copies
of the repo for real `dvc` runs. What they are built from lives in tests/helpers/."""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from helpers.commands import REPO, committed_params, run
from helpers.data import fetch_and_prepare, write_idx_dataset

# What the shell that runs pytest may have set and the pipeline reads: a tracking server, debug
# tracebacks, a multi-worker cluster, a DVC experiment. No test, and no stage a test runs, sees them.
SHELL_VARIABLES = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "PIPELINE_DEBUG",
    "TF_CONFIG",
    "DVC_ROOT",
    "DVC_EXP_NAME",
    "DVC_EXP_BASELINE_REV",
)


@pytest.fixture(scope="session", autouse=True)
def shell_variables_kept_out():
    """For the session's own fixtures too (the shared reproduced repo runs before any test's fixture)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in SHELL_VARIABLES:
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(autouse=True)
def isolated_process_state(monkeypatch):
    """Each test starts without the shell's variables, and MLflow's process-wide tracking and registry
    URIs (`mlflow.set_tracking_uri`, which also sets MLFLOW_TRACKING_URI) are unset afterwards."""
    for name in SHELL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


@pytest.fixture
def tiny_data(tmp_path) -> dict:
    return write_idx_dataset(tmp_path / "source")


TINY_TRAIN = {
    "model": [
        {"Conv2D": {"filters": 4, "kernel_size": 3, "activation": "relu"}},
        {"MaxPooling2D": {"pool_size": 4}},
        {"Flatten": {}},
    ],
    "epochs": 2,
    "batch_size": 16,
    "shuffle_buffer": 64,
    "early_stopping_patience": 2,
}


def tiny_params(data: dict, **sections) -> dict:
    params = committed_params()
    params["data"] = {"name": None, **data}
    params["prepare"] = {**params["prepare"], "shard_size": 50}
    if "train" in params:
        params["train"] = {**params["train"], **TINY_TRAIN}
    for name, values in sections.items():
        params[name] = {**params.get(name, {}), **values}
    return params


def make_dvc_repo(repo: Path, data: dict, **sections) -> Path:
    """A fresh git + DVC repo holding this project's pipeline, pointed at `data`, params committed."""
    repo.mkdir(parents=True)
    shutil.copy(REPO / "dvc.yaml", repo)
    shutil.copy(REPO / ".gitignore", repo)
    shutil.copytree(REPO / "pipeline", repo / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(data, **sections), sort_keys=False))
    run(["git", "init", "-q"], repo)
    run(["git", "config", "user.email", "test@example.com"], repo)
    run(["git", "config", "user.name", "test"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "config", "core.analytics", "false"], repo)
    # The project's offline `dvc plots show` page: its .dvc/config setting, and the template
    # scripts/setup.sh writes (python -m pipeline.plots_page).
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc/config")
    name = config["plots"]["html_template"]
    if not (REPO / ".dvc" / name).exists():
        pytest.fail(f".dvc/{name} is missing: run scripts/setup.sh")
    shutil.copy(REPO / ".dvc" / name, repo / ".dvc" / name)
    with open(repo / ".dvc/.gitignore", "a") as ignore:
        ignore.write(f"/{name}\n")
    run(["dvc", "config", "plots.html_template", name], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "init"], repo)
    return repo


@pytest.fixture
def chromium() -> str:
    """Debian's chromium: missing, a failure under CI and a skip elsewhere, before the test starts."""
    from helpers.browser import chromium_path

    return chromium_path()


@pytest.fixture
def dvc_repo(tmp_path, tiny_data, empty_mlflow_store) -> Path:
    """A fresh git + DVC repo holding this project's pipeline, pointed at the tiny data set; its
    embedded MLflow store (never committed) a copy of an empty one (`reproduced` makes its own)."""
    repo = make_dvc_repo(tmp_path / "repo", tiny_data)
    shutil.copy(empty_mlflow_store, repo / "mlflow.db")
    return repo


# A whole pipeline on the tiny data that trains to a real model (the tiny task is learnt in 6 epochs),
# averaging each image with its mirror as the default model does (pipeline/mirror.py), so every
# exported form and verify's parity hold that graph.
REPRODUCED = {
    "train": {"epochs": 6, "learning_rate": 0.01, "early_stopping_patience": 0, "test_time_flip": True},
    "evaluate": {"gate": {"min_accuracy": 0.5, "max_drop": 0.02, "baseline": "champion"}},
    "export": {"calibration_size": 60},
}


@dataclass(frozen=True)
class Reproduced:
    repo: Path
    source: Path  # the tiny IDX data set's files
    console: subprocess.CompletedProcess  # what `dvc repro` printed


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory) -> Reproduced:
    """One repo, `dvc repro`-ed once on the tiny data, shared by the tests that only read what the
    pipeline made (outputs, metrics, plots, the MLflow store and registry): `reproduced_copy` for a
    test that changes anything."""
    root = built_once(tmp_path_factory, "reproduced", reproduce)
    console = subprocess.CompletedProcess(**json.loads((root / "console.json").read_text()))
    return Reproduced(root / "repo", root / "source", console)


def reproduce(root: Path) -> None:
    """The tiny data set at `root`/source, `root`/repo after `dvc repro`, what it printed in
    `root`/console.json."""
    data = write_idx_dataset(root / "source")
    repo = make_dvc_repo(root / "repo", data, **REPRODUCED)
    # Sampled every 0.2 s, the few seconds of tiny training still give system metrics.
    console = run(["dvc", "repro"], repo, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="0.2")
    fields = {"args": console.args, "returncode": 0, "stdout": console.stdout, "stderr": console.stderr}
    (root / "console.json").write_text(json.dumps(fields))


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None], rewrite: tuple[str, ...] = ()) -> Path:
    """A directory `build(root)` makes once for the whole run (a session or module fixture's). Under
    pytest-xdist, where such fixtures run once per process, the first process that needs it builds
    it (the others wait for it) and each process gets a copy of its own: any MLflow store in it
    pointed at its project's copy (the directory it is in), and the files `rewrite` names (relative
    to the root) at the copy's paths."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        root = tmp_path_factory.mktemp(name)
        build(root)
        return root
    shared = tmp_path_factory.getbasetemp().parent  # the run's directory, above each process's own
    built, done = shared / name, shared / f"{name}.built"
    with exclusive(shared / f"{name}.lock"):
        if not done.is_file():
            shutil.rmtree(built, ignore_errors=True)
            built.mkdir()
            build(built)
            done.touch()
    own = copied(built, tmp_path_factory.mktemp(name))
    for path in rewrite:
        text = (own / path).read_text()
        (own / path).write_text(text.replace(f"{built}/", f"{own}/"))
    return own


@contextlib.contextmanager
def exclusive(lock: Path):
    """Held by one process at a time (an flock on `lock`)."""
    import fcntl

    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture
def reproduced_copy(reproduced, tmp_path) -> Path:
    """A copy of the reproduced repo (git, DVC cache, outputs, its own MLflow store) to change."""
    return copied(reproduced.repo, tmp_path / "repo")


def copied(source: Path, copy: Path) -> Path:
    """`source` copied to `copy` (which may exist, empty), each MLflow store in it pointed at its
    project's copy (the directory the store is in)."""
    shutil.copytree(source, copy, symlinks=True, dirs_exist_ok=True)
    for store in copy.rglob("mlflow.db"):
        project = store.parent.relative_to(copy)
        relocate_store(store, source / project, copy / project)
    return copy


def relocate_store(db: Path, old: Path, new: Path) -> None:
    """Point a copied MLflow store at its copy's artifacts: the store records absolute locations (an
    experiment's artifact root, each run's artifact URI), which would send the copy's new runs'
    artifacts into the original's mlartifacts/."""
    old_prefix, new_prefix = f"{old}/", f"{new}/"
    with contextlib.closing(sqlite3.connect(db)) as store, store:
        tables = [name for (name,) in store.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for _, column, kind, *_ in store.execute(f'PRAGMA table_info("{table}")'):
                if "CHAR" in kind.upper() or "TEXT" in kind.upper():
                    store.execute(
                        f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) WHERE instr("{column}", ?) > 0',
                        (old_prefix, new_prefix, old_prefix),
                    )


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables made (MLflow's migrations take 2-9 s), never written to:
    `mlflow_run`, `project` and `dvc_repo` copy it."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_run(empty_mlflow_store, tmp_path, monkeypatch):
    """A real MLflow run (pipeline.tracking.Run) in a store of this test's own, a copy of an empty
    one, with its artifacts under tmp_path/mlartifacts (the project root a local store's artifacts
    go to: pipeline/tracking.py)."""
    from pipeline.tracking import Run

    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(empty_mlflow_store, store / "mlflow.db")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    return Run.start(f"sqlite:///{store / 'mlflow.db'}", "t")


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory):
    """Every exported form of an untrained model whose weights are set by hand to classify the tiny
    IDX data (helpers/exports.py), shared read-only by the tests of what reads exported files: copy a
    file before changing it."""
    from helpers.exports import export_tiny_image_model

    return export_tiny_image_model(tmp_path_factory.mktemp("exported"))


@pytest.fixture
def project(tiny_data, tmp_path, tmp_path_factory, empty_mlflow_store):
    """A working directory with prepared tiny data and params, as DVC would run the stage in; its
    MLflow store lives elsewhere (as a team's would), so the run file names it by its full URI. The
    store is a copy of an empty one (MLflow makes its tables in ~2 s)."""
    store = tmp_path_factory.mktemp("store")
    shutil.copy(empty_mlflow_store, store / "mlflow.db")
    params = {
        "data": tiny_data,
        "prepare": {"shard_size": 50},
        "train": dict(TINY_TRAIN),
        "mlflow": {"tracking_uri": f"sqlite:///{store / 'mlflow.db'}", "experiment_name": "t"},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    report, _ = fetch_and_prepare(tiny_data, tmp_path / "data")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/data.json").write_text(json.dumps(report))
    return tmp_path
