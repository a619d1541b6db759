"""MNIST-style IDX files (gzip'd or plain): strict reading, writing for tests and users, content hashing.

Format: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then one
big-endian uint32 per dimension, then the data in C order. Every way a file can be wrong
is a PipelineError naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

UBYTE = 0x08
_CHUNK = 1 << 20


def _open(path: Path):
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped or path.suffix == ".gz" else open(path, "rb")


def iter_content(path: str | Path) -> Iterator[bytes]:
    """Yield the decompressed bytes of `path` in chunks; corrupt or truncated gzip is a PipelineError."""
    path = Path(path)
    try:
        with _open(path) as stream:
            while chunk := stream.read(_CHUNK):
                yield chunk
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found") from None
    except gzip.BadGzipFile as exc:
        raise PipelineError(f"{path}: corrupt gzip data ({exc})") from None
    except EOFError:
        raise PipelineError(f"{path}: truncated gzip stream (incomplete download?)") from None
    except zlib.error as exc:
        raise PipelineError(f"{path}: corrupt gzip data ({exc})") from None


def content_sha256(path: str | Path) -> str:
    """sha256 of the decompressed content, stable across recompression by mirrors."""
    digest = hashlib.sha256()
    for chunk in iter_content(path):
        digest.update(chunk)
    return digest.hexdigest()


def read_idx(path: str | Path, ndims: tuple[int, ...]) -> np.ndarray:
    """Read an unsigned-byte IDX array whose number of dimensions is one of `ndims`."""
    path = Path(path)
    content = b"".join(iter_content(path))
    if len(content) < 4:
        raise PipelineError(f"{path}: too short for an IDX header ({len(content)} bytes)")
    zero, dtype, ndim = struct.unpack(">HBB", content[:4])
    if zero != 0 or dtype != UBYTE or ndim not in ndims:
        expected = " or ".join(f"0x{0x0800 + n:08x}" for n in ndims)
        raise PipelineError(
            f"{path}: bad magic number 0x{struct.unpack('>I', content[:4])[0]:08x}, expected {expected} "
            f"(unsigned-byte IDX with {' or '.join(map(str, ndims))} dimensions)"
        )
    header = 4 + 4 * ndim
    if len(content) < header:
        raise PipelineError(f"{path}: truncated IDX header ({len(content)} of {header} bytes)")
    shape = struct.unpack(f">{ndim}I", content[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    actual = len(content) - header
    if actual != expected:
        dims = "x".join(map(str, shape))
        kind = "truncated" if actual < expected else "trailing bytes"
        raise PipelineError(
            f"{path}: {kind}: header declares {dims} = {expected} data bytes, file holds {actual}"
        )
    if ndim > 1 and 0 in shape[1:]:
        raise PipelineError(f"{path}: declares an empty example shape {shape[1:]}")
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape)


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
