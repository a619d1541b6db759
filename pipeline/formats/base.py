"""What every data format's reader returns. No pydantic here (nor in the readers): the predictor
decodes images and tables with the format modules in a deployment that has only onnxruntime,
NumPy and Pillow. The params sections' common base is pipeline/schema.py's FormatSection."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Split = tuple[np.ndarray, np.ndarray]


@dataclass
class RawData:
    """What a format's `read` returns: validated examples (uint8 images (n, h, w, c) or float32
    feature rows (n, f)) with int64 labels, and the class names."""

    train: Split
    test: Split | None  # None: the data has no test part; prepare splits one off train
    class_names: list[str]
    feature_names: list[str] | None = None
    skipped: list[str] = field(default_factory=list)  # unreadable files left out, relative to the data root

    @property
    def is_image(self) -> bool:
        return self.train[0].ndim == 4


def check_same_shape(train: np.ndarray, test: np.ndarray, test_path) -> None:
    from pipeline.errors import PipelineError

    if train.shape[1:] != test.shape[1:]:
        raise PipelineError(
            f"{test_path}: input shape {test.shape[1:]} differs from the train part's {train.shape[1:]}"
        )
