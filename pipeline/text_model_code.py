"""The registered text model as MLflow loads it ("models from code": MLflow runs this file, nothing
is pickled; pipeline/mlflow_model.py saves it): the exported ONNX file run by onnxruntime through
pipeline/classifier.py, taking the texts themselves."""

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd


class TextClassifierModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from pipeline.classifier import open_classifier

        self.classifier = open_classifier(context.artifacts["model"])

    # The DataFrame MLflow makes of a request for a column signature (typed: MLflow warns otherwise).
    def predict(self, context, model_input: pd.DataFrame, params=None) -> dict[str, np.ndarray]:
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


mlflow.models.set_model(TextClassifierModel())
