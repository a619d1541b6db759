"""The one module that talks to MLflow. Imported by stages at their edges; no side effects at import.

Tracking URI: MLFLOW_TRACKING_URI, else `mlflow.tracking_uri` in params, else an embedded SQLite
store `mlflow.db` at the repo root. The root is DVC_ROOT when DVC sets it (a queued or temp
`dvc exp run` runs in a copy under .dvc/tmp/, and DVC points DVC_ROOT at the parent repo), else
the working directory — so plain `dvc repro` and every experiment write to the same store.

`train` starts one run per trained model and writes its id to a small file; evaluate, export and
verify log into that run through `Tracker.resume`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError, first_line

RUN_FILE_KEYS = ("run_id", "experiment_id", "tracking_uri")
# The registry's aliases: the version in production, and the newest candidate (pipeline/promote.py).
CHAMPION, CHALLENGER = "champion", "challenger"


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def resolve_tracking_uri(configured: str | None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if not uri:
        return f"sqlite:///{project_root() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # A relative SQLite path would land in each experiment's temp copy: anchor it at the root.
        return f"sqlite:///{project_root() / uri[len('sqlite:///') :]}"
    return uri


def portable_uri(uri: str) -> str:
    """The tracking URI as a run file records it: an embedded store under the project root as a
    path relative to the root (`sqlite:///mlflow.db`), so the file means the same in any clone."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        try:
            return prefix + Path(uri[len(prefix) :]).resolve().relative_to(project_root()).as_posix()
        except ValueError:
            pass  # a store outside the project: keep its path
    return uri


