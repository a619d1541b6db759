"""Writers of the formats the pipeline reads (IDX, CIFAR-10 binary, CSV), exactly as the real files
are laid out: the tests and benchmarks make their data with them."""

from __future__ import annotations

import csv
import gzip
import struct
from pathlib import Path

import numpy as np


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write a uint8 array as IDX (gzip'd when the name ends in .gz or `compress` says so)."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.tobytes()
    compress = path.suffix == ".gz" if compress is None else compress
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
    return path


def write_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write (n, 32, 32, 3) uint8 images and their labels as one CIFAR-10 binary batch file."""
    if images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
        raise ValueError(f"CIFAR-10 images are (n, 32, 32, 3) uint8, got {images.shape} {images.dtype}")
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    records = np.concatenate([labels.astype(np.uint8)[:, None], planes], axis=1)
    path.write_bytes(records.tobytes())


def write_table(
    path: Path, features: np.ndarray, labels: list, feature_names: list[str], label_column: str = "label"
) -> None:
    """Write a feature table and its labels as CSV with a header row (for tests and users)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*feature_names, label_column])
        for row, label in zip(features, labels, strict=True):
            writer.writerow([*(repr(float(v)) for v in row), label])
