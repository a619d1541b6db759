"""Exported forms made without training, for the tests of what reads them (the predictor, verify,
the classifiers, LiteRT): a Keras model built as train builds it (`build_model`, the normalisation
inside), whose weights are set by hand to classify the tiny image data sets (each class lights its
own band of rows: helpers/data.py), exported by export's own `build_exports`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def band_classifier(meta, sharpness: float = 3.0):
    """keras.Sequential for the tiny image data `meta` describes (PreparedMeta): its normalisation,
    Flatten, then the head, whose logit k is `sharpness` times the mean normalised pixel of class k's
    band of rows. Untrained, and right on every example of those data sets."""
    from pipeline.model import build_model
    from pipeline.normalization import preprocessing_layers

    height, width, channels = meta.input_shape
    classes = meta.num_classes
    model = build_model([{"Flatten": {}}], meta.input_shape, classes, preprocessing_layers(meta.statistics))
    band = max(1, height // classes)
    row = np.arange(height * width * channels) // (width * channels)  # each flattened pixel's row
    kernel = np.zeros((height * width * channels, classes), np.float32)
    for k in range(classes):
        kernel[(row >= k * band) & (row < (k + 1) * band), k] = sharpness / (band * width * channels)
    model.get_layer("logits").set_weights([kernel, np.zeros(classes, np.float32)])
    return model


def export_forms(model, data, out: Path, run_id: str | None = None, **export) -> dict[str, Any]:
    """Every exported form of `model` into `out` (a new directory), as the export stage builds them
    (pipeline/export.py: export_metadata, build_exports); returns metadata.json's content."""
    from pipeline.export import build_exports, export_metadata
    from pipeline.params import parse_params

    params = parse_params({"export": {"calibration_size": 40, **export}}).export
    metadata = export_metadata(data.meta, model, run_id, params.opset)
    out.mkdir(parents=True)
    return build_exports(model, data, params, metadata, out, "tiny-classifier")


@dataclass(frozen=True)
class Exported:
    """The tiny IDX data prepared, the hand-set model, and its exported forms (read-only: a test
    that changes a file copies it first)."""

    root: Path
    data: Any  # PreparedData
    model: Any  # the Keras model the forms were exported from
    directory: Path  # exported/: saved_model, model.onnx, model.int8.onnx, model.tflite, model.int8.tflite
    metadata: dict

    @property
    def onnx(self) -> Path:
        return self.directory / "model.onnx"

    def test_split(self) -> tuple[np.ndarray, np.ndarray]:
        return self.data.arrays("test")


def export_tiny_image_model(root: Path) -> Exported:
    """Prepare the tiny IDX data set under `root`, build its band classifier, export every form."""
    from pipeline.prepared import PreparedData

    from helpers.data import fetch_and_prepare, write_idx_dataset

    fetch_and_prepare(write_idx_dataset(root / "source"), root)
    data = PreparedData.open(root / "prepared")
    model = band_classifier(data.meta)
    metadata = export_forms(model, data, root / "exported", run_id="run-123")
    return Exported(root, data, model, root / "exported", metadata)
