"""MNIST-style IDX files (gzip'd or plain): strict reading, writing for tests and users, content hashing.

Format: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then one
big-endian uint32 per dimension, then the data in C order. Every way a file can be wrong
is a PipelineError naming the file.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import math
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError, first_line

UBYTE = 0x08
_CHUNK = 1 << 20
_MAX_DEFLATE_RATIO = 1032  # deflate's largest possible expansion (RFC 1951: 258 bytes per 2 bits)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as probe:
        return probe.read(2) == b"\x1f\x8b" or path.suffix == ".gz"


def _open(path: Path):
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")


@contextlib.contextmanager
def _reading(path: Path, label: str | os.PathLike | None = None) -> Iterator:
    """The decompressed stream of `path`; corrupt or truncated gzip is a PipelineError naming
    `label` (default: the path)."""
    name = label or path
    try:
        with _open(path) as stream:
            yield stream
    except FileNotFoundError:
        raise PipelineError(f"{name}: file not found") from None
    except gzip.BadGzipFile as exc:
        raise PipelineError(f"{name}: corrupt gzip data ({first_line(exc)})") from None
    except EOFError:
        raise PipelineError(f"{name}: truncated gzip stream (incomplete download?)") from None
    except zlib.error as exc:
        raise PipelineError(f"{name}: corrupt gzip data ({first_line(exc)})") from None


def content_sha256(path: str | Path, label: str | None = None) -> str:
    """sha256 of the decompressed content (streamed), stable across recompression by mirrors."""
    digest = hashlib.sha256()
    with _reading(Path(path), label) as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_idx(path: str | Path, ndims: tuple[int, ...]) -> np.ndarray:
    """Read an unsigned-byte IDX array whose number of dimensions is one of `ndims`.

    Streams: the header is read first, then exactly the bytes it declares, so memory is bounded by
    the header (itself bounded by the file: deflate expands at most ~1032×), never by what a
    malicious gzip inflates to."""
    path = Path(path)
    with _reading(path) as stream:
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
        dims = "x".join(map(str, shape))
        possible = path.stat().st_size * (_MAX_DEFLATE_RATIO if _is_gzip(path) else 1)
        if expected > possible:
            raise PipelineError(f"{path}: truncated: header declares {dims} = {expected} data bytes, "
                                f"more than a {path.stat().st_size}-byte file can hold")
        data = np.empty(expected, dtype=np.uint8)
        filled = 0
        while filled < expected:
            chunk = stream.read(min(_CHUNK, expected - filled))
            if not chunk:
                break
            data[filled:filled + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            filled += len(chunk)
        if filled < expected:
            raise PipelineError(f"{path}: truncated: header declares {dims} = {expected} data bytes, file holds {filled}")
        extra = len(stream.read(_CHUNK))  # count a little of what follows, never inflate it all
        if extra:
            holds = f"{expected + extra}" if extra < _CHUNK else f"more than {expected + extra}"
            raise PipelineError(f"{path}: trailing bytes: header declares {dims} = {expected} data bytes, "
                                f"file holds {holds}")
    return data.reshape(shape)


def read_images_and_labels(images: str | Path, labels: str | Path,
                           n_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Images as (n, height, width, channels) uint8 and labels as (n,) int64, cross-checked
    (labels against `n_classes` too, unless it is None)."""
    x = read_idx(images, ndims=(3, 4))
    y = read_idx(labels, ndims=(1,))
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if len(x) != len(y):
        raise PipelineError(f"{labels}: holds {len(y)} labels but {images} holds {len(x)} images")
    if len(y) == 0:
        raise PipelineError(f"{labels}: holds no examples")
    bad = np.flatnonzero(y >= n_classes) if n_classes is not None else []
    if len(bad):
        i = int(bad[0])
        raise PipelineError(
            f"{labels}: label {int(y[i])} at index {i} is outside the {n_classes} classes in data.idx.class_names"
        )
    return x, y.astype(np.int64)


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write a uint8 array as IDX (gzip'd when the name ends in .gz or `compress` says so)."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = struct.pack(">HBB", 0, UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.tobytes()
    compress = path.suffix == ".gz" if compress is None else compress
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
    return path
