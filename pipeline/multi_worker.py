"""Training across machines: a custom loop over the compiled Keras model under MultiWorkerMirroredStrategy.

Keras 3's `model.fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), so with
`TF_CONFIG` set `train` drives the steps itself, as TensorFlow's multi-worker custom-loop guide
does, on the same model, optimizer (its `apply` all-reduces the gradients; a mixed-precision
`LossScaleOptimizer` scales and unscales the loss), loss, metrics and Keras callbacks that `fit`
uses on one machine; `tf.distribute` does all the distribution. Rules every worker keeps:

- every worker runs every collective in the same order: each step, each metric read
  (`result()` is a cross-worker reduction), each checkpoint save;
- files: only the chief writes the real checkpoint directory; the others save to a scratch
  directory (saving is collective), and all restore from the chief's latest checkpoint, so every
  worker resumes at the same epoch; a disagreement stops training instead of silently diverging;
- data: the training split drops its last partial batch (a worker with an empty batch fails on
  CPU), and a resumed run replays the dataset's earlier epochs unseen, so shuffling and
  augmentation continue as an uninterrupted run would.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.errors import PipelineError


def fit_custom(
    model,
    strategy,
    train_ds,
    val_ds,
    *,
    epochs: int,
    steps_per_epoch: int,
    callbacks: list,
    checkpoint_dir: Path,
    scratch_dir: Path,
    chief: bool,
    verbose: int = 2,
) -> None:
    """Train `model` (compiled under `strategy.scope()`) for `epochs`, driving `callbacks` as `fit`
    does (logs: loss, accuracy, val_loss, val_accuracy). Resumes from `checkpoint_dir` (the chief's),
    which only the chief writes; other workers save to `scratch_dir`."""
    import keras
    import tensorflow as tf

    metrics = epoch_metrics(strategy)
    with strategy.scope():
        epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=epochs_done)
    manager = tf.train.CheckpointManager(checkpoint, str(checkpoint_dir if chief else scratch_dir), max_to_keep=2)
    dist_train = strategy.experimental_distribute_dataset(train_ds)
    dist_val = strategy.experimental_distribute_dataset(val_ds)
    train_step, val_step = step_functions(model, strategy, metrics, dist_train, dist_val)

    resumed = restore_from_chief(checkpoint, checkpoint_dir, strategy, epochs_done)
    for _ in range(resumed):  # replay earlier epochs' shuffles and augmentation draws, unseen
        for _ in dist_train:
            pass
        iter(dist_train)

    callback_list = keras.callbacks.CallbackList(
        callbacks, model=model, epochs=epochs, steps=steps_per_epoch, verbose=0
    )
    model.stop_training = False
    callback_list.on_train_begin()
    for epoch in range(resumed, epochs):
        started = time.perf_counter()
        callback_list.on_epoch_begin(epoch)
        logs = run_epoch(metrics, dist_train, dist_val, train_step, val_step)
        callback_list.on_epoch_end(epoch, logs)
        epochs_done.assign(epoch + 1)
        manager.save()  # collective: the chief's is the real one
        if verbose:
            print(
                f"Epoch {epoch + 1}/{epochs} - {time.perf_counter() - started:.0f}s - "
                + " - ".join(f"{name}: {value:.4f}" for name, value in logs.items()),
                flush=True,
            )
        if model.stop_training:
            break
    callback_list.on_train_end()


def epoch_metrics(strategy) -> dict:
    """The metrics `fit` reports each epoch, made under the strategy (their states all-reduce)."""
    import keras

    with strategy.scope():
        return {
            "loss": keras.metrics.Mean(name="loss"),
            "accuracy": keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            "val_loss": keras.metrics.Mean(name="val_loss"),
            "val_accuracy": keras.metrics.SparseCategoricalAccuracy(name="val_accuracy"),
        }


def step_functions(model, strategy, metrics: dict, dist_train, dist_val):
    """The train and validation steps of Keras' own TensorFlow trainer, per replica, traced once."""
    import tensorflow as tf

    optimizer, replicas = model.optimizer, strategy.num_replicas_in_sync

    # The compiled loss (plus regularization) is scaled by 1 / replicas, so the optimizer's
    # all-reduce SUM gives the global mean's gradient.
    def train_replica(x, y, weights=None):  # weights: per example, from train.class_weight
        with tf.GradientTape() as tape:
            probs = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=probs, sample_weight=weights, training=True)
            scaled = optimizer.scale_loss(loss)  # mixed precision: LossScaleOptimizer's scale
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)  # unscales, all-reduces, steps
        metrics["loss"].update_state(loss * replicas, sample_weight=tf.shape(x)[0])  # this replica's mean
        metrics["accuracy"].update_state(y, probs)  # compile's `metrics` are unweighted (not weighted_metrics)

    def val_replica(x, y):
        probs = model(x, training=False)
        loss = model.compute_loss(x=x, y=y, y_pred=probs, training=False)
        metrics["val_loss"].update_state(loss * replicas, sample_weight=tf.shape(x)[0])
        metrics["val_accuracy"].update_state(y, probs)

    # Traced once for the datasets' own element specs (a batch dimension of None unless batches
    # are whole), as Keras traces its train function: a first trace for a static batch size would
    # compute the partial last batch in a second graph, rounded differently.
    @tf.function(input_signature=[dist_train.element_spec])
    def train_step(batch):
        strategy.run(train_replica, args=batch)

    @tf.function(input_signature=[dist_val.element_spec])
    def val_step(batch):
        strategy.run(val_replica, args=batch)

    return train_step, val_step


