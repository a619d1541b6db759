"""params.yaml: loaded and validated once, into a frozen typed object, at the edge of every stage.

Unknown keys, wrong types and out-of-range values are rejected with the dotted key path and the bad
value in one line, e.g. `params.yaml: train.epochs must be >= 1, got 0`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline import format_sections as sections
from pipeline.errors import PipelineError
from pipeline.format_sections import FORMAT_SECTIONS
from pipeline.safe_yaml import AliasBomb, BoundedLoader
from pipeline.schema import PRESET_NAMES, BatchSize, FormatSection, Section, Seed, describe_error, key_of
from pipeline.search_space import DEFAULT_SPACE, Dimension, space_dimensions

# Archive bounds: real data sets compress by at most ~10x (CIFAR-10's tarball by 1.1x).
MAX_EXTRACTED_BYTES = 16 * 2**30
MAX_COMPRESSION_RATIO = 100


# --------------------------------------------------------------------------- data / fetch
class DataParams(Section):
    # Which format's reader prepare uses; its section below says which files and how to read them.
    format: Literal[tuple(FORMAT_SECTIONS)] = "idx"  # type: ignore[valid-type]
    # A local directory, an http(s) URL prefix, or an archive (.tar.gz, .tgz, .tar, .zip; path or URL).
    source: str = "/usr/share/datasets/fashion-mnist"
    # The data set's name in MLflow (datasets, experiment, registered model); null: from data.source.
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")] | None = None
    # Archives (data.source ending in .zip, .tar.gz, ...) are refused before their content would
    # exceed this many bytes, or expand more than this ratio of their own size (a zip bomb). Each
    # download (an archive or a file under a URL prefix) stops at this many bytes too.
    max_extracted_bytes: Annotated[int, Field(ge=1)] = MAX_EXTRACTED_BYTES
    max_compression_ratio: Annotated[float, Field(ge=1)] = MAX_COMPRESSION_RATIO
    idx: sections.IdxSection = sections.IdxSection()
    cifar10: sections.Cifar10Section = sections.Cifar10Section()
    image_folder: sections.ImageFolderSection = sections.ImageFolderSection()
    csv: sections.CsvSection = sections.CsvSection()
    text_folder: sections.TextFolderSection = sections.TextFolderSection()
    text_table: sections.TextTableSection = sections.TextTableSection()

    @property
    def dataset_name(self) -> str:
        """data.name, else the source's last path part without an archive suffix, lower-case:
        /usr/share/datasets/fashion-mnist → fashion-mnist, .../cifar-10-binary.tar.gz → cifar-10-binary."""
        if self.name:
            return self.name
        last = self.source.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1].lower()
        for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
            last = last.removesuffix(suffix)
        return re.sub(r"[^a-z0-9._-]+", "-", last).strip("-._") or "data"

    @property
    def selected(self) -> FormatSection:
        """The section of the chosen format."""
        return getattr(self, self.format)


# --------------------------------------------------------------------------- prepare
class PrepareParams(Section):
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    # Only for data without a test part (image_folder.test or csv.test null).
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    seed: Seed = 42
    shard_size: Annotated[int, Field(ge=1, le=10**7)] = 10_000
    # local: this machine, decoding on `workers` processes (auto: every core this process may use);
    # beam: an Apache Beam pipeline on the runner beam_options name (pipeline/beam.py).
    runner: Literal["local", "beam"] = "local"
    workers: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = "auto"
    # Beam's own pipeline options, passed through: ["--runner=FlinkRunner", "--flink_master=host:8081"].
    # Empty: Beam's in-process DirectRunner on this machine.
    beam_options: list[str] = []


# --------------------------------------------------------------------------- train
Auto = Literal["auto", "on", "off"]


class NormalizationParams(Section):
    # What the model's first layers do to raw input (pixels are scaled by 1/255 first):
    # preset: the preset's own convention (dataset for layer lists); dataset: mean/std of the
    # train split that prepare measured (per channel, per feature for csv); fixed: mean/std below.
    mode: Literal["preset", "dataset", "fixed"] = "preset"
    mean: Annotated[float, Field(ge=-1e6, le=1e6)] = 0.0
    std: Annotated[float, Field(gt=0, le=1e6)] = 1.0


class AugmentParams(Section):
    # null: the preset's choice
    horizontal_flip: bool | None = None
    translate: Annotated[float, Field(ge=0, lt=0.5)] | None = None
    # Random erasing (Zhong et al. 2017, Keras' RandomErasing): with this probability an image has a
    # random rectangle (2-33 % of its area) replaced by noise. 0: off.
    erase: Annotated[float, Field(ge=0, le=1)] | None = None


class TextParams(Section):
    # Text data only; null: the preset's (README: Models).
    vocabulary_size: Annotated[int, Field(ge=3, le=1_000_000)] | None = None  # ids: padding, unknown, the words
    sequence_length: Annotated[int, Field(ge=1, le=4096)] | None = None  # words of each text the model reads


# A preset's name, one of schema.PRESET_NAMES (the schema does not import pipeline/presets.py, so a
# change to a preset reruns only the stages it can change).
PresetName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class TrainParams(Section):
    """`train`. The keys that may be null take the preset's value when they are (pipeline/presets.py:
    `resolve`, which `train` applies); a value set here wins."""

    # A preset name (pipeline/presets.py), or an explicit list of Keras layers:
    # [{Conv2D: {filters: 32, kernel_size: 3}}, ...]. The classifier head (Dense(n_classes) + softmax)
    # is always appended from the data's class count.
    model: PresetName | list[dict[str, dict[str, Any]]] = "cnn"
    epochs: Annotated[int, Field(ge=1, le=100_000)] | None = None
    batch_size: BatchSize | None = None
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] | None = None
    learning_rate: Annotated[float, Field(gt=0, le=10)] | None = None
    momentum: Annotated[float, Field(ge=0, lt=1)] | None = None
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    schedule: Literal["constant", "cosine", "exponential"] | None = None
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] | None = None
    # Images only: the model averages its probabilities for each image and its left-right mirror at
    # inference (evaluate, every export; twice the inference work), pipeline/mirror.py.
    # null: as augment.horizontal_flip (a model that learnt mirrors is scored on them too).
    test_time_flip: bool | None = None
    normalization: NormalizationParams = NormalizationParams()
    early_stopping_patience: Annotated[int, Field(ge=0, le=100_000)] | None = None
    augment: AugmentParams = AugmentParams()
    text: TextParams = TextParams()
    # null: every example counts the same; balanced: each class's examples weigh
    # n / (classes × its count), so a rare class counts as much as a common one (skewed data).
    class_weight: Literal["balanced"] | None = None
    shuffle_buffer: Annotated[int, Field(ge=1, le=10**8)] = 10_000
    # The decoded splits, cached after the first epoch: memory, a file under the work directory, or
    # off; auto: memory when train and val fit a quarter of the available memory, else a file.
    cache: Literal["auto", "memory", "file", "off"] = "auto"
    seed: Seed = 42
    # auto: op determinism on CPU, off on GPU (where deterministic kernels cost speed).
    deterministic: Auto = "auto"
    mixed_precision: Literal["auto", "on", "off", "float16", "bfloat16"] = "auto"
    jit_compile: Auto = "auto"
    # Batches per call of Keras' compiled train step (model.fit only; the multi-worker loop steps one
    # at a time). auto: enough batches for ~2,048 examples per call
    # (pipeline/train.py: batches_per_call).
    steps_per_execution: Annotated[int, Field(ge=1, le=100_000)] | Literal["auto"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _sections_may_be_null(cls, raw: Any) -> Any:
        """`augment: null` (or `text: null`) is the preset's, as each of its keys null is."""
        if isinstance(raw, dict):
            raw = {**raw, **{key: {} for key in ("augment", "text") if key in raw and raw[key] is None}}
        return raw

    @field_validator("model")
    @classmethod
    def _layers_are_single_key(cls, model: Any) -> Any:
        if isinstance(model, str) and model not in PRESET_NAMES:
            choices = ", ".join(repr(name) for name in PRESET_NAMES[:-1]) + f" or {PRESET_NAMES[-1]!r}"
            raise ValueError(f"must be a preset, {choices}, or a list of layers")
        if isinstance(model, list):
            if not model:
                raise ValueError("layer list must not be empty")
            for i, layer in enumerate(model):
                if len(layer) != 1:
                    raise ValueError(f"[{i}] must map one layer class name to its arguments, got {layer!r}")
        return model

    @property
    def model_name(self) -> str:
        return self.model if isinstance(self.model, str) else "custom"


