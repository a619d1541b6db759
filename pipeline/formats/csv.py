"""Data format `csv`: tables with a header row, numeric feature columns and a label column (names from params).

Every cell is checked: a missing value or a non-numeric feature is an error naming the file, the
row (as a spreadsheet shows it: the header is row 1) and the column. Labels are text; the class
names are the distinct labels in sorted order (numerically when all are integers) unless params
give them.
"""

from __future__ import annotations

import contextlib
import csv
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.formats.base import Decoded, Part, Scan

NAME = "csv"
KIND = "table"  # the kind of data it yields (pipeline/kinds.py)


DECODE_IN_PROCESSES = False  # converting cells is cheap next to tokenising them, which one reader does
ROWS_PER_CHUNK = 4096


def scan(raw_dir: Path, section) -> Scan:
    """The label column of each table (every row's length and label checked), the feature columns
    and the class names; features are converted later, a chunk of rows at a time."""
    train_path = raw_dir / section.train
    train = scan_table(train_path, section.label_column, section.feature_columns)
    test = None
    if section.test:
        test = scan_table(raw_dir / section.test, section.label_column, train.feature_names)
    names = section.class_names or class_names_of(train.labels)
    if len(names) < 2:
        raise PipelineError(
            f"{train_path}: column {section.label_column!r} holds one class ({names[0]!r}); "
            "a classifier needs at least 2"
        )
    parts = {"train": Part("train", encode_labels(train_path, train, names, section.label_column))}
    if test is not None:
        parts["test"] = Part("test", encode_labels(raw_dir / section.test, test, names, section.label_column))
    return Scan(parts, list(names), (len(train.feature_names),), KIND, feature_names=train.feature_names)


def chunks(raw_dir: Path, section, scan: Scan, part: str, start: int = 0, stop: int | None = None):
    """(position, (file, [(row number, feature cells), ...])) of a table's data rows, in order."""
    path = raw_dir / (section.train if part == "train" else section.test)
    stop = len(scan.parts[part]) if stop is None else stop
    with open_table(path) as (header, rows):
        feature_at = column_positions(header, scan.feature_names)
        block, first = [], start
        for position, (number, row) in enumerate(rows):
            if position < start:
                continue
            if position >= stop:
                break
            block.append((number, [row[at] for at in feature_at]))
            if len(block) == ROWS_PER_CHUNK:
                yield first, (str(path), block)
                block, first = [], position + 1
        if block:
            yield first, (str(path), block)


def decode_options(section, scan: Scan) -> dict:
    return {"feature_names": scan.feature_names}


def decode(payload: tuple[str, list], raw_dir: Path, options: dict) -> Decoded:
    path, rows = payload
    return Decoded(to_features(path, rows, options["feature_names"]))


@dataclass
class Table:
    features: np.ndarray | None  # (n, n_features) float32; None when only scanned
    labels: list[str]
    feature_names: list[str]
    row_numbers: list[int]  # each example's row in the file (header = 1), for error messages