def run_epoch(metrics: dict, dist_train, dist_val, train_step, val_step) -> dict[str, float]:
    """One epoch of training and validation; its logs."""
    for metric in metrics.values():
        metric.reset_state()
    # Batches are taken in Python, never by a traced `next()` past the end: a step cut short by
    # the end of the data still ran the optimizer's iteration count (measured: 8 of 7 steps).
    for batch in dist_train:
        train_step(batch)
    for batch in dist_val:
        val_step(batch)
    # Keras' epoch iterator opens the next epoch's iterator as an epoch ends and another as the
    # next begins; each opening draws the next shuffle order. Draw the same orders as fit does.
    iter(dist_train)
    # result() is a collective: every worker reads every metric, in this order.
    return {name: float(metric.result()) for name, metric in metrics.items()}


def restore_from_chief(checkpoint, checkpoint_dir: Path, strategy, epochs_done) -> int:
    """Restore every worker from the chief's latest checkpoint; returns the epochs already done.

    A collective first, so no worker looks before the chief has prepared its directory; another
    after, so workers that found different checkpoints stop with one line instead of training
    apart (all reach the same verdict: it is computed from all-reduced sums)."""
    import tensorflow as tf

    all_reduce_sum(strategy, 1.0)  # a barrier: the chief has cleaned or kept its directory
    latest = tf.train.latest_checkpoint(str(checkpoint_dir))
    if latest is not None:
        checkpoint.restore(latest).expect_partial()
    done = int(epochs_done.numpy())
    replicas = all_reduce_sum(strategy, 1.0)
    total, squares = all_reduce_sum(strategy, float(done)), all_reduce_sum(strategy, float(done) ** 2)
    if squares * replicas != total * total:  # Cauchy-Schwarz: equal only when every replica holds the same value
        raise PipelineError(
            f"{checkpoint_dir}: workers restored different epochs (this one {done}); the chief's checkpoint "
            "directory must be readable by every worker at the same path"
        )
    if done:
        print(f"train: resuming from the chief's checkpoint after epoch {done} ({latest})", flush=True)
    return done


def all_reduce_sum(strategy, value: float) -> float:
    """`value` summed over every replica of every worker (a collective: all workers must call it)."""
    import tensorflow as tf

    @tf.function
    def reduce():
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(value)), axis=None)

    return float(reduce())
