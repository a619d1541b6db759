"""Atomic outputs: build beside the target, then rename, so a crash leaves the old output or none.
A stage's edge gives its core a temporary place for each output (`output_places`) and puts them in
place once the stage has succeeded.

Temporaries are named `.<target>.tmp-<pid>-<random>` (and `.<target>.old-<pid>`): the next write
of the same target removes those whose process is gone (killed mid-write), and no others."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def sweep_stale(target: Path) -> None:
    """Remove temporaries of `target` left by processes that no longer run (a SIGKILL mid-write)."""
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*-*"):
        kind, _, rest = stale.name[len(target.name) + 2 :].partition("-")
        pid = rest.split("-", 1)[0]
        if kind not in ("tmp", "old") or not pid.isdigit() or _alive(int(pid)):
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def swap_in(new: Path, target: Path) -> None:
    """Put `new` where `target` is: a file over a file by one rename; otherwise (a rename cannot
    overwrite a directory, nor put one over a file) by moving the old one aside first, then removing it."""
    old = None
    if target.exists() and (target.is_dir() or new.is_dir()):
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `target`; on success it replaces `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; outputs are ordinary directories
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_in(tmp, target)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `target` (ending in `suffix`, for writers that insist on one);
    on success it is renamed onto `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-{os.getpid()}-", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.chmod(0o644)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)


def write_json(target: str | os.PathLike, data: Any) -> None:
    with atomic_file(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


class OutputPlaces:
    """A temporary place beside each of a stage's targets: a fresh directory for a directory output
    (no suffix: data/prepared, exported); for a file, a path of the file's own name inside a fresh
    directory, so what is written there, and what MLflow logs from there, has its real name.
    `commit` puts every place that was written onto its target, in the order given (a file the stage
    did not write leaves its target as it was); `discard` removes them all."""

    def __init__(self, targets: dict[str, Path]):
        self.targets = {option: Path(target) for option, target in targets.items()}
        self.holders: dict[str, Path] = {}
        for option, target in self.targets.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            sweep_stale(target)
            holder = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
            holder.chmod(0o755)  # mkdtemp makes it private; outputs are ordinary directories
            self.holders[option] = holder
        self.places = {
            option: self.holders[option] / target.name if target.suffix else self.holders[option]
            for option, target in self.targets.items()
        }

    def commit(self) -> None:
        for option, place in self.places.items():
            if place.exists():
                swap_in(place, self.targets[option])
        self.discard()

    def discard(self) -> None:
        for holder in self.holders.values():
            shutil.rmtree(holder, ignore_errors=True)
