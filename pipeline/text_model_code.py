"""What MLflow runs to load a registered text model ("models from code": no pickled object in the
model; pipeline/mlflow_model.py holds the class)."""

import mlflow.models

from pipeline.mlflow_model import TextClassifierModel

mlflow.models.set_model(TextClassifierModel())
