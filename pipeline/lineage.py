"""Where a run's data and code came from, as MLflow shows it: the prepared splits as MLflow datasets
(name, content hash, source, schema), the git commit and whether the tree was clean, and the DVC
experiment that ran it."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any


def dvc_written_paths(directory: Path) -> set[str]:
    """What DVC itself writes into git: dvc.lock and every stage's outs, metrics and plots."""
    import yaml

    try:
        stages = (yaml.safe_load((directory / "dvc.yaml").read_text()) or {}).get("stages", {})
    except (OSError, yaml.YAMLError):
        return {"dvc.lock"}
    paths = {"dvc.lock"}
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                paths.add(next(iter(entry)) if isinstance(entry, dict) else str(entry))
    return paths


def git_state(directory: Path) -> dict[str, str]:
    """The source of a run as MLflow's UI shows it (commit, branch, remote), and whether the
    working tree differs from the commit in anything but what DVC writes (`git.dirty`, with the
    paths in `git.dirty_paths`)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {}
    written = dvc_written_paths(directory)
    changed = (git("diff", "--name-only", "HEAD") or "").splitlines()  # tracked files, staged or not
    dirty = sorted(
        path for path in changed if not any(path == out or path.startswith(out.rstrip("/") + "/") for out in written)
    )
    tags = {
        "mlflow.source.git.commit": commit,
        "mlflow.source.type": "LOCAL",
        "git.dirty": str(bool(dirty)).lower(),
    }
    if dirty:
        tags["git.dirty_paths"] = ", ".join(dirty)[:5000]
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":
        tags["mlflow.source.git.branch"] = branch
    remote = git("remote", "get-url", "origin")
    if remote and "://" in remote and "@" not in remote.split("://", 1)[1].split("/", 1)[0]:
        tags["mlflow.source.git.repoURL"] = remote  # never a local path, never credentials
    return tags


def dvc_experiment_tags() -> dict[str, str]:
    """Set by `dvc exp run` for its stage commands: the experiment's name and git baseline."""
    tags = {}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.experiment"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc.baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags


def split_inputs(meta, hashes: dict[str, str]) -> dict[str, dict[str, Any]]:
    """What `Tracker.log_dataset_inputs` needs of each prepared split (records.PreparedMeta)."""
    import numpy as np
    from mlflow.types import TensorSpec

    features = TensorSpec(np.dtype(meta.dtype), (-1, *meta.input_shape), meta.input_name)
    targets = TensorSpec(np.dtype("int64"), (-1,), "label")
    return {
        split: {"sha256": sha, "examples": meta.counts[split], "features": features, "targets": targets}
        for split, sha in hashes.items()
    }


def log_dataset_inputs(run, name: str, source: str, splits: dict[str, dict[str, Any]]) -> None:
    """One MLflow dataset per split, as the run page's Datasets and the Datasets view show them.

    Each split gives `sha256` (its content hash: the digest, cut to the 36 characters MLflow's
    store keeps), `examples`, `features` and `targets` (MLflow TensorSpecs). The source is
    `data.source`, as params.yaml names it (prepare records it in meta.json)."""
    from mlflow.data.schema import TensorDatasetSchema
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types import Schema

    source_type = "http" if source.startswith(("http://", "https://")) else "local"
    source_json = json.dumps({"url": source} if source_type == "http" else {"uri": source})
    inputs = []
    for split, info in splits.items():
        schema = TensorDatasetSchema(features=Schema([info["features"]]), targets=Schema([info["targets"]]))
        dataset = Dataset(
            name=f"{name}/{split}",
            digest=info["sha256"][:32],
            source_type=source_type,
            source=source_json,
            schema=json.dumps(schema.to_dict()),
            profile=json.dumps({"num_rows": info["examples"], "sha256": info["sha256"]}),
        )
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", split)]))
    # The store inserts a dataset it has not seen after looking it up: two runs logging the same
    # split at once can both miss it and one insert fails (a unique-key violation). By then the
    # other has stored it, and a retry links the existing dataset.
    from mlflow.exceptions import MlflowException

    for attempt in range(3):
        try:
            run.client.log_inputs(run.run_id, datasets=inputs)
            return
        except MlflowException:
            if attempt == 2:
                raise
            time.sleep(0.5 * (attempt + 1))
