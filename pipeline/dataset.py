"""The tf.data input pipeline shared by train and evaluate.

    TFRecord shards → parse + decode (map, AUTOTUNE) → [tokenize] → cache → shuffle (seeded,
    reshuffled each epoch) → batch → [augment] → prefetch(AUTOTUNE)

Examples stay raw (uint8 pixels, float32 features): the model normalises them itself, so the cache
holds a quarter of what float32 pixels would take. Text is the exception: training turns each text
into its word ids once, with the model's own vectorizer, before the cache, so later epochs skip the
tokenizing (pipeline/training.py). `cache()` comes *before* shuffle: cached after shuffle, every
epoch would replay the first epoch's order.
"""

from __future__ import annotations


def augmenter(horizontal_flip: bool, translate: float, seed: int, erase: float = 0.0):
    """Keras' random augmentation layers, applied in tf.data so they never enter the model graph.
    They work on raw pixels (translation fills with black, 0; erasing with noise in 0-255), in float32
    whatever the model's precision."""
    import keras

    layers = []
    if horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed, dtype="float32"))
    if translate > 0:
        layers.append(
            keras.layers.RandomTranslation(translate, translate, fill_mode="constant", seed=seed + 1, dtype="float32")
        )
    if erase > 0:
        # factor (p, p): each image is erased with probability p (a single number would draw p itself).
        erasing = keras.layers.RandomErasing(
            factor=(erase, erase), value_range=(0, 255), seed=seed + 2, dtype="float32"
        )
        layers.append(erasing)
    return keras.Sequential(layers, name="augment") if layers else None


def dataset_options(shard: str):
    """tf.data's options: how a multi-worker strategy shards the split, and the autotuner off.

    With the autotuner, an epoch could start 13-18 s late (its first 16 batches took 13.6 s instead
    of 0.8: Keras opens an iterator as each epoch ends and replaces it as the next begins, and
    dropping one could wait for the autotuner's thread to wake: such waits ended at 10 ms x (2^k - 1)
    after the iterator opened, its doubling sleep). The default model, 6 epochs: 2 of 6 epochs
    stalled (+26 s), none without it, same weights, and the epochs that did not stall took as long as
    those without it (median 28.5 s against 28.0 s: this small pipeline of cached raw pixels needs no
    tuning)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = getattr(tf.data.experimental.AutoShardPolicy, shard)
    options.autotune.enabled = False
    return options


def tokenized(dataset, tokenize):
    """A text split as word ids, tokenized a block at a time by `tokenize` (the model's vectorizer)."""
    import tensorflow as tf

    examples = dataset.cardinality()
    dataset = dataset.batch(256).map(lambda x, y: (tokenize(x), y), num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    if examples >= 0:  # known: keep it known (Keras warns of running out of data otherwise)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(examples))
    return dataset


def shard_policy(num_files: int, workers: int) -> str:
    """How a multi-worker strategy splits a split: by file when every worker gets one, else by example."""
    return "FILE" if num_files >= workers else "DATA"


def augment_raw(augment, images, dtype):
    """`augment` on a batch of raw inputs, returned in their raw dtype: Keras' layers compute in
    float32; uint8 pixels come back rounded and clipped (a flip is exact)."""
    import tensorflow as tf

    out = augment(images, training=True)
    if dtype == tf.uint8:
        out = tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)
    return tf.cast(out, dtype)


def make_dataset(
    data,
    split: str,
    batch_size: int,
    *,
    training: bool,
    shuffle_buffer: int = 10_000,
    seed: int = 0,
    cache: str | None = "memory",
    augment=None,
    files=None,
    workers: int = 1,
    drop_remainder: bool = False,
    shard: str | None = None,
    class_weights: list[float] | None = None,
    tokenize=None,
):
    """Batched (raw input, int64 label) for `split` of `data` (PreparedData); shuffled and augmented
    when training.

    `batch_size` is the global batch; under a multi-worker strategy each worker reads its shard
    (`shard`: "FILE" or "DATA", default `shard_policy`), set explicitly rather than left to
    tf.data's AUTO guess. `cache`: "memory", a file path prefix (tf.data's file cache), or None.
    `class_weights` (one per class) add each example's weight as a third
    element, as Keras' own `fit(class_weight=...)` does to a dataset. `tokenize`: a text model's
    vectorizer, applied to batches of raw texts before the cache.
    """
    import tensorflow as tf

    meta = data.meta
    dataset = data.dataset(split, files).with_options(
        dataset_options(shard or shard_policy(len(meta.shards[split]), workers))
    )
    if tokenize is not None:
        dataset = tokenized(dataset, tokenize)
    if cache:
        dataset = dataset.cache("" if cache == "memory" else cache)
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if training and augment is not None:
        dtype = tf.as_dtype(meta.dtype)
        dataset = dataset.map(lambda x, y: (augment_raw(augment, x, dtype), y), num_parallel_calls=tf.data.AUTOTUNE)
    if class_weights is not None:
        weights = tf.constant(class_weights, tf.float32)
        dataset = dataset.map(lambda x, y: (x, y, tf.gather(weights, y)), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)
