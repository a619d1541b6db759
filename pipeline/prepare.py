"""Stage `prepare`: parse and validate the raw IDX files, split train/val (stratified, seeded),
write TFRecord shards to data/prepared/ and the data report reports/data.json."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_dir, write_json
from pipeline.cli import run_cli, stage_parser
from pipeline.errors import PipelineError
from pipeline.idx import read_images_and_labels
from pipeline.normalization import PIXEL_SCALE, Normalization
from pipeline.params import DataParams, PrepareParams, load_params
from pipeline.records import META_FILE, PreparedMeta, write_split


def load_raw(raw_dir: Path, data: DataParams) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    n = len(data.class_names)
    files = data.files
    train = read_images_and_labels(raw_dir / files.train_images, raw_dir / files.train_labels, n)
    test = read_images_and_labels(raw_dir / files.test_images, raw_dir / files.test_labels, n)
    if train[0].shape[1:] != test[0].shape[1:]:
        raise PipelineError(
            f"{raw_dir / files.test_images}: image shape {test[0].shape[1:]} differs from "
            f"{files.train_images}'s {train[0].shape[1:]}"
        )
    return {"train": train, "test": test}


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of train and val: each class split in the same proportion, reproducibly."""
    from sklearn.model_selection import train_test_split

    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2:
        raise PipelineError(
            f"prepare.val_fraction: class {int(classes[counts.argmin()])} has {counts.min()} training "
            "example; a stratified split needs at least 2 per class"
        )
    try:
        train_idx, val_idx = train_test_split(
            np.arange(len(labels)), test_size=val_fraction, stratify=labels, random_state=seed
        )
    except ValueError as exc:
        raise PipelineError(f"prepare.val_fraction: {val_fraction} cannot split {len(labels)} examples ({exc})") from None
    return np.sort(train_idx), np.sort(val_idx)


def normalization_for(params: PrepareParams, train_images: np.ndarray) -> Normalization:
    if params.normalization.mode == "fixed":
        return Normalization(mean=params.normalization.mean, std=params.normalization.std)
    pixels = train_images.astype(np.float64) * PIXEL_SCALE
    return Normalization(mean=float(pixels.mean()), std=float(pixels.std()) or 1.0)


def image_digests(images: np.ndarray) -> list[bytes]:
    flat = images.reshape(len(images), -1)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


def count_shared(a: list[bytes], b: list[bytes]) -> int:
    """How many images of `b` also appear, byte for byte, in `a`."""
    seen = set(a)
    return sum(d in seen for d in b)


def per_class_counts(labels: np.ndarray, class_names: list[str]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(class_names))
    return {name: int(c) for name, c in zip(class_names, counts)}


def prepare(raw_dir: Path, out_dir: Path, data: DataParams, params: PrepareParams) -> dict:
    """Write the prepared splits to `out_dir`; returns the data report."""
    raw = load_raw(raw_dir, data)
    x_all, y_all = raw["train"]
    train_idx, val_idx = stratified_split(y_all, params.val_fraction, params.seed)
    splits = {
        "train": (x_all[train_idx], y_all[train_idx]),
        "val": (x_all[val_idx], y_all[val_idx]),
        "test": raw["test"],
    }
    normalization = normalization_for(params, splits["train"][0])
    with atomic_dir(out_dir) as tmp:
        shards = {
            name: write_split(tmp / name, x, y, params.shard_size) for name, (x, y) in splits.items()
        }
        meta = PreparedMeta(
            image_shape=tuple(int(d) for d in x_all.shape[1:]),
            class_names=list(data.class_names),
            normalization=normalization,
            counts={name: int(len(y)) for name, (_, y) in splits.items()},
            shards=shards,
        )
        write_json(tmp / META_FILE, meta.to_dict())

    digests = {name: image_digests(x) for name, (x, _) in splits.items()}
    train_and_val = digests["train"] + digests["val"]
    return {
        "image_shape": list(meta.image_shape),
        "num_classes": meta.num_classes,
        "counts": meta.counts,
        "per_class": {name: per_class_counts(y, data.class_names) for name, (_, y) in splits.items()},
        "pixels": {"train_mean": normalization.mean, "train_std": normalization.std,
                   "normalization": params.normalization.mode},
        "duplicates": {
            "test_in_train": count_shared(train_and_val, digests["test"]),
            "val_in_train": count_shared(digests["train"], digests["val"]),
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("prepare", __doc__)
    parser.add_argument("--raw", default="data/raw")
    parser.add_argument("--out", default="data/prepared")
    parser.add_argument("--report", default="reports/data.json")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    report = prepare(Path(args.raw), Path(args.out), params.data, params.prepare)
    write_json(args.report, report)
    counts = ", ".join(f"{k} {v}" for k, v in report["counts"].items())
    print(f"prepare: {counts} examples in {args.out}; "
          f"{report['duplicates']['test_in_train']} test images also in train/val")


if __name__ == "__main__":
    run_cli(main)