# --------------------------------------------------------------------------- evaluate
class GateParams(Section):
    min_accuracy: Annotated[float, Field(ge=0, le=1)] = 0.90
    # Fail when test accuracy falls more than this below the baseline's (null: no such check).
    max_drop: Annotated[float, Field(ge=0, le=1)] | None = 0.02
    # champion: the registry's champion, when it was tested on the same test split; null: none.
    # (Against an earlier commit's metrics: `dvc metrics diff`.)
    baseline: Literal["champion"] | None = "champion"


class EvaluateParams(Section):
    batch_size: BatchSize = 512
    calibration_bins: Annotated[int, Field(ge=2, le=1000)] = 15
    worst_examples: Annotated[int, Field(ge=1, le=100)] = 16
    gate: GateParams = GateParams()


# --------------------------------------------------------------------------- export
class ExportParams(Section):
    opset: Annotated[int, Field(ge=13, le=21)] = 17
    # A seeded sample of the train split calibrates the int8 quantization.
    calibration_size: Annotated[int, Field(ge=1, le=100_000)] = 500
    seed: Seed = 42


# --------------------------------------------------------------------------- verify
class VerifyParams(Section):
    # float32 forms: largest |Δ| of any probability against Keras; 100 % argmax agreement always.
    max_abs_diff: Annotated[float, Field(gt=0, le=1)] = 1e-4
    # int8 forms: accuracy at most this below float32 ONNX.
    max_int8_drop: Annotated[float, Field(ge=0, le=1)] = 0.01
    batch_size: BatchSize = 256  # of the parity pass
    # The same inputs in batches of each size must give the same outputs (within max_abs_diff / 10);
    # the first examples of the test split, enough that every size leaves a ragged last batch.
    batch_sizes: Annotated[list[BatchSize], Field(min_length=2)] = [1, 7, 256]
    batch_check_examples: Annotated[int, Field(ge=1, le=100_000)] = 263


