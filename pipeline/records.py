"""The prepared-data format: per split, TFRecord shards of (raw input bytes, label), plus meta.json.

Inputs are raw: uint8 pixels (images, shape (h, w, c)) or float32 features (tables, shape
(n_features,)); meta.json says which, with the shape, class names, the train split's statistics
(which the model's own normalisation layers may use) and counts.

    data/prepared/meta.json                      shape, dtype, class names, statistics, counts, shards
    data/prepared/<split>/part-00000-of-00006.tfrecord

TFRecord streams from any filesystem `tf.io.gfile` reads (local, gs://, s3://) without loading
everything into memory, and shards by file across workers. TensorFlow is imported only by the
functions that need it.
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.normalization import Normalization

SPLITS = ("train", "val", "test")
META_FILE = "meta.json"
FORMAT_VERSION = 4
PARSE_BLOCK = 1024  # records parsed per op by read_split


@dataclass(frozen=True)
class PreparedMeta:
    input_shape: tuple[int, ...]
    class_names: list[str]
    statistics: Normalization  # of the train split: scale, mean and std (pipeline/normalization.py)
    counts: dict[str, int]
    shards: dict[str, list[str]]
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
    format: str = ""  # data.format of the raw data (idx, cifar10, image_folder, csv)
    # Each split's content hash (hashing.tree_sha256 of its shards): MLflow's dataset digests, and
    # what the gate and promote check a champion was tested on.
    split_sha256: dict[str, str] | None = None

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    def examples_in(self, nbytes: int) -> int:
        """How many examples' inputs fit in `nbytes` (at least one): a batch size bounded in memory."""
        size = int(np.prod(self.input_shape)) * np.dtype(self.dtype).itemsize
        return max(1, nbytes // max(size, 1))

    @property
    def input_name(self) -> str:
        return input_name(self.input_shape)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
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
            "split_sha256": self.split_sha256,
        }


OUTPUT_NAME = "probabilities"  # what every model and exported form outputs: softmax over the classes


def input_name(input_shape: tuple[int, ...]) -> str:
    """The models' input name: `image` for (h, w, c) images, `features` for table rows."""
    return "image" if len(input_shape) == 3 else "features"


def shard_name(index: int, count: int) -> str:
    return f"part-{index:05d}-of-{count:05d}.tfrecord"


# ----------------------------------------------------------------------------- tf.train.Example, no TensorFlow
@functools.cache
def example_class():
    """tf.train.Example (tensorflow/core/example/{example,feature}.proto, the fields used here) built
    in a private protobuf pool: prepare, its Beam workers and the TensorFlow-free stages write and read
    the very bytes TensorFlow does, with protobuf's own serialisation, without importing TensorFlow
    (and without clashing with its copy of the same messages when it is imported)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="pipeline_example.proto", package="tensorflow", syntax="proto3")

    def message(name, *fields, options=None):
        m = proto.message_type.add(name=name)
        for number, (field_name, kind, label, type_name) in enumerate(fields, start=1):
            field = m.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
        if options is not None:
            m.options.CopyFrom(options)
        return m

    repeated, optional = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", ("value", F.TYPE_BYTES, repeated, None))
    message("FloatList", ("value", F.TYPE_FLOAT, repeated, None))
    message("Int64List", ("value", F.TYPE_INT64, repeated, None))
    feature = message(
        "Feature",
        ("bytes_list", F.TYPE_MESSAGE, optional, ".tensorflow.BytesList"),
        ("float_list", F.TYPE_MESSAGE, optional, ".tensorflow.FloatList"),
        ("int64_list", F.TYPE_MESSAGE, optional, ".tensorflow.Int64List"),
    )
    feature.oneof_decl.add(name="kind")
    for field in feature.field:
        field.oneof_index = 0
    features = message("Features", ("feature", F.TYPE_MESSAGE, repeated, ".tensorflow.Features.FeatureEntry"))
    entry = features.nested_type.add(name="FeatureEntry", options=descriptor_pb2.MessageOptions(map_entry=True))
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=optional)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=optional, type_name=".tensorflow.Feature")
    message("Example", ("features", F.TYPE_MESSAGE, optional, ".tensorflow.Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


def serialize_example(data: bytes, label: int) -> bytes:
    """One prepared example, {image: raw input bytes, label: int64}, as tf.train.Example bytes;
    deterministic (map entries in key order), so the same data gives the same shards and DVC hash
    in every process."""
    example = example_class()()
    example.features.feature["image"].bytes_list.value.append(data)
    example.features.feature["label"].int64_list.value.append(int(label))
    return example.SerializeToString(deterministic=True)


def parse_example(record: bytes) -> tuple[bytes, int]:
    example = example_class().FromString(record)
    features = example.features.feature
    return features["image"].bytes_list.value[0], int(features["label"].int64_list.value[0])


def _masked_crc(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C, rotated right by 15 bits plus a constant."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    """A record as TFRecord stores it: length, its checksum, the data, its checksum."""
    length = struct.pack("<Q", len(record))
    return length + struct.pack("<I", _masked_crc(length)) + record + struct.pack("<I", _masked_crc(record))


def iter_records(path: str | os.PathLike) -> Iterator[bytes]:
    """The records of one TFRecord file, checksums verified (what TFRecordDataset reads)."""
    with open(path, "rb") as f:
        while header := f.read(12):
            if len(header) < 12:
                raise PipelineError(f"{path}: truncated TFRecord header (rerun `dvc repro prepare`)")
            (length,), (crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
            record = f.read(length)
            tail = f.read(4)
            if crc != _masked_crc(header[:8]) or len(record) < length or len(tail) < 4:
                raise PipelineError(f"{path}: truncated or corrupt TFRecord (rerun `dvc repro prepare`)")
            if struct.unpack("<I", tail)[0] != _masked_crc(record):
                raise PipelineError(f"{path}: a record's checksum does not match (rerun `dvc repro prepare`)")
            yield record


class SplitWriter:
    """Writes one split's examples, in the order given, as shards of `shard_size` examples:
    part-00000-of-000NN.tfrecord, ... (NN is known once the last example is in: see close())."""

    def __init__(self, directory: Path, shard_size: int):
        self.directory, self.shard_size = directory, shard_size
        directory.mkdir(parents=True, exist_ok=True)
        self.count, self.shards, self.file = 0, 0, None

    def write(self, record: bytes) -> None:
        if self.count % self.shard_size == 0:
            self._next_shard()
        self.file.write(frame(record))
        self.count += 1

    def _next_shard(self) -> None:
        if self.file is not None:
            self.file.close()
        self.file = open(self.directory / f".part-{self.shards:05d}", "wb")  # noqa: SIM115 (open across writes)
        self.shards += 1

    def close(self) -> list[str]:
        """Names the shards by their final count; returns their names (one empty shard for no examples)."""
        if self.file is None:
            self._next_shard()
        self.file.close()
        names = [shard_name(i, self.shards) for i in range(self.shards)]
        for i, name in enumerate(names):
            os.replace(self.directory / f".part-{i:05d}", self.directory / name)
        return names


def write_split(directory: Path, inputs: np.ndarray, labels: np.ndarray, shard_size: int) -> list[str]:
    """Arrays already in memory as one split's shards (benchmarks, small data); returns their names."""
    writer = SplitWriter(directory, shard_size)
    for x, label in zip(inputs, labels, strict=True):
        writer.write(serialize_example(np.ascontiguousarray(x).tobytes(), int(label)))
    return writer.close()


