"""Data format `csv`: tables with a header row, numeric feature columns and a label column (names from params).

Every cell is checked: a missing value or a non-numeric feature is an error naming the file, the
row (as a spreadsheet shows it: the header is row 1) and the column. Labels are text; the class
names are the distinct labels in sorted order (numerically when all are integers) unless params
give them.
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np

from pipeline.errors import PipelineError
from pipeline.formats.base import RawData

NAME = "csv"
URL_PREFIX_OK = True


@functools.cache
def section():
    """The params section `data.csv` (a pydantic model, built on first use: the predictor reads
    with this module where pydantic is not installed)."""
    from pydantic import Field

    from pipeline.schema import FormatSection

    class Section(FormatSection):
        """`data.csv`: a table with a header row, numeric feature columns and a label column."""

        train: str = "train.csv"
        test: str | None = "test.csv"  # null: prepare.test_fraction of `train` becomes the test split
        label_column: str = "label"
        feature_columns: Annotated[list[str], Field(min_length=1)] | None = None  # null: every column but the label

        def files(self) -> list[str]:
            return [self.train] + ([self.test] if self.test else [])

    return Section


def read(raw_dir: Path, section) -> RawData:
    train_path = raw_dir / section.train
    train = read_table(train_path, section.label_column, section.feature_columns)
    test_path = raw_dir / section.test if section.test else None
    test = read_table(test_path, section.label_column, train.feature_names) if test_path else None
    names = section.class_names or class_names_of(train.labels)
    if len(names) < 2:
        raise PipelineError(
            f"{train_path}: column {section.label_column!r} holds one class ({names[0]!r}); "
            "a classifier needs at least 2"
        )
    y_train = encode_labels(train_path, train, names, section.label_column)
    test_split = (test.features, encode_labels(test_path, test, names, section.label_column)) if test else None
    return RawData((train.features, y_train), test_split, list(names), feature_names=train.feature_names)


@dataclass
class Table:
    features: np.ndarray  # (n, n_features) float32
    labels: list[str]
    feature_names: list[str]
    row_numbers: list[int]  # each example's row in the file (header = 1), for error messages


def read_table(
    path: Path,
    label_column: str | None,
    feature_columns: list[str] | None,
    columns_from: str = "data.csv.feature_columns",
) -> Table:
    """The table at `path`; `label_column` None reads features only (inputs to predict).
    `columns_from` names where `feature_columns` came from, for the error message."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise PipelineError(f"{path}: not a readable CSV file ({exc})") from None
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise PipelineError(f"{path}: empty file, expected a header row")
    header = [cell.strip() for cell in rows[0]]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise PipelineError(
            f"{path}: header names column {repeated[0]!r} more than once "
            f"(columns {[i + 1 for i, name in enumerate(header) if name == repeated[0]]})"
        )
    if label_column is not None and label_column not in header:
        raise PipelineError(f"{path}: no label column {label_column!r} (data.csv.label_column); columns are {header}")
    names = feature_columns if feature_columns is not None else [c for c in header if c != label_column]
    for name in names:
        if name not in header:
            raise PipelineError(f"{path}: no feature column {name!r} ({columns_from}); columns are {header}")
    if label_column in names:
        raise PipelineError(f"{path}: data.csv.feature_columns includes the label column {label_column!r}")
    if not names:
        raise PipelineError(f"{path}: no feature columns besides the label column {label_column!r}")
    label_at = header.index(label_column) if label_column is not None else None
    feature_at = [header.index(n) for n in names]
    body = [(number, row) for number, row in enumerate(rows[1:], start=2) if any(cell.strip() for cell in row)]
    if not body:
        raise PipelineError(f"{path}: no data rows after the header")
    features = np.empty((len(body), len(names)), dtype=np.float32)
    labels = []
    for i, (number, row) in enumerate(body):
        if len(row) != len(header):
            raise PipelineError(f"{path}: row {number} has {len(row)} cells, the header has {len(header)}")
        if label_at is not None:
            label = row[label_at].strip()
            if not label:
                raise PipelineError(f"{path}: row {number}, column {label_column!r}: missing label")
            labels.append(label)
        for j, (column, at) in enumerate(zip(names, feature_at, strict=True)):
            cell = row[at].strip()
            if not cell:
                raise PipelineError(f"{path}: row {number}, column {column!r}: missing value")
            try:
                value = float(cell)
            except ValueError:
                raise PipelineError(f"{path}: row {number}, column {column!r}: {cell!r} is not a number") from None
            if not math.isfinite(value):
                raise PipelineError(f"{path}: row {number}, column {column!r}: {cell!r} is not a finite number")
            features[i, j] = value
    return Table(features, labels, list(names), [number for number, _ in body])


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


def write_table(
    path: Path, features: np.ndarray, labels: list, feature_names: list[str], label_column: str = "label"
) -> None:
    """Write a feature table and its labels as CSV with a header row (for tests and users)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*feature_names, label_column])
        for row, label in zip(features, labels, strict=True):
            writer.writerow([*(repr(float(v)) for v in row), label])
