"""The Keras Sequential model from `train.model`: a preset (pipeline/presets.py) or an explicit,
validated layer list.

Every model is

    keras.Sequential([keras.Input(shape, raw dtype), <preprocessing>, <body>, Dense(n_classes), Softmax])

The input is raw: images as decoders give them (`image`, uint8 [batch, h, w, c]), tables as raw
feature vectors (`features`, float32 [batch, n]). The preprocessing (pipeline/normalization.py)
casts and normalises inside the model, so the model and everything exported from it take the same
raw input. The body comes from params, the head from the data (its class count). Preprocessing and
softmax run in float32, so mixed-precision models still take raw input and output float32
probabilities.
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError, first_line
from pipeline.normalization import Normalization, choose, preprocessing_layers
from pipeline.presets import check_fits, normalization_for_model, preset_layers
from pipeline.records import input_name

# Keyword arguments every Keras layer takes through **kwargs.
_BASE_LAYER_ARGS = {"name", "dtype", "trainable", "autocast", "input_shape", "input_dim"}


def _layer_class(name: str, where: str):
    import keras

    cls = getattr(keras.layers, name, None)
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


def make_layers(spec: list[dict[str, dict[str, Any]]]) -> list:
    layers = []
    for index, entry in enumerate(spec):
        ((name, args),) = entry.items()
        where = f"train.model[{index}]"
        args = dict(args or {})
        cls = _layer_class(name, where)
        _check_arguments(cls, args, where)
        try:
            layers.append(cls(**args))
        except (TypeError, ValueError) as exc:
            first = first_line(exc)
            raise PipelineError(f"params.yaml: {where}: {name}({args}) failed: {first}") from None
    return layers


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
    normalization: Normalization,
    input_dtype: str = "uint8",
    test_time_flip: bool = False,
):
    """keras.Sequential: raw Input → float32 normalisation → body from params → Dense(num_classes) →
    float32 softmax; with `test_time_flip`, the mirror pair around the body (pipeline/mirror.py)."""
    import keras

    from pipeline.mirror import mirror_layers

    misfit = check_fits(model, input_shape)
    if misfit:
        raise PipelineError(f"params.yaml: train.model: {misfit}")
    spec = preset_layers(model, input_shape) if isinstance(model, str) else model
    name = model if isinstance(model, str) else "custom"
    body = make_layers(spec)
    if test_time_flip and len(input_shape) != 3:
        shape = "×".join(map(str, input_shape))
        raise PipelineError(f"params.yaml: train.test_time_flip: mirrors images, but the input is {shape}")
    mirror, average = ([layer] for layer in mirror_layers()) if test_time_flip else ([], [])
    head = [
        keras.layers.Dense(num_classes, name="logits"),
        keras.layers.Activation("softmax", dtype="float32", name="probabilities"),
    ]
    try:
        return keras.Sequential(
            [
                keras.Input(shape=tuple(input_shape), dtype=input_dtype, name=input_name(input_shape)),
                *preprocessing_layers(normalization),
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


def model_for_data(train, meta):
    """The model `train` params (TrainParams) describe, for the prepared data `meta` (PreparedMeta): its
    input shape, dtype and classes, and the normalisation `train.normalization` picks from its statistics."""
    setting = train.normalization
    normalization = model_normalization(train.model, setting.mode, meta.statistics, setting.mean, setting.std)
    return build_model(
        train.model, meta.input_shape, meta.num_classes, normalization, meta.dtype, bool(train.test_time_flip)
    )


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
    import keras

    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] != "InputLayer":  # the input keeps its raw dtype (uint8 pixels)
            layer["config"]["dtype"] = "float32"
    clone = keras.Sequential.from_config(config)
    clone.set_weights(model.get_weights())
    return clone


def load_keras_model(path: str):
    """Load a .keras file in safe mode (no code from Lambda layers); anything else is a clear error."""
    import zipfile

    import keras

    import pipeline.mirror  # noqa: F401  (registers the mirror layers a model may hold)

    if not Path(path).is_file():
        raise PipelineError(f"{path}: model file not found (run `dvc repro train`)")
    if not zipfile.is_zipfile(path):
        raise PipelineError(f"{path}: not a Keras model file (.keras zip archive)")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for a bad archive
        first = first_line(exc)
        raise PipelineError(f"{path}: cannot load Keras model ({first})") from None
