"""Content hashes: of files and directories (exported artifacts, prepared data), and of a raw
file's decompressed content (fetch's checksums), read as a stream."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import PipelineError, first_line

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(directory: Path) -> str:
    """One hash for a directory: relative paths and contents, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0" + file_sha256(path).encode())
    return digest.hexdigest()


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as probe:
        return probe.read(2) == b"\x1f\x8b" or path.suffix == ".gz"


def _open(path: Path):
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


@contextlib.contextmanager
def reading(path: Path, label: str | os.PathLike | None = None) -> Iterator:
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
    with reading(Path(path), label) as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
