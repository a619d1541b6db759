"""An exported ONNX classifier with onnxruntime alone: its metadata read back (class names, input
shape and dtype), raw inputs in, probabilities out. What the predictor and promote run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError, first_line

REQUIRED_METADATA = ("class_names", "input_shape", "input_layout")
INPUT_DTYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}


class OnnxClassifier:
    def __init__(self, model_path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(model_path)
        if not self.path.is_file():
            raise PipelineError(f"{self.path}: model file not found (run `dvc repro export`)")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own exception types
            raise PipelineError(f"{self.path}: onnxruntime cannot load it ({first_line(exc)})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        missing = [key for key in REQUIRED_METADATA if key not in props]
        if missing:
            raise PipelineError(f"{self.path}: metadata lacks {', '.join(missing)} (not exported by this pipeline?)")
        try:
            self.class_names: list[str] = json.loads(props["class_names"])
            self.input_shape = tuple(int(d) for d in json.loads(props["input_shape"])[1:])
            self.feature_names: list[str] = json.loads(props.get("feature_names") or "[]")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise PipelineError(f"{self.path}: metadata is malformed") from None
        layouts = {"NHWC": 3, "NC": 1}
        if len(self.input_shape) != layouts.get(props["input_layout"]):
            raise PipelineError(
                f"{self.path}: input layout {props['input_layout']} {self.input_shape} "
                "is neither NHWC images nor NC feature vectors"
            )
        (graph_input,) = self.session.get_inputs()
        self.input_name = graph_input.name
        if graph_input.type not in INPUT_DTYPES:
            raise PipelineError(
                f"{self.path}: input {graph_input.name} is {graph_input.type}, not raw uint8 pixels "
                "or float32 features (exported by an older version of this pipeline?)"
            )
        self.input_dtype = INPUT_DTYPES[graph_input.type]

    def probabilities(self, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities for raw inputs of shape (n, *input_shape): pixels 0..255 or features."""
        x = raw_input(inputs, self.input_dtype)
        return (
            np.concatenate(
                [
                    self.session.run(None, {self.input_name: x[i : i + batch_size]})[0]
                    for i in range(0, len(x), batch_size)
                ]
            )
            if len(x)
            else np.zeros((0, len(self.class_names)))
        )

    def top_k(self, probs: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[(self.class_names[j], float(row[j])) for j in idx] for row, idx in zip(probs, order, strict=True)]


def raw_input(values: np.ndarray, dtype) -> np.ndarray:
    """Values as the model's input dtype: pixels rounded to uint8 (callers checked 0..255), features float32."""
    if dtype == np.uint8 and values.dtype != np.uint8:
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return values.astype(dtype, copy=False)
