"""The one definition of input normalisation, shared by prepare, train, evaluate, export and predict.

    x = (pixel * scale - mean) / std        pixel: uint8 0..255, scale = 1/255
    x = (feature - mean) / std              tabular features: scale = 1, mean/std per feature

`prepare` fixes mean/std (from the train split, or from params), writes them to the prepared
metadata; training and evaluation apply them in tf.data; export copies them into the ONNX
metadata; the ONNX-only predictor reads them from there. Works on NumPy arrays and TF tensors.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Union

import numpy as np

PIXEL_SCALE = 1.0 / 255.0
Stat = Union[float, tuple[float, ...]]  # one value for all inputs, or one per feature (last axis)


@dataclass(frozen=True)
class Normalization:
    mean: Stat
    std: Stat
    scale: float = PIXEL_SCALE

    def apply(self, pixels: Any) -> Any:
        """Raw inputs (float pixels 0..255, or features) to model input; a float32 array or tensor."""
        mean, std = self._as_array(self.mean), self._as_array(self.std)
        return (pixels * self.scale - mean) / std

    @staticmethod
    def _as_array(stat: Stat) -> Any:
        return np.asarray(stat, dtype=np.float32) if isinstance(stat, tuple) else stat

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Normalization":
        def stat(value: Any) -> Stat:
            return tuple(float(v) for v in value) if isinstance(value, list) else float(value)

        return cls(mean=stat(data["mean"]), std=stat(data["std"]), scale=float(data.get("scale", PIXEL_SCALE)))
