"""MLflow runs: where the store is, and one run per trained model, opened, logged into and ended
through an explicit client (no global tracking URI, no active run). With pipeline/registry.py
(versions, aliases) and pipeline/lineage.py (data and code a run came from), the only modules that
talk to MLflow; the stages reach them at their edges, and nothing happens at import.

Tracking URI: MLFLOW_TRACKING_URI, else `mlflow.tracking_uri` in params, else an embedded SQLite
store `mlflow.db` at the repo root. The root is DVC_ROOT when DVC sets it (a queued or temp
`dvc exp run` runs in a copy under .dvc/tmp/, and DVC points DVC_ROOT at the parent repo), else
the working directory — so plain `dvc repro` and every experiment write to the same store.

`train` starts the run and writes its id to a small run file; the later stages log into that run
through `Run.resume`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError, first_line

RUN_FILE_KEYS = ("run_id", "experiment_id", "tracking_uri")
# The experiment's kind as MLflow knows it: model training (runs and models), not GenAI (traces).
# MLflow 3.17's UI reads it where its own per-browser GenAI / model-training switch is off; the README
# links the model-training view (`?workflowType=machine_learning`).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


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


STORE_LIBRARIES = ("mlflow", "sqlalchemy", "sqlite3", "requests", "urllib3", "psycopg2")


def store_problem(exc: BaseException) -> str | None:
    """What went wrong with the tracking store, in a few words and with what to do, when `exc` came
    from MLflow's store (its client, SQLAlchemy, the database driver, the HTTP client); else None."""
    if not type(exc).__module__.startswith(STORE_LIBRARIES):
        return None
    text = " ".join(str(exc).split())
    if "not a database" in text or "malformed" in text:
        return "not a database MLflow can read (damaged?): move it aside (a new one is made) or restore a copy"
    if "readonly" in text or "read-only" in text or "unable to open database file" in text:
        return "cannot be written (read-only?): make the file and its folder writable"
    if "database is locked" in text:
        return "locked by another process: retry once it is done"
    if "API request" in text or "Connection" in type(exc).__name__ or "Max retries" in text:
        return "the tracking server does not answer: start it, or set MLFLOW_TRACKING_URI to one that does"
    return first_line(exc)


@contextlib.contextmanager
def store_access(uri: str) -> Iterator[None]:
    """A fault of the tracking store at `uri` inside the block as one line naming the store."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as exc:
        problem = store_problem(exc)
        if problem is None:
            raise
        raise PipelineError(f"MLflow store {portable_uri(uri)}: {problem}") from None


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
    return Run._client(uri)


class Run:
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
    ) -> Run:
        """Start a new run, or reopen `resume_run_id` (an interrupted training) when it still exists."""
        from mlflow.exceptions import MlflowException

        uri = resolve_tracking_uri(configured_uri)
        check_reachable(uri)
        try:
            client = cls._client(uri)
            client.search_experiments(max_results=1)  # a damaged or read-only store fails here, before any work
            if resume_run_id:
                try:
                    run = client.get_run(resume_run_id)
                    client.update_run(resume_run_id, status="RUNNING")
                    return cls(client, resume_run_id, run.info.experiment_id, uri)
                except MlflowException:
                    pass  # the store was reset since: start afresh
            experiment_id = cls._experiment_id(client, experiment_name, uri)
            run = client.create_run(experiment_id, run_name=run_name, tags=tags or {})
        except Exception as exc:  # unreachable server, damaged or locked store: fail before any training
            problem = store_problem(exc)
            if problem is None:
                raise
            raise PipelineError(f"MLflow store {portable_uri(uri)}: {problem}") from None
        return cls(client, run.info.run_id, experiment_id, uri)

    @staticmethod
    def _experiment_id(client, name: str, uri: str) -> str:
        from mlflow.exceptions import MlflowException

        kind, value = EXPERIMENT_KIND
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            if kind not in experiment.tags:  # an experiment made before this: its kind, unless someone chose one
                client.set_experiment_tag(experiment.experiment_id, kind, value)
            return experiment.experiment_id
        try:
            return client.create_experiment(name, artifact_location=artifact_root(uri), tags={kind: value})
        except MlflowException as exc:
            # Another training created it between our look-up and our create: use theirs.
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return client.get_experiment_by_name(name).experiment_id

    @classmethod
    def resume(cls, run_file: str | os.PathLike) -> Run:
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
        with store_access(uri):
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

    def run_file(self) -> dict[str, str]:
        """The run file's content: how later stages, in any clone, find this run (`Run.resume`)."""
        uri = portable_uri(self.tracking_uri)
        return {"run_id": self.run_id, "experiment_id": self.experiment_id, "tracking_uri": uri}

    # ------------------------------------------------------------------ logging
    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        existing = self.client.get_run(self.run_id).data.params
        items = [p for p in items if p.key not in existing]  # a resumed run keeps its params
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(
        self, metrics: dict[str, float], step: int | None = None, model_id: str | None = None,
        datasets: dict[str, tuple[str, str]] | None = None,
    ) -> None:  # fmt: skip
        """Metrics at `step`; with `model_id` also the logged model's, each linked to the dataset
        (name, digest) `datasets` gives its key (MLflow 3: the Models tab shows them by dataset)."""
        from mlflow.entities import Metric

        now, datasets = int(time.time() * 1000), datasets or {}
        items = [Metric(k, float(v), now, step or 0, model_id, *datasets.get(k, (None, None)))
                 for k, v in sorted(metrics.items())]  # fmt: skip
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

    def set_description(self, text: str) -> None:
        """The run page's Description (MLflow keeps it in the `mlflow.note.content` tag)."""
        self.client.set_tag(self.run_id, "mlflow.note.content", text)

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

    # ------------------------------------------------------------------ logged models (MLflow 3)
    def logged_model(self, name: str, params: dict[str, Any], model_type: str) -> str:
        """The id of this run's MLflow 3 logged model `name` (the experiment's Models tab): its pending
        one (a resumed training goes on with it), else a new one with `params`. Its metrics are logged
        through `log_metrics(..., model_id=)`, its files by `finish_model`."""
        from mlflow.entities import LoggedModelStatus

        found = self.client.search_logged_models(
            [self.experiment_id], filter_string=f"source_run_id = '{self.run_id}' AND name = '{name}'"
        )
        for model in found:
            if model.status == LoggedModelStatus.PENDING:
                return model.model_id
        params = {k: str(v)[:6000] for k, v in params.items()}
        model = self.client.create_logged_model(self.experiment_id, name, self.run_id, params=params,
                                                model_type=model_type)  # fmt: skip
        return model.model_id

    def finish_model(self, model_id: str, directory: Path) -> None:
        """The logged model's files (what `directory` holds), then READY and linked as the run's output."""
        from mlflow.entities import LoggedModelOutput

        self.client.log_model_artifacts(model_id, str(directory))
        self.client.finalize_logged_model(model_id, "READY")
        self.client.log_outputs(self.run_id, [LoggedModelOutput(model_id, step=0)])

    @property
    def registry(self):
        """The model registry of this run's store (pipeline/registry.py)."""
        from pipeline.registry import Registry

        return Registry(self.client, self.tracking_uri)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
