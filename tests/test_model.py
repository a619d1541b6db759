"""Models from params: presets and explicit layer lists, and clear errors for lists Keras cannot build."""

import keras
import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.model import build_model


@pytest.mark.parametrize("preset, shape", [
    ("mlp", (28, 28, 1)), ("cnn", (28, 28, 1)), ("rnn", (28, 28, 1)), ("keras_mlp", (28, 28, 1)),
    ("mlp_128_64", (28, 28, 1)), ("cnn2", (28, 28, 1)), ("lenet", (32, 32, 3)), ("cnn4", (32, 32, 3)),
    ("tabular_mlp", (4,)),
])
def test_presets_are_sequential_with_input_and_probability_head(preset, shape):
    model = build_model(preset, shape, 7)
    assert isinstance(model, keras.Sequential)
    assert model.input_shape == (None, *shape)
    assert model.output_shape == (None, 7)
    probs = model(np.random.default_rng(0).random((3, *shape), dtype=np.float32)).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert (probs >= 0).all()


def test_rnn_reads_rows_as_time_steps():
    model = build_model("rnn", (28, 28, 1), 10)
    lstm = next(layer for layer in model.layers if isinstance(layer, keras.layers.LSTM))
    assert tuple(lstm.input.shape) == (None, 28, 28)


def test_explicit_layer_list():
    spec = [{"Conv2D": {"filters": 4, "kernel_size": 3}}, {"BatchNormalization": {}},
            {"Dropout": {"rate": 0.5}}, {"Flatten": {}}, {"Dense": {"units": 8, "activation": "relu"}}]
    model = build_model(spec, (12, 12, 1), 3)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Conv2D", "BatchNormalization", "Dropout", "Flatten", "Dense", "Dense", "Activation"]
    assert model.output_shape == (None, 3)


@pytest.mark.parametrize("spec, message", [
    ([{"Flatten": {}}, {"Conv3x": {}}], r"train\.model\[1\]: unknown Keras layer 'Conv3x'"),
    ([{"Dense": {"unit": 3}}], r"train\.model\[0\]: Dense has no argument 'unit' \(did you mean 'units'\?\)"),
    ([{"Flatten": {}}, {"Dense": {"units": 3, "activation": "nonsense"}}], r"train\.model\[1\]: Dense\(.*\) failed"),
    ([{"Lambda": {"function": "x"}}], r"train\.model\[0\]: Lambda layers run arbitrary code"),
    ([{"Conv2D": {"filters": 4, "kernel_size": 30}}], r"train\.model: the layers do not fit input shape \(12, 12, 1\)"),
    ([{"Dens": {"units": 3}}], r"unknown Keras layer 'Dens' \(did you mean 'Dense'\?\)"),
])
def test_bad_layer_lists_name_the_index(spec, message):
    with pytest.raises(PipelineError, match=message) as info:
        build_model(spec, (12, 12, 1), 3)
    assert "\n" not in str(info.value)


# The layers of the classic presets, as their tutorials define them (head: Dense(classes) + softmax).
CLASSIC = {
    "keras_mlp": ["Flatten", "Dense64", "Dense64"],
    "mlp_128_64": ["Flatten", "Dense128", "Dense64"],
    "lenet": ["Conv2D6", "MaxPooling2D", "Conv2D16", "MaxPooling2D", "Flatten", "Dense120", "Dense84"],
    "cnn4": ["Conv2D16", "MaxPooling2D", "Conv2D32", "MaxPooling2D", "Conv2D64", "MaxPooling2D",
             "Conv2D128", "MaxPooling2D", "Flatten", "Dense512"],
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

    assert [describe(layer) for layer in model.layers[:-2]] == CLASSIC[preset]
    assert [describe(layer) for layer in model.layers[-2:]] == ["Dense10", "Activation"]


def test_lenet_parameter_count_matches_the_pytorch_tutorial():
    # conv1 456 + conv2 2,416 + fc1 48,120 + fc2 10,164 + fc3 850 = 62,006
    assert build_model("lenet", (32, 32, 3), 10).count_params() == 62_006


@pytest.mark.parametrize("preset, shape, message", [
    ("lenet", (28, 28, 1), r"preset 'lenet' is for 32×32×3 colour images \(CIFAR-10\); the data has 28×28×1 images "
                           r"\(1 channel, it needs 3\)"),
    ("cnn4", (8, 8, 3), r"preset 'cnn4' needs images of at least 16×16"),
    ("tabular_mlp", (28, 28, 1), r"preset 'tabular_mlp' needs feature vectors \(a csv data set\), the data has 28×28×1"),
    ("cnn2", (4,), r"preset 'cnn2' needs images \(height, width, channels\), the data has 4 feature vectors"),
    ("rnn", (4,), r"preset 'rnn' needs images"),
])
def test_a_preset_that_cannot_fit_the_data_fails_before_keras(preset, shape, message):
    with pytest.raises(PipelineError, match=r"^params\.yaml: train\.model: " + message):
        build_model(preset, shape, 10)
