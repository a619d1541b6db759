"""Data format `text_table`: texts and labels in a CSV, TSV or JSON lines file, every record checked;
a bad record is one line naming the file and line, or skipped and listed; lines are read with a bound."""

import json
import tracemalloc

import pytest

from pipeline.errors import PipelineError
from pipeline.prepared import PreparedData
from pipeline.text import decode_text

from helpers.data import fetch_and_prepare, write_text_table_dataset

SPLITS = {"prepare": {"val_fraction": 0.2, "test_fraction": 0.25}}


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_csv_tsv_and_json_lines_read_alike(tmp_path, suffix):
    data = write_text_table_dataset(tmp_path / "source", n_train=40, n_test=12, suffix=suffix)
    report, meta = fetch_and_prepare(data, tmp_path)
    assert meta.kind == "text" and report["counts"]["test"] == 12 and sum(report["counts"].values()) == 52
    assert meta.class_names == ["computers", "food", "sport", "weather"]
    x, _ = PreparedData.open(tmp_path / "prepared").arrays("test")
    assert all(decode_text(row).strip() for row in x)


def table(tmp_path, rows: list[str], suffix=".csv", header="text,label") -> dict:
    """A table of 8 good records per class of two, then `rows` as written."""
    root = tmp_path / "source"
    root.mkdir(parents=True, exist_ok=True)
    good = [f"ham number {i},ham" for i in range(8)] + [f"spam number {i},spam" for i in range(8)]
    (root / f"train{suffix}").write_bytes("\n".join([header, *good]).encode() + b"\n" + b"\n".join(rows) + b"\n")
    section = {"train": f"train{suffix}", "test": None}
    return {"format": "text_table", "source": str(root), "text_table": section}


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (b"no label here,", "line 18: missing label"),
        (b",spam", "line 18: empty text"),
        (b'"   ",ham', "line 18: empty text"),
        (b"caf\xe9,ham", "line 18: text is not UTF-8"),
        (b"three,cells,here", "line 18: has 3 cells, the header 2"),
    ],
)
def test_a_bad_record_is_one_line_naming_file_and_line_or_is_skipped(tmp_path, row, reason):
    data = table(tmp_path, [row])
    with pytest.raises(PipelineError) as caught:
        fetch_and_prepare(data, tmp_path, **SPLITS)
    message = str(caught.value)
    assert "train.csv: " + reason in message and "unreadable: skip" in message and "\n" not in message
    assert not (tmp_path / "prepared").exists()
    data["text_table"]["unreadable"] = "skip"
    report, meta = fetch_and_prepare(data, tmp_path, **SPLITS)
    assert report["skipped"] == {"count": 1, "files": ["train.csv:18"]}
    assert sum(meta.counts.values()) == 16


def test_json_lines_that_are_not_objects_are_named(tmp_path):
    root = tmp_path / "source"
    root.mkdir()
    lines = [json.dumps({"text": f"{c} {i}", "label": c}) for c in ("ham", "spam") for i in range(8)]
    (root / "train.jsonl").write_text("\n".join([*lines, "[1, 2]", "{not json"]) + "\n")
    data = {"format": "text_table", "source": str(root),
            "text_table": {"train": "train.jsonl", "test": None, "unreadable": "skip"}}  # fmt: skip
    report, _ = fetch_and_prepare(data, tmp_path, **SPLITS)
    assert report["skipped"]["files"] == ["train.jsonl:17", "train.jsonl:18"]


def test_missing_columns_name_the_key(tmp_path):
    data = table(tmp_path, [], header="review,label")
    with pytest.raises(PipelineError, match=r"no column 'text' \(data.text_table.text_column\); columns are"):
        fetch_and_prepare(data, tmp_path, **SPLITS)


def test_a_ten_megabyte_line_is_refused_as_it_is_read_in_bounded_memory(tmp_path):
    from pipeline import prepare

    from helpers.commands import call_core

    data = table(tmp_path, [b"x" * (10 << 20) + b",ham"])
    params = {"data": data, **SPLITS}
    tracemalloc.start()
    try:
        with pytest.raises(PipelineError, match=r"train.csv: line 18 is longer than 1,114,112 bytes"):
            call_core(
                prepare.STAGE,
                params,
                {"raw": tmp_path / "source"},
                {"out": tmp_path / "p", "report": tmp_path / "r.json"},
            )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # read whole, the line alone would take 10 MB (measured: 21 MB with an unbounded readline)


def test_a_byte_order_mark_and_quoted_multi_line_texts(tmp_path):
    data = table(tmp_path, [b'"a text\nover two lines",ham'])
    path = tmp_path / "source/train.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    report, meta = fetch_and_prepare(data, tmp_path, **SPLITS)
    assert sum(meta.counts.values()) == 17 and report["skipped"]["count"] == 0
    texts = [
        decode_text(r) for s in ("train", "val", "test") for r in PreparedData.open(tmp_path / "prepared").arrays(s)[0]
    ]
    assert "a text\nover two lines" in texts
