"""Models from params: presets and explicit layer lists, raw input normalised inside the model, and
clear errors for lists Keras cannot build."""

import keras
import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.model import build_model as build
from pipeline.model import model_normalization
from pipeline.normalization import PIXEL_SCALE, Normalization, preprocessing_layers


def statistics(shape) -> Normalization:
    """Train statistics as prepare records them: per channel for colour, per feature for tables."""
    if len(shape) == 1:
        return Normalization(mean=tuple([2.0] * shape[0]), std=tuple([3.0] * shape[0]), scale=1.0)
    if shape[-1] == 3:
        return Normalization(mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
    return Normalization(mean=0.2860402, std=0.35302424)


def kind_of(shape) -> str:
    return "table" if len(shape) == 1 else "image"


def build_model(model, shape, classes, **options):
    """The model as train builds it for data of `shape`: its normalisation first (pipeline/normalization.py)."""
    return build(model, shape, classes, preprocessing_layers(statistics(shape)), kind=kind_of(shape), **options)


def raw_inputs(shape, n=3):
    rng = np.random.default_rng(0)
    if len(shape) == 1:
        return rng.normal(2.0, 3.0, size=(n, *shape)).astype(np.float32)
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


@pytest.mark.parametrize(
    "preset, shape",
    [
        ("mlp", (28, 28, 1)),
        ("cnn", (28, 28, 1)),
        ("rnn", (28, 28, 1)),
        ("keras_mlp", (28, 28, 1)),
        ("mlp_128_64", (28, 28, 1)),
        ("cnn2", (28, 28, 1)),
        ("lenet", (32, 32, 3)),
        ("cnn4", (32, 32, 3)),
        ("tabular_mlp", (4,)),
    ],
)
def test_presets_are_sequential_with_input_and_probability_head(preset, shape):
    model = build_model(preset, shape, 7)
    assert isinstance(model, keras.Sequential)
    assert model.input_shape == (None, *shape)
    assert model.output_shape == (None, 7)
    (graph_input,) = model.inputs
    assert (graph_input.name, graph_input.dtype) == (("features", "float32") if len(shape) == 1 else ("image", "uint8"))
    probs = model(raw_inputs(shape)).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert (probs >= 0).all()


def test_rnn_reads_rows_as_time_steps():
    model = build_model("rnn", (28, 28, 1), 10)
    lstm = next(layer for layer in model.layers if isinstance(layer, keras.layers.LSTM))
    assert tuple(lstm.input.shape) == (None, 28, 28)


def test_explicit_layer_list():
    spec = [
        {"Conv2D": {"filters": 4, "kernel_size": 3}},
        {"BatchNormalization": {}},
        {"Dropout": {"rate": 0.5}},
        {"Flatten": {}},
        {"Dense": {"units": 8, "activation": "relu"}},
    ]
    model = build_model(spec, (12, 12, 1), 3)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Rescaling", "Conv2D", "BatchNormalization", "Dropout", "Flatten", "Dense", "Dense", "Activation"]
    assert model.output_shape == (None, 3)


@pytest.mark.parametrize(
    "spec, message",
    [
        ([{"Flatten": {}}, {"Conv3x": {}}], r"train\.model\[1\]: unknown Keras layer 'Conv3x'"),
        ([{"Dense": {"unit": 3}}], r"train\.model\[0\]: Dense has no argument 'unit' \(did you mean 'units'\?\)"),
        (
            [{"Flatten": {}}, {"Dense": {"units": 3, "activation": "nonsense"}}],
            r"train\.model\[1\]: Dense\(.*\) failed",
        ),
        ([{"Lambda": {"function": "x"}}], r"train\.model\[0\]: Lambda layers run arbitrary code"),
        (
            [{"Conv2D": {"filters": 4, "kernel_size": 30}}],
            r"train\.model: the layers do not fit input shape \(12, 12, 1\)",
        ),
        ([{"Dens": {"units": 3}}], r"unknown Keras layer 'Dens' \(did you mean 'Dense'\?\)"),
    ],
)
def test_bad_layer_lists_name_the_index(spec, message):
    with pytest.raises(PipelineError, match=message) as info:
        build_model(spec, (12, 12, 1), 3)
    assert "\n" not in str(info.value)


# The layers of the classic presets, as their tutorials define them (head: Dense(classes) + softmax).
CLASSIC = {
    "keras_mlp": ["Flatten", "Dense64", "Dense64"],
    "mlp_128_64": ["Flatten", "Dense128", "Dense64"],
    "lenet": ["Conv2D6", "MaxPooling2D", "Conv2D16", "MaxPooling2D", "Flatten", "Dense120", "Dense84"],
    "cnn4": [
        "Conv2D16",
        "MaxPooling2D",
        "Conv2D32",
        "MaxPooling2D",
        "Conv2D64",
        "MaxPooling2D",
        "Conv2D128",
        "MaxPooling2D",
        "Flatten",
        "Dense512",
    ],
    "cnn2": ["Conv2D32", "MaxPooling2D", "Conv2D64", "MaxPooling2D", "Flatten", "Dense128"],
    "tabular_mlp": ["Dense10"],
}


@pytest.mark.parametrize("preset", sorted(CLASSIC))
def test_classic_presets_have_their_tutorials_layers(preset):
    shape = {"lenet": (32, 32, 3), "cnn4": (32, 32, 3), "tabular_mlp": (4,)}.get(preset, (28, 28, 1))
    model = build_model(preset, shape, 10)

    def describe(layer):
        size = getattr(layer, "filters", None) or getattr(layer, "units", None) or ""
        return f"{type(layer).__name__}{size}"

    assert type(model.layers[0]).__name__ == "Rescaling"  # the input normalisation, then the tutorial's layers
    assert [describe(layer) for layer in model.layers[1:-2]] == CLASSIC[preset]
    assert [describe(layer) for layer in model.layers[-2:]] == ["Dense10", "Activation"]


def test_lenet_parameter_count_matches_the_pytorch_tutorial():
    # conv1 456 + conv2 2,416 + fc1 48,120 + fc2 10,164 + fc3 850 = 62,006
    assert build_model("lenet", (32, 32, 3), 10).count_params() == 62_006


@pytest.mark.parametrize(
    "preset, shape, message",
    [
        (
            "lenet",
            (28, 28, 1),
            r"preset 'lenet' is for 32×32×3 colour images \(CIFAR-10\); the data has 28×28×1 images "
            r"\(1 channel, it needs 3\)",
        ),
        ("cnn4", (8, 8, 3), r"preset 'cnn4' needs images of at least 16×16"),
        (
            "tabular_mlp",
            (28, 28, 1),
            r"preset 'tabular_mlp' needs feature vectors \(a table\), the data is images \(28×28×1\)$",
        ),
        ("cnn2", (4,), r"preset 'cnn2' needs images, the data is feature vectors \(a table\) \(4\)$"),
        ("rnn", (4,), r"preset 'rnn' needs images"),
    ],
)
def test_a_preset_that_cannot_fit_the_data_fails_before_keras(preset, shape, message):
    with pytest.raises(PipelineError, match=r"^params\.yaml: train\.model: " + message):
        build_model(preset, shape, 10)


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (4,)], ids=["grey", "colour", "table"])
def test_the_model_normalises_its_raw_input_as_the_formula_says(shape):
    stats = statistics(shape)
    model = build_model([{"Flatten": {}}] if len(shape) == 3 else [{"Dense": {"units": 3}}], shape, 2)
    x = raw_inputs(shape, 5)
    inside = keras.Sequential(model.layers[:1])(x).numpy()
    mean, std = np.asarray(stats.mean), np.asarray(stats.std)
    np.testing.assert_allclose(inside, (x.astype(np.float64) * stats.scale - mean) / std, rtol=1e-6, atol=1e-6)
    assert inside.dtype == np.float32


