"""Input normalisation: the statistics prepare measures, and the layers that put them inside the model.

    x = (pixel * scale - mean) / std        pixel: uint8 0..255, scale = 1/255
    x = (feature - mean) / std              tabular features: scale = 1, mean/std per feature

`prepare` measures mean/std of the train split (one value for grey images, one per channel for
colour, one per feature for tables) and records them in the prepared metadata. `train` chooses
what the model uses (`train.normalization`: the preset's convention, the measured statistics or
fixed values) and builds it into the model as its first layers, so every exported form takes raw
input: nothing downstream re-implements this arithmetic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

PIXEL_SCALE = 1.0 / 255.0
Stat = float | tuple[float, ...]  # one value for all inputs, or one per feature (last axis)


@dataclass(frozen=True)
class Normalization:
    mean: Stat
    std: Stat
    scale: float = PIXEL_SCALE

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        def stat(value: Any) -> Stat:
            return tuple(float(v) for v in value) if isinstance(value, list) else float(value)

        return cls(mean=stat(data["mean"]), std=stat(data["std"]), scale=float(data.get("scale", PIXEL_SCALE)))


def measure(inputs: np.ndarray, scale: float) -> Normalization:
    """Mean/std of raw train inputs after `scale`: one value for grey images, else per last axis
    (colour channels, table features). A constant input gets std 1 (it carries no information)."""
    values = inputs.astype(np.float64) * scale
    if values.ndim == 4 and values.shape[-1] == 1:
        return Normalization(mean=float(values.mean()), std=float(values.std()) or 1.0, scale=scale)
    axes = tuple(range(values.ndim - 1))
    std = values.std(axis=axes)
    return Normalization(
        mean=tuple(float(m) for m in values.mean(axis=axes)),
        std=tuple(float(s) if s > 0 else 1.0 for s in std),
        scale=scale,
    )


def choose(mode: str, measured: Normalization, mean: float, std: float) -> Normalization:
    """What the model applies: the measured statistics (`dataset`) or fixed mean/std (`fixed`),
    both after the measured scale (1/255 for pixels, 1 for features)."""
    if mode == "fixed":
        return Normalization(mean=float(mean), std=float(std), scale=measured.scale)
    return measured


def affine(normalization: Normalization) -> tuple[Any, Any]:
    """`(x * scale - mean) / std` as one multiply-add `x * a + b` (a = scale / std, b = -mean / std),
    scalars or one value per channel/feature."""
    mean = np.asarray(normalization.mean, dtype=np.float64)
    std = np.asarray(normalization.std, dtype=np.float64)
    a, b = normalization.scale / std, -mean / std
    return a.tolist(), b.tolist()


def preprocessing_layers(normalization: Normalization) -> list:
    """The model's first layer: Keras' Rescaling (always float32, even under mixed precision) casts the
    raw input and applies `x * a + b`. Its factors are plain numbers in the layer's config, so the
    layer is standard Keras (any Keras loads the model) and becomes constants in every exported
    graph (Keras' Normalization layer keeps its statistics as captured tensors, which tf2onnx turns
    into extra graph inputs)."""
    import keras

    a, b = affine(normalization)
    return [keras.layers.Rescaling(scale=a, offset=b, dtype="float32", name="normalize")]
