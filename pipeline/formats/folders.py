"""Class folders, as image and text folder data sets keep them: `<root>/<class>/<file>`, one folder per
class, class names the folder names (sorted) unless params give them. Hidden and system files and
folders (`.DS_Store`, AppleDouble `._x`, `Thumbs.db`, `desktop.ini`, `__MACOSX/`) are not examples:
copies from a Mac or Windows carry them, and every folder loader ignores them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

SYSTEM_FILES = {"thumbs.db", "desktop.ini", "ehthumbs.db", "__macosx"}


def is_hidden(path: Path, root: Path) -> bool:
    """Whether any part of `path` below `root` is a hidden or system file or folder."""
    return any(part.startswith(".") or part.lower() in SYSTEM_FILES for part in path.relative_to(root).parts)


def is_example(path: Path, folder: Path, suffixes: tuple[str, ...]) -> bool:
    """Whether `path`, found under `folder`, is an example: a file ending in one of `suffixes` (any
    case), neither hidden nor a system file (nor below a hidden folder)."""
    return path.suffix.lower() in suffixes and not is_hidden(path, folder) and path.is_file()


def class_folders(root: Path, class_names: list[str] | None, where: str, what: str = "file") -> list[str]:
    """The class names: the folders under `root`, checked against `class_names` when params give
    them (`where`: the params section, `what` an example's kind, for the messages)."""
    if not root.is_dir():
        raise PipelineError(f"{root}: {what} folder not found")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not is_hidden(p, root))
    if not found:
        raise PipelineError(f"{root}: no class subdirectories (expected {root}/<class>/<{what}>)")
    if class_names is None:
        return found
    if sorted(class_names) != found:
        extra = sorted(set(found) - set(class_names)) or sorted(set(class_names) - set(found))
        raise PipelineError(f"{root}: class folders {found} do not match {where}.class_names (differ in {extra[0]!r})")
    return list(class_names)


def class_files(raw_dir: Path, folder: str, class_names: list[str] | None, suffixes: tuple[str, ...],
                where: str, what: str = "file") -> tuple[list[str], np.ndarray, list[str]]:  # fmt: skip
    """Class names, each file's label and its path relative to `raw_dir`, class by class, sorted:
    the files ending in `suffixes` (any case) at any depth, hidden and system files left out."""
    root = raw_dir / folder
    names = class_folders(root, class_names, where, what)
    labels, keys = [], []
    for label, name in enumerate(names):
        directory = root / name
        files = sorted(p for p in directory.rglob("*") if is_example(p, directory, suffixes))
        if not files:
            raise PipelineError(f"{directory}: no {what}s ({', '.join(suffixes)}) for class {name!r}")
        keys += [p.relative_to(raw_dir).as_posix() for p in files]
        labels += [label] * len(files)
    return names, np.asarray(labels, dtype=np.int64), keys
