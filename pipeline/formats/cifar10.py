"""Data format `cifar10`: the CIFAR-10 *binary* version. Each record is 1 label byte then 3072 pixel
bytes, the 32×32 red, green and blue planes in turn. Plain bytes, so reading runs no code from the file (the pickled
"Python version" of CIFAR-10 would: we never load it). Writing is for tests and users' own data.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import numpy as np

from pipeline.errors import PipelineError
from pipeline.formats.base import RawData

NAME = "cifar10"
URL_PREFIX_OK = True
SIDE = 32
RECORD = 1 + 3 * SIDE * SIDE
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@functools.cache
def section():
    """The params section `data.cifar10` (a pydantic model, built on first use: the predictor reads
    with this module where pydantic is not installed)."""
    from pydantic import Field

    from pipeline.schema import ClassNames, FormatSection

    class Section(FormatSection):
        """`data.cifar10`: batch files of records of 1 label byte + 3072 pixel bytes (R, G, B planes of 32×32)."""

        train: Annotated[list[str], Field(min_length=1)] = [f"data_batch_{i}.bin" for i in range(1, 6)]
        test: Annotated[list[str], Field(min_length=1)] = ["test_batch.bin"]
        class_names: ClassNames | None = CIFAR10_CLASSES

        def files(self) -> list[str]:
            return [*self.train, *self.test]

    return Section


def read(raw_dir: Path, section) -> RawData:
    names = section.class_names or [str(i) for i in range(10)]
    train = read_batches([raw_dir / f for f in section.train], len(names))
    test = read_batches([raw_dir / f for f in section.test], len(names))
    return RawData(train, test, list(names))


def read_batch(path: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 32, 32, 3) uint8 and labels (n,) of one batch file; any malformation names the file."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found") from None
    if raw.size == 0:
        raise PipelineError(f"{path}: empty file, expected {RECORD}-byte CIFAR-10 records")
    if raw.size % RECORD:
        raise PipelineError(
            f"{path}: {raw.size} bytes is not a whole number of {RECORD}-byte CIFAR-10 records "
            f"({raw.size // RECORD} records and {raw.size % RECORD} bytes over: truncated, or not the binary version?)"
        )
    records = raw.reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels >= n_classes)
    if bad.size:
        raise PipelineError(
            f"{path}: record {int(bad[0])} has label {int(labels[bad[0]])}, outside the "
            f"{n_classes} classes in data.cifar10.class_names"
        )
    images = records[:, 1:].reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def read_batches(paths: list[Path], n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    parts = [read_batch(p, n_classes) for p in paths]
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def write_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write (n, 32, 32, 3) uint8 images and their labels as one CIFAR-10 binary batch file."""
    if images.shape[1:] != (SIDE, SIDE, 3) or images.dtype != np.uint8:
        raise ValueError(f"CIFAR-10 images are (n, 32, 32, 3) uint8, got {images.shape} {images.dtype}")
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    records = np.concatenate([labels.astype(np.uint8)[:, None], planes], axis=1)
    path.write_bytes(records.tobytes())
