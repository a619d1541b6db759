"""Data format `cifar10`: the CIFAR-10 *binary* version. Each record is 1 label byte then 3072 pixel
bytes, the 32×32 red, green and blue planes in turn. Plain bytes, so reading runs no code from the file (the pickled
"Python version" of CIFAR-10 would: we never load it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.formats.base import Decoded, Part, Scan

NAME = "cifar10"
KIND = "image"  # the kind of data it yields (pipeline/kinds.py)
SIDE = 32
RECORD = 1 + 3 * SIDE * SIDE


DECODE_IN_PROCESSES = False  # records are plain bytes: reading is the work


def scan(raw_dir: Path, section) -> Scan:
    names = section.class_names or [str(i) for i in range(10)]
    parts = {
        part: Part(part, np.concatenate([batch_labels(raw_dir / f, len(names)) for f in files]))
        for part, files in (("train", section.train), ("test", section.test))
    }
    return Scan(parts, list(names), (SIDE, SIDE, 3), KIND)


def _records(path: Path) -> int:
    """How many whole records the batch file holds; any other size names the file."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found") from None
    if size == 0:
        raise PipelineError(f"{path}: empty file, expected {RECORD}-byte CIFAR-10 records")
    if size % RECORD:
        raise PipelineError(
            f"{path}: {size} bytes is not a whole number of {RECORD}-byte CIFAR-10 records "
            f"({size // RECORD} records and {size % RECORD} bytes over: truncated, or not the binary version?)"
        )
    return size // RECORD


def _blocks(path: Path, per_chunk: int, start: int = 0, stop: int | None = None):
    """(record position, records (k, 3073) uint8) of one batch file from `start` to `stop`."""
    count = _records(path)
    stop = count if stop is None else min(stop, count)
    with open(path, "rb") as f:
        f.seek(start * RECORD)
        for position in range(start, stop, per_chunk):
            n = min(per_chunk, stop - position)
            yield position, np.frombuffer(f.read(n * RECORD), dtype=np.uint8).reshape(n, RECORD)


def batch_labels(path: Path, n_classes: int) -> np.ndarray:
    """The label byte of every record, checked against the classes; the pixels are not kept."""
    labels = np.concatenate([block[:, 0] for _, block in _blocks(path, 4096)]).astype(np.int64)
    bad = np.flatnonzero(labels >= n_classes)
    if bad.size:
        raise PipelineError(
            f"{path}: record {int(bad[0])} has label {int(labels[bad[0]])}, outside the "
            f"{n_classes} classes in data.cifar10.class_names"
        )
    return labels


def chunks(raw_dir: Path, section, scan: Scan, part: str, start: int = 0, stop: int | None = None):
    """(position in the part, images (k, 32, 32, 3) uint8), batch file after batch file."""
    offset = 0
    stop = len(scan.parts[part]) if stop is None else stop
    for name in section.train if part == "train" else section.test:
        path = raw_dir / name
        count = _records(path)
        lo, hi = max(start - offset, 0), min(stop - offset, count)
        if lo < hi:
            for position, records in _blocks(path, scan.chunk_examples(), lo, hi):
                yield offset + position, to_images(records)
        offset += count


def to_images(records: np.ndarray) -> np.ndarray:
    """The pixels of records (k, 3073), R, G and B planes of 32×32, as (k, 32, 32, 3) images."""
    return np.ascontiguousarray(records[:, 1:].reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))


def decode(payload: np.ndarray, raw_dir: Path, options: dict) -> Decoded:
    return Decoded(payload)


def decode_options(section, scan: Scan) -> dict:
    return {}


def read_batch(path: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 32, 32, 3) uint8 and labels (n,) of one batch file (small files, tests)."""
    labels = batch_labels(path, n_classes)
    return np.concatenate([to_images(block) for _, block in _blocks(path, 4096)]), labels
