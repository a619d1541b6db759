"""Stage `prepare`: the raw data in its format (pipeline/formats/: IDX, CIFAR-10 binary, image folders,
CSV), validated, split into train / val (and test, when the data has none) stratified and seeded,
written as TFRecord shards to data/prepared/, with the data report reports/data.json.

It streams, so memory does not grow with the data: a cheap first pass reads each example's label
(and file), the splits are drawn from the labels, then the examples are decoded a chunk at a time,
on every core for formats whose decoding is work (image folders), and written shard by shard in
order: the output is the same whatever the core count. Per example only its label, its split and a
16-byte digest for the leakage check are kept. `prepare.runner: beam` runs the same per-example
functions as an Apache Beam pipeline (pipeline/beam.py). No TensorFlow is imported.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cli import end_process
from pipeline.errors import PipelineError
from pipeline.formats import FORMATS, decode_chunk
from pipeline.formats.base import Decoded, Scan
from pipeline.hashing import tree_sha256
from pipeline.leakage import as_digests, count_shared, digest
from pipeline.normalization import PIXEL_SCALE, Moments
from pipeline.params import DataParams, PrepareParams
from pipeline.prepared import META_FILE, SPLITS, TEST, TRAIN, VAL, PreparedMeta
from pipeline.records import SplitWriter, serialize_example
from pipeline.schema import positive_class_problem
from pipeline.stage import Stage, StageResult, json_text

# A class this many times rarer than the largest, in the train split, gets prepare's warning.
SKEW_WARNING_RATIO = 20
CHUNKS_AHEAD = 2  # per worker: decoded chunks waiting for the writer, which bounds memory
# Decoding processes are forked: they start in milliseconds with the reader already imported, and
# need no importable __main__ (spawned ones re-import it: a script without a main guard, a notebook
# or `python -` fail). prepare imports no TensorFlow, whose threads forking would not copy.
START_METHOD = "fork"


# ----------------------------------------------------------------------------- the first pass
def scan_raw(raw_dir: Path, data: DataParams) -> Scan:
    """Labels (and files) of the raw data of `data.format`, read and validated by that format's module."""
    if not raw_dir.is_dir():
        raise PipelineError(f"{raw_dir}: raw data not found (run `dvc repro fetch`)")
    return FORMATS[data.format].scan(raw_dir, data.selected)


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


def plan_splits(scan: Scan, prepare: PrepareParams) -> dict[str, np.ndarray]:
    """Each raw example's split (TRAIN, VAL, TEST), part by part: the data's own test part, or a
    stratified test fraction of train; then a stratified validation fraction of the rest."""
    train = scan.parts["train"]
    codes = {"train": np.full(len(train), TRAIN, dtype=np.int8)}
    keep = np.arange(len(train))
    if "test" in scan.parts:
        codes["test"] = np.full(len(scan.parts["test"]), TEST, dtype=np.int8)
    else:
        keep, test = stratified_split(train.labels, prepare.test_fraction, prepare.seed, "prepare.test_fraction")
        codes["train"][test] = TEST
    _, val = stratified_split(train.labels[keep], prepare.val_fraction, prepare.seed)
    codes["train"][keep[val]] = VAL
    return codes


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


# ----------------------------------------------------------------------------- the second pass
class Split:
    """What prepare keeps of one split while it streams: the shard writer, label counts, digests
    (and, for train, the statistics)."""

    def __init__(self, directory: Path, shard_size: int, n_classes: int, kind: str, channels: int | None):
        self.writer, self.kind = SplitWriter(directory, shard_size), kind
        self.counts = np.zeros(n_classes, dtype=np.int64)
        self.digests: list[bytes] = []
        self.moments = Moments(channels) if channels else None

    def add(self, inputs: np.ndarray, labels: np.ndarray) -> None:
        for x, label in zip(inputs, labels, strict=True):
            self.writer.write(serialize_example(x.tobytes(), label))
            self.digests.append(digest(x, self.kind))
        self.counts += np.bincount(labels, minlength=len(self.counts))
        if self.moments is not None:
            self.moments.add(inputs)


