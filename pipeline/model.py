"""The Keras Sequential model from `train.model`: a preset (pipeline/presets.py) or an explicit,
validated layer list, for a kind of data (pipeline/kinds.py).

Every model is

    keras.Sequential([keras.Input(shape, raw dtype), <preprocessing>, <body>, Dense(n_classes), Softmax])

The input is raw, as the kind says: images as decoders give them (`image`, uint8 [batch, h, w, c]),
tables as raw feature vectors (`features`, float32 [batch, n]), text as its UTF-8 bytes (`text`,
uint8 [batch, max_bytes]). The preprocessing is the kind's: normalisation for images and tables
(pipeline/normalization.py), the text vectorizer for text (pipeline/text_layers.py); it lives inside
the model, so the model and everything exported from it take the same raw input. The body comes
from params, the head from the data (its class count). The body and head compute in the training's
precision (given to each layer as its dtype policy: nothing is set for the process); preprocessing
and softmax run in float32, so mixed-precision models still take raw input and output float32
probabilities.
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError, first_line
from pipeline.kinds import kind_named
from pipeline.normalization import Normalization, choose, preprocessing_layers
from pipeline.presets import check_fits, normalization_for_model, preset_layers

# Keyword arguments every Keras layer takes through **kwargs.
_BASE_LAYER_ARGS = {"name", "dtype", "trainable", "autocast", "input_shape", "input_dim"}


def _layer_class(name: str, where: str):
    import keras

    import pipeline.text_layers  # noqa: F401  (the project's text layers, for text data)

    cls = getattr(keras.layers, name, None) or keras.saving.get_registered_object(f"pipeline>{name}")
    if not (inspect.isclass(cls) and issubclass(cls, keras.layers.Layer)) or name in ("Layer", "InputLayer"):
        known = [n for n in dir(keras.layers) if n[:1].isupper()]
        hint = difflib.get_close_matches(name, known, n=1)
        suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise PipelineError(f"params.yaml: {where}: unknown Keras layer {name!r}{suffix}")
    if name == "Lambda":
        raise PipelineError(f"params.yaml: {where}: Lambda layers run arbitrary code and cannot be exported safely")
    return cls


def _check_arguments(cls, args: dict[str, Any], where: str) -> None:
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}
    accepted |= _BASE_LAYER_ARGS
    for arg in args:
        if arg not in accepted:
            hint = difflib.get_close_matches(arg, sorted(accepted), n=1)
            suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise PipelineError(f"params.yaml: {where}: {cls.__name__} has no argument {arg!r}{suffix}")


def make_layers(spec: list[dict[str, dict[str, Any]]], precision: str = "float32", where: str = "train.model") -> list:
    """The layers of a layer list, each checked against Keras, computing in `precision` unless the
    list gives a layer its own dtype. An argument that is itself one layer (Bidirectional's `layer`)
    is written the same way: `{Bidirectional: {layer: {LSTM: {units: 64}}}}`."""
    return [make_layer(entry, precision, f"{where}[{index}]") for index, entry in enumerate(spec)]


def make_layer(entry: dict[str, dict[str, Any]], precision: str, where: str):
    ((name, args),) = entry.items()
    args = dict(args or {})
    cls = _layer_class(name, where)
    _check_arguments(cls, args, where)
    for key, value in args.items():
        if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), dict | None):
            (inner,) = value
            if inner[:1].isupper():
                args[key] = make_layer(value, precision, f"{where}.{key}")
    if precision != "float32":
        args.setdefault("dtype", precision)
    try:
        return cls(**args)
    except (TypeError, ValueError) as exc:
        first = first_line(exc)
        raise PipelineError(f"params.yaml: {where}: {name}({entry[name]}) failed: {first}") from None


def model_normalization(
    model: str | list, mode: str, measured: Normalization, mean: float, std: float
) -> Normalization:
    """What the model's preprocessing applies for `train.normalization`: `preset` is the preset's own
    convention (`dataset` for a layer list), `dataset` the measured train statistics, `fixed` mean/std."""
    if mode == "preset":
        mode, *fixed = normalization_for_model(model)
        if fixed:
            mean, std = fixed
    return choose(mode, measured, mean, std)


def build_model(
    model: str | list,
    input_shape: tuple[int, ...],
    num_classes: int,
    preprocessing: list,
    *,
    kind: str = "image",
    test_time_flip: bool = False,
    precision: str = "float32",
    vocabulary_size: int | None = None,
):
    """keras.Sequential: raw Input (the kind's) → `preprocessing` (float32 normalisation, or the text
    vectorizer) → body from params → Dense(num_classes) → float32 softmax, the body and Dense in
    `precision`; with `test_time_flip`, the mirror pair around the body (pipeline/mirror.py)."""
    import keras

    from pipeline.mirror import mirror_layers

    data_kind = kind_named(kind)
    misfit = check_fits(model, input_shape, kind)
    if misfit:
        raise PipelineError(f"params.yaml: train.model: {misfit}")
    spec = preset_layers(model, input_shape, vocabulary_size) if isinstance(model, str) else model
    name = model if isinstance(model, str) else "custom"
    body = make_layers(spec, precision)
    check_vocabulary(body, vocabulary_size)
    check_size(body, input_shape, preprocessing, model)
    if test_time_flip and not data_kind.mirrors:
        shape = "×".join(map(str, input_shape))
        raise PipelineError(f"params.yaml: train.test_time_flip: mirrors images, but the input is {kind} {shape}")
    mirror, average = ([layer] for layer in mirror_layers()) if test_time_flip else ([], [])
    head = [
        keras.layers.Dense(num_classes, name="logits", dtype=precision),
        keras.layers.Activation("softmax", dtype="float32", name="probabilities"),
    ]
    try:
        return keras.Sequential(
            [
                keras.Input(shape=tuple(input_shape), dtype=data_kind.dtype, name=data_kind.input_name),
                *preprocessing,
                *mirror,
                *body,
                *head,
                *average,
            ],
            name=name,
        )
    except (ValueError, TypeError) as exc:
        first = first_line(exc)
        raise PipelineError(
            f"params.yaml: train.model: the layers do not fit input shape {tuple(input_shape)}: {first}"
        ) from None


# Bytes a weight takes while training: itself, its gradient and Adam's two moments, in float32.
TRAINING_BYTES_PER_WEIGHT = 16


def weights_of(layer, shape: tuple) -> int:
    """How many weights `layer` will have on inputs of `shape` (batch first), from its config alone:
    nothing is allocated. Layers without weights, or not known here, count 0."""
    name, config = type(layer).__name__, layer.get_config()
    channels = int(shape[-1]) if shape and shape[-1] is not None else 0
    if name == "Dense":
        return (channels + 1) * config["units"]
    if name.startswith(("Conv1D", "Conv2D", "Conv3D")):
        return (int(np.prod(config["kernel_size"])) * channels + 1) * config["filters"]
    if name in ("Embedding", "EmbeddingBag"):
        return config["input_dim"] * config["output_dim"]
    if name in ("LSTM", "GRU", "SimpleRNN"):
        gates = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}[name]
        return gates * config["units"] * (channels + config["units"] + 2)
    if name == "Bidirectional":
        return 2 * weights_of(layer.forward_layer, shape)
    if name == "BatchNormalization":
        return 4 * channels
    return 0


def check_size(body: list, input_shape: tuple, preprocessing: list, model) -> None:
    """Refuse, before any weight is allocated, a model whose training could not fit this machine's
    memory: one line naming the largest layer (a typo such as `units: 1000000000`)."""
    import psutil

    shape: tuple = (None, *input_shape)
    for layer in preprocessing:
        shape = tuple(layer.compute_output_shape(shape))
    counts = []
    for layer in body:
        counts.append(weights_of(layer, shape))
        try:
            shape = tuple(layer.compute_output_shape(shape))
        except Exception:  # a layer that needs building to know its output: estimate what came before
            break
    needed = sum(counts) * TRAINING_BYTES_PER_WEIGHT
    available = psutil.virtual_memory().available
    if needed > available:
        index = int(np.argmax(counts))
        where = f"train.model[{index}]" if isinstance(model, list) else f"train.model ({model}, layer {index})"
        raise PipelineError(
            f"params.yaml: {where}: {type(body[index]).__name__} would have {counts[index]:,} weights; training the "
            f"model takes ~{needed / 2**30:,.0f} GiB, this machine has {available / 2**30:,.1f} GiB available"
        )


def check_vocabulary(body: list, vocabulary_size: int | None) -> None:
    """A text model's first embedding must have a row for every id the vectorizer emits."""
    if vocabulary_size is None:
        return
    first = next((layer for layer in body if hasattr(layer, "input_dim")), None)
    if first is None:
        raise PipelineError("params.yaml: train.model: a text model's layers start with an Embedding (or EmbeddingBag)")
    if first.input_dim < vocabulary_size:
        raise PipelineError(
            f"params.yaml: train.model: {type(first).__name__} input_dim {first.input_dim} is below "
            f"train.text.vocabulary_size {vocabulary_size} (it needs a row for every word id)"
        )


def text_vocabulary(p, data) -> list[str]:
    """A text model's vocabulary: the training split's most frequent words (`train.text.vocabulary_size`)."""
    from pipeline.text import adapt_vocabulary

    batches = (x for x, _ in data.batches("train", data.meta.examples_in(16 << 20)))
    return adapt_vocabulary(batches, p.text.vocabulary_size)


def text_vectorizer(p, vocabulary: list[str]):
    from pipeline.text_layers import TextVectorizer

    return TextVectorizer(p.text.sequence_length, vocabulary, dtype="float32", name="vectorize")


def model_preprocessing(p, data, vocabulary: list[str] | None = None) -> list:
    """The kind's preprocessing layers for the resolved train params `p` and `data` (PreparedData):
    the normalisation `train.normalization` picks, or for text a vectorizer of `vocabulary` (None:
    adapted here, on the training split)."""
    if data.kind.name == "text":
        return [text_vectorizer(p, vocabulary if vocabulary is not None else text_vocabulary(p, data))]
    setting = p.normalization
    normalization = model_normalization(p.model, setting.mode, data.meta.statistics, setting.mean, setting.std)
    return preprocessing_layers(normalization)


def model_for_data(p, data, precision: str = "float32", vocabulary: list[str] | None = None):
    """The model the resolved train params `p` describe for `data` (PreparedData): its kind, input
    shape and classes, and the preprocessing that follows from them."""
    meta = data.meta
    return build_model(
        p.model, meta.input_shape, meta.num_classes, model_preprocessing(p, data, vocabulary), kind=meta.kind,
        test_time_flip=bool(p.test_time_flip), precision=precision,
        vocabulary_size=p.text.vocabulary_size if meta.kind == "text" else None,
    )  # fmt: skip


def applied_normalization(model) -> dict | None:
    """What the model's own first layer does to raw input (information for reports and metadata)."""
    import keras

    first = next((layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)), None)
    if not isinstance(first, keras.layers.Rescaling):
        return None
    return {"formula": "input * scale + offset", "scale": first.scale, "offset": first.offset}


def float32_model(model):
    """The same model with float32 layers: a model trained in mixed precision is saved, evaluated and
    exported in float32 (its weights are float32 already; only the arithmetic changes)."""

    from pipeline.rebuild import layer_configs, rebuilt

    def in_float32(config) -> None:
        for layer in layer_configs(config):
            if layer["class_name"] != "InputLayer":  # the input keeps its raw dtype (uint8 pixels)
                layer["config"]["dtype"] = "float32"

    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model
    return rebuilt(model, in_float32)


def load_keras_model(path: str):
    """Load a .keras file in safe mode (no code from Lambda layers); anything else is a clear error."""
    import zipfile

    import keras

    import pipeline.mirror  # noqa: F401  (registers the mirror layers a model may hold)
    import pipeline.text_layers  # noqa: F401  (and the text layers)

    if not Path(path).is_file():
        raise PipelineError(f"{path}: model file not found (run `dvc repro train`)")
    if not zipfile.is_zipfile(path):
        raise PipelineError(f"{path}: not a Keras model file (.keras zip archive)")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for a bad archive
        first = first_line(exc)
        raise PipelineError(f"{path}: cannot load Keras model ({first})") from None
