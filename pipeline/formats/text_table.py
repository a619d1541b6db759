"""Data format `text_table`: texts and their labels in a table, one example per record: CSV (`.csv`,
with a header), TSV (`.tsv`, a header, no quoting) or JSON lines (`.jsonl`, one object per line), by
the file's suffix; the columns (or keys) are `text_column` and `label_column`. UTF-8, a byte-order
mark accepted.

Every record is checked in the first pass: a missing label, a missing or empty text, a text that is
not UTF-8 or longer than MAX_TEXT_BYTES, a JSON line that is not an object stop the stage with one
line naming the file and line, or are skipped and listed (`data.text_table.unreadable: skip`). Lines
are read with a bound (a 10 MB line is refused as it is read, not held), so memory never grows with
a file. Class names are the distinct labels, sorted (numerically when all are integers), unless params
give them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.formats.base import Decoded, Part, Scan
from pipeline.formats.csv import class_names_of
from pipeline.formats.text_folder import MAX_TEXT_BYTES

NAME = "text_table"
KIND = "text"  # the kind of data it yields (pipeline/kinds.py)
MAX_LINE_BYTES = MAX_TEXT_BYTES + (64 << 10)  # a text of the largest size, and its other columns

DECODE_IN_PROCESSES = False  # the texts are in one file, read in order: reading is the work
ROWS_PER_CHUNK = 1024


@dataclass
class Record:
    line: int  # where the record ends in its file (what a text editor shows)
    text: str | None
    label: str | None
    problem: str | None = None  # why it is not an example

    def check(self, labelled: bool = True) -> Record:
        if self.problem is None:
            if labelled and (self.label is None or not self.label.strip()):
                self.problem = "missing label"
            elif self.text is None:
                self.problem = "missing text"
            elif not valid_utf8(self.text):
                self.problem = "text is not UTF-8"
            elif not self.text.strip():
                self.problem = "empty text"
            elif len(self.text.encode("utf-8")) > MAX_TEXT_BYTES:
                self.problem = f"text longer than {MAX_TEXT_BYTES:,} bytes"
        return self


def valid_utf8(text: str) -> bool:
    """Whether a text read with surrogateescape came from valid UTF-8 (no escaped bytes in it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def physical_lines(path: Path) -> Iterator[str]:
    """The file's lines as text, each read with a bound; bytes that are not UTF-8 kept as surrogates
    (the record holding them is then refused, and the lines after it still parse)."""
    with open(path, "rb") as f:
        number = 0
        while line := f.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(line) > MAX_LINE_BYTES:
                raise PipelineError(
                    f"{path}: line {number} is longer than {MAX_LINE_BYTES:,} bytes (a text may have "
                    f"{MAX_TEXT_BYTES:,}): not a table of texts"
                )
            if number == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")
            yield line.decode("utf-8", errors="surrogateescape")


def records(path: Path, text_column: str, label_column: str | None) -> Iterator[Record]:
    """Every data record of the table at `path`, in order, checked (`label_column` None: texts alone,
    as the predictor reads them)."""
    if not path.is_file():
        raise PipelineError(f"{path}: file not found")
    lines = physical_lines(path)
    if path.suffix.lower() == ".jsonl":
        yield from json_records(path, lines, text_column, label_column)
        return
    dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if path.suffix.lower() == ".tsv" else {}
    limit = csv.field_size_limit(MAX_LINE_BYTES)  # the csv module's is process-wide: put back below
    try:
        reader = csv.reader(lines, **dialect)
        header = next(reader, None)
        if not header:
            raise PipelineError(f"{path}: empty file, expected a header row")
        header = [cell.strip() for cell in header]
        text_at = header_index(path, header, text_column, "text_column")
        label_at = header_index(path, header, label_column, "label_column") if label_column else None
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                yield Record(reader.line_num, None, None, f"has {len(row)} cells, the header {len(header)}")
                continue
            label = row[label_at] if label_at is not None else None
            yield Record(reader.line_num, row[text_at], label).check(labelled=label_column is not None)
    except csv.Error as exc:
        raise PipelineError(f"{path}: not a readable {path.suffix or 'CSV'} table ({exc})") from None
    finally:
        csv.field_size_limit(limit)


def header_index(path: Path, header: list[str], name: str, key: str) -> int:
    if name not in header:
        raise PipelineError(f"{path}: no column {name!r} (data.text_table.{key}); columns are {header}")
    return header.index(name)


def json_records(path: Path, lines: Iterator[str], text_column: str, label_column: str | None) -> Iterator[Record]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Record(number, None, None, f"not JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict):
            yield Record(number, None, None, "not a JSON object")
            continue
        text, label = obj.get(text_column), obj.get(label_column) if label_column else None
        problem = "text is not a string" if text is not None and not isinstance(text, str) else None
        record = Record(number, text, None if label is None else str(label), problem)
        yield record.check(labelled=label_column is not None)


@dataclass
class Kept:
    """A table's examples, as the first pass leaves them: each one's line and label."""

    lines: np.ndarray  # int64, the record's line, in file order
    labels: list[str]
    skipped: list[str]


def scan_table(path: Path, section, label_from: str) -> Kept:
    lines, labels, skipped = [], [], []
    for record in records(path, section.text_column, section.label_column):
        if record.problem is not None:
            if section.unreadable == "fail":
                raise PipelineError(
                    f"{path}: line {record.line}: {record.problem}; set data.text_table.unreadable: skip "
                    "to leave such records out"
                )
            skipped.append(f"{path.name}:{record.line}")
            continue
        lines.append(record.line)
        labels.append(record.label.strip())
    if not lines:
        raise PipelineError(f"{path}: no texts with labels ({label_from})")
    return Kept(np.asarray(lines, dtype=np.int64), labels, skipped)


def scan(raw_dir: Path, section) -> Scan:
    """Each table's records checked, and their labels; texts are read again, a chunk at a time."""
    tables = {"train": scan_table(raw_dir / section.train, section, "data.text_table.train")}
    if section.test:
        tables["test"] = scan_table(raw_dir / section.test, section, "data.text_table.test")
    names = section.class_names or class_names_of(tables["train"].labels)
    if len(names) < 2:
        raise PipelineError(
            f"{raw_dir / section.train}: column {section.label_column!r} holds one class ({names[0]!r}); "
            "a classifier needs at least 2"
        )
    index = {name: i for i, name in enumerate(names)}
    parts = {}
    for part, kept in tables.items():
        unknown = next((label for label in kept.labels if label not in index), None)
        if unknown is not None:
            raise PipelineError(
                f"{raw_dir / getattr(section, part)}: label {unknown!r} is not one of the classes {names} "
                "(data.text_table.class_names)"
            )
        keys = [str(line) for line in kept.lines]
        parts[part] = Part(part, np.asarray([index[label] for label in kept.labels], dtype=np.int64), keys)
    skipped = [s for kept in tables.values() for s in kept.skipped]
    return Scan(parts, list(names), (section.max_bytes,), KIND, skipped=skipped)


def chunks(raw_dir: Path, section, scan: Scan, part: str, start: int = 0, stop: int | None = None):
    """(position, [texts]) of a part's kept records, in order, ROWS_PER_CHUNK at a time."""
    path = raw_dir / (section.train if part == "train" else section.test)
    wanted = scan.parts[part].keys
    stop = len(wanted) if stop is None else min(stop, len(wanted))
    position, block, first = 0, [], start
    for record in records(path, section.text_column, section.label_column):
        if position >= stop:
            break
        if position < len(wanted) and str(record.line) == wanted[position]:
            if position >= start:
                block.append(record.text)
                if len(block) == ROWS_PER_CHUNK:
                    yield first, block
                    block, first = [], position + 1
            position += 1
    if block:
        yield first, block


def decode_options(section, scan: Scan) -> dict:
    return {"max_bytes": section.max_bytes}


def decode(payload: list[str], raw_dir: Path, options: dict) -> Decoded:
    from pipeline.text import encode_texts

    return Decoded(encode_texts(payload, options["max_bytes"]))
