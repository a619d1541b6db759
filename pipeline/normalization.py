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


class Moments:
    """Count, mean and sum of squared deviations per channel (the last axis: colour channels, table
    features), accumulated in float64 as examples stream by and merged exactly as Chan, Golub and
    LeVeque's parallel algorithm does: the statistics of a split of any size, in constant memory."""

    ROWS = 1 << 18  # values converted to float64 at a time, per channel

    def __init__(self, channels: int):
        self.count = 0
        self.mean = np.zeros(channels)
        self.m2 = np.zeros(channels)

    def add(self, inputs: np.ndarray) -> Moments:
        if inputs.dtype == np.uint8:
            return self.add_pixels(inputs)
        rows = inputs.reshape(-1, inputs.shape[-1])
        for start in range(0, len(rows), self.ROWS):
            values = rows[start : start + self.ROWS].astype(np.float64)
            part = Moments(values.shape[1])
            part.count, part.mean = len(values), values.mean(axis=0)
            part.m2 = ((values - part.mean) ** 2).sum(axis=0)
            self.merge(part)
        return self

    def add_pixels(self, inputs: np.ndarray) -> Moments:
        """uint8 inputs through a histogram of each channel's 256 values: exact sums, and a few
        times faster than converting every pixel to float64."""
        rows = inputs.reshape(-1, inputs.shape[-1])
        values = np.arange(256, dtype=np.float64)
        part = Moments(rows.shape[1])
        part.count = len(rows)
        for channel in range(rows.shape[1]) if len(rows) else ():
            counts = np.bincount(rows[:, channel], minlength=256).astype(np.float64)
            part.mean[channel] = counts @ values / len(rows)
            part.m2[channel] = counts @ (values - part.mean[channel]) ** 2
        return self.merge(part)

    def merge(self, other: Moments) -> Moments:
        if other.count:
            total = self.count + other.count
            delta = other.mean - self.mean
            self.mean = self.mean + delta * (other.count / total)
            self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / total)
            self.count = total
        return self

    def state(self) -> list:
        """Plain data (to send between processes); `from_state` makes the Moments again."""
        return [self.count, self.mean.tolist(), self.m2.tolist()]

    @classmethod
    def from_state(cls, state: list) -> Moments:
        moments = cls(len(state[1]))
        moments.count, moments.mean, moments.m2 = int(state[0]), np.array(state[1]), np.array(state[2])
        return moments

    def pooled(self) -> Moments:
        """All channels as one (the statistics of every value together)."""
        whole = Moments(1)
        for mean, m2 in zip(self.mean, self.m2, strict=True):
            whole.merge(Moments.from_state([self.count, [mean], [m2]]))
        return whole

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.count, 1))

    def normalization(self, scale: float, single: bool) -> Normalization:
        """mean/std after `scale`: one value when `single` (grey images), else per channel or feature.
        A constant input gets std 1 (it carries no information)."""
        mean, std = self.mean * scale, self.std * scale
        if single:
            return Normalization(mean=float(mean[0]), std=float(std[0]) or 1.0, scale=scale)
        return Normalization(
            mean=tuple(float(m) for m in mean), std=tuple(float(s) if s > 0 else 1.0 for s in std), scale=scale
        )


def measure(inputs: np.ndarray, scale: float) -> Normalization:
    """The statistics of a whole array of raw inputs (small data, tests): one value for grey images,
    else one per channel or feature."""
    single = inputs.ndim == 4 and inputs.shape[-1] == 1
    return Moments(inputs.shape[-1]).add(inputs).normalization(scale, single)


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