@contextlib.contextmanager
def open_table(path: Path) -> Iterator[tuple[list[str], Iterator]]:
    """The header (checked) and an iterator of (row number, cells) of the non-empty data rows."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [cell.strip() for cell in next(reader, [])]
            if not any(header):
                raise PipelineError(f"{path}: empty file, expected a header row")
            repeated = sorted(name for name, count in Counter(header).items() if count > 1)
            if repeated:
                raise PipelineError(
                    f"{path}: header names column {repeated[0]!r} more than once "
                    f"(columns {[i + 1 for i, name in enumerate(header) if name == repeated[0]]})"
                )

            def rows():
                for number, row in enumerate(reader, start=2):
                    if any(cell.strip() for cell in row):
                        if len(row) != len(header):
                            raise PipelineError(
                                f"{path}: row {number} has {len(row)} cells, the header has {len(header)}"
                            )
                        yield number, row

            yield header, rows()
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise PipelineError(f"{path}: not a readable CSV file ({exc})") from None


def feature_columns_of(
    path: Path, header: list[str], label_column: str | None, feature_columns: list[str] | None, columns_from: str
) -> list[str]:
    if label_column is not None and label_column not in header:
        raise PipelineError(f"{path}: no label column {label_column!r} (data.csv.label_column); columns are {header}")
    names = feature_columns if feature_columns is not None else [c for c in header if c != label_column]
    columns = set(header)
    for name in names:
        if name not in columns:
            raise PipelineError(f"{path}: no feature column {name!r} ({columns_from}); columns are {header}")
    if label_column in names:
        raise PipelineError(f"{path}: data.csv.feature_columns includes the label column {label_column!r}")
    if not names:
        raise PipelineError(f"{path}: no feature columns besides the label column {label_column!r}")
    return list(names)


def column_positions(header: list[str], names: list[str]) -> list[int]:
    """Where each of `names` is in `header` (names unique, each in it), in time linear in both: a table
    can have tens of thousands of columns, and list.index per name would be quadratic."""
    at = {name: i for i, name in enumerate(header)}
    return [at[name] for name in names]


def to_features(path, rows: list[tuple[int, list[str]]], names: list[str]) -> np.ndarray:
    """Feature cells (in `names` order) as float32; a missing or non-numeric cell names its row and column."""
    features = np.empty((len(rows), len(names)), dtype=np.float32)
    for i, (number, cells) in enumerate(rows):
        for j, (column, cell) in enumerate(zip(names, cells, strict=True)):
            cell = cell.strip()
            if not cell:
                raise PipelineError(f"{path}: row {number}, column {column!r}: missing value")
            try:
                value = float(cell)
            except ValueError:
                raise PipelineError(f"{path}: row {number}, column {column!r}: {cell!r} is not a number") from None
            if not math.isfinite(value):
                raise PipelineError(f"{path}: row {number}, column {column!r}: {cell!r} is not a finite number")
            features[i, j] = value
    return features


def scan_table(
    path: Path,
    label_column: str | None,
    feature_columns: list[str] | None,
    columns_from: str = "data.csv.feature_columns",
    with_features: bool = False,
) -> Table:
    """The labels (and, `with_features`, the features) of the table at `path`; `label_column` None
    reads features only. `columns_from` names where `feature_columns` came from, for the message."""
    with open_table(path) as (header, rows):
        names = feature_columns_of(path, header, label_column, feature_columns, columns_from)
        label_at = header.index(label_column) if label_column is not None else None
        feature_at = column_positions(header, names)
        labels, numbers, cells = [], [], []
        for number, row in rows:
            if label_at is not None:
                label = row[label_at].strip()
                if not label:
                    raise PipelineError(f"{path}: row {number}, column {label_column!r}: missing label")
                labels.append(label)
            numbers.append(number)
            if with_features:
                cells.append((number, [row[at] for at in feature_at]))
    if not numbers:
        raise PipelineError(f"{path}: no data rows after the header")
    features = to_features(path, cells, names) if with_features else None
    return Table(features, labels, names, numbers)


def read_table(
    path: Path,
    label_column: str | None,
    feature_columns: list[str] | None,
    columns_from: str = "data.csv.feature_columns",
) -> Table:
    """The whole table at `path`, features converted (the predictor's inputs)."""
    return scan_table(path, label_column, feature_columns, columns_from, with_features=True)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def class_names_of(labels: list[str]) -> list[str]:
    distinct = set(labels)
    if all(_is_int(x) for x in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def encode_labels(path: Path, table: Table, class_names: list[str], column: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(class_names)}
    codes = np.empty(len(table.labels), dtype=np.int64)
    for i, label in enumerate(table.labels):
        if label not in index:
            raise PipelineError(
                f"{path}: row {table.row_numbers[i]}, column {column!r}: label {label!r} is not "
                f"one of the classes {class_names} (data.csv.class_names)"
            )
        codes[i] = index[label]
    return codes
