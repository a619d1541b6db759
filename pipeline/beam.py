"""`prepare.runner: beam`: prepare's second pass as an Apache Beam pipeline, for data past one machine.

The same functions as the local runner (pipeline/prepare.py): the format's `chunks` and `decode`,
`serialize_example`, the leakage check's 16-byte `digest`, `Moments`; the driver still makes the cheap first pass
and draws the splits, so both runners put the same examples in each split. Beam distributes
ranges of `prepare.shard_size` raw examples over its workers; each range writes its part of every
split as one shard (through a temporary name, so a retried bundle rewrites the same file), and no
record passes through a shuffle: memory stays bounded on any runner, Beam's in-process one
included. The driver then names the shards `part-SSSSS-of-NNNNN.tfrecord` in range order (their
boundaries differ from the local runner's; meta.json lists them, so `train` reads either). Workers
read `data/raw` and write `data/prepared` through a filesystem they all see (one machine, or a shared
mount on a cluster).

`prepare.beam_options` are Beam's own pipeline options. Without `--runner` (or with
`--runner=DirectRunner`) the pipeline runs on Beam's in-process FnApiRunner, named explicitly:
Beam's DirectRunner would first try its Prism runner, a binary it downloads (no use offline);
`--direct_running_mode=multi_processing --direct_num_workers=N` spreads that over N processes, which
talk to this one over loopback: checked first, and a worker that exits before the pipeline ends
stops it (Beam's runner itself would wait for it forever).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError

RESULTS = ".beam-results"  # what the pipeline reports back to the driver, removed afterwards


def _quiet_import():
    """apache_beam, without the warnings its GCP modules log at import when their clients are absent."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        import apache_beam
    finally:
        root.setLevel(level)
    return apache_beam


