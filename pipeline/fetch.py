"""Stage `fetch`: make the raw data set available under data/raw/ and verify its checksums.

`data.source` is a local directory (default: Debian's dataset-fashion-mnist), an http(s) URL prefix,
or an archive (.tar.gz, .tgz, .tar, .zip; a path or a URL). The files the chosen format reads
(`data.<format>`) are copied (symbolic links followed; a link loop is refused), downloaded (with a
progress bar; each download stops at `data.max_extracted_bytes`) or extracted, then checked against
`data.<format>.sha256`, the sha256 of each file's decompressed content. Does not import TensorFlow.
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

from tqdm import tqdm

from pipeline.cli import end_process
from pipeline.errors import PipelineError, first_line
from pipeline.hashing import content_sha256
from pipeline.params import DataParams
from pipeline.schema import FormatSection
from pipeline.stage import Stage, StageResult

_DOWNLOAD_CHUNK = 1 << 16
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def is_archive(source: str) -> bool:
    return source.lower().endswith(ARCHIVE_SUFFIXES)


def download(url: str, dest: Path, max_bytes: int) -> None:
    """`url` into `dest`, never more than `max_bytes` (data.max_extracted_bytes): a server that
    announces more is refused before its body is read, one that keeps sending is cut off there."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            if total is not None and total > max_bytes:
                raise PipelineError(
                    f"{url}: the server announces {total:,} bytes, more than data.max_extracted_bytes ({max_bytes:,})"
                )
            written = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=None, file=sys.stderr) as bar:
                while chunk := response.read(_DOWNLOAD_CHUNK):
                    written += len(chunk)
                    if written > max_bytes:
                        raise PipelineError(
                            f"{url}: download stopped at {max_bytes:,} bytes (data.max_extracted_bytes), "
                            "and the server was still sending"
                        )
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(exc, urllib.error.HTTPError) and 300 <= exc.code < 400:
            # urllib stops a redirect loop (or the redirect past its maximum) with a 3-line reason
            most = urllib.request.HTTPRedirectHandler.max_redirections
            reason = f"the server redirects in a loop, or more than {most} times"
        raise PipelineError(f"{url}: download failed ({reason})") from None


def link_loop(root: Path) -> Path | None:
    """The first symbolic link under `root` that leads back to a folder holding it, or None.

    shutil.copytree copies what links point to, so through such a link it would copy without end
    (until the path grows too long for the system, then fail naming it). A link that leads above
    `root` closes its loop deeper down; the link named is the last one on that path."""
    above = {str(root): ((root.stat().st_dev, root.stat().st_ino),)}
    for directory, subdirs, _ in os.walk(root, followlinks=True):
        chain = above.pop(directory)
        for name in subdirs:
            path = os.path.join(directory, name)
            try:
                status = os.stat(path)
            except OSError:
                continue  # gone or unreadable: the copy names it
            identity = (status.st_dev, status.st_ino)
            if identity in chain:
                found = Path(path)
                return next((p for p in (found, *found.parents) if p.is_symlink()), found)
            above[path] = (*chain, identity)
    return None


def copy_local(source_dir: Path, name: str, dest: Path, data: DataParams) -> None:
    src = source_dir / name
    if name.endswith("/"):
        if not src.is_dir():
            raise PipelineError(f"{src}: directory not found (data.{data.format} names it under data.source)")
        loop = link_loop(src)
        if loop is not None:
            target = os.readlink(loop) if loop.is_symlink() else "a mount"
            raise PipelineError(
                f"{loop}: symbolic link loop (-> {target}, a folder that holds the link); "
                "fetch copies what links point to: remove the link or point it elsewhere"
            )
        try:
            shutil.copytree(src, dest)
        except shutil.Error as exc:  # one (source, destination, reason) per file that failed: the first
            failed = exc.args[0][0] if exc.args and isinstance(exc.args[0], list) and exc.args[0] else None
            if failed is None or len(failed) != 3:
                raise PipelineError(f"{src}: cannot copy ({first_line(exc)})") from None
            raise PipelineError(f"{failed[0]}: cannot copy ({failed[2]})") from None
        except OSError as exc:
            raise PipelineError(f"{src}: cannot copy ({first_line(exc)})") from None
        return
    if not src.is_file():
        raise PipelineError(f"{src}: file not found (data.{data.format} names it under data.source)")
    shutil.copyfile(src, dest)


class ExtractionBudget:
    """Counts the bytes an archive expands to and refuses, before writing them, any that would pass
    `max_bytes` or `max_ratio` times the archive's own size (zip/tar bombs)."""

    def __init__(self, archive: Path, max_bytes: int, max_ratio: float):
        self.archive = archive
        self.limit = int(min(max_bytes, max_ratio * max(archive.stat().st_size, 1)))
        self.max_bytes, self.max_ratio = max_bytes, max_ratio
        self.total = 0

    def add(self, size: int, member: str) -> None:
        self.total += size
        if self.total > self.limit:
            raise PipelineError(
                f"{self.archive.name}: expands to more than {self.limit:,} bytes at member {member!r} "
                f"(limits: data.max_extracted_bytes {self.max_bytes:,}, data.max_compression_ratio "
                f"{self.max_ratio:g}× the archive's {self.archive.stat().st_size:,} bytes); refusing to extract"
            )