def read_meta(prepared_dir: str) -> PreparedMeta:
    path = posixpath.join(str(prepared_dir), META_FILE)
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: prepared data not found (run `dvc repro prepare`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PipelineError(f"{path}: not valid JSON") from None
    if raw.get("format_version") != FORMAT_VERSION:
        raise PipelineError(
            f"{path}: format_version {raw.get('format_version')!r}, expected {FORMAT_VERSION} "
            "(rerun `dvc repro prepare`)"
        )
    return PreparedMeta(
        input_shape=tuple(raw["input_shape"]),
        class_names=list(raw["class_names"]),
        statistics=Normalization.from_dict(raw["statistics"]),
        counts={k: int(v) for k, v in raw["counts"].items()},
        shards={k: list(v) for k, v in raw["shards"].items()},
        dtype=raw["dtype"],
        feature_names=raw.get("feature_names"),
        class_counts=raw["class_counts"],
        positive_class=raw["positive_class"],
        name=raw["name"],
        source=raw["source"],
        format=raw["format"],
        split_sha256=raw["split_sha256"],
    )


def split_files(prepared_dir: str, meta: PreparedMeta, split: str) -> list[str]:
    if split not in meta.shards:
        raise PipelineError(f"{prepared_dir}/{META_FILE}: has no split {split!r}")
    return [posixpath.join(str(prepared_dir), split, name) for name in meta.shards[split]]


def read_split(prepared_dir: str, meta: PreparedMeta, split: str, files: list[str] | None = None):
    """A tf.data.Dataset of (input of meta.input_shape and meta.dtype, int64 label), in file order."""
    import tensorflow as tf

    whole_split = files is None
    files = split_files(prepared_dir, meta, split) if whole_split else files
    shape = meta.input_shape
    dtype = tf.as_dtype(meta.dtype)
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
    }

    def decode(records):
        examples = tf.io.parse_example(records, spec)
        images = tf.reshape(tf.io.decode_raw(examples["image"], dtype), (-1, *shape))
        return images, examples["label"]

    # Parsed a block of records at a time, then split into examples again: one parse op per example
    # cost 2.6 s of the 54,000 Fashion-MNIST training examples, this 0.22 s (same examples, same order).
    dataset = (
        tf.data.TFRecordDataset(files)
        .batch(PARSE_BLOCK)
        .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .unbatch()
    )
    if whole_split:
        # A known length gives Keras a real progress bar and no "ran out of data" warning.
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(meta.counts[split]))
    return dataset


def iter_batches(prepared_dir: str, meta: PreparedMeta, split: str, batch_size: int) -> Iterator[tuple]:
    """A split as NumPy batches (raw inputs, int64 labels) in file order, read without TensorFlow:
    memory holds one batch, whatever the split's size."""
    dtype, shape = np.dtype(meta.dtype), meta.input_shape
    inputs, labels = [], []
    for path in split_files(prepared_dir, meta, split):
        for record in iter_records(path):
            data, label = parse_example(record)
            inputs.append(np.frombuffer(data, dtype=dtype).reshape(shape))
            labels.append(label)
            if len(labels) == batch_size:
                yield np.stack(inputs), np.asarray(labels, dtype=np.int64)
                inputs, labels = [], []
    if labels:
        yield np.stack(inputs), np.asarray(labels, dtype=np.int64)


def read_split_arrays(prepared_dir: str, meta: PreparedMeta, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole split as NumPy arrays: for tests and benchmarks on small data; stages stream with
    iter_batches."""
    batches = list(iter_batches(prepared_dir, meta, split, 4096))
    if not batches:
        return np.zeros((0, *meta.input_shape), meta.dtype), np.zeros(0, np.int64)
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])
