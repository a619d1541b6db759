"""Models from params: presets and explicit layer lists, and clear errors for lists Keras cannot build."""

import keras
import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.model import build_model


@pytest.mark.parametrize("preset", ["mlp", "cnn", "rnn"])
def test_presets_are_sequential_with_input_and_probability_head(preset):
    model = build_model(preset, (28, 28, 1), 7)
    assert isinstance(model, keras.Sequential)
    assert model.input_shape == (None, 28, 28, 1)
    assert model.output_shape == (None, 7)
    probs = model(np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)).numpy()
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
