"""The building blocks of the params schema (pipeline/params.py): a frozen section that rejects
unknown keys and non-finite numbers, the data formats' common section, the bounded number types."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    # Every float must be finite: NaN or infinity in a hyperparameter or a statistic is a typo.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# The presets' names (pipeline/presets.py defines them; tests/test_house.py holds the two equal): the
# schema checks a name without importing the presets, so a change to a preset reruns only train.
PRESET_NAMES = ("cnn", "mlp", "rnn", "keras_mlp", "mlp_128_64", "lenet", "cnn4", "cnn2", "tabular_mlp",
                "text_bag", "text_cnn", "text_lstm")  # fmt: skip

# Integer widths TensorFlow, NumPy and the shard writer accept; bounds far above any real use, so a
# value outside them is a typo caught here rather than an overflow deep inside a stage.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
BatchSize = Annotated[int, Field(ge=1, le=65_536)]
Checksums = dict[str, Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]]
ClassNames = Annotated[list[str], Field(min_length=2)]


def unique(names: list[str] | None) -> list[str] | None:
    if names is not None:
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"must be unique, {dupes[0]!r} repeats")
    return names


class FormatSection(Section):
    """`data.<format>`: the keys every format has; each format's section in pipeline/params.py adds its own."""

    # sha256 of each file's *decompressed* content, keyed by its path relative to data.source
    # (mirrors recompress .gz files). Files not listed are not checked; null (or {}) checks nothing.
    # null, not {}, is what `dvc exp run -S data.<format>.sha256=null` can set: DVC merges a dict.
    sha256: Checksums | None = None
    # null: from the data (IDX/CIFAR labels 0..n-1, folder names, distinct CSV labels).
    class_names: ClassNames | None = None
    # Two-class data only: the class ROC AUC, average precision and the confusion counts are about.
    # null: the second class name (benign of malignant/benign, 1 of 0/1).
    positive_class: Annotated[str, Field(min_length=1)] | None = None

    @field_validator("class_names")
    @classmethod
    def _unique_names(cls, names: list[str] | None) -> list[str] | None:
        return unique(names)

    def files(self) -> list[str]:
        """Paths, relative to data.source, that fetch copies (directories end with '/')."""
        raise NotImplementedError

    def known_files(self) -> list[str] | None:
        """The file names sha256 may name, where they are known before fetching."""
        return self.files()

    @model_validator(mode="after")
    def _checksums_and_positive_class_fit(self) -> FormatSection:
        known = self.known_files()
        unknown = sorted(set(self.sha256 or {}) - set(known)) if known is not None else []
        if unknown:
            raise ValueError(f".sha256 names {unknown[0]!r}, which is not one of this format's files {known}")
        problem = positive_class_problem(self.positive_class, self.class_names)
        if problem:
            raise ValueError(f".positive_class {problem}")
        return self


def positive_class_problem(positive: str | None, class_names: list[str] | None) -> str | None:
    """Why `positive_class` does not fit these class names (None: it fits, or nothing to check yet)."""
    if positive is None or class_names is None:
        return None
    if len(class_names) != 2:
        return f"applies to two-class data; the data has {len(class_names)} classes"
    if positive not in class_names:
        return f"{positive!r} is not one of the classes {class_names}"
    return None


# How a validation error reads: `<dotted key> <what it must be>, got <value>`.
TEMPLATES = {
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


def key_of(loc: tuple) -> str:
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


def describe_error(error: dict) -> str:
    kind = error["type"]
    ctx = error.get("ctx", {})
    if kind == "value_error":
        text = str(ctx.get("error", error["msg"]))
    elif kind in TEMPLATES:
        text = TEMPLATES[kind].format(**ctx)
    else:
        text = error["msg"][0].lower() + error["msg"][1:]
    value = error.get("input")
    quiet = kind in ("missing", "extra_forbidden") or isinstance(value, dict)
    got = "" if quiet else f", got {value!r}"
    return f"{text}{got}"
