"""Stage `prepare`: read and validate the raw data in its format (pipeline/formats/: IDX, CIFAR-10
binary, image folders, CSV), split off validation (and test, when the data has none) stratified and
seeded, write TFRecord shards to data/prepared/ and the data report reports/data.json."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_dir, write_json
from pipeline.cli import run_cli, stage_parser
from pipeline.errors import PipelineError
from pipeline.formats import FORMATS
from pipeline.formats.base import RawData, Split
from pipeline.normalization import PIXEL_SCALE, measure
from pipeline.params import DataParams, Params, load_params
from pipeline.records import META_FILE, PreparedMeta, write_split
from pipeline.schema import positive_class_problem


def load_raw(raw_dir: Path, data: DataParams) -> RawData:
    """The raw data of `data.format`, read and validated by that format's module."""
    if not raw_dir.is_dir():
        raise PipelineError(f"{raw_dir}: raw data not found (run `dvc repro fetch`)")
    return FORMATS[data.format].read(raw_dir, data.selected)


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int, key: str = "prepare.val_fraction"
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the rest and of `fraction`: each class split in the same proportion, reproducibly."""
    from sklearn.model_selection import train_test_split

    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2:
        raise PipelineError(
            f"{key}: class {int(classes[counts.argmin()])} has {counts.min()} training "
            "example; a stratified split needs at least 2 per class"
        )
    try:
        train_idx, val_idx = train_test_split(
            np.arange(len(labels)), test_size=fraction, stratify=labels, random_state=seed
        )
    except ValueError as exc:
        raise PipelineError(f"{key}: {fraction} cannot split {len(labels)} examples ({exc})") from None
    return np.sort(train_idx), np.sort(val_idx)


def digests_of(images: np.ndarray) -> list[bytes]:
    flat = images.reshape(len(images), -1)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


def count_shared(a: list[bytes], b: list[bytes]) -> int:
    """How many images of `b` also appear, byte for byte, in `a`."""
    seen = set(a)
    return sum(d in seen for d in b)


# A class this many times rarer than the largest, in the train split, gets prepare's warning.
SKEW_WARNING_RATIO = 20


def checked_classes(labels: np.ndarray, class_names: list[str], data: DataParams) -> str | None:
    """The positive class of two-class data; data of a single class is an error."""
    counts = np.bincount(labels, minlength=len(class_names)).tolist()
    present = [name for name, count in zip(class_names, counts, strict=True) if count]
    if len(present) < 2:
        raise PipelineError(
            f"data.{data.format}: the data holds one class ({present[0]!r}, {len(labels)} examples); "
            "a classifier needs at least 2"
        )
    section = data.selected
    problem = positive_class_problem(section.positive_class, class_names)
    if problem:
        raise PipelineError(f"data.{data.format}.positive_class {problem}")
    return (section.positive_class or class_names[1]) if len(class_names) == 2 else None


def skew_warning(counts: list[int], class_names: list[str]) -> str | None:
    """A line naming the rarest and the most common class when they are far apart."""
    present = [(count, name) for name, count in zip(class_names, counts, strict=True) if count]
    (few, rare), (many, common) = min(present), max(present)
    if few * SKEW_WARNING_RATIO > many:
        return None
    return (
        f"skewed classes: {rare!r} has {few} training examples, {common!r} {many} (1:{many / few:.0f}); "
        "train.class_weight: balanced weighs each class by its rarity"
    )


def split_test(raw: RawData, params: Params) -> tuple[Split, Split]:
    """Train and test: as the data has them, or a stratified test fraction split off train."""
    if raw.test is not None:
        return raw.train, raw.test
    x, y = raw.train
    keep, test = stratified_split(y, params.prepare.test_fraction, params.prepare.seed, "prepare.test_fraction")
    return (x[keep], y[keep]), (x[test], y[test])


def prepare(raw_dir: Path, out_dir: Path, params: Params) -> dict:
    """Write the prepared splits to `out_dir`; returns the data report."""
    raw = load_raw(raw_dir, params.data)
    positive = checked_classes(raw.train[1], raw.class_names, params.data)
    (x_all, y_all), test = split_test(raw, params)
    train_idx, val_idx = stratified_split(y_all, params.prepare.val_fraction, params.prepare.seed)
    splits = {
        "train": (x_all[train_idx], y_all[train_idx]),
        "val": (x_all[val_idx], y_all[val_idx]),
        "test": test,
    }
    statistics = measure(splits["train"][0], PIXEL_SCALE if raw.is_image else 1.0)
    class_names = raw.class_names
    class_counts = {name: np.bincount(y, minlength=len(class_names)).tolist() for name, (_, y) in splits.items()}
    with atomic_dir(out_dir) as tmp:
        shards = {name: write_split(tmp / name, x, y, params.prepare.shard_size) for name, (x, y) in splits.items()}
        meta = PreparedMeta(
            input_shape=tuple(int(d) for d in x_all.shape[1:]),
            class_names=list(class_names),
            statistics=statistics,
            counts={name: int(len(y)) for name, (_, y) in splits.items()},
            shards=shards,
            dtype=str(x_all.dtype),
            feature_names=raw.feature_names,
            class_counts=class_counts,
            positive_class=positive,
        )
        write_json(tmp / META_FILE, meta.to_dict())

    digests = {name: digests_of(x) for name, (x, _) in splits.items()}
    train_and_val = digests["train"] + digests["val"]
    return {
        "format": params.data.format,
        "input_shape": list(meta.input_shape),
        "num_classes": meta.num_classes,
        "counts": meta.counts,
        "per_class": {split: dict(zip(class_names, counts, strict=True)) for split, counts in class_counts.items()},
        "inputs": {
            "train_mean": float(np.mean(splits["train"][0], dtype=np.float64) * statistics.scale),
            "train_std": float(np.std(splits["train"][0], dtype=np.float64) * statistics.scale),
        },
        "duplicates": {
            "test_in_train": count_shared(train_and_val, digests["test"]),
            "val_in_train": count_shared(digests["train"], digests["val"]),
        },
        "skipped": {"count": len(raw.skipped), "files": raw.skipped},
        "positive_class": positive,
        "warnings": [w for w in (skew_warning(class_counts["train"], class_names),) if w],
    }


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("prepare", __doc__)
    parser.add_argument("--raw", default="data/raw")
    parser.add_argument("--out", default="data/prepared")
    parser.add_argument("--report", default="reports/data.json")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    report = prepare(Path(args.raw), Path(args.out), params)
    write_json(args.report, report)
    for warning in report["warnings"]:
        print(f"prepare: warning: {warning}", file=sys.stderr)
    counts = ", ".join(f"{k} {v}" for k, v in report["counts"].items())
    print(
        f"prepare: {counts} examples in {args.out}; "
        f"{report['duplicates']['test_in_train']} test examples also in train/val"
        + (f"; {report['skipped']['count']} unreadable files skipped" if report["skipped"]["count"] else "")
    )


if __name__ == "__main__":
    run_cli(main)
