"""Data format `idx`: MNIST-style IDX files (gzip'd or plain), strictly read.

Format: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then one
big-endian uint32 per dimension, then the data in C order. Every way a file can be wrong
is a PipelineError naming the file.
"""

from __future__ import annotations

import contextlib
import math
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.formats.base import Decoded, Part, Scan, check_same_shape
from pipeline.hashing import is_gzip, reading

NAME = "idx"
KIND = "image"  # the kind of data it yields (pipeline/kinds.py)
UBYTE = 0x08
_CHUNK = 1 << 20
_MAX_DEFLATE_RATIO = 1032  # deflate's largest possible expansion (RFC 1951: 258 bytes per 2 bits)

DECODE_IN_PROCESSES = False  # the bytes are the pixels: reading is the work, and it streams


def scan(raw_dir: Path, section) -> Scan:
    """Labels of both parts (read whole: a byte each) and the images' headers, cross-checked; class
    names from params or labels 0..n-1."""
    n = len(section.class_names) if section.class_names else None
    train_labels, shape = scan_part(raw_dir / section.train_images, raw_dir / section.train_labels, n)
    n = n or int(train_labels.max()) + 1
    test_labels, test_shape = scan_part(raw_dir / section.test_images, raw_dir / section.test_labels, n)
    check_same_shape(shape, test_shape, raw_dir / section.test_images)
    names = section.class_names or [str(i) for i in range(n)]
    parts = {"train": Part("train", train_labels), "test": Part("test", test_labels)}
    return Scan(parts, list(names), shape, KIND)


def scan_part(images: Path, labels: Path, n_classes: int | None) -> tuple[np.ndarray, tuple[int, ...]]:
    """The labels (validated against `n_classes`, unless None) and the images' shape (h, w, c), read
    from the header alone."""
    y = read_idx(labels, ndims=(1,))
    with open_idx(images, ndims=(3, 4)) as (_, dims):
        pass
    shape = (*dims[1:3], dims[3] if len(dims) == 4 else 1)
    if dims[0] != len(y):
        raise PipelineError(f"{labels}: holds {len(y)} labels but {images} holds {dims[0]} images")
    if len(y) == 0:
        raise PipelineError(f"{labels}: holds no examples")
    bad = np.flatnonzero(y >= n_classes) if n_classes is not None else []
    if len(bad):
        i = int(bad[0])
        raise PipelineError(
            f"{labels}: label {int(y[i])} at index {i} is outside the {n_classes} classes in data.idx.class_names"
        )
    return y.astype(np.int64), shape


def chunks(raw_dir: Path, section, scan: Scan, part: str, start: int = 0, stop: int | None = None):
    """(position, images (k, h, w, c) uint8) of the part, in order, from `start` to `stop`."""
    images = raw_dir / (section.train_images if part == "train" else section.test_images)
    for position, block in iter_idx(images, (3, 4), scan.chunk_examples(), start, stop):
        yield position, block.reshape(len(block), *scan.input_shape)


def decode(payload: np.ndarray, raw_dir: Path, options: dict) -> Decoded:
    return Decoded(payload)


def decode_options(section, scan: Scan) -> dict:
    return {}


@contextlib.contextmanager
def open_idx(path: str | Path, ndims: tuple[int, ...]) -> Iterator[tuple]:
    """The decompressed stream positioned after a validated unsigned-byte IDX header, and the shape
    the header declares (checked against what the file could hold: deflate expands at most ~1032×)."""
    path = Path(path)
    with reading(path) as stream:
        head = stream.read(4)
        if len(head) < 4:
            raise PipelineError(f"{path}: too short for an IDX header ({len(head)} bytes)")
        zero, dtype, ndim = struct.unpack(">HBB", head)
        if zero != 0 or dtype != UBYTE or ndim not in ndims:
            expected = " or ".join(f"0x{0x0800 + n:08x}" for n in ndims)
            raise PipelineError(
                f"{path}: bad magic number 0x{struct.unpack('>I', head)[0]:08x}, expected {expected} "
                f"(unsigned-byte IDX with {' or '.join(map(str, ndims))} dimensions)"
            )
        dims_bytes = stream.read(4 * ndim)
        if len(dims_bytes) < 4 * ndim:
            raise PipelineError(f"{path}: truncated IDX header ({4 + len(dims_bytes)} of {4 + 4 * ndim} bytes)")
        shape = struct.unpack(f">{ndim}I", dims_bytes)
        if ndim > 1 and 0 in shape[1:]:
            raise PipelineError(f"{path}: declares an empty example shape {shape[1:]}")
        expected = math.prod(shape)  # exact: Python integers do not wrap
        possible = path.stat().st_size * (_MAX_DEFLATE_RATIO if is_gzip(path) else 1)
        if expected > possible:
            raise PipelineError(
                f"{path}: truncated: header declares {_dims(shape)} = {expected} data bytes, "
                f"more than a {path.stat().st_size}-byte file can hold"
            )
        yield stream, shape


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def iter_idx(path: str | Path, ndims: tuple[int, ...], per_chunk: int, start: int = 0, stop: int | None = None):
    """(position, examples) of an IDX file, `per_chunk` examples (first-axis entries) at a time, in
    order from `start` to `stop`; the whole file is read, so a truncated file or trailing bytes
    are found whatever the range (positions before `start` are read and dropped: gzip cannot seek)."""
    path = Path(path)
    with open_idx(path, ndims) as (stream, shape):
        count, size = shape[0], math.prod(shape[1:]) if len(shape) > 1 else 1
        stop = count if stop is None else min(stop, count)
        position = 0
        while position < count:
            n = min(per_chunk, count - position)
            chunk = stream.read(n * size)
            if len(chunk) < n * size:
                filled = position * size + len(chunk)
                declared = f"{_dims(shape)} = {count * size} data bytes"
                raise PipelineError(f"{path}: truncated: header declares {declared}, file holds {filled}")
            if position + n > start and position < stop:
                block = np.frombuffer(chunk, dtype=np.uint8).reshape(n, *shape[1:])
                lo, hi = max(start - position, 0), min(stop - position, n)
                yield position + lo, block[lo:hi]
            position += n
        extra = len(stream.read(_CHUNK))  # count a little of what follows, never inflate it all
        if extra:
            total = count * size
            holds = f"{total + extra}" if extra < _CHUNK else f"more than {total + extra}"
            raise PipelineError(
                f"{path}: trailing bytes: header declares {_dims(shape)} = {total} data bytes, file holds {holds}"
            )


def read_idx(path: str | Path, ndims: tuple[int, ...]) -> np.ndarray:
    """A whole unsigned-byte IDX array whose number of dimensions is one of `ndims` (labels, small
    files, tests): memory is bounded by what the header declares, never by what a gzip inflates to."""
    with open_idx(path, ndims) as (_, shape):
        pass
    per_chunk = max(1, _CHUNK // max(1, math.prod(shape[1:])))
    blocks = [block for _, block in iter_idx(path, ndims, per_chunk)]
    return np.concatenate(blocks) if blocks else np.zeros(shape, np.uint8)
