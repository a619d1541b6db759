"""The MLflow model registered for a text classifier: the exported ONNX file, run by onnxruntime
through pipeline/classifier.py, taking the texts themselves, so `mlflow models serve` answers
`{"inputs": {"text": ["...", "..."]}}` and `mlflow.pyfunc.load_model(...).predict` takes strings.
(Image and table models are registered with MLflow's own ONNX flavor: their raw input is a tensor
MLflow carries as it is.) The project's `pipeline` package travels in the MLflow model (code_paths).
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np


class TextClassifierModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from pipeline.classifier import open_classifier

        self.classifier = open_classifier(context.artifacts["model"])

    def predict(self, context, model_input, params=None) -> dict[str, np.ndarray]:
        texts = texts_of(model_input, self.classifier.kind.input_name)
        return {"probabilities": self.classifier.probabilities(self.classifier.encode(texts))}


def texts_of(model_input, name: str) -> list[str]:
    """The texts of a request as MLflow hands them over: a DataFrame's column, a dict's entry, a list."""
    if hasattr(model_input, "columns"):
        values = model_input[name] if name in model_input.columns else model_input.iloc[:, 0]
    elif isinstance(model_input, dict):
        values = model_input[name]
    else:
        values = model_input
    return [str(value) for value in np.asarray(values, dtype=object).reshape(-1)]
