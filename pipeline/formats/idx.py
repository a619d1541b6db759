"""Data format `idx`: MNIST-style IDX files (gzip'd or plain), strictly read; writing for tests and users.

Format: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then one
big-endian uint32 per dimension, then the data in C order. Every way a file can be wrong
is a PipelineError naming the file.
"""

from __future__ import annotations

import functools
import gzip
import math
import struct
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.formats.base import RawData, check_same_shape
from pipeline.hashing import is_gzip, reading

NAME = "idx"
URL_PREFIX_OK = True  # data.source may be an http(s) prefix the file names are appended to
UBYTE = 0x08
_CHUNK = 1 << 20
_MAX_DEFLATE_RATIO = 1032  # deflate's largest possible expansion (RFC 1951: 258 bytes per 2 bits)

# The default data set's: Fashion-MNIST as Debian's dataset-fashion-mnist (and the upstream mirror) has it.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]  # fmt: skip


@functools.cache
def section():
    """The params section `data.idx` (a pydantic model, built on first use: the predictor reads
    with this module where pydantic is not installed)."""
    from pipeline.schema import Checksums, ClassNames, FormatSection

    class Section(FormatSection):
        """`data.idx`: images (n, h, w) or (n, h, w, c) and labels (n,), gzip'd or plain."""

        train_images: str = "train-images-idx3-ubyte.gz"
        train_labels: str = "train-labels-idx1-ubyte.gz"
        test_images: str = "t10k-images-idx3-ubyte.gz"
        test_labels: str = "t10k-labels-idx1-ubyte.gz"
        sha256: Checksums | None = FASHION_MNIST_SHA256
        class_names: ClassNames | None = FASHION_MNIST_CLASSES

        def files(self) -> list[str]:
            return [self.train_images, self.train_labels, self.test_images, self.test_labels]

    return Section


def read(raw_dir: Path, section) -> RawData:
    """The train and test parts, cross-checked; class names from params or labels 0..n-1."""
    n = len(section.class_names) if section.class_names else None
    train = read_images_and_labels(raw_dir / section.train_images, raw_dir / section.train_labels, n)
    n = n or int(train[1].max()) + 1
    test = read_images_and_labels(raw_dir / section.test_images, raw_dir / section.test_labels, n)
    check_same_shape(train[0], test[0], raw_dir / section.test_images)
    names = section.class_names or [str(i) for i in range(n)]
    return RawData(train, test, list(names))


def read_idx(path: str | Path, ndims: tuple[int, ...]) -> np.ndarray:
    """Read an unsigned-byte IDX array whose number of dimensions is one of `ndims`.

    Streams: the header is read first, then exactly the bytes it declares, so memory is bounded by
    the header (itself bounded by the file: deflate expands at most ~1032×), never by what a
    malicious gzip inflates to."""
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
        dims = "x".join(map(str, shape))
        possible = path.stat().st_size * (_MAX_DEFLATE_RATIO if is_gzip(path) else 1)
        if expected > possible:
            raise PipelineError(
                f"{path}: truncated: header declares {dims} = {expected} data bytes, "
                f"more than a {path.stat().st_size}-byte file can hold"
            )
        data = np.empty(expected, dtype=np.uint8)
        filled = 0
        while filled < expected:
            chunk = stream.read(min(_CHUNK, expected - filled))
            if not chunk:
                break
            data[filled : filled + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            filled += len(chunk)
        if filled < expected:
            raise PipelineError(
                f"{path}: truncated: header declares {dims} = {expected} data bytes, file holds {filled}"
            )
        extra = len(stream.read(_CHUNK))  # count a little of what follows, never inflate it all
        if extra:
            holds = f"{expected + extra}" if extra < _CHUNK else f"more than {expected + extra}"
            raise PipelineError(
                f"{path}: trailing bytes: header declares {dims} = {expected} data bytes, file holds {holds}"
            )
    return data.reshape(shape)


def read_images_and_labels(
    images: str | Path, labels: str | Path, n_classes: int | None
) -> tuple[np.ndarray, np.ndarray]:
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
