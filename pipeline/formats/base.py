"""What every data format shares: its params section's common keys, and the raw data it reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydantic import field_validator, model_validator

from pipeline.schema import Checksums, ClassNames, Section

Split = tuple[np.ndarray, np.ndarray]


@dataclass
class RawData:
    """What a format's `read` returns: validated examples (uint8 images (n, h, w, c) or float32
    feature rows (n, f)) with int64 labels, and the class names."""

    train: Split
    test: Split | None  # None: the data has no test part; prepare splits one off train
    class_names: list[str]
    feature_names: list[str] | None = None
    skipped: list[str] = field(default_factory=list)  # unreadable files left out, relative to the data root

    @property
    def is_image(self) -> bool:
        return self.train[0].ndim == 4


def unique(names: list[str] | None) -> list[str] | None:
    if names is not None:
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"must be unique, {dupes[0]!r} repeats")
    return names


class FormatSection(Section):
    """`data.<format>`: the keys every format has; each format's module adds its own."""

    # sha256 of each file's *decompressed* content, keyed by its path relative to data.source
    # (mirrors recompress .gz files). Files not listed are not checked; null (or {}) checks nothing.
    # null, not {}, is what `dvc exp run -S data.<format>.sha256=null` can set: DVC merges a dict.
    sha256: Checksums | None = None
    # null: from the data (IDX/CIFAR labels 0..n-1, folder names, distinct CSV labels).
    class_names: ClassNames | None = None

    @field_validator("class_names")
    @classmethod
    def _unique_names(cls, names: list[str] | None) -> list[str] | None:
        return unique(names)

    def files(self) -> list[str]:
        """Paths, relative to data.source, that fetch copies (directories end with '/')."""
        raise NotImplementedError

    def known_files(self) -> list[str] | None:
        """The file names sha256 may name, where they are known before fetching."""
        return self.files()

    @model_validator(mode="after")
    def _checksums_name_known_files(self) -> FormatSection:
        known = self.known_files()
        unknown = sorted(set(self.sha256 or {}) - set(known)) if known is not None else []
        if unknown:
            raise ValueError(f".sha256 names {unknown[0]!r}, which is not one of this format's files {known}")
        return self


def check_same_shape(train: np.ndarray, test: np.ndarray, test_path) -> None:
    from pipeline.errors import PipelineError

    if train.shape[1:] != test.shape[1:]:
        raise PipelineError(
            f"{test_path}: input shape {test.shape[1:]} differs from the train part's {train.shape[1:]}"
        )
