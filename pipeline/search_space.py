"""The search space of `tune.space`: train's own keys (nested as in the train section), each a range
or a list of choices, checked against the train key it sets (pipeline/params.py's TuneParams), and the
values a grid search tries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ValidationError

from pipeline.schema import describe_error

# The search space: train's own keys (nested as in the train section), each a range or a list of
# choices. What a search tries by default, on the default preset's data: README, Tuning.
DEFAULT_SPACE = {
    "model": {"choices": ["cnn", "cnn2", "mlp"]},
    "learning_rate": {"low": 0.0003, "high": 0.01, "log": True},
    "batch_size": {"choices": [64, 128, 256]},
    "label_smoothing": {"low": 0.0, "high": 0.2},
}
RANGE_KEYS, CHOICE_KEYS = {"low", "high", "log", "step"}, {"choices"}


@dataclass(frozen=True)
class Dimension:
    """One key of the search space: `key` dotted below train (`learning_rate`, `augment.translate`);
    `kind` int or float (a range: low, high, log, step) or choice (choices)."""

    key: str
    kind: Literal["int", "float", "choice"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()


def _number_kind(annotation: Any) -> str | None:
    """int or float when a train key takes numbers (bool is not one), else None."""
    if annotation is bool:
        return None
    if annotation in (int, float):
        return annotation.__name__
    kinds = {_number_kind(arg) for arg in get_args(annotation)} - {None}
    return "int" if "int" in kinds else ("float" if "float" in kinds else None)


def _accepts(root: type[BaseModel], key: str, value: Any) -> str | None:
    """Why train.<key> (dotted) cannot take `value`, in the schema's own words; None when it can."""
    *sections, leaf = key.split(".")
    raw: dict[str, Any] = {leaf: value}
    for section in reversed(sections):
        raw = {section: raw}
    try:
        root.model_validate(raw)
    except ValidationError as exc:
        return describe_error(exc.errors()[0])
    return None


def space_dimensions(
    space: dict[str, Any], root: type[BaseModel], prefix: str = "", model=None
) -> dict[str, Dimension]:
    """The space's keys as dimensions, each checked against the train key it sets: a key that is not
    train's, a range on a key of fixed choices, or a bound or choice the key refuses is a ValueError
    whose text starts with its dotted place (`.space.learning_rate.low must be > 0, got 0`). `root` is
    the train section's schema; `model` the section below it the keys at `prefix` belong to."""
    model = model or root
    found: dict[str, Dimension] = {}
    for name, spec in space.items():
        key, place = f"{prefix}{name}", f".space.{prefix}{name}"
        field = model.model_fields.get(name)
        if field is None:
            raise ValueError(f"{place} is not a key of train")
        section = field.annotation if isinstance(field.annotation, type) else None
        if section is not None and issubclass(section, BaseModel):
            if not isinstance(spec, dict) or set(spec) & (RANGE_KEYS | CHOICE_KEYS):
                raise ValueError(f"{place} is a section of train: give its keys' ranges or choices")
            found.update(space_dimensions(spec, root, f"{key}.", section))
            continue
        if not isinstance(spec, dict) or not spec or not (set(spec) <= RANGE_KEYS or set(spec) <= CHOICE_KEYS):
            raise ValueError(f"{place} must be {{low, high[, log][, step]}} or {{choices: [...]}}, got {spec!r}")
        found[key] = _dimension(root, key, place, spec, _number_kind(field.annotation))
    return found


def _dimension(root: type[BaseModel], key: str, place: str, spec: dict[str, Any], number: str | None) -> Dimension:
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{place}.choices must be a non-empty list, got {choices!r}")
        for i, choice in enumerate(choices):
            if choice is not None and not isinstance(choice, (bool, int, float, str)):
                raise ValueError(f"{place}.choices[{i}] must be a number, a string, true/false or null, got {choice!r}")
            problem = _accepts(root, key, choice)
            if problem:
                raise ValueError(f"{place}.choices[{i}] {problem}")
        if len(set(map(repr, choices))) != len(choices):
            raise ValueError(f"{place}.choices must not repeat a value, got {choices!r}")
        return Dimension(key, "choice", choices=tuple(choices))
    if number is None:
        raise ValueError(f"{place} takes no range (it is not a number): give {{choices: [...]}}")
    if "low" not in spec or "high" not in spec:
        raise ValueError(f"{place} needs both low and high")
    for bound in ("low", "high"):
        value = spec[bound]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{place}.{bound} must be a number, got {value!r}")
        problem = _accepts(root, key, value)
        if problem:
            raise ValueError(f"{place}.{bound} {problem}")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    if not low < high:
        raise ValueError(f"{place}.low must be below high ({high!r}), got {low!r}")
    if not isinstance(log, bool):
        raise ValueError(f"{place}.log must be true or false, got {log!r}")
    if log and low <= 0:
        raise ValueError(f"{place}.low must be > 0 for a log range, got {low!r}")
    if step is not None:
        whole = number == "int" and (isinstance(step, bool) or not isinstance(step, int))
        if whole or isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0:
            kind = "integer" if number == "int" else "number"
            raise ValueError(f"{place}.step must be a positive {kind}, got {step!r}")
        if log:
            raise ValueError(f"{place}: a range is either log or stepped, not both")
    return Dimension(key, number, low=low, high=high, log=log, step=step)


def grid_points(dimension: Dimension) -> list:
    """The values a grid search tries of one dimension (choices, or a stepped or integer range)."""
    if dimension.kind == "choice":
        return list(dimension.choices)
    step = dimension.step or 1
    count = int((dimension.high - dimension.low) / step + 1e-9) + 1
    values = [dimension.low + i * step for i in range(count)]
    return [int(v) for v in values] if dimension.kind == "int" else [round(v, 12) for v in values]
