"""The MLflow model registry: versions of a registered model, its aliases (`champion` in
production, `challenger` the newest candidate: pipeline/promote.py), their tags and descriptions,
and ONNX files logged and registered, all through an explicit client (pipeline/tracking.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_DIR = "onnx_model"  # where the run keeps the registered MLflow model
EXTRA_DIR = "files"  # inside it: the version's other exported files (int8 ONNX, LiteRT)


def registered_model_name(configured: str | None, meta) -> str:
    """`mlflow.registered_model_name`, else `<the data set's name>-classifier` (records.PreparedMeta)."""
    return configured or f"{meta.name}-classifier"


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
        self.client.set_registered_model_alias(name, alias, str(version))

    def tag_version(self, name: str, version: str, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, str(version), key, str(value))

    def set_description(self, name: str, version: str, text: str) -> None:
        self.client.update_model_version(name, str(version), description=text)

    def register(self, run_id: str, save, name: str, extra_files: tuple[Path, ...] = ()) -> str:
        """A new version of `name`: the MLflow model `save(directory)` writes (pipeline/mlflow_model.py),
        logged into the run (`onnx_model/`) and registered; returns the version. `extra_files` (the
        other exported forms: int8 ONNX, LiteRT) travel in the version's directory under `files/`, so
        the version holds every deployable file.

        Saved locally, then logged and registered through this registry's client: MLflow's
        `log_model` would need the global tracking URI and an active run."""
        import shutil
        import tempfile

        from mlflow.exceptions import MlflowException

        with tempfile.TemporaryDirectory(prefix="onnx-model-") as tmp:
            local = Path(tmp) / MODEL_DIR
            save(local)
            if extra_files:
                (local / EXTRA_DIR).mkdir()
                for extra in extra_files:
                    shutil.copy2(extra, local / EXTRA_DIR / extra.name)
            self.client.log_artifacts(run_id, str(local), MODEL_DIR)
        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = self.client.create_model_version(name, f"runs:/{run_id}/{MODEL_DIR}", run_id=run_id)
        return str(version.version)

    def download(self, name: str, version: str, directory: Path) -> Path:
        """The registered version's MLflow model directory, through this registry's client."""
        source = self.version(name, version).source
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
