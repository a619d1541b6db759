"""The best params a search found (`models/tuned.yaml`): written by the `tune` stage, read by `train`,
which trains on params.yaml's train section with the search's values over it (the keys of
`tune.space` are the search's, every other key params.yaml's). A search that is off writes
`train: {}`, and train takes params.yaml as it is.

    train:                      # the best trial's values, nested as in params.yaml
      learning_rate: 0.0021
      batch_size: 64
    search:                     # where they come from (null: no search)
      study: fashion-mnist-tune-3f2a9c1e5b
      trial: 17
      ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PipelineError

HEADER = (
    "# Written by the tune stage (pipeline/tune.py): the best trial's values of tune.space, which train\n"
    "# trains on over params.yaml's train section. `train: {}`: no search (tune.enabled is false).\n"
)


@dataclass(frozen=True)
class Tuned:
    train: dict[str, Any]  # nested as params.yaml's train section
    search: dict[str, Any] | None  # the study, trial, value and MLflow run the values come from


def nested(values: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys (`augment.translate`) as the nested mapping params.yaml holds."""
    tree: dict[str, Any] = {}
    for key, value in values.items():
        *sections, leaf = key.split(".")
        place = tree
        for section in sections:
            place = place.setdefault(section, {})
        place[leaf] = value
    return tree


def tuned_text(values: dict[str, Any], search: dict[str, Any] | None) -> str:
    """The file's content: `values` dotted below train, `search` their provenance."""
    body = yaml.safe_dump({"train": nested(values), "search": search}, sort_keys=False)
    return HEADER + body


NO_SEARCH = Tuned({}, None)


def read_tuned(path: str | os.PathLike | None) -> Tuned:
    """The file's values and provenance. No file (a train run by hand before any `tune`, or a caller
    that names none) is no search: DVC runs `tune` before `train`, so in the pipeline it is there."""
    if path is None or not Path(path).exists():
        return NO_SEARCH
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise PipelineError(f"{path}: not valid YAML (rerun `dvc repro tune`)") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("train"), dict) or set(raw) - {"train", "search"}:
        raise PipelineError(f"{path}: must be a mapping of `train` (and `search`), as the tune stage writes it")
    return Tuned(raw["train"], raw.get("search"))


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_tuned(train, tuned: Tuned, source: str):
    """params.TrainParams `train` with the tuned values over it, validated as params.yaml's own are
    (a bad value is one line naming the file and the key)."""
    from pydantic import ValidationError

    from pipeline.params import Params, format_validation_error

    if not tuned.train:
        return train
    try:
        return Params.model_validate({"train": merged(train.model_dump(mode="json"), tuned.train)}).train
    except ValidationError as exc:
        raise PipelineError(format_validation_error(source, exc)) from None


def set_arguments(tuned: Tuned) -> list[str]:
    """`dvc exp run` options setting the tuned values in params.yaml's train section, one `-S` each."""
    from pipeline.params import dotted

    return [arg for key, value in dotted(tuned.train, "train.").items() for arg in ("-S", f"{key}={yaml_value(value)}")]


def yaml_value(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def main(argv: list[str] | None = None) -> None:
    """`python -m pipeline.tuned models/tuned.yaml`: the best values as `dvc exp run` options, to train
    on them with the search off (README: Tuning)."""
    import argparse
    import shlex

    from pipeline.cli import run_cli

    def show(args: list[str] | None) -> None:
        parser = argparse.ArgumentParser(prog="python -m pipeline.tuned", description=main.__doc__.splitlines()[0])
        parser.add_argument("file", type=Path, help="the tune stage's best values (models/tuned.yaml)")
        path = parser.parse_args(args).file
        if not path.is_file():
            raise PipelineError(f"{path}: not found (run `dvc repro tune` with tune.enabled true)")
        print(shlex.join(set_arguments(read_tuned(path))))

    run_cli(show, argv)


if __name__ == "__main__":
    main()
