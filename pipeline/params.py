"""params.yaml: loaded and validated once, into a frozen typed object, at the edge of every stage.

Unknown keys, wrong types and out-of-range values are rejected with the dotted key path and the bad
value in one line, e.g. `params.yaml: train.epochs must be >= 1, got 0`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from pipeline.errors import PipelineError
from pipeline.schema import PRESET_NAMES, BatchSize, ClassNames, FormatSection, Section, Seed

# Archive bounds: real data sets compress by at most ~10x (CIFAR-10's tarball by 1.1x).
MAX_EXTRACTED_BYTES = 16 * 2**30
MAX_COMPRESSION_RATIO = 100
# YAML aliases (`*name`) may repeat an anchored value, but not add more than this many values to
# the file's own: nested aliases (a "billion laughs" file) multiply, and validation, tracking and
# flattening would walk every copy (gigabytes, minutes) where the parsed file is a few kilobytes.
MAX_ALIAS_VALUES = 1_000_000


# --------------------------------------------------------------------------- data / fetch
# One section per data format (`data.<format>`): which files, how to read them. The readers are
# pipeline/formats/<format>.py; these classes are only the schema, so no stage depends on a reader
# it does not run.
class IdxSection(FormatSection):
    """`data.idx`: images (n, h, w) or (n, h, w, c) and labels (n,), gzip'd or plain."""

    url_prefix_ok: ClassVar[bool] = True  # data.source may be an http(s) prefix the file names are appended to
    train_images: str = "train-images-idx3-ubyte.gz"
    train_labels: str = "train-labels-idx1-ubyte.gz"
    test_images: str = "t10k-images-idx3-ubyte.gz"
    test_labels: str = "t10k-labels-idx1-ubyte.gz"

    def files(self) -> list[str]:
        return [self.train_images, self.train_labels, self.test_images, self.test_labels]


class Cifar10Section(FormatSection):
    """`data.cifar10`: batch files of records of 1 label byte + 3072 pixel bytes (R, G, B planes of 32×32)."""

    url_prefix_ok: ClassVar[bool] = True
    train: Annotated[list[str], Field(min_length=1)] = [f"data_batch_{i}.bin" for i in range(1, 6)]
    test: Annotated[list[str], Field(min_length=1)] = ["test_batch.bin"]
    class_names: ClassNames | None = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                      "ship", "truck"]  # fmt: skip

    def files(self) -> list[str]:
        return [*self.train, *self.test]


Side = Annotated[int, Field(ge=1, le=4096)]


class ImageFolderSection(FormatSection):
    """`data.image_folder`: one subdirectory per class of image files, under `train` (and `test`)."""

    url_prefix_ok: ClassVar[bool] = False  # a folder tree has no file list to append to a URL
    train: str = "train"
    test: str | None = "test"  # null: prepare.test_fraction of `train` becomes the test split
    image_size: tuple[Side, Side] = (28, 28)
    color_mode: Literal["grayscale", "rgb"] = "grayscale"
    unreadable: Literal["fail", "skip"] = "fail"  # an image that cannot be decoded: stop, or skip and report

    def files(self) -> list[str]:
        return [f"{self.train}/"] + ([f"{self.test}/"] if self.test else [])

    def known_files(self) -> list[str] | None:
        return None  # any image under the folders may be named


class CsvSection(FormatSection):
    """`data.csv`: a table with a header row, numeric feature columns and a label column."""

    url_prefix_ok: ClassVar[bool] = True
    train: str = "train.csv"
    test: str | None = "test.csv"  # null: prepare.test_fraction of `train` becomes the test split
    label_column: str = "label"
    feature_columns: Annotated[list[str], Field(min_length=1)] | None = None  # null: every column but the label

    def files(self) -> list[str]:
        return [self.train] + ([self.test] if self.test else [])


# A text's UTF-8 bytes the model reads (longer texts are cut, shorter ones zero-padded): its input width.
MaxBytes = Annotated[int, Field(ge=16, le=65_536)]
Unreadable = Literal["fail", "skip"]


