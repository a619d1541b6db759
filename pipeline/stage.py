"""The one edge every stage runs through: a stage is a pure core (typed inputs and its own params in,
a StageResult out) and this module does the rest, the same way for each:

1. parse the paths dvc.yaml passes (each one a required option: dvc.yaml holds the only copy);
2. load params.yaml, validate all of it once (a typo anywhere stops the first stage that runs),
   and hand the stage only the keys it declares, which are the keys dvc.yaml lists for it
   (tests/test_house.py holds the two equal; reading any other key is an error);
3. call the core;
4. write its outputs, each atomically (the old output or the new one, never half of it);
5. publish to MLflow, into the training's run (metrics, tags, artifacts, and what the stage itself
   registers), only after every output is in place;
6. print its one line, or fail with one (a failed quality gate: after its verdict is written).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.cli import run_cli
from pipeline.errors import PipelineError

# An output: JSON (dict or list), text, bytes, or a function that builds it at the path it is given
# (a file, or a directory it creates).
Output = dict | list | str | bytes | Callable[[Path], None]


@dataclass
class StageResult:
    outputs: dict[str, Output]  # by path option name ("metrics", "figures")
    summary: str | Callable[[], str]  # the console line (a function: made once the outputs are written)
    metrics: dict[str, float] = field(default_factory=dict)  # into the training's MLflow run
    tags: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)  # path option -> artifact directory in the run
    # Registry work, done once the outputs are written: publish(run) returns more console lines.
    publish: Callable[[Any], list[str]] | None = None
    failure: str | None = None  # the stage's verdict fails it, after its outputs are written


@dataclass(frozen=True)
class Stage:
    """A stage's contract with dvc.yaml: its name, the params keys it reads, the paths it takes."""

    name: str
    doc: str
    params: tuple[str, ...]
    inputs: tuple[str, ...]  # path options it reads
    outputs: tuple[str, ...]  # path options it writes
    tracked: bool = True  # logs into the training's MLflow run (needs --run-file)

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(
            prog=f"python -m pipeline.{self.name}", description=self.doc.strip().splitlines()[0]
        )
        parser.add_argument("--params", required=True, help="params.yaml")
        for option in (*self.inputs, *self.outputs):
            parser.add_argument(f"--{option.replace('_', '-')}", dest=option, required=True, type=Path)
        parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
        return parser


def write_output(path: Path, value: Output) -> None:
    """One output, atomically: beside the target, then renamed onto it."""
    from pipeline.atomic import atomic_dir, atomic_file, write_json

    if isinstance(value, (dict, list)):
        write_json(path, value)
    elif isinstance(value, (str, bytes)):
        with atomic_file(path) as tmp:
            tmp.write_bytes(value.encode() if isinstance(value, str) else value)
    elif path.suffix:  # a file its function writes
        with atomic_file(path, suffix=path.suffix) as tmp:
            value(tmp)
    else:
        with atomic_dir(path) as tmp:
            value(tmp)


def run_stage(stage: Stage, core: Callable[..., StageResult], argv: list[str] | None = None) -> None:
    """`python -m pipeline.<stage>`: parse, validate, run the core, write, publish, report."""

    def main(argv: list[str] | None) -> None:
        args = stage.parser().parse_args(argv)
        from pipeline.params import stage_params

        params = stage_params(args.params, stage.params)
        paths = {option: getattr(args, option) for option in (*stage.inputs, *stage.outputs)}
        run = open_run(paths["run_file"]) if stage.tracked else None
        result = core(paths, params, run) if stage.tracked else core(paths, params)
        for option, value in result.outputs.items():
            write_output(paths[option], value)
        lines = [result.summary() if callable(result.summary) else result.summary]
        if run is not None:
            lines += publish(run, result, paths)
        print("\n".join(f"{stage.name}: {line}" for line in lines if line))
        if result.failure:
            raise PipelineError(result.failure)

    run_cli(main, argv)


def open_run(run_file: Path):
    from pipeline.tracking import Run

    return Run.resume(run_file)


def publish(run, result: StageResult, paths: dict[str, Path]) -> list[str]:
    if result.metrics:
        run.log_metrics(result.metrics)
    if result.tags:
        run.set_tags(result.tags)
    for option, directory in result.artifacts.items():
        run.log_artifact(paths[option], directory)
    return result.publish(run) if result.publish else []


def read_output(path: str | os.PathLike, stage: str, needs: str | None = None) -> dict:
    """Another stage's JSON output, or one line saying which stage makes it (`needs`: what it must hold)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found (run `dvc repro {stage}`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PipelineError(f"{path}: not valid JSON{f' (needs {needs})' if needs else ''}") from None
