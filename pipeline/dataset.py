"""The tf.data input pipeline shared by train and evaluate.

    TFRecord shards → parse + decode + normalise (map, AUTOTUNE) → cache → shuffle (seeded,
    reshuffled each epoch) → batch → [augment] → prefetch(AUTOTUNE)

`cache()` holds the decoded, normalised examples and comes *before* shuffle: cached after shuffle,
every epoch would replay the first epoch's order.
"""

from __future__ import annotations

from pipeline.normalization import Normalization
from pipeline.records import PreparedMeta, read_split


def normalize_examples(dataset, normalization: Normalization):
    import tensorflow as tf

    def normalize(image, label):
        return normalization.apply(tf.cast(image, tf.float32)), label

    return dataset.map(normalize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def augmenter(horizontal_flip: bool, translate: float, seed: int):
    """Keras' random augmentation layers, applied in tf.data so they never enter the model graph."""
    import keras

    layers = []
    if horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if translate > 0:
        layers.append(keras.layers.RandomTranslation(translate, translate, fill_mode="constant", seed=seed + 1))
    return keras.Sequential(layers, name="augment") if layers else None


def shard_policy(num_files: int, workers: int) -> str:
    """How a multi-worker strategy splits a split: by file when every worker gets one, else by example."""
    return "FILE" if num_files >= workers else "DATA"


def make_dataset(prepared_dir: str, meta: PreparedMeta, split: str, batch_size: int, *, training: bool,
                 shuffle_buffer: int = 10_000, seed: int = 0, cache: bool = True, augment=None, files=None,
                 workers: int = 1):
    """Batched (normalised float32 image, int64 label) for `split`; shuffled and augmented when training.

    `batch_size` is the global batch; under a multi-worker strategy each worker reads its shard
    (see `shard_policy`), set explicitly rather than left to tf.data's AUTO guess.
    """
    import tensorflow as tf

    dataset = normalize_examples(read_split(prepared_dir, meta, split, files), meta.normalization)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = getattr(
        tf.data.experimental.AutoShardPolicy, shard_policy(len(meta.shards[split]), workers))
    dataset = dataset.with_options(options)
    if cache:
        dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if training and augment is not None:
        dataset = dataset.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)