def worker_count(setting: int | str) -> int:
    return len(os.sched_getaffinity(0)) if setting == "auto" else int(setting)


def decoded_chunks(
    fmt: str, raw_dir: Path, section, scan: Scan, part: str, pool, workers: int
) -> Iterator[tuple[int, Decoded]]:
    """(position, decoded examples) of a part in order; decoded in `pool`'s `workers` processes when
    there is a pool, at most CHUNKS_AHEAD chunks per worker ahead of the writer."""
    reader = FORMATS[fmt]
    options = reader.decode_options(section, scan)
    chunks = reader.chunks(raw_dir, section, scan, part)
    if pool is None:
        for position, payload in chunks:
            yield position, reader.decode(payload, raw_dir, options)
        return
    pending = []
    for position, payload in chunks:
        pending.append((position, pool.submit(decode_chunk, fmt, payload, raw_dir, options)))
        if len(pending) >= CHUNKS_AHEAD * workers:
            first, future = pending.pop(0)
            yield first, future.result()
    for position, future in pending:
        yield position, future.result()


@dataclass
class Written:
    """What either runner knows once every example is in its shards."""

    shards: dict[str, list[str]]
    counts: dict[str, int]
    class_counts: dict[str, list[int]]
    digests: dict[str, np.ndarray]  # per split, its examples' 16-byte digests
    moments: Moments  # of the train split's inputs
    skipped: list[str]  # files left out as unreadable


def write_local(raw_dir: Path, data: DataParams, scan: Scan, plan: dict[str, np.ndarray], out: Path,
                shard_size: int, workers: int) -> Written:  # fmt: skip
    """Decode every example once, on `workers` processes where the format's decoding is worth it,
    and write it to its split's shards in order."""
    channels = scan.input_shape[-1]
    splits = {
        name: Split(out / name, shard_size, len(scan.class_names), scan.kind, channels if name == "train" else None)
        for name in SPLITS
    }
    skipped: list[str] = list(scan.skipped)
    parallel = FORMATS[data.format].DECODE_IN_PROCESSES and workers > 1
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(START_METHOD)) if parallel else None
    try:
        for part_name, part in scan.parts.items():
            chunks = decoded_chunks(data.format, raw_dir, data.selected, scan, part_name, pool, workers)
            for position, decoded in chunks:
                offsets = np.arange(position, position + len(decoded.inputs) + len(decoded.skipped))
                if decoded.skipped:
                    skipped += [key for _, key in decoded.skipped]
                    offsets = np.delete(offsets, [offset for offset, _ in decoded.skipped])
                codes, labels = plan[part_name][offsets], part.labels[offsets]
                for code, name in enumerate(SPLITS):
                    mine = codes == code
                    if mine.any():
                        splits[name].add(decoded.inputs[mine], labels[mine])
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return Written(
        shards={name: split.writer.close() for name, split in splits.items()},
        counts={name: split.writer.count for name, split in splits.items()},
        class_counts={name: split.counts.tolist() for name, split in splits.items()},
        digests={name: as_digests(split.digests) for name, split in splits.items()},
        moments=splits["train"].moments,
        skipped=skipped,
    )


def write_beam(raw_dir: Path, data: DataParams, scan: Scan, plan: dict[str, np.ndarray], out: Path,
               params: PrepareParams) -> Written:  # fmt: skip
    from pipeline import beam

    result = beam.run(raw_dir, data, scan, plan, out, params.shard_size, params.beam_options)
    result["digests"] = {name: np.frombuffer(blob, dtype="V16") for name, blob in result["digests"].items()}
    result["skipped"] = [*scan.skipped, *result["skipped"]]
    return Written(**result)