@pytest.mark.parametrize(
    "model, mode, expected",
    [
        ("cnn", "preset", (0.2860402, 0.35302424)),  # the preset's convention: the measured statistics
        ("keras_mlp", "preset", (0.0, 1.0)),  # its tutorial: pixels / 255
        ("lenet", "preset", (0.5, 0.5)),  # its tutorial: mean 0.5, std 0.5
        ("keras_mlp", "dataset", (0.2860402, 0.35302424)),
        ("cnn", "fixed", (0.1, 0.2)),
    ],
)
def test_train_normalization_modes(model, mode, expected):
    chosen = model_normalization(model, mode, statistics((28, 28, 1)), 0.1, 0.2)
    assert (chosen.mean, chosen.std, chosen.scale) == (*expected, PIXEL_SCALE)


def test_mixed_precision_model_still_takes_raw_pixels_and_normalises_in_float32():
    model = build_model("cnn2", (28, 28, 1), 10, precision="mixed_float16")
    assert keras.mixed_precision.global_policy().name == "float32"  # the layers' own dtype, nothing global
    assert model.inputs[0].dtype == "uint8"
    assert model.layers[0].dtype_policy.name == "float32" and model.layers[1].compute_dtype == "float16"
    assert model(raw_inputs((28, 28, 1))).dtype == "float32"


def test_float32_model_is_the_same_network_computing_in_float32():
    """What train saves from a mixed-precision training (pipeline/model.py: `rebuilt`): the same layers
    and weights, every layer in float32, the input still raw."""
    from pipeline.model import float32_model

    mixed = build_model("cnn2", (28, 28, 1), 10, precision="mixed_bfloat16")
    plain = float32_model(mixed)
    assert {layer.dtype_policy.name for layer in plain.layers} == {"float32"}
    assert plain.inputs[0].dtype == "uint8"
    assert [type(layer) for layer in plain.layers] == [type(layer) for layer in mixed.layers]
    for ours, theirs in zip(plain.get_weights(), mixed.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    x = raw_inputs((28, 28, 1))
    np.testing.assert_allclose(plain(x).numpy(), mixed(x).numpy(), atol=0.05)  # bfloat16's rounding apart
    assert float32_model(plain) is plain
