"""The tf.data input pipeline: raw examples, cached before the shuffle, reshuffled each epoch, seeded."""

import numpy as np
import pytest

from pipeline.dataset import make_dataset
from pipeline.prepared import PreparedData

from helpers.data import fetch_and_prepare


@pytest.fixture
def prepared(tiny_data, tmp_path) -> PreparedData:
    fetch_and_prepare(tiny_data, tmp_path)
    return PreparedData.open(tmp_path / "prepared")


def labels_of(dataset) -> list[int]:
    return [int(y) for _, ys in dataset.as_numpy_iterator() for y in ys]


def test_each_epoch_reshuffles_and_the_seed_repeats_it(prepared):
    ds = make_dataset(prepared, "train", 8, training=True, shuffle_buffer=200, seed=3)
    first, second = labels_of(ds), labels_of(ds)
    assert sorted(first) == sorted(second) and first != second  # cache() did not freeze the order
    again = make_dataset(prepared, "train", 8, training=True, shuffle_buffer=200, seed=3)
    assert labels_of(again) == first


def test_evaluation_order_is_the_file_order_and_images_stay_raw(prepared):
    images, labels = prepared.arrays("test")
    ds = make_dataset(prepared, "test", 16, training=False)
    xs = np.concatenate([x for x, _ in ds.as_numpy_iterator()])
    assert labels_of(ds) == labels.tolist()
    np.testing.assert_array_equal(xs, images)  # the model normalises; tf.data only decodes
    assert xs.dtype == np.uint8
    assert int(ds.cardinality()) == 3  # 40 examples in batches of 16


def first_training_batch(prepared, augment=None):
    """The whole (unshuffled) train split as one training batch, augmented by `augment`."""
    dataset = make_dataset(prepared, "train", 108, training=True, shuffle_buffer=1, seed=0, augment=augment)
    return next(dataset.as_numpy_iterator())[0]


def test_augmentation_changes_training_batches_only(prepared):
    from pipeline.dataset import augmenter

    x_plain, x_aug = first_training_batch(prepared), first_training_batch(prepared, augmenter(True, 0.2, 0))
    assert x_plain.shape == x_aug.shape and not np.array_equal(x_plain, x_aug)
    assert x_aug.dtype == np.uint8  # augmented examples are still raw pixels


def test_a_flip_on_raw_pixels_is_exact(prepared):
    from pipeline.dataset import augmenter

    x_plain, x_flip = first_training_batch(prepared), first_training_batch(prepared, augmenter(True, 0.0, 0))
    for a, b in zip(x_plain, x_flip, strict=True):
        assert np.array_equal(a, b) or np.array_equal(a[:, ::-1], b)
    assert not np.array_equal(x_plain, x_flip)


def test_workers_shard_by_file_when_each_gets_one_else_by_example():
    from pipeline.dataset import shard_policy

    assert shard_policy(num_files=6, workers=2) == "FILE"
    assert shard_policy(num_files=2, workers=2) == "FILE"
    assert shard_policy(num_files=1, workers=2) == "DATA"


def test_shard_policy_is_set_on_the_dataset(prepared):
    import tensorflow as tf

    assert len(prepared.meta.shards["train"]) == 3  # 108 examples in shards of up to 50
    by_file = make_dataset(prepared, "train", 8, training=False, workers=3)
    by_data = make_dataset(prepared, "train", 8, training=False, workers=4)
    policy = tf.data.experimental.AutoShardPolicy
    assert by_file.options().experimental_distribute.auto_shard_policy == policy.FILE
    assert by_data.options().experimental_distribute.auto_shard_policy == policy.DATA
