"""params.yaml: loaded and validated once, into a frozen typed object, at the edge of every stage.

Unknown keys, wrong types and out-of-range values are rejected with the dotted key path and the bad
value in one line, e.g. `params.yaml: train.epochs must be >= 1, got 0`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from pipeline.errors import PipelineError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- data / fetch
class IdxFiles(Section):
    train_images: str = "train-images-idx3-ubyte.gz"
    train_labels: str = "train-labels-idx1-ubyte.gz"
    test_images: str = "t10k-images-idx3-ubyte.gz"
    test_labels: str = "t10k-labels-idx1-ubyte.gz"

    def names(self) -> list[str]:
        return [self.train_images, self.train_labels, self.test_images, self.test_labels]


class DataParams(Section):
    format: Literal["idx"] = "idx"
    # A local directory or an http(s) URL prefix that holds `files`.
    source: str = "/usr/share/datasets/fashion-mnist"
    files: IdxFiles = IdxFiles()
    # sha256 of each file's *decompressed* content, keyed by file name (mirrors recompress the .gz).
    # Files not listed are not checked; an empty mapping checks nothing.
    sha256: dict[str, Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = {}
    class_names: list[str] = Field(min_length=2)

    @field_validator("class_names")
    @classmethod
    def _unique_names(cls, names: list[str]) -> list[str]:
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"must be unique, {dupes[0]!r} repeats")
        return names

    @field_validator("sha256")
    @classmethod
    def _checksums_name_known_files(cls, sha256: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        files = info.data.get("files")
        unknown = sorted(set(sha256) - set(files.names() if files else []))
        if unknown:
            raise ValueError(f"names {unknown[0]!r}, which is not one of data.files")
        return sha256


# --------------------------------------------------------------------------- prepare
class NormalizationParams(Section):
    # dataset: mean/std of the train split's pixels (scaled to [0, 1]); fixed: the mean/std given here.
    mode: Literal["dataset", "fixed"] = "dataset"
    mean: float = 0.0
    std: Annotated[float, Field(gt=0)] = 1.0


class PrepareParams(Section):
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    seed: int = 42
    shard_size: Annotated[int, Field(ge=1)] = 10_000
    normalization: NormalizationParams = NormalizationParams()


# --------------------------------------------------------------------------- train
Auto = Literal["auto", "on", "off"]


class AugmentParams(Section):
    horizontal_flip: bool = False
    translate: Annotated[float, Field(ge=0, lt=0.5)] = 0.0


class TrainParams(Section):
    # A preset name, or an explicit list of Keras layers: [{Conv2D: {filters: 32, kernel_size: 3}}, ...].
    # The classifier head (Dense(n_classes) + softmax) is always appended from the data's class count.
    model: Union[Literal["mlp", "cnn", "rnn"], list[dict[str, dict[str, Any]]]] = "cnn"
    epochs: Annotated[int, Field(ge=1)] = 20
    batch_size: Annotated[int, Field(ge=1)] = 128
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    learning_rate: Annotated[float, Field(gt=0, le=10)] = 0.001
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    schedule: Literal["constant", "cosine", "exponential"] = "cosine"
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    early_stopping_patience: Annotated[int, Field(ge=0)] = 5
    augment: AugmentParams = AugmentParams()
    shuffle_buffer: Annotated[int, Field(ge=1)] = 10_000
    cache: bool = True
    seed: int = 42
    # auto: op determinism on CPU, off on GPU (where deterministic kernels cost speed).
    deterministic: Auto = "auto"
    mixed_precision: Auto = "auto"
    jit_compile: Auto = "auto"

    @field_validator("model")
    @classmethod
    def _layers_are_single_key(cls, model: Any) -> Any:
        if isinstance(model, list):
            if not model:
                raise ValueError("layer list must not be empty")
            for i, layer in enumerate(model):
                if len(layer) != 1:
                    raise ValueError(f"[{i}] must map one layer class name to its arguments, got {layer!r}")
        return model


# --------------------------------------------------------------------------- evaluate
class GateParams(Section):
    min_accuracy: Annotated[float, Field(ge=0, le=1)] = 0.0
    # Fail when test accuracy falls more than this below the baseline metrics file's, if it exists.
    max_drop: Annotated[float, Field(ge=0, le=1)] | None = None
    baseline: str | None = None


class EvaluateParams(Section):
    batch_size: Annotated[int, Field(ge=1)] = 512
    calibration_bins: Annotated[int, Field(ge=2)] = 15
    worst_examples: Annotated[int, Field(ge=1, le=100)] = 16
    gate: GateParams = GateParams()


# --------------------------------------------------------------------------- export
class ExportParams(Section):
    opset: Annotated[int, Field(ge=13, le=21)] = 17
    quantize: bool = True
    calibration_size: Annotated[int, Field(ge=1)] = 500
    max_int8_drop: Annotated[float, Field(ge=0, le=1)] = 0.01
    registered_model_name: str = "fashion-mnist-classifier"
    batch_size: Annotated[int, Field(ge=1)] = 256


# --------------------------------------------------------------------------- mlflow
class MlflowParams(Section):
    # MLFLOW_TRACKING_URI wins; else this; else sqlite:///<repo root>/mlflow.db.
    tracking_uri: str | None = None
    experiment_name: str = "fashion-mnist"


class Params(Section):
    data: DataParams
    prepare: PrepareParams = PrepareParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()
    mlflow: MlflowParams = MlflowParams()


# --------------------------------------------------------------------------- loading
_TEMPLATES = {
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "missing": "is required",
    "extra_forbidden": "is not a known key",
    "literal_error": "must be {expected}",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "too_short": "must have at least {min_length} items",
    "string_pattern_mismatch": "must match {pattern}",
}


def _dotted(loc: tuple) -> str:
    # Union branches put their tag ("list[...]", "literal[...]") in the location: drop it.
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif "[" in str(part) or str(part).startswith("function-"):
            continue
        else:
            path += f".{part}" if path else str(part)
    return path


def _describe(error: dict) -> str:
    kind = error["type"]
    ctx = error.get("ctx", {})
    if kind == "value_error":
        text = str(ctx.get("error", error["msg"]))
    elif kind in _TEMPLATES:
        text = _TEMPLATES[kind].format(**ctx)
    else:
        text = error["msg"][0].lower() + error["msg"][1:]
    value = error.get("input")
    quiet = kind in ("missing", "extra_forbidden") or isinstance(value, dict)
    got = "" if quiet else f", got {value!r}"
    return f"{text}{got}"


def format_validation_error(source: str, exc: ValidationError) -> str:
    errors = exc.errors()
    # A union reports every branch; the most specific (deepest) one is the useful one.
    errors.sort(key=lambda e: -len(e["loc"]))
    first = errors[0]
    key = _dotted(first["loc"])
    if first["type"] == "value_error" and str(first.get("ctx", {}).get("error", "")).startswith("["):
        key, _, rest = f"{key}{first['ctx']['error']}".partition(" ")
        line = f"{source}: {key} {rest}"
    else:
        line = f"{source}: {key} {_describe(first)}"
    others = {_dotted(e["loc"]) for e in errors} - {_dotted(first["loc"])}
    if others:
        line += f" (and {len(others)} more)"
    return line


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise PipelineError(f"{source}: must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise PipelineError(format_validation_error(source, exc)) from None


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: params file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise PipelineError(f"{path}: not valid YAML{where}") from None
    return parse_params(raw, str(path))


def flatten(params: Params) -> dict[str, Any]:
    """Dotted keys to scalar values, as MLflow and DVC show them."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = value

    walk("", params.model_dump(mode="json"))
    return out
