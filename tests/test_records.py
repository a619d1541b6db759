"""TFRecord framing without TensorFlow (pipeline/records.py): examples framed and read back with their
checksums; a damaged header, record or checksum one line naming the file, and a damaged length field
never sizing a read."""

import struct

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.records import SplitWriter, frame, iter_records, parse_example, serialize_example, write_split


def shard(tmp_path, *records: bytes):
    path = tmp_path / "part-00000-of-00001.tfrecord"
    path.write_bytes(b"".join(frame(r) for r in records))
    return path


def test_framed_examples_read_back_in_order(tmp_path):
    examples = [(bytes([i]) * 6, i) for i in range(3)]
    path = shard(tmp_path, *(serialize_example(data, label) for data, label in examples))
    assert [parse_example(record, path) for record in iter_records(path)] == examples


def test_a_damaged_length_field_is_one_line_and_sizes_no_read(tmp_path):
    path = shard(tmp_path, serialize_example(b"abc", 1))
    damaged = bytearray(path.read_bytes())
    damaged[:8] = struct.pack("<Q", 2**62)  # a length no read may take: its own checksum no longer matches
    path.write_bytes(bytes(damaged))
    with pytest.raises(PipelineError, match=r"part-00000-of-00001\.tfrecord: truncated or corrupt TFRecord header"):
        list(iter_records(path))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[:-6], "truncated TFRecord"),
        (lambda data: data[:14] + bytes([data[14] ^ 0xFF]) + data[15:], "a record's checksum does not match"),
        (lambda data: data + b"\x00" * 5, "truncated or corrupt TFRecord header"),
    ],
    ids=["cut-short", "flipped-byte", "trailing-garbage"],
)
def test_a_damaged_shard_is_one_line_naming_it(tmp_path, damage, message):
    path = shard(tmp_path, serialize_example(b"abcdef", 2))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(PipelineError) as error:
        list(iter_records(path))
    assert str(error.value) == f"{path}: {message} (rerun `dvc repro prepare`)"


def test_a_record_that_is_no_prepared_example_is_one_line(tmp_path):
    with pytest.raises(PipelineError, match=r"^shard\.tfrecord: a record is not a prepared example"):
        parse_example(b"\xff\xff not a protobuf", "shard.tfrecord")


def test_shards_are_named_by_their_final_count_and_an_empty_split_has_one(tmp_path):
    names = write_split(tmp_path / "train", np.zeros((5, 2), np.uint8), np.arange(5), shard_size=2)
    assert names == [f"part-0000{i}-of-00003.tfrecord" for i in range(3)]
    assert [len(list(iter_records(tmp_path / "train" / n))) for n in names] == [2, 2, 1]
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == names  # no hidden partial shard left
    empty = SplitWriter(tmp_path / "val", 2).close()
    assert empty == ["part-00000-of-00001.tfrecord"] and (tmp_path / "val" / empty[0]).read_bytes() == b""