def extract(archive: Path, dest: Path, budget: ExtractionBudget) -> Path:
    """Unpack `archive` into `dest` (no paths outside it, no links or devices, no more bytes than
    `budget` allows); returns the data root: the single top-level directory when there is one
    (e.g. cifar-10-batches-bin/), else `dest`."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    target = (dest / info.filename).resolve()
                    if not target.is_relative_to(dest.resolve()):
                        raise PipelineError(
                            f"{archive.name}: member {info.filename!r} would extract outside the data directory"
                        )
                    # zipfile writes exactly file_size bytes per member (it stops there and checks the CRC).
                    budget.add(info.file_size, info.filename)
                zf.extractall(dest)
        else:

            def bounded(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
                member = tarfile.data_filter(member, path)
                budget.add(member.size, member.name)  # tarfile writes exactly member.size bytes
                return member

            with tarfile.open(archive) as tf:
                tf.extractall(dest, filter=bounded)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
        raise PipelineError(f"{archive.name}: cannot extract archive ({first_line(exc)})") from None
    entries = [p for p in dest.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest


def checked_sha256(path: Path, expected: str | None, where: str, label: str) -> str:
    """sha256 of `path`'s decompressed content, checked against `expected`; errors name `label`
    (the file as data.source has it), not the temporary copy."""
    actual = content_sha256(path, label=label)
    if expected is not None and actual != expected:
        raise PipelineError(
            f"{label}: checksum mismatch: {where} expects {expected}, decompressed content has {actual} "
            f"(other data: `dvc exp run -S {where}=null ...`, or put its checksums under {where} in params.yaml)"
        )
    return actual


def check_source(data: DataParams) -> None:
    if is_url(data.source):
        if not data.selected.url_prefix_ok and not is_archive(data.source):
            raise PipelineError(
                f"data.source: {data.source}: {data.format} data come from a directory or an archive "
                "(.zip, .tar.gz), not a URL prefix"
            )
        return
    path = Path(data.source)
    if is_archive(data.source) and path.is_file():
        return
    if not path.is_dir():
        hint = (
            " (on Debian: apt-get install dataset-fashion-mnist)"
            if data.source.startswith("/usr/share/datasets")
            else ""
        )
        raise PipelineError(f"data.source: {data.source} is not a directory or an archive{hint}")


def gather(data: DataParams, dest: Path, scratch: Path) -> None:
    """Put the files the chosen format reads under `dest`, from wherever data.source points."""
    section: FormatSection = data.selected
    names = section.files()
    root: Path | None = None
    if is_archive(data.source):
        archive = scratch / Path(data.source.split("?")[0]).name
        if is_url(data.source):
            download(data.source, archive, data.max_extracted_bytes)
        else:
            shutil.copyfile(data.source, archive)
        budget = ExtractionBudget(archive, data.max_extracted_bytes, data.max_compression_ratio)
        root = extract(archive, scratch / "extracted", budget)
    elif not is_url(data.source):
        root = Path(data.source)
    for name in names:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise PipelineError(f"data.{data.format}: {name!r} must be a relative path inside data.source")
        target = dest / name.rstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if root is None:
            download(f"{data.source.rstrip('/')}/{name}", target, data.max_extracted_bytes)
        else:
            copy_local(root, name, target, data)


def fill(data: DataParams, directory: Path) -> dict[str, str]:
    """Put the verified raw files in `directory` (a fresh one). Returns relative path -> sha256 of
    decompressed content for each file of a fixed-list format (idx, cifar10, csv) and each file
    named in sha256."""
    check_source(data)
    section = data.selected
    where = f"data.{data.format}.sha256"
    checksums = section.sha256 or {}
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f"{directory.name}-scratch-") as scratch:
        gather(data, directory, Path(scratch))
    missing = sorted(name for name in checksums if not (directory / name).is_file())
    if missing:
        raise PipelineError(f"{where}: names {missing[0]!r}, which data.source does not hold")
    files = [n for n in section.files() if not n.endswith("/")]
    return {
        name: checked_sha256(directory / name, checksums.get(name), where, source_label(data.source, name))
        for name in sorted(set(files) | set(checksums))
    }


def source_label(source: str, name: str) -> str:
    """How the user knows file `name` of `source`: a path or URL under it, or a member of the archive."""
    if is_archive(source):
        return f"{source}:{name}"
    return f"{source.rstrip('/')}/{name}"


def fetch(inputs: dict[str, Path], params, outputs: dict[str, Path], tracking=None) -> StageResult:
    """The verified raw files of `data.source` into `outputs["out"]`."""
    data = params.data
    fill(data, outputs["out"])
    files = sum(1 for p in outputs["out"].rglob("*") if p.is_file())
    return StageResult(f"{files} {data.format} files ({len(data.selected.sha256 or {})} checksums verified)")


STAGE = Stage("fetch", __doc__, params=("data",), inputs=(), outputs=("out",), core=fetch)


def main(argv: list[str] | None = None) -> None:
    STAGE.run(argv)


if __name__ == "__main__":
    main()
    end_process()
