"""The prepared data set as the stages after `prepare` read it (pipeline/prepared.py): its metadata
checked where reading starts, each shard's size checked before it is read, counts checked after;
every mismatch one line naming the file and saying to rerun prepare."""

import hashlib
import json

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.prepared import META_FILE, PreparedData, read_meta

from helpers.data import fetch_and_prepare


@pytest.fixture
def prepared(tiny_data, tmp_path):
    fetch_and_prepare(tiny_data, tmp_path)
    return tmp_path / "prepared"


def test_the_splits_stream_in_batches_and_whole(prepared):
    data = PreparedData.open(prepared)
    assert data.kind.name == "image" and data.meta.input_shape == (28, 28, 1)
    batches = list(data.batches("test", 16))
    assert [len(y) for _, y in batches] == [16, 16, 8]
    x, y = data.arrays("test")
    np.testing.assert_array_equal(np.concatenate([b for b, _ in batches]), x)
    assert x.dtype == np.uint8 and y.dtype == np.int64 and len(y) == data.meta.counts["test"]
    assert data.identity == hashlib.sha256((prepared / META_FILE).read_bytes()).hexdigest()


def test_a_shard_cut_short_or_missing_is_one_line_before_any_read(prepared):
    data = PreparedData.open(prepared)
    first = prepared / "train" / data.meta.shards["train"][0]
    size = first.stat().st_size
    first.write_bytes(first.read_bytes()[:-10])
    with pytest.raises(PipelineError) as error:
        data.files("train")
    assert str(error.value) == (
        f"{first}: {size - 10:,} bytes, meta.json says {size:,}: damaged or cut short (rerun `dvc repro prepare`)"
    )
    first.unlink()
    with pytest.raises(PipelineError, match=r"part-00000-of-00003\.tfrecord: prepared shard missing"):
        data.files("train")
    with pytest.raises(PipelineError, match=r"meta\.json: has no split 'holdout'$"):
        data.files("holdout")


def test_a_count_other_than_meta_json_s_is_one_line(prepared):
    raw = json.loads((prepared / META_FILE).read_text())
    raw["counts"]["test"] += 1
    (prepared / META_FILE).write_text(json.dumps(raw))
    with pytest.raises(
        PipelineError, match=r"test: holds 40 examples, meta\.json says 41 \(rerun `dvc repro prepare`\)"
    ):
        PreparedData.open(prepared).arrays("test")


def test_examples_of_another_shape_are_one_line(prepared):
    raw = json.loads((prepared / META_FILE).read_text())
    raw["input_shape"] = [28, 28, 3]
    (prepared / META_FILE).write_text(json.dumps(raw))
    with pytest.raises(PipelineError, match=r"a record of 784 bytes, not one uint8 \(28, 28, 3\) input"):
        next(PreparedData.open(prepared).batches("test", 8))


@pytest.mark.parametrize(
    "change, message",
    [
        (None, r"meta\.json: prepared data not found \(run `dvc repro prepare`\)"),
        ("{half", r"meta\.json: not valid JSON \(rerun `dvc repro prepare`\)"),
        (lambda raw: {**raw, "format_version": 4}, r"meta\.json: format_version 4, expected 5"),
        (lambda raw: {k: v for k, v in raw.items() if k != "shard_bytes"}, r"meta\.json: malformed \(KeyError"),
        (
            lambda raw: {**raw, "kind": "audio"},
            r"meta\.json: unknown kind of data 'audio' \(one of image, table, text\)",
        ),
    ],
    ids=["missing", "not-json", "older-format", "malformed", "unknown-kind"],
)
def test_a_meta_json_prepare_did_not_write_is_one_line(prepared, change, message):
    path = prepared / META_FILE
    if change is None:
        path.unlink()
    elif isinstance(change, str):
        path.write_text(change)
    else:
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    with pytest.raises(PipelineError, match=message):
        read_meta(prepared)
