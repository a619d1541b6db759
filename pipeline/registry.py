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

    def register_onnx(
        self, run_id: str, path: Path, name: str, signature: dict, extra_files: tuple[Path, ...] = ()
    ) -> str:
        """The ONNX file as an MLflow model in the run (`onnx_model/`) and a new version of `name`;
        returns the version. `signature`: the file's input and output (name, dtype, shape with a
        dynamic batch), so `mlflow models serve` answers a wrong input with MLflow's schema error.
        `extra_files` (the other exported forms: int8 ONNX, LiteRT) travel in the version's
        directory under `files/`, so the version holds every deployable file.

        Saved locally, then logged and registered through this registry's client: MLflow's
        `log_model` would need the global tracking URI and an active run."""
        import tempfile

        import mlflow.onnx
        import numpy as np
        import onnx
        import onnxruntime as ort
        from mlflow.exceptions import MlflowException
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        inp, out = signature["input"], signature["output"]
        outputs = Schema([TensorSpec(np.dtype(out["dtype"]), (-1, *out["shape"][1:]), out["name"])])
        with tempfile.TemporaryDirectory(prefix="onnx-model-") as tmp:
            local = Path(tmp) / MODEL_DIR
            if "text" in signature:  # the texts themselves in, through the project's classifier
                save_text_model(path, local, inp["name"], outputs)
            else:
                spec = ModelSignature(
                    inputs=Schema([TensorSpec(np.dtype(inp["dtype"]), (-1, *inp["shape"][1:]), inp["name"])]),
                    outputs=outputs,
                )
                example = {inp["name"]: np.zeros((1, *inp["shape"][1:]), dtype=inp["dtype"])}
                # The providers this machine has (CPU only on a CPU machine: no warning about a missing CUDA).
                providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                             if p in ort.get_available_providers()]  # fmt: skip
                mlflow.onnx.save_model(onnx.load(str(path)), str(local), signature=spec, input_example=example,
                                       save_as_external_data=False, onnx_execution_providers=providers)  # fmt: skip
            if extra_files:
                import shutil

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


def save_text_model(onnx_path: Path, local: Path, input_name: str, outputs) -> None:
    """A text model as an MLflow pyfunc model (pipeline/pyfunc_model.py): the ONNX file as its
    artifact, the project's package as its code, a string column as its input."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from pipeline.pyfunc_model import TextClassifierModel

    mlflow.pyfunc.save_model(
        str(local),
        python_model=TextClassifierModel(),
        artifacts={"model": str(onnx_path)},
        code_paths=[str(Path(__file__).parent)],
        signature=ModelSignature(inputs=Schema([ColSpec("string", input_name)]), outputs=outputs),
        input_example={input_name: ["an example text"]},
    )
