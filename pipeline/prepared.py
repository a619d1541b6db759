"""The prepared data set: what `prepare` writes and every later stage reads, as one object.

    data/prepared/meta.json                      kind, shape, dtype, class names, statistics, counts, shards
    data/prepared/<split>/part-00000-of-00006.tfrecord

Inputs are raw, as the models take them (pipeline/kinds.py): uint8 pixels (h, w, c), float32
features (n,), or a text's UTF-8 bytes (max_bytes,). meta.json also holds the train split's
statistics (which the model's normalisation may use), the counts and each shard's size, checked
where reading starts: a shard cut short or replaced is one line naming it.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.kinds import Kind, kind_named
from pipeline.normalization import Normalization

SPLITS = ("train", "val", "test")
TRAIN, VAL, TEST = range(3)  # a split's code, as prepare's plan holds it; SPLITS names them
META_FILE = "meta.json"
FORMAT_VERSION = 5
RERUN = "rerun `dvc repro prepare`"


@dataclass(frozen=True)
class PreparedMeta:
    kind: str  # image | table | text (pipeline/kinds.py)
    input_shape: tuple[int, ...]
    class_names: list[str]
    statistics: Normalization  # of the train split: scale, mean and std (pipeline/normalization.py)
    counts: dict[str, int]
    shards: dict[str, list[str]]
    shard_bytes: dict[str, list[int]]  # each shard's size: checked before reading it
    dtype: str = "uint8"
    # Names of the feature columns, for tabular data (the deployed model's metadata carries them).
    feature_names: list[str] | None = None
    # Examples of each class (in class_names order) per split: class weights, skew warnings.
    class_counts: dict[str, list[int]] | None = None
    # The class binary metrics (ROC AUC, precision, ...) are about: two-class data only.
    positive_class: str | None = None
    # The data set's name (data.name, or from the source) and data.source: what MLflow names the
    # experiment, the registered model and the datasets after.
    name: str = "data"
    source: str = ""
    format: str = ""  # data.format of the raw data (idx, cifar10, image_folder, csv, text_folder, ...)
    # Each split's content hash (hashing.tree_sha256 of its shards): MLflow's dataset digests, and
    # what the gate and promote check a champion was tested on.
    split_sha256: dict[str, str] | None = None

    @property
    def data_kind(self) -> Kind:
        return kind_named(self.kind)

    @property
    def input_name(self) -> str:
        return self.data_kind.input_name

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def examples_in(self, nbytes: int) -> int:
        """How many examples' inputs fit in `nbytes` (at least one): a batch size bounded in memory."""
        size = int(np.prod(self.input_shape)) * np.dtype(self.dtype).itemsize
        return max(1, nbytes // max(size, 1))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "name": self.name,
            "source": self.source,
            "format": self.format,
            "input_shape": list(self.input_shape),
            "dtype": self.dtype,
            "feature_names": self.feature_names,
            "class_names": self.class_names,
            "positive_class": self.positive_class,
            "statistics": self.statistics.to_dict(),
            "counts": self.counts,
            "class_counts": self.class_counts,
            "shards": self.shards,
            "shard_bytes": self.shard_bytes,
            "split_sha256": self.split_sha256,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PreparedMeta:
        return cls(
            kind=raw["kind"],
            input_shape=tuple(int(d) for d in raw["input_shape"]),
            class_names=list(raw["class_names"]),
            statistics=Normalization.from_dict(raw["statistics"]),
            counts={k: int(v) for k, v in raw["counts"].items()},
            shards={k: list(v) for k, v in raw["shards"].items()},
            shard_bytes={k: [int(n) for n in v] for k, v in raw["shard_bytes"].items()},
            dtype=raw["dtype"],
            feature_names=raw.get("feature_names"),
            class_counts=raw["class_counts"],
            positive_class=raw["positive_class"],
            name=raw["name"],
            source=raw["source"],
            format=raw["format"],
            split_sha256=raw["split_sha256"],
        )


def read_meta(directory: str | Path) -> PreparedMeta:
    path = Path(directory) / META_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: prepared data not found (run `dvc repro prepare`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PipelineError(f"{path}: not valid JSON ({RERUN})") from None
    if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
        found = raw.get("format_version") if isinstance(raw, dict) else None
        raise PipelineError(f"{path}: format_version {found!r}, expected {FORMAT_VERSION} ({RERUN})")
    try:
        meta = PreparedMeta.from_dict(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise PipelineError(f"{path}: malformed ({type(exc).__name__}: {exc}; {RERUN})") from None
    kind_named(meta.kind, str(path))
    return meta


@dataclass(frozen=True)
class PreparedData:
    """The prepared directory and its metadata, with the readers of its splits: what the stages
    after `prepare` take, instead of a path and a metadata object passed side by side."""

    directory: Path
    meta: PreparedMeta

    @classmethod
    def open(cls, directory: str | Path) -> PreparedData:
        return cls(Path(directory), read_meta(directory))

    @property
    def kind(self) -> Kind:
        return self.meta.data_kind

    @property
    def identity(self) -> str:
        """sha256 of meta.json, which holds every split's content hash and the statistics."""
        return hashlib.sha256((self.directory / META_FILE).read_bytes()).hexdigest()

    def files(self, split: str) -> list[str]:
        """The split's shards, each checked to be there with the size prepare wrote: a shard cut short
        (a full disk, an interrupted copy) is one line naming it, before any reading."""
        if split not in self.meta.shards:
            raise PipelineError(f"{self.directory / META_FILE}: has no split {split!r}")
        paths = [posixpath.join(str(self.directory), split, name) for name in self.meta.shards[split]]
        sizes = self.meta.shard_bytes.get(split, [])
        if len(sizes) != len(paths):
            raise PipelineError(
                f"{self.directory / META_FILE}: {len(paths)} {split} shards, {len(sizes)} sizes ({RERUN})"
            )
        for path, size in zip(paths, sizes, strict=True):
            try:
                actual = Path(path).stat().st_size
            except FileNotFoundError:
                raise PipelineError(f"{path}: prepared shard missing ({RERUN})") from None
            if actual != size:
                raise PipelineError(
                    f"{path}: {actual:,} bytes, meta.json says {size:,}: damaged or cut short ({RERUN})"
                )
        return paths

    def batches(self, split: str, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The split as NumPy batches (raw inputs, int64 labels) in file order, read without TensorFlow:
        memory holds one batch, whatever the split's size. A count that differs from meta.json's is
        one line naming the split."""
        from pipeline.records import iter_records, parse_example

        dtype, shape = np.dtype(self.meta.dtype), self.meta.input_shape
        inputs, labels, seen = [], [], 0
        for path in self.files(split):
            for record in iter_records(path):
                data, label = parse_example(record, path)
                if len(data) != int(np.prod(shape)) * dtype.itemsize:
                    raise PipelineError(
                        f"{path}: a record of {len(data)} bytes, not one {dtype} {shape} input ({RERUN})"
                    )
                inputs.append(np.frombuffer(data, dtype=dtype).reshape(shape))
                labels.append(label)
                if len(labels) == batch_size:
                    seen += len(labels)
                    yield np.stack(inputs), np.asarray(labels, dtype=np.int64)
                    inputs, labels = [], []
        seen += len(labels)
        if labels:
            yield np.stack(inputs), np.asarray(labels, dtype=np.int64)
        self.check_count(split, seen)

    def check_count(self, split: str, seen: int) -> None:
        if seen != self.meta.counts[split]:
            expected = self.meta.counts[split]
            raise PipelineError(
                f"{self.directory / split}: holds {seen:,} examples, meta.json says {expected:,} ({RERUN})"
            )

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """A whole split as NumPy arrays: for tests and benchmarks on small data; stages stream with
        `batches`."""
        batches = list(self.batches(split, 4096))
        if not batches:
            return np.zeros((0, *self.meta.input_shape), self.meta.dtype), np.zeros(0, np.int64)
        return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])

    def dataset(self, split: str, files: list[str] | None = None):
        """A tf.data.Dataset of (input, int64 label) of `split` (or of `files` of it), in file order."""
        from pipeline.records import tf_dataset

        whole = files is None
        dataset = tf_dataset(self.files(split) if whole else files, self.meta.input_shape, self.meta.dtype)
        if whole:
            import tensorflow as tf

            # A known length gives Keras a real progress bar and no "ran out of data" warning.
            dataset = dataset.apply(tf.data.experimental.assert_cardinality(self.meta.counts[split]))
        return dataset