def beam_runner(options: list[str]):
    """The runner `options` name; the in-process FnApiRunner for none or DirectRunner."""
    named = [o.split("=", 1)[1] for o in options if o.startswith("--runner=")]
    if not named or named[-1] in ("DirectRunner", "FnApiRunner"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner(), [o for o in options if not o.startswith("--runner=")]
    return None, options


def check_loopback(options: list[str]) -> None:
    """Beam's in-process runner in multi_processing (or multi_threading) mode serves its workers over
    gRPC on localhost; where loopback does not answer (a network namespace without `lo` up), the
    workers give up after two minutes and exit, and the runner waits for them forever."""
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

    mode = PipelineOptions(options).view_as(DirectOptions).direct_running_mode
    if mode not in ("multi_processing", "multi_threading"):
        return
    try:
        with (
            socket.create_server(("localhost", 0)) as server,
            socket.create_connection(("localhost", server.getsockname()[1]), timeout=10),
        ):
            pass
    except OSError as exc:
        raise PipelineError(
            f"prepare.beam_options: --direct_running_mode={mode} serves its workers on localhost, which does not "
            f"answer here ({exc.strerror or exc}); bring loopback up (ip link set lo up) or leave the mode out"
        ) from None


class WorkerExited(BaseException):
    """A worker process of Beam's in-process runner exited before the pipeline finished (a
    BaseException, as KeyboardInterrupt is: no `except Exception` inside Beam holds it up)."""


@contextlib.contextmanager
def stop_if_a_worker_exits():
    """Raise WorkerExited in this (the main) thread when a worker process of Beam's in-process runner
    exits early: the runner's thread for it (named "run_worker") raises "Worker subprocess exited with
    return code N", which nothing in Beam hears, while the runner waits on that worker's answers
    forever. The exception reaches the waiting thread as a signal handler's (SIGUSR1), which
    interrupts the wait, and Beam's own cleanup then stops the other workers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    exited: list[str] = []  # each exited worker's message, in the order their threads heard it
    raised = False
    previous_hook = threading.excepthook

    def hook(args) -> None:
        if args.thread is None or args.thread.name != "run_worker":
            previous_hook(args)
            return
        exited.append(str(args.exc_value))
        if len(exited) == 1:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

    def interrupt(signum, frame) -> None:
        # Raised once (the cleanup it starts is not interrupted again), whether or not another worker
        # exited between the signal and this handler: both exiting at start is the common case.
        nonlocal raised
        if exited and not raised:
            raised = True
            raise WorkerExited(exited[0])

    previous_handler = signal.signal(signal.SIGUSR1, interrupt)
    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous_hook
        signal.signal(signal.SIGUSR1, previous_handler)


def ranges(scan, size: int) -> list[tuple[str, int, int]]:
    """The unit Beam distributes: `size` raw examples of a part."""
    return [(name, start, min(start + size, len(part))) for name, part in scan.parts.items()
            for start in range(0, len(part), size)]  # fmt: skip


def range_shard(out: Path, split: str, part: str, start: int) -> Path:
    """Where a range writes its part of a split, until the driver names the shards."""
    return out / split / f".range-{part}-{start:012d}.tfrecord"


class DecodeRange:
    """Decode one range of raw examples and write its records to one shard per split; emit the
    range's digests, label counts, train statistics and skipped files."""

    def __init__(self, fmt: str, raw_dir: str, section, scan, plan: dict[str, np.ndarray], out: str):
        from pipeline.formats import FORMATS

        self.fmt, self.raw_dir, self.section, self.scan, self.plan = fmt, raw_dir, section, scan, plan
        self.out = out
        self.options = FORMATS[fmt].decode_options(section, scan)

    def __call__(self, element):
        import apache_beam as beam

        from pipeline.formats import FORMATS
        from pipeline.leakage import digest
        from pipeline.normalization import Moments
        from pipeline.prepared import SPLITS, TRAIN
        from pipeline.records import frame, serialize_example

        reader = FORMATS[self.fmt]
        section, raw_dir = self.section, Path(self.raw_dir)
        part, start, stop = element
        labels, codes = self.scan.parts[part].labels, self.plan[part]
        digests = {code: [] for code in range(len(SPLITS))}
        counts = np.zeros((len(SPLITS), len(self.scan.class_names)), dtype=np.int64)
        moments = Moments(self.scan.input_shape[-1])
        targets = {code: range_shard(Path(self.out), name, part, start) for code, name in enumerate(SPLITS)}
        files = {code: open(f"{path}.tmp", "wb") for code, path in targets.items()}  # noqa: SIM115
        for position, payload in reader.chunks(raw_dir, section, self.scan, part, start, stop):
            decoded = reader.decode(payload, raw_dir, self.options)
            gone = {offset for offset, _ in decoded.skipped}
            for key in (key for _, key in decoded.skipped):
                yield beam.pvalue.TaggedOutput("skipped", key)
            kept = [position + offset for offset in range(len(decoded.inputs) + len(gone)) if offset not in gone]
            for x, index in zip(decoded.inputs, kept, strict=True):
                code, label = int(codes[index]), int(labels[index])
                files[code].write(frame(serialize_example(x.tobytes(), label)))
                digests[code].append(digest(x, self.scan.kind))
                counts[code, label] += 1
            train = codes[kept] == TRAIN if kept else np.zeros(0, bool)
            if train.any():
                moments.add(decoded.inputs[train])
        for code, f in files.items():
            f.close()
            if counts[code].sum():
                os.replace(f"{targets[code]}.tmp", targets[code])
            else:
                os.remove(f"{targets[code]}.tmp")
        yield beam.pvalue.TaggedOutput("side", {
            "digests": {code: b"".join(d) for code, d in digests.items()},
            "counts": counts.tolist(),
            "moments": moments.state(),
        })  # fmt: skip


def merge_side(parts) -> dict[str, Any]:
    """The ranges' side results as one: digests joined, counts summed, statistics merged."""
    from pipeline.normalization import Moments

    digests, counts, moments = {}, None, None
    for part in parts:
        for code, blob in part["digests"].items():
            digests[int(code)] = digests.get(int(code), b"") + blob
        counts = np.asarray(part["counts"]) if counts is None else counts + np.asarray(part["counts"])
        other = Moments(len(part["moments"][1]))
        other.count, other.mean, other.m2 = (
            part["moments"][0],
            np.array(part["moments"][1]),
            np.array(part["moments"][2]),
        )
        moments = other if moments is None else moments.merge(other)
    return {"digests": digests, "counts": counts, "moments": moments}


def imported_beam():
    try:
        return _quiet_import()
    except ImportError:
        raise PipelineError(
            "prepare.runner: beam needs Apache Beam, an optional extra: `uv sync --extra pipeline --extra beam` "
            "(or pip install 'apache-beam')"
        ) from None


def run(raw_dir: Path, data, scan, plan: dict[str, np.ndarray], out: Path, shard_size: int, options: list[str]):
    """Write the splits into `out` on Beam; returns (shards per split, counts, class counts per split,
    digests per split, train Moments, skipped files), what the local runner knows at its end."""
    beam = imported_beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.prepared import SPLITS

    runner, args = beam_runner(options)
    if runner is not None:
        check_loopback(args)
    results = out / RESULTS
    results.mkdir(parents=True)
    with worker_errors(), stop_if_a_worker_exits(), beam.Pipeline(runner=runner, options=PipelineOptions(args)) as p:
        for name in SPLITS:
            (out / name).mkdir()
        decode_and_write(beam, p, DecodeRange(data.format, str(raw_dir), data.selected, scan, plan, str(out)),
                         ranges(scan, shard_size), results)  # fmt: skip
    return collected_results(out, results)


def decode_and_write(beam, pipeline, decode: DecodeRange, work: list, results: Path) -> None:
    """The graph: ranges spread over the workers, each decoded and written as its own shards; what the
    workers learn (class counts, digests, moments; skipped files) merged into `results`."""
    import pickle

    decoded = (
        pipeline
        | "ranges" >> beam.Create(work)
        | "spread" >> beam.Reshuffle()
        | "decode and write" >> beam.FlatMap(decode).with_outputs("skipped", "side")
    )
    _ = (
        decoded.side
        | "merge" >> beam.combiners.ToList()
        | "side results" >> beam.Map(lambda parts: (results / "side.pickle").write_bytes(
            pickle.dumps(merge_side(parts))))
    )  # fmt: skip
    _ = (
        decoded.skipped
        | "skipped" >> beam.combiners.ToList()
        | "skipped results" >> beam.Map(lambda keys: (results / "skipped.json").write_text(
            json.dumps(sorted(keys))))
    )  # fmt: skip


@contextlib.contextmanager
def worker_errors() -> Iterator[None]:
    """A worker's PipelineError, which arrives wrapped in the runner's own error, or a worker's exit,
    as one line."""
    try:
        yield
    except PipelineError:
        raise
    except WorkerExited as exc:
        raise PipelineError(
            f"prepare.runner: beam: a worker process exited before the pipeline finished ({exc}; its own "
            "output, if any, is above)"
        ) from None
    except Exception as exc:
        for line in str(exc).splitlines():
            if "PipelineError: " in line:
                raise PipelineError(line.split("PipelineError: ", 1)[1].strip()) from None
        raise


def collected_results(out: Path, results: Path) -> dict:
    """What the local runner's prepare returns, from the merged results the pipeline left in `results`
    (removed) and the shards it wrote (named in range order)."""
    import pickle

    from pipeline.prepared import SPLITS, TEST, TRAIN, VAL

    side = pickle.loads((results / "side.pickle").read_bytes())
    skipped = json.loads((results / "skipped.json").read_text())
    for path in results.iterdir():
        path.unlink()
    results.rmdir()
    counts = side["counts"]
    return {
        "shards": {name: name_shards(out / name) for name in SPLITS},
        "counts": {name: int(counts[code].sum()) for code, name in enumerate(SPLITS)},
        "class_counts": {name: counts[code].tolist() for code, name in enumerate(SPLITS)},
        "digests": {SPLITS[code]: side["digests"].get(code, b"") for code in (TRAIN, VAL, TEST)},
        "moments": side["moments"],
        "skipped": skipped,
    }


def name_shards(directory: Path) -> list[str]:
    """The ranges' shards of a split as part-SSSSS-of-NNNNN.tfrecord, in range order (an empty split
    gets one empty shard, as the local runner writes)."""
    from pipeline.records import shard_name

    ranges = sorted(directory.glob(".range-*.tfrecord"))
    if not ranges:
        (directory / ".range-empty.tfrecord").touch()
        ranges = [directory / ".range-empty.tfrecord"]
    names = [shard_name(i, len(ranges)) for i in range(len(ranges))]
    for path, name in zip(ranges, names, strict=True):
        os.replace(path, directory / name)
    return names
