"""Shared fixtures: tiny IDX data sets made here, and throwaway copies of the repo for real `dvc` runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.formats.idx import write_idx
from pipeline.hashing import content_sha256

REPO = Path(__file__).resolve().parents[1]
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


@pytest.fixture(autouse=True)
def isolated_tracking_uri(monkeypatch):
    """Each test starts without MLFLOW_TRACKING_URI, and whatever MLflow sets is undone afterwards."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def make_images(labels: np.ndarray, shape=(28, 28), seed: int = 0) -> np.ndarray:
    """Learnable images: each class lights its own horizontal band, on noise."""
    rng = np.random.default_rng(seed)
    n_classes = int(labels.max()) + 1
    images = rng.integers(0, 60, size=(len(labels), *shape), dtype=np.uint8)
    band = max(1, shape[0] // max(n_classes, 1))
    for i, label in enumerate(labels):
        images[i, label * band : (label + 1) * band, :] = 200 + rng.integers(0, 55)
    return images


def write_idx_dataset(directory: Path, n_train=120, n_test=40, n_classes=4, shape=(28, 28), seed=0) -> dict:
    """Write a complete four-file IDX data set; returns the params `data` section for it."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y_train = np.arange(n_train) % n_classes
    rng.shuffle(y_train)
    y_test = np.arange(n_test) % n_classes
    arrays = {
        "train_images": make_images(y_train, shape, seed),
        "train_labels": y_train.astype(np.uint8),
        "test_images": make_images(y_test, shape, seed + 1),
        "test_labels": y_test.astype(np.uint8),
    }
    for role, name in FILES.items():
        write_idx(directory / name, arrays[role])
    return {
        "format": "idx",
        "source": str(directory),
        "idx": {
            **FILES,
            "sha256": {name: content_sha256(directory / name) for name in FILES.values()},
            "class_names": [f"class_{i}" for i in range(n_classes)],
        },
    }


def with_idx(data: dict, **changes) -> dict:
    """The `data` section with keys of its `idx` part changed."""
    return {**data, "idx": {**data["idx"], **changes}}


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
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"] = data
    params["prepare"] = {**params["prepare"], "shard_size": 50}
    if "train" in params:
        params["train"] = {**params["train"], **TINY_TRAIN}
    for name, values in sections.items():
        params[name] = {**params.get(name, {}), **values}
    return params


def set_params(directory: Path, section: str, **values) -> None:
    """Change keys of one section of `directory`/params.yaml."""
    params = yaml.safe_load((directory / "params.yaml").read_text())
    params.setdefault(section, {}).update(values)
    (directory / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def tool_env(**extra) -> dict:
    """Environment for subprocesses: the project's venv first on PATH, TF quiet."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(os.path.abspath(sys.executable)).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, **extra_env) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(**extra_env), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def dvc_repo(tmp_path, tiny_data) -> Path:
    """A fresh git + DVC repo holding this project's pipeline, pointed at the tiny data set."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / "dvc.yaml", repo)
    shutil.copy(REPO / ".gitignore", repo)
    shutil.copytree(REPO / "pipeline", repo / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(tiny_data), sort_keys=False))
    run(["git", "init", "-q"], repo)
    run(["git", "config", "user.email", "test@example.com"], repo)
    run(["git", "config", "user.name", "test"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "config", "core.analytics", "false"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "init"], repo)
    return repo


@pytest.fixture
def project(tiny_data, tmp_path):
    """A working directory with prepared tiny data and params, as DVC would run the stage in."""
    params = {
        "data": tiny_data,
        "prepare": {"shard_size": 50},
        "train": dict(TINY_TRAIN),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}", "experiment_name": "t"},
    }
    (tmp_path / "store").mkdir()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    from pipeline.fetch import fetch
    from pipeline.params import parse_params
    from pipeline.prepare import prepare

    typed = parse_params(params)
    fetch(typed.data, tmp_path / "data/raw")
    prepare(tmp_path / "data/raw", tmp_path / "data/prepared", typed)
    return tmp_path


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def subset_of_fashion_mnist(directory: Path, n_train: int, n_test: int) -> dict:
    """The first examples of Debian's real Fashion-MNIST, written as an IDX data set; returns the
    params `data` section. Missing data fails under CI (which installs it) and skips elsewhere."""
    from pipeline.formats.idx import read_idx

    if not FASHION_MNIST.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{FASHION_MNIST} is missing: CI must install dataset-fashion-mnist")
        pytest.skip(f"{FASHION_MNIST} missing (apt-get install dataset-fashion-mnist)")
    directory.mkdir(parents=True, exist_ok=True)
    for role, name in FILES.items():
        array = read_idx(FASHION_MNIST / name, ndims=(1, 3))
        write_idx(directory / name, array[: n_train if role.startswith("train") else n_test])
    classes = yaml.safe_load((REPO / "params.yaml").read_text())["data"]["idx"]["class_names"]
    return {"format": "idx", "source": str(directory), "idx": {**FILES, "sha256": None, "class_names": classes}}