# --------------------------------------------------------------------------- promote
class PromoteParams(Section):
    # The challenger becomes champion only if, on the same test split, its accuracy is at most
    # max_drop below the champion's and no class's F1 is more than max_class_f1_drop below.
    max_drop: Annotated[float, Field(ge=0, le=1)] = 0.0
    max_class_f1_drop: Annotated[float, Field(ge=0, le=1)] = 0.02
    # McNemar's exact test on the per-example outcomes: reported at this level; gating only if required.
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05
    require_significant: bool = False


# --------------------------------------------------------------------------- tune
class TuneParams(Section):
    """`tune`: the adaptive hyperparameter search (pipeline/tune.py). Off, the stage writes no best
    params and train takes its own section as it is."""

    enabled: bool = False
    space: dict[str, Any] = DEFAULT_SPACE
    # Finished trials (complete or pruned) of the study; null: as many as `timeout` allows.
    trials: Annotated[int, Field(ge=1, le=100_000)] | None = 24
    # Seconds this run of the search may start trials for (null: until `trials`).
    timeout: Annotated[float, Field(gt=0)] | None = None
    # Epochs each trial trains at most (null: train's own); never a best param unless in the space.
    epochs: Annotated[int, Field(ge=1, le=100_000)] | None = None
    # Of the validation split, never the test split: val_accuracy is maximised, val_loss minimised.
    metric: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    seed: Seed = 42
    # Trials sampled at random before TPE models the results, and before the median pruner compares.
    startup_trials: Annotated[int, Field(ge=0, le=100_000)] = 5
    # halving: successive halving (ASHA); median: stop a trial below the others' median at the same
    # epoch (TPE's rarely are: docs/speed.md); hyperband: halving over several brackets; none.
    pruner: Literal["median", "halving", "hyperband", "none"] = "halving"
    # halving, hyperband: 1 trial in this many at a rung goes on; rungs after warmup × this^k epochs.
    reduction_factor: Annotated[int, Field(ge=2, le=10)] = 4
    # Epochs a trial trains before the pruner may stop it.
    warmup_epochs: Annotated[int, Field(ge=0, le=100_000)] = 1
    # Processes running trials on this machine (each one a share of its cores); more machines join
    # with `python -m pipeline.tune_worker` (README: Tuning).
    workers: Annotated[int, Field(ge=1, le=256)] = 1
    # Where the study lives: null is beside the tracking store (a SQLite file next to it, or the
    # schema `optuna` of its PostgreSQL database); else an SQLAlchemy URL, e.g. postgresql://host/db.
    storage: str | None = None

    @field_validator("storage")
    @classmethod
    def _database_url(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^(sqlite|postgresql|mysql)(\+\w+)?://", url):
            raise ValueError(f"must be a database URL (sqlite:///path, postgresql://host/database), got {url!r}")
        return url

    @model_validator(mode="after")
    def _space_fits_train(self) -> TuneParams:
        dimensions = space_dimensions(self.space, TrainParams)
        if not dimensions:
            raise ValueError(".space must name at least one train key")
        if self.trials is None and self.timeout is None:
            raise ValueError(".trials is null and so is timeout: the search would never end")
        if self.sampler == "grid":
            for dimension in dimensions.values():
                if dimension.kind == "float" and dimension.step is None or dimension.log:
                    raise ValueError(f".space.{dimension.key}: a grid needs choices or a stepped range")
        return self

    @property
    def dimensions(self) -> dict[str, Dimension]:
        return space_dimensions(self.space, TrainParams)


# --------------------------------------------------------------------------- mlflow
NAME = Annotated[str, Field(min_length=1, max_length=200)]


class MlflowParams(Section):
    # MLFLOW_TRACKING_URI wins; else this; else sqlite:///<repo root>/mlflow.db.
    tracking_uri: str | None = None
    experiment_name: NAME | None = None  # null: the data set's name (data.name)
    registered_model_name: NAME | None = None  # null: <data set's name>-classifier


class Params(Section):
    data: DataParams = DataParams()
    prepare: PrepareParams = PrepareParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()
    verify: VerifyParams = VerifyParams()
    promote: PromoteParams = PromoteParams()
    tune: TuneParams = TuneParams()
    mlflow: MlflowParams = MlflowParams()


# --------------------------------------------------------------------------- loading
def format_validation_error(source: str, exc: ValidationError) -> str:
    errors = exc.errors()
    # A union reports every branch; the most specific (deepest) one is the useful one.
    errors.sort(key=lambda e: -len(e["loc"]))
    first = errors[0]
    key = key_of(first["loc"])
    if first["type"] == "value_error" and str(first.get("ctx", {}).get("error", "")).startswith(("[", ".")):
        # A validator of a whole section names the key inside it: "[3] ..." or ".sha256 ...".
        key, _, rest = f"{key}{first['ctx']['error']}".partition(" ")
        line = f"{source}: {key} {rest}"
    else:
        line = f"{source}: {key} {describe_error(first)}"
    others = {key_of(e["loc"]) for e in errors} - {key_of(first["loc"])}
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
        raw = yaml.load(path.read_text(), Loader=BoundedLoader)  # a SafeLoader
    except FileNotFoundError:
        raise PipelineError(f"{path}: params file not found") from None
    except AliasBomb as exc:
        raise PipelineError(f"{path}: refused: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise PipelineError(f"{path}: not valid YAML{where}") from None
    return parse_params(raw, str(path))


def dotted(tree: dict, prefix: str = "", numbers_only: bool = False) -> dict[str, Any]:
    """A nested mapping as dotted keys to its leaves, as MLflow and DVC show params and metrics
    (`numbers_only`: only the int and float leaves, as metrics)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(dotted(value, f"{name}.", numbers_only))
        elif not numbers_only:
            out[name] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def flatten(params: Params) -> dict[str, Any]:
    """Every key as a dotted key; of the data formats, only the chosen one's section."""
    dumped = params.model_dump(mode="json")
    for name in FORMAT_SECTIONS:
        if name != params.data.format:
            del dumped["data"][name]
    return dotted(dumped)


class Scoped:
    """The validated params as one stage sees them: the keys it declares (dotted, as dvc.yaml lists
    them) and what lies below them. Any other key is a programming error naming the key, so a
    stage cannot read a param whose change would not rerun it."""

    def __init__(self, value: Any, keys: tuple[str, ...], path: str = ""):
        self._value, self._keys, self._path = value, keys, path

    def __getattr__(self, name: str) -> Any:
        full = f"{self._path}.{name}" if self._path else name
        if any(full == key or full.startswith(f"{key}.") for key in self._keys):
            return getattr(self._value, name)
        if any(key.startswith(f"{full}.") for key in self._keys):
            return Scoped(getattr(self._value, name), self._keys, full)
        raise AttributeError(f"params key {full!r} is not among this stage's params {list(self._keys)} (dvc.yaml)")


def stage_params(path: str | os.PathLike, keys: tuple[str, ...]) -> Scoped:
    """params.yaml validated whole (a mistake anywhere stops the first stage that runs), seen
    through the keys the stage declares."""
    return Scoped(load_params(path), keys)