class TextFolderSection(FormatSection):
    """`data.text_folder`: one subdirectory per class of UTF-8 .txt files (one text each), under
    `train` (and `test`): the layout of the IMDB reviews and 20 Newsgroups archives."""

    url_prefix_ok: ClassVar[bool] = False  # a folder tree has no file list to append to a URL
    train: str = "train"
    test: str | None = "test"  # null: prepare.test_fraction of `train` becomes the test split
    max_bytes: MaxBytes = 1024
    unreadable: Unreadable = "fail"  # a file that is not a text (bad UTF-8, empty, too long): stop, or skip and report

    def files(self) -> list[str]:
        return [f"{self.train}/"] + ([f"{self.test}/"] if self.test else [])

    def known_files(self) -> list[str] | None:
        return None  # any text under the folders may be named


class TextTableSection(FormatSection):
    """`data.text_table`: texts and labels in a table: CSV (.csv), TSV (.tsv) or JSON lines (.jsonl),
    by each file's suffix."""

    url_prefix_ok: ClassVar[bool] = True
    train: str = "train.csv"
    test: str | None = "test.csv"  # null: prepare.test_fraction of `train` becomes the test split
    text_column: str = "text"
    label_column: str = "label"
    max_bytes: MaxBytes = 1024
    unreadable: Unreadable = "fail"  # a row without a text or label, or a text too long: stop, or skip and report

    def files(self) -> list[str]:
        return [self.train] + ([self.test] if self.test else [])


FORMAT_SECTIONS = {"idx": IdxSection, "cifar10": Cifar10Section, "image_folder": ImageFolderSection,
                   "csv": CsvSection, "text_folder": TextFolderSection, "text_table": TextTableSection}  # fmt: skip


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
    idx: IdxSection = IdxSection()
    cifar10: Cifar10Section = Cifar10Section()
    image_folder: ImageFolderSection = ImageFolderSection()
    csv: CsvSection = CsvSection()
    text_folder: TextFolderSection = TextFolderSection()
    text_table: TextTableSection = TextTableSection()

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


def _accepts(key: str, value: Any) -> str | None:
    """Why train.<key> (dotted) cannot take `value`, in the schema's own words; None when it can."""
    *sections, leaf = key.split(".")
    raw: dict[str, Any] = {leaf: value}
    for section in reversed(sections):
        raw = {section: raw}
    try:
        TrainParams.model_validate(raw)
    except ValidationError as exc:
        return _describe(exc.errors()[0])
    return None


def space_dimensions(space: dict[str, Any], prefix: str = "", model=None) -> dict[str, Dimension]:
    """The space's keys as dimensions, each checked against the train key it sets: a key that is not
    train's, a range on a key of fixed choices, or a bound or choice the key refuses is a ValueError
    whose text starts with its dotted place (`.space.learning_rate.low must be > 0, got 0`)."""
    model = model or TrainParams
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
            found.update(space_dimensions(spec, f"{key}.", section))
            continue
        if not isinstance(spec, dict) or not spec or not (set(spec) <= RANGE_KEYS or set(spec) <= CHOICE_KEYS):
            raise ValueError(f"{place} must be {{low, high[, log][, step]}} or {{choices: [...]}}, got {spec!r}")
        found[key] = _dimension(key, place, spec, _number_kind(field.annotation))
    return found


def _dimension(key: str, place: str, spec: dict[str, Any], number: str | None) -> Dimension:
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{place}.choices must be a non-empty list, got {choices!r}")
        for i, choice in enumerate(choices):
            if choice is not None and not isinstance(choice, (bool, int, float, str)):
                raise ValueError(f"{place}.choices[{i}] must be a number, a string, true/false or null, got {choice!r}")
            problem = _accepts(key, choice)
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
        problem = _accepts(key, value)
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


