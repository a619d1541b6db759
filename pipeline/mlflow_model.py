"""The MLflow model export registers, saved from the exported ONNX file with its signature (so
`mlflow models serve` answers a wrong input with MLflow's schema error):

- images and tables: MLflow's own ONNX flavor (their raw input is a tensor MLflow carries as it is);
- text: a pyfunc model (pipeline/text_model_code.py) that runs the ONNX file with onnxruntime through
  pipeline/classifier.py and takes the texts themselves, so `mlflow models serve` answers
  `{"inputs": {"text": ["...", "..."]}}` and `mlflow.pyfunc.load_model(...).predict` takes strings.
  The project's `pipeline` package travels in the MLflow model (code_paths); MLflow loads the model
  by running that file (models from code: nothing pickled).
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np


def save_mlflow_model(onnx_path: Path, local: Path, metadata: dict) -> None:
    """The MLflow model of the exported ONNX file at `local`; `metadata`: export's (its input and
    output, and for text the text contract)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    inp, out = metadata["input"], metadata["output"]
    outputs = Schema([TensorSpec(np.dtype(out["dtype"]), (-1, *out["shape"][1:]), out["name"])])
    if "text" in metadata:
        save_text_model(onnx_path, local, inp["name"], outputs)
        return
    import mlflow.onnx
    import onnx
    import onnxruntime as ort

    inputs = Schema([TensorSpec(np.dtype(inp["dtype"]), (-1, *inp["shape"][1:]), inp["name"])])
    example = {inp["name"]: np.zeros((1, *inp["shape"][1:]), dtype=inp["dtype"])}
    # The providers this machine has (CPU only on a CPU machine: no warning about a missing CUDA).
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    # The flavor's own requirements (onnx, onnxruntime, pinned to this machine's; MLflow adds itself),
    # not MLflow's inference, which loads the model in a new Python to see what it imports (~4 s).
    mlflow.onnx.save_model(onnx.load(str(onnx_path)), str(local), signature=ModelSignature(inputs, outputs),
                           input_example=example, save_as_external_data=False,
                           onnx_execution_providers=providers,
                           pip_requirements=mlflow.onnx.get_default_pip_requirements())  # fmt: skip


def save_text_model(onnx_path: Path, local: Path, input_name: str, outputs) -> None:
    """A text model as an MLflow pyfunc model: the ONNX file its artifact, the project's package its
    code, a string column its input."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from pipeline import text_model_code  # (imported for its path: MLflow runs it to load the model)

    mlflow.pyfunc.save_model(
        str(local),
        python_model=text_model_code.__file__,
        artifacts={"model": str(onnx_path)},
        code_paths=[str(Path(__file__).parent)],
        signature=ModelSignature(inputs=Schema([ColSpec("string", input_name)]), outputs=outputs),
        input_example={input_name: ["an example text"]},
    )
