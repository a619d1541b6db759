"""Test-time flip averaging (pipeline/mirror.py): the two layers on their own, and inside a model built
with `train.test_time_flip`: each image scored with its mirror, identities in training, saved and
loaded in safe mode, removed again by `single_pass`."""

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.mirror import AverageMirrored, MirrorBatch, averages_mirrors, mirror_layers, single_pass
from pipeline.model import build_model
from pipeline.normalization import Normalization, preprocessing_layers

SHAPE = (8, 6, 1)
# Not mirror-symmetric: a mirrored image gives other probabilities, so averaging shows.
SPEC = [{"Conv2D": {"filters": 3, "kernel_size": 3}}, {"Flatten": {}}]


def raw_images(n: int, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def build(spec=SPEC, shape=SHAPE, **options):
    normalization = preprocessing_layers(Normalization(mean=0.2860402, std=0.35302424))
    return build_model(spec, shape, 4, normalization, kind="image", **options)


def test_mirror_batch_appends_each_image_s_left_right_mirror_at_inference_only():
    x = np.arange(2 * 3 * 4 * 1, dtype=np.float32).reshape(2, 3, 4, 1)
    doubled = np.asarray(MirrorBatch()(x))
    np.testing.assert_array_equal(doubled, np.concatenate([x, x[:, :, ::-1]]))
    np.testing.assert_array_equal(np.asarray(MirrorBatch()(x, training=True)), x)


def test_average_mirrored_averages_the_two_halves_at_inference_only():
    rows = np.array([[1.0, 0.0], [0.2, 0.8], [0.0, 1.0], [0.6, 0.4]], dtype=np.float32)
    np.testing.assert_allclose(np.asarray(AverageMirrored()(rows)), [[0.5, 0.5], [0.4, 0.6]])
    np.testing.assert_array_equal(np.asarray(AverageMirrored()(rows, training=True)), rows)


def test_the_pair_is_float32_and_named_as_the_graphs_show_it():
    mirror, average = mirror_layers()
    assert (mirror.name, average.name) == ("mirror", "mirror_average")
    assert mirror.dtype_policy.name == average.dtype_policy.name == "float32"


def test_test_time_flip_averages_each_image_and_its_mirror(tmp_path):
    """train.test_time_flip: at inference the model's probabilities are the mean of what the same
    weights give the image and its left-right mirror; in training it is the plain model (batch n in,
    n out); the layers survive a save and a safe-mode load."""
    from pipeline.model import load_keras_model

    mirrored = build(test_time_flip=True)
    plain = build()
    plain.set_weights(mirrored.get_weights())
    x = raw_images(5)

    expected = (plain.predict(x, verbose=0) + plain.predict(x[:, :, ::-1], verbose=0)) / 2
    assert not np.allclose(plain.predict(x, verbose=0), expected, atol=1e-4)
    np.testing.assert_allclose(mirrored.predict(x, verbose=0), expected, atol=1e-6)
    np.testing.assert_allclose(mirrored(x, training=True), plain(x, training=True), atol=1e-6)

    mirrored.save(tmp_path / "model.keras")
    loaded = load_keras_model(str(tmp_path / "model.keras"))
    assert averages_mirrors(loaded)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-6)


def test_test_time_flip_needs_images():
    normalization = preprocessing_layers(Normalization(mean=(2.0,) * 5, std=(3.0,) * 5, scale=1.0))
    with pytest.raises(PipelineError, match=r"train\.test_time_flip: mirrors images, but the input is table 5$"):
        build_model("mlp", (5,), 3, normalization, kind="table", test_time_flip=True)


def test_single_pass_is_the_network_without_its_mirror():
    mirrored = build(test_time_flip=True)
    alone = single_pass(mirrored)
    x = raw_images(4)
    assert averages_mirrors(mirrored) and not averages_mirrors(alone)
    assert len(alone.layers) == len(mirrored.layers) - 2
    np.testing.assert_allclose(alone.predict(x, verbose=0), mirrored(x, training=True), atol=1e-6)
    plain = build()
    assert single_pass(plain) is plain  # nothing to take out: the model itself
