"""The one edge every stage runs through. A stage is a core and, where it tracks or registers
anything, a publish hook; this module does the rest, the same way for each:

1. parse the paths dvc.yaml passes (each one a required option: dvc.yaml holds the only copy);
2. load params.yaml, validate all of it once (a typo anywhere stops the first stage that runs),
   and hand the stage only the keys it declares, which are the keys dvc.yaml lists for it
   (tests/test_house.py holds the two equal; reading any other key is an error);
3. open the stage's tracking (`Stage.tracking`: the training's MLflow run, the registry, or none);
4. call the core, `core(inputs, params, outputs, tracking) -> StageResult`: it reads its inputs,
   computes, and writes each output into the temporary place `outputs` gives it;
5. call the publish hook, `publish(result, tracking, outputs) -> records`: MLflow metrics, tags,
   artifacts and registry changes; `records` are outputs only publishing can know (the registered
   version), which the edge writes into their places (it may add what it did to `result.summary`);
6. put every output in place atomically (the old outputs or the new, never half of them), then
   print the stage's line, or fail with one (a failed quality gate: after its verdict is written).

Any failure before step 6 removes the temporary places and leaves the outputs as they were.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.cli import run_cli
from pipeline.errors import PipelineError


@dataclass
class StageResult:
    summary: str  # the console line
    metrics: dict[str, float] = field(default_factory=dict)  # into the stage's MLflow run
    tags: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)  # output option -> artifact directory in the run
    facts: dict[str, Any] = field(default_factory=dict)  # what the publish hook needs of the core's work
    warnings: list[str] = field(default_factory=list)  # printed on stderr beside the console line
    failure: str | None = None  # the stage's verdict fails it, after its outputs are in place
    discard: bool = False  # nothing to put in place (a worker of a multi-machine training that is not the chief)


def no_tracking(params, inputs: dict[str, Path]) -> None:
    return None


def resume_training_run(params, inputs: dict[str, Path]):
    """The MLflow run `train` started, which evaluate, export and verify log into (`--run-file`)."""
    from pipeline.tracking import Run

    return Run.resume(inputs["run_file"])


def log_into_run(result: StageResult, run, outputs: dict[str, Path]) -> dict[str, Any]:
    """The default publish hook of a tracked stage: its metrics, tags and artifacts into the run."""
    if run is None:
        return {}
    if result.metrics:
        run.log_metrics(result.metrics)
    if result.tags:
        run.set_tags(result.tags)
    for option, directory in result.artifacts.items():
        run.log_artifact(outputs[option], directory)
    return {}


@dataclass(frozen=True)
class Stage:
    """A stage's contract with dvc.yaml (its name, the params keys it reads, the paths it takes) and
    its parts: the core, the tracking it opens, the publish hook."""

    name: str
    doc: str
    params: tuple[str, ...]
    inputs: tuple[str, ...]  # path options it reads
    outputs: tuple[str, ...]  # path options it writes, each atomically
    core: Callable[..., StageResult]
    tracking: Callable[[Any, dict[str, Path]], Any] = no_tracking
    publish: Callable[[StageResult, Any, dict[str, Path]], dict[str, Any]] = log_into_run
    state: tuple[str, ...] = ()  # path options of state kept across runs (train's resumable state), not outputs

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(
            prog=f"python -m pipeline.{self.name}", description=self.doc.strip().splitlines()[0]
        )
        parser.add_argument("--params", required=True, help="params.yaml")
        for option in (*self.inputs, *self.outputs, *self.state):
            parser.add_argument(f"--{option.replace('_', '-')}", dest=option, required=True, type=Path)
        parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
        return parser

    def run(self, argv: list[str] | None = None) -> None:
        """`python -m pipeline.<stage>`: parse, validate, run the core, publish, put in place, report."""
        run_cli(self._main, argv)

    def _main(self, argv: list[str] | None) -> None:
        from pipeline.atomic import OutputPlaces
        from pipeline.params import stage_params

        args = self.parser().parse_args(argv)
        params = stage_params(args.params, self.params)
        inputs = {option: getattr(args, option) for option in (*self.inputs, *self.state)}
        tracking = self.tracking(params, inputs)
        places = OutputPlaces({option: getattr(args, option) for option in self.outputs})
        try:
            result = self.core(inputs, params, places.places, tracking)
            if result.discard:
                places.discard()
            else:
                records = self.publish(result, tracking, places.places)
                for option, value in records.items():
                    write_record(places.places[option], value)
                places.commit()
        except BaseException as exc:
            places.discard()
            if hasattr(tracking, "fail"):
                tracking.fail(interrupted=isinstance(exc, KeyboardInterrupt))
            problem = fault_line(exc, tracking)
            if problem is not None:
                raise PipelineError(problem) from None
            raise
        for warning in result.warnings:
            print(f"{self.name}: warning: {warning}", file=sys.stderr)
        print(f"{self.name}: {result.summary}")
        if result.failure:
            raise PipelineError(result.failure)


def json_text(data: Any) -> str:
    return json.dumps(data, indent=2) + "\n"


def write_record(path: Path, value: dict | list | str | bytes) -> None:
    """A JSON record (dict or list), text or bytes at `path` (a temporary place)."""
    if isinstance(value, (dict, list)):
        value = json_text(value)
    path.write_bytes(value.encode() if isinstance(value, str) else value)


def read_output(path: str | os.PathLike, stage: str, needs: str | None = None) -> dict:
    """Another stage's JSON output, or one line saying which stage makes it (`needs`: what it must hold)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found (run `dvc repro {stage}`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PipelineError(f"{path}: not valid JSON{f' (needs {needs})' if needs else ''}") from None


# The file system's faults a stage can meet writing its outputs: one line naming the file.
FULL = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "file too large (a size limit: ulimit -f?)",
        errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system"}  # fmt: skip


def fault_line(exc: BaseException, tracking) -> str | None:
    """One line for a fault of the environment (a full disk, the tracking store), else None."""
    if isinstance(exc, OSError) and exc.errno in FULL:
        where = exc.filename or "an output"
        return f"{where}: {FULL[exc.errno]}; the previous outputs are kept"
    if isinstance(exc, Exception) and type(exc).__module__.startswith(("mlflow", "sqlalchemy", "sqlite3", "requests")):
        from pipeline.tracking import portable_uri, store_problem

        problem = store_problem(exc)
        uri = getattr(tracking, "tracking_uri", None) or os.environ.get("MLFLOW_TRACKING_URI")
        if problem is not None:
            return f"MLflow store {portable_uri(uri) if uri else '(the tracking store)'}: {problem}"
    return None