def prepare_into(raw_dir: Path, directory: Path, data: DataParams, settings: PrepareParams,
                 workers: int | None = None) -> dict:  # fmt: skip
    """Write the prepared splits into `directory` (a fresh one); returns the data report."""
    scan = scan_raw(raw_dir, data)
    positive = checked_classes(scan.parts["train"].labels, scan.class_names, data)
    plan = plan_splits(scan, settings)
    if settings.runner == "beam":
        written = write_beam(raw_dir, data, scan, plan, directory, settings)
    else:
        written = write_local(raw_dir, data, scan, plan, directory, settings.shard_size,
                              workers or worker_count(settings.workers))  # fmt: skip
    if not written.counts["train"]:
        raise PipelineError(f"data.{data.format}: no readable training examples (every one was skipped)")
    meta = PreparedMeta(
        kind=scan.kind,
        input_shape=scan.input_shape,
        class_names=list(scan.class_names),
        statistics=input_statistics(written.moments, scan),
        counts=written.counts,
        shards=written.shards,
        shard_bytes={
            split: [(directory / split / name).stat().st_size for name in names]
            for split, names in written.shards.items()
        },  # fmt: skip
        dtype=scan.dtype,
        feature_names=scan.feature_names,
        class_counts=written.class_counts,
        positive_class=positive,
        name=data.dataset_name,
        source=data.source,
        format=data.format,
        split_sha256={split: tree_sha256(directory / split) for split in SPLITS},
    )
    (directory / META_FILE).write_text(json_text(meta.to_dict()))
    return data_report(data, meta, written)


def input_statistics(moments: Moments, scan: Scan):
    """The train inputs' statistics the model's normalisation may use: pixels after 1/255 (one value
    for grey images, one per channel for colour), features as they are (one per feature). Text has
    none: its bytes are looked up, not scaled."""
    from pipeline.normalization import Normalization

    if scan.kind == "text":
        return Normalization(mean=0.0, std=1.0, scale=1.0)
    image = scan.kind == "image"
    return moments.normalization(PIXEL_SCALE if image else 1.0, single=image and scan.input_shape[-1] == 1)


def data_report(data: DataParams, meta: PreparedMeta, written: Written) -> dict:
    """reports/data.json: where the data came from, counts, classes, the train inputs' statistics,
    the leakage check, skips."""
    digests, pooled, scale = written.digests, written.moments.pooled(), meta.statistics.scale
    return {
        "format": data.format,
        # As params.yaml names them (the model card shows them): the data set, its source, and the
        # checksums fetch verified.
        "source": {
            "name": meta.name,
            "format": data.format,
            "source": data.source,
            "checksums": data.selected.sha256 or {},
        },  # fmt: skip
        "input_shape": list(meta.input_shape),
        "num_classes": meta.num_classes,
        "counts": meta.counts,
        "per_class": {
            split: dict(zip(meta.class_names, counts, strict=True)) for split, counts in meta.class_counts.items()
        },
        "inputs": {"train_mean": float(pooled.mean[0] * scale), "train_std": float(pooled.std[0] * scale)},
        "duplicates": {
            "test_in_train": count_shared(np.concatenate([digests["train"], digests["val"]]), digests["test"]),
            "val_in_train": count_shared(digests["train"], digests["val"]),
        },
        "skipped": {"count": len(written.skipped), "files": written.skipped},
        "positive_class": meta.positive_class,
        "warnings": [w for w in (skew_warning(meta.class_counts["train"], meta.class_names),) if w],
    }


def prepare(inputs: dict[str, Path], params, outputs: dict[str, Path], tracking=None) -> StageResult:
    """The prepared splits into `outputs["out"]` and the data report into `outputs["report"]`."""
    report = prepare_into(inputs["raw"], outputs["out"], params.data, params.prepare)
    outputs["report"].write_text(json_text(report))
    counts = ", ".join(f"{k} {v}" for k, v in report["counts"].items())
    skipped = report["skipped"]["count"]
    return StageResult(
        f"{counts} examples; {report['duplicates']['test_in_train']} test examples also in train/val"
        + (f"; {skipped} unreadable files skipped" if skipped else ""),
        warnings=report["warnings"],
    )


STAGE = Stage("prepare", __doc__, params=("data", "prepare"), inputs=("raw",), outputs=("out", "report"),
              core=prepare)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    STAGE.run(argv)


if __name__ == "__main__":
    main()
    end_process()