def local_store(uri: str) -> Path | None:
    """The file of an embedded SQLite store, None for a server."""
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts. For a local store, beside it at the repo root:
    MLflow's default (./mlruns of whoever creates the experiment) would put them inside a temp
    `dvc exp run` copy, deleted afterwards. A server decides for itself (None)."""
    if uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri:
        return (project_root() / "mlartifacts").as_uri()
    return None


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

    from pipeline.model import input_name

    features = TensorSpec(np.dtype(meta.dtype), (-1, *meta.input_shape), input_name(tuple(meta.input_shape)))
    targets = TensorSpec(np.dtype("int64"), (-1,), "label")
    return {
        split: {"sha256": sha, "examples": meta.counts[split], "features": features, "targets": targets}
        for split, sha in hashes.items()
    }


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast on an unreachable tracking server: MLflow's own client retries for minutes."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # something answered; MLflow reports what is wrong with it
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PipelineError(f"MLflow tracking server {uri} is unreachable ({reason})") from None


def existing_store_client(uri: str, missing: str):
    """A client of the store at `uri`, which must exist already: an embedded store's file is checked
    before MLflow sees the URI (opening it would create an empty database), a server is asked for
    its health. `missing` is the one-line error for an absent embedded store."""
    store = local_store(uri)
    if store is not None and not store.exists():
        raise PipelineError(missing)
    check_reachable(uri)
    return Tracker._client(uri)


class Tracker:
    """One MLflow run, addressed by id through an explicit client (no global active run)."""

    def __init__(self, client, run_id: str, experiment_id: str, tracking_uri: str):
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.tracking_uri = tracking_uri

    # ------------------------------------------------------------------ opening
    @staticmethod
    def _client(tracking_uri: str):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=tracking_uri)

    @classmethod
    def start(
        cls,
        configured_uri: str | None,
        experiment_name: str,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        resume_run_id: str | None = None,
    ) -> Tracker:
        """Start a new run, or reopen `resume_run_id` (an interrupted training) when it still exists."""
        from mlflow.exceptions import MlflowException

        uri = resolve_tracking_uri(configured_uri)
        check_reachable(uri)
        try:
            client = cls._client(uri)
            if resume_run_id:
                try:
                    run = client.get_run(resume_run_id)
                    client.update_run(resume_run_id, status="RUNNING")
                    return cls(client, resume_run_id, run.info.experiment_id, uri)
                except MlflowException:
                    pass  # the store was reset since: start afresh
            experiment_id = cls._experiment_id(client, experiment_name, uri)
            run = client.create_run(experiment_id, run_name=run_name, tags=tags or {})
        except MlflowException as exc:
            raise PipelineError(f"MLflow tracking URI {uri}: {first_line(exc)}") from None
        except Exception as exc:  # unreachable server, bad scheme: fail before any training
            if type(exc).__module__.startswith(("requests", "urllib3", "sqlalchemy")):
                raise PipelineError(f"MLflow tracking URI {uri}: cannot connect ({type(exc).__name__})") from None
            raise
        return cls(client, run.info.run_id, experiment_id, uri)

    @staticmethod
    def _experiment_id(client, name: str, uri: str) -> str:
        from mlflow.exceptions import MlflowException

        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return client.create_experiment(name, artifact_location=artifact_root(uri))
        except MlflowException as exc:
            # Another training created it between our look-up and our create: use theirs.
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return client.get_experiment_by_name(name).experiment_id

    @classmethod
    def resume(cls, run_file: str | os.PathLike) -> Tracker:
        """The run that `train` started, from its run file."""
        path = Path(run_file)
        try:
            info = json.loads(path.read_text())
            ids = {k: info[k] for k in RUN_FILE_KEYS}
        except FileNotFoundError:
            raise PipelineError(f"{path}: MLflow run file not found (run `dvc repro train`)") from None
        except (json.JSONDecodeError, KeyError, TypeError):
            raise PipelineError(f"{path}: not an MLflow run file (needs {', '.join(RUN_FILE_KEYS)})") from None
        # The environment wins, as for `start`, so a shared server can be named in any clone.
        uri = resolve_tracking_uri(ids["tracking_uri"])
        run_id = ids["run_id"]
        client = existing_store_client(
            uri,
            missing=f"{path}: MLflow run {run_id} is in the embedded store {portable_uri(uri)}, which this "
            "clone does not have; set MLFLOW_TRACKING_URI to the shared tracking server, or rerun "
            "`dvc repro train`",
        )
        tracker = cls(client, run_id, ids["experiment_id"], uri)
        tracker.check_run_exists(path)
        return tracker

    def check_run_exists(self, run_file: Path) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(self.run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                where = portable_uri(self.tracking_uri)
                raise PipelineError(f"MLflow tracking URI {where}: {first_line(exc)}") from None
            raise PipelineError(
                f"{run_file}: MLflow run {self.run_id} is not in the store {portable_uri(self.tracking_uri)}; "
                "set MLFLOW_TRACKING_URI to the tracking server that has it, or rerun `dvc repro train`"
            ) from None

    def write_run_file(self, path: str | os.PathLike) -> None:
        from pipeline.atomic import write_json

        uri = portable_uri(self.tracking_uri)
        write_json(path, {"run_id": self.run_id, "experiment_id": self.experiment_id, "tracking_uri": uri})

    # ------------------------------------------------------------------ logging
    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        existing = self.client.get_run(self.run_id).data.params
        items = [p for p in items if p.key not in existing]  # a resumed run keeps its params
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in sorted(metrics.items())]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start : start + 1000])

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_onnx_model(self, path: str | os.PathLike, registered_name: str) -> str:
        """Log the ONNX file as an MLflow model and register it; returns the new registry version.

        The signature is the file's own input (name, dtype, shape with a dynamic batch), so
        `mlflow models serve` rejects a wrong name, dtype or shape with MLflow's schema error."""
        import mlflow
        import numpy as np
        import onnx
        import onnxruntime as ort
        from mlflow.models import infer_signature

        model = onnx.load(str(path))
        # The providers this machine has (CPU only on a CPU machine: no warning about a missing CUDA).
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (input_meta,) = session.get_inputs()
        (output_meta,) = session.get_outputs()
        dtype = onnx.helper.tensor_dtype_to_np_dtype(model.graph.input[0].type.tensor_type.elem_type)
        example = np.zeros((1, *input_meta.shape[1:]), dtype=dtype)
        output = session.run(None, {input_meta.name: example})[0]
        signature = infer_signature({input_meta.name: example}, {output_meta.name: output})
        # mlflow.<flavor>.log_model only speaks the fluent API, which needs the global tracking URI
        # (mlflow.set_tracking_uri also exports it as MLFLOW_TRACKING_URI to this process).
        mlflow.set_tracking_uri(self.tracking_uri)
        with mlflow.start_run(run_id=self.run_id):
            info = mlflow.onnx.log_model(
                model,
                name="onnx_model",
                signature=signature,
                input_example={input_meta.name: example},
                registered_model_name=registered_name,
                save_as_external_data=False,
                onnx_execution_providers=providers,
            )
        return str(info.registered_model_version)

    def load_registered_model(self, name: str, version: str):
        """The registered version as MLflow serves it (`mlflow.pyfunc`, with its schema enforcement)."""
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        return mlflow.pyfunc.load_model(f"models:/{name}/{version}")

    def set_description(self, text: str) -> None:
        """The run page's Description (MLflow keeps it in the `mlflow.note.content` tag)."""
        self.client.set_tag(self.run_id, "mlflow.note.content", text)

    def log_dataset_inputs(self, name: str, source: str, splits: dict[str, dict[str, Any]]) -> None:
        """One MLflow dataset per split, as the run page's Datasets and the Datasets view show them.

        Each split gives `sha256` (its content hash: the digest, cut to the 36 characters MLflow's
        store keeps), `examples`, `features` and `targets` (MLflow TensorSpecs). The source is
        `data.source`, as params.yaml names it."""
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
                self.client.log_inputs(self.run_id, datasets=inputs)
                return
            except MlflowException:
                if attempt == 2:
                    raise
                time.sleep(0.5 * (attempt + 1))

    def start_system_metrics(self, resume: bool = False, interval: float = 5.0):
        """MLflow's own sampler of CPU, memory, disk, network (and GPU where pynvml finds one) as
        `system/*` metrics of this run; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides the interval.
        Returns the monitor, whose `finish()` stops it."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            self.run_id, sampling_interval=interval, resume_logging=resume, tracking_uri=self.tracking_uri
        )
        monitor.start()
        return monitor

    @property
    def registry(self) -> Registry:
        return Registry(self.client, self.tracking_uri)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


class Registry:
    """The model registry's versions, aliases (`champion`, `challenger`) and their tags."""

    def __init__(self, client, tracking_uri: str):
        self.client, self.tracking_uri = client, tracking_uri

    @classmethod
    def open(cls, configured_uri: str | None) -> Registry:
        uri = resolve_tracking_uri(configured_uri)
        missing = f"MLflow store {portable_uri(uri)} does not exist (run `dvc repro` first)"
        return cls(existing_store_client(uri, missing), uri)

    def version_by_alias(self, name: str, alias: str):
        """The version that carries `alias`, or None (no such model, or no such alias)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise

    def version(self, name: str, version: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(name, str(version))
        except MlflowException:
            raise PipelineError(f"registered model {name} has no version {version}") from None

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, str(version))

    def tag_version(self, name: str, version: str, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, str(version), key, str(value))

    def set_description(self, name: str, version: str, text: str) -> None:
        self.client.update_model_version(name, str(version), description=text)

    def download_onnx(self, name: str, version: str, directory: Path) -> Path:
        """The registered version's ONNX file, downloaded into `directory`."""
        import mlflow
        from mlflow.artifacts import download_artifacts

        # A models:/ URI is resolved through the global registry URI, whatever tracking_uri says
        # (MLflow's default would be ./mlflow.db of the working directory: a temp experiment copy's).
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        uri = f"models:/{name}/{version}"
        local = Path(download_artifacts(artifact_uri=uri, dst_path=str(directory), tracking_uri=self.tracking_uri))
        found = sorted(local.rglob("*.onnx"))
        if not found:
            raise PipelineError(f"registered model {name} v{version} has no ONNX file")
        return found[0]
