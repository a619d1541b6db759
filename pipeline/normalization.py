"""The one definition of input normalisation, shared by prepare, train, evaluate, export and predict.

    x = (pixel * scale - mean) / std        pixel: uint8 0..255, scale = 1/255

`prepare` fixes mean/std (from the train split, or from params), writes them to the prepared
metadata; training and evaluation apply them in tf.data; export copies them into the ONNX
metadata; the ONNX-only predictor reads them from there. Works on NumPy arrays and TF tensors.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

PIXEL_SCALE = 1.0 / 255.0


@dataclass(frozen=True)
class Normalization:
    mean: float
    std: float
    scale: float = PIXEL_SCALE

    def apply(self, pixels: Any) -> Any:
        """Float pixels (0..255) to model input; `pixels` is a float32 array or tensor."""
        return (pixels * self.scale - self.mean) / self.std

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Normalization":
        return cls(mean=float(data["mean"]), std=float(data["std"]), scale=float(data.get("scale", PIXEL_SCALE)))