class TuneParams(Section):
    """`tune`: the adaptive hyperparameter search (pipeline/tune.py). Off, the stage writes no best
    params and train takes its own section as it is."""

    enabled: bool = False
    space: dict[str, Any] = DEFAULT_SPACE
    # Finished trials (complete or pruned) of the study; null: as many as `timeout` allows.
    trials: Annotated[int, Field(ge=1, le=100_000)] | None = 24
    # Seconds this run of the search may start trials for (null: until `trials`).
    timeout: Annotated[float, Field(gt=0)] | None = None
    # Epochs each trial trains at most (null: train's own); the best params never include it
    # unless `epochs` is in the space.
    epochs: Annotated[int, Field(ge=1, le=100_000)] | None = None
    # Of the validation split, never the test split: val_accuracy is maximised, val_loss minimised.
    metric: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    seed: Seed = 42
    # Trials sampled at random before TPE models the results, and before the median pruner compares.
    startup_trials: Annotated[int, Field(ge=0, le=100_000)] = 5
    # median: stop a trial whose best so far is below the median of the others' at the same epoch;
    # halving: successive halving (ASHA), only the best third of the trials at each rung of epochs
    # (warmup_epochs × 3^k) go on; hyperband: successive halving over several such brackets; none.
    pruner: Literal["median", "halving", "hyperband", "none"] = "median"
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
        dimensions = space_dimensions(self.space)
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
        return space_dimensions(self.space)


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
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "too_short": "must have at least {min_length} items",
    "string_pattern_mismatch": "must match {pattern}",
}


def _key_of(loc: tuple) -> str:
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
    key = _key_of(first["loc"])
    if first["type"] == "value_error" and str(first.get("ctx", {}).get("error", "")).startswith(("[", ".")):
        # A validator of a whole section names the key inside it: "[3] ..." or ".sha256 ...".
        key, _, rest = f"{key}{first['ctx']['error']}".partition(" ")
        line = f"{source}: {key} {rest}"
    else:
        line = f"{source}: {key} {_describe(first)}"
    others = {_key_of(e["loc"]) for e in errors} - {_key_of(first["loc"])}
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


class AliasBomb(yaml.YAMLError):
    """A document whose aliases expand it past MAX_ALIAS_VALUES, or one that holds itself."""


def check_aliases(root: yaml.Node, limit: int = MAX_ALIAS_VALUES) -> None:
    """Count the values of the composed document `root` with every alias expanded, in time linear in
    its distinct nodes (each collection's expanded count is computed once); raise AliasBomb when the
    aliases add more than `limit` values to the document's own, or a collection holds itself."""
    size: dict[int, int] = {}  # id(collection) -> its values, aliases expanded
    parents: dict[int, int] = {}  # id(collection) -> how many collections hold it (more than one: aliased)
    nodes: dict[int, yaml.Node] = {}
    scalars: set[int] = set()
    active: set[int] = set()  # the collections on the path being expanded: one met again holds itself
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            return  # the document is one scalar
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
        key = id(node)
        if done:
            total = 1
            for child in children:
                if isinstance(child, yaml.ScalarNode):
                    scalars.add(id(child))
                    total += 1
                else:
                    total += size[id(child)]
            size[key] = total
            active.discard(key)
        elif key in active:
            line = node.start_mark.line + 1
            raise AliasBomb(f"the anchor on line {line} holds an alias to itself (a recursive value)")
        elif key not in size:
            active.add(key)
            nodes[key] = node
            stack.append((node, True))
            for child in children:
                if not isinstance(child, yaml.ScalarNode):
                    parents[id(child)] = parents.get(id(child), 0) + 1
                    stack.append((child, False))
    added = size[id(root)] - len(size) - len(scalars)
    if added > limit:
        repeated = max((k for k, n in parents.items() if n > 1), key=size.__getitem__, default=None)
        largest = (
            f" (the anchor on line {nodes[repeated].start_mark.line + 1}, {size[repeated]:,} values, "
            f"{parents[repeated]} times)"
            if repeated is not None
            else ""
        )
        raise AliasBomb(
            f"its aliases expand it to {size[id(root)]:,} values{largest}, more than {limit:,} beyond its own "
            '(a "billion laughs" file)'
        )


class ParamsLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing before anything is constructed a document whose aliases
    would expand it past MAX_ALIAS_VALUES (check_aliases)."""

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        check_aliases(node)
        return self.construct_document(node)


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=ParamsLoader)  # a SafeLoader
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
