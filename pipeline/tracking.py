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
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError, first_line

RUN_FILE_KEYS = ("run_id", "experiment_id", "tracking_uri")


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


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts. For a local store, beside it at the repo root:
    MLflow's default (./mlruns of whoever creates the experiment) would put them inside a temp
    `dvc exp run` copy, deleted afterwards. A server decides for itself (None)."""
    if uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri:
        return (project_root() / "mlartifacts").as_uri()
    return None


def git_state(directory: Path) -> dict[str, str]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {}
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"mlflow.source.git.commit": commit, "git.dirty": str(bool(dirty)).lower()}


def dvc_experiment_tags() -> dict[str, str]:
    """Set by `dvc exp run` for its stage commands: the experiment's name and git baseline."""
    tags = {}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.experiment"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc.baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags


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
        # The environment wins, as for `start`, so a moved store can still be reached.
        uri = os.environ.get("MLFLOW_TRACKING_URI") or ids["tracking_uri"]
        return cls(cls._client(uri), ids["run_id"], ids["experiment_id"], uri)

    def write_run_file(self, path: str | os.PathLike) -> None:
        from pipeline.atomic import write_json

        write_json(
            path, {"run_id": self.run_id, "experiment_id": self.experiment_id, "tracking_uri": self.tracking_uri}
        )

    # ------------------------------------------------------------------ logging
    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        existing = self.client.get_run(self.run_id).data.params
        items = [p for p in items if p.key not in existing]  # a resumed run keeps its params
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

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
            )
        return str(info.registered_model_version)

    def load_registered_model(self, name: str, version: str):
        """The registered version as MLflow serves it (`mlflow.pyfunc`, with its schema enforcement)."""
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        return mlflow.pyfunc.load_model(f"models:/{name}/{version}")

    def tag_model_version(self, name: str, version: str, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, str(value))

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
