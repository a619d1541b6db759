"""The MLflow model registry: versions of a registered model, its aliases (`champion` in
production, `challenger` the newest candidate: pipeline/promote.py), their tags and descriptions,
and ONNX files logged and registered, all through an explicit client (pipeline/tracking.py).

A version points at an MLflow 3 logged model (`onnx-model`, source `models:/<model id>`), which
holds the files, the test metrics and the run it came from; versions registered before that point
at the run's `onnx_model/` artifacts (`runs:/...`), and both are read alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_DIR = "onnx_model"  # where a run kept the registered MLflow model, before logged models
EXTRA_DIR = "files"  # inside it: the version's other exported files (int8 ONNX, LiteRT)
ONNX_MODEL = "onnx-model"  # the registered model's name among the experiment's logged models


def registered_model_name(configured: str | None, meta) -> str:
    """`mlflow.registered_model_name`, else `<the data set's name>-classifier` (records.PreparedMeta)."""
    return configured or f"{meta.name}-classifier"


def duplicate_key(exc: BaseException) -> bool:
    """An MLflow store error caused by a unique key another writer took first (SQLite, PostgreSQL,
    MySQL; through a tracking server, the server's message)."""
    text = f"{exc} {exc.__cause__ or ''}"
    return any(mark in text for mark in ("UNIQUE constraint failed", "duplicate key value", "Duplicate entry"))


class Registry:
    """The model registry's versions, aliases (`champion`, `challenger`) and their tags."""

    def __init__(self, client, tracking_uri: str):
        self.client, self.tracking_uri = client, tracking_uri

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
        """Point `alias` at `version`. MLflow's store reads the alias, then inserts it when it was
        absent: a second writer (`dvc queue start -j 2`: two exports at once) that sets it between
        the two makes the insert a unique-key error. The alias then exists, so setting it again is
        an update; the last writer wins, as with any alias move."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.set_registered_model_alias(name, alias, str(version))
        except MlflowException as exc:
            if not duplicate_key(exc):
                raise
            self.client.set_registered_model_alias(name, alias, str(version))

    def tag_version(self, name: str, version: str, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, str(version), key, str(value))

    def set_description(self, name: str, version: str, text: str) -> None:
        self.client.update_model_version(name, str(version), description=text)

    def register(self, run, save, name: str, extra_files: tuple[Path, ...] = (), metrics: dict | None = None,
                 datasets: dict | None = None, params: dict | None = None) -> str:  # fmt: skip
        """A new version of `name`: the MLflow model `save(directory)` writes (pipeline/mlflow_model.py)
        as the run's (tracking.Run) logged model `onnx-model`, with `metrics` linked to their `datasets`
        (Run.log_metrics) and `params`; the version points at it. Returns the version. `extra_files`
        (the other exported forms: int8 ONNX, LiteRT) travel in the model's directory under `files/`,
        so the version holds every deployable file.

        Saved locally, then logged and registered through this registry's client: MLflow's
        `log_model` would need the global tracking URI and an active run."""
        import json
        import shutil
        import tempfile

        from mlflow.exceptions import MlflowException
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        model_id = run.logged_model(ONNX_MODEL, params or {}, "onnx")
        if metrics:
            run.log_metrics(metrics, model_id=model_id, datasets=datasets)
        with tempfile.TemporaryDirectory(prefix="onnx-model-") as tmp:
            local = Path(tmp) / MODEL_DIR
            save(local)
            if extra_files:
                (local / EXTRA_DIR).mkdir()
                for extra in extra_files:
                    shutil.copy2(extra, local / EXTRA_DIR / extra.name)
            run.finish_model(model_id, local)
        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        # An embedded store resolves a `models:/` source through a client of the global tracking URI
        # (MLflow 3.17's SQLAlchemy registry: "TODO: propagate tracking URI"): this store's, for the call.
        with _use_tracking_uri(self.tracking_uri):
            version = self.client.create_model_version(name, f"models:/{model_id}", run_id=run.run_id,
                                                       model_id=model_id)  # fmt: skip
        # What MLflow's own register_model records: the logged model lists the versions made of it.
        known = json.loads(self.client.get_logged_model(model_id).tags.get("mlflow.modelVersions", "[]"))
        versions = [*known, {"name": name, "version": str(version.version)}]
        self.client.set_logged_model_tags(model_id, {"mlflow.modelVersions": json.dumps(versions)})
        return str(version.version)

    def download(self, name: str, version: str, directory: Path) -> Path:
        """The registered version's MLflow model directory, through this registry's client."""
        source = self.version(name, version).source
        if source.startswith("models:/m-"):  # a logged model (MLflow 3): its files, found by this client
            import mlflow.artifacts

            location = self.client.get_logged_model(source[len("models:/") :]).artifact_location
            directory.mkdir(parents=True, exist_ok=True)
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(directory),
                                                            tracking_uri=self.tracking_uri))  # fmt: skip
        if not source.startswith("runs:/"):
            raise PipelineError(f"registered model {name} v{version} was not logged by this pipeline ({source})")
        run_id, _, artifact = source[len("runs:/") :].partition("/")
        return Path(self.client.download_artifacts(run_id, artifact, str(directory)))

    def download_onnx(self, name: str, version: str, directory: Path) -> Path:
        """The registered version's ONNX file, downloaded into `directory`."""
        model = self.download(name, version, directory)
        found = sorted(model.glob("*.onnx")) or sorted((model / "artifacts").glob("*.onnx"))
        if not found:
            raise PipelineError(f"registered model {name} v{version} has no ONNX file")
        return found[0]

    def load_pyfunc(self, name: str, version: str, directory: Path):
        """The registered version as MLflow serves it (`mlflow.pyfunc`, with its schema enforcement)."""
        import mlflow.pyfunc

        return mlflow.pyfunc.load_model(str(self.download(name, version, directory)))
