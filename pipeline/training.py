"""Training itself: a Keras Sequential from the resolved `train` params, fed by tf.data, on whatever
devices are visible, through Keras' `fit` (one process, any number of GPUs) or the custom loop of
pipeline/multi_worker.py (several machines). What the `train` stage (pipeline/train.py) runs; it
knows nothing of files other than its work directory, nor of MLflow (it calls the hooks it is given).

    train() = devices → inputs (tf.data) → model (built in the training's precision) → compile →
              fit, recording each epoch → report
"""

from __future__ import annotations

import contextlib
import functools
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.history import HISTORY_COLUMNS, epoch_recorder, interrupt_check

CHECKPOINTS = "checkpoints"  # the custom loop's checkpoints, under the work directory
# `train.steps_per_execution: auto` runs this many examples' batches per call of the compiled train
# step: at batch 32 Keras' per-step Python and dispatch cost ~1 ms, more than the step itself on a
# small MLP (benchmarks/throughput.py measures it against a plain `model.fit(x, y)`).
AUTO_EXAMPLES_PER_CALL = 2048


# ----------------------------------------------------------------------------- pure pieces
def make_optimizer(p, steps_per_epoch: int, precision: str = "float32"):
    """The optimizer and learning-rate schedule of the resolved train params `p`; under float16 it
    scales the loss (Keras' LossScaleOptimizer, what `compile` adds for a float16 model)."""
    import keras

    total_steps = max(1, p.epochs * steps_per_epoch)
    lr = p.learning_rate
    if p.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(p.learning_rate, decay_steps=total_steps)
    elif p.schedule == "exponential":
        # Halve the rate every quarter of training.
        lr = keras.optimizers.schedules.ExponentialDecay(p.learning_rate, total_steps // 4 or 1, 0.5)
    if p.optimizer == "adam":
        optimizer = keras.optimizers.Adam(lr)
    elif p.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(lr, weight_decay=p.weight_decay or 0.004)
    elif p.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(lr, momentum=p.momentum)
    else:
        optimizer = keras.optimizers.RMSprop(lr, momentum=p.momentum)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


@functools.cache
def smoothed_loss_class():
    """Sparse cross-entropy with label smoothing, registered with Keras once (the first time it is
    needed: Keras is imported late)."""
    import keras

    @keras.saving.register_keras_serializable(package="pipeline")
    class SmoothedSparseCrossentropy(keras.losses.Loss):
        """Label smoothing needs one-hot targets; they are made inside the loss, so the data stay sparse."""

        def __init__(self, num_classes: int, smoothing: float, **kwargs):
            super().__init__(**kwargs)
            self.num_classes, self.smoothing = num_classes, smoothing

        def call(self, y_true, y_pred):
            y_true = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, [-1]), "int32"), self.num_classes)
            return keras.losses.categorical_crossentropy(y_true, y_pred, label_smoothing=self.smoothing)

        def get_config(self):
            return {**super().get_config(), "num_classes": self.num_classes, "smoothing": self.smoothing}

    return SmoothedSparseCrossentropy


def make_loss(p, num_classes: int):
    import keras

    if p.label_smoothing == 0:
        return keras.losses.SparseCategoricalCrossentropy()
    return smoothed_loss_class()(num_classes, p.label_smoothing)


def batches_per_call(setting: int | str, global_batch: int, steps_per_epoch: int) -> int:
    """Keras' `steps_per_execution`: the setting, or for `auto` ~AUTO_EXAMPLES_PER_CALL examples."""
    wanted = max(1, AUTO_EXAMPLES_PER_CALL // global_batch) if setting == "auto" else int(setting)
    return max(1, min(wanted, steps_per_epoch))


@dataclass(frozen=True)
class CachePlan:
    """Where tf.data keeps the decoded train and val splits after the first epoch."""

    mode: str  # memory | file | off
    bytes: int  # what the two splits take decoded
    budget: int  # a quarter of the memory available when training started
    directory: Path

    def place(self, split: str) -> str | None:
        if self.mode == "off":
            return None
        return "memory" if self.mode == "memory" else str(self.directory / split)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "bytes": self.bytes, "memory_budget": self.budget}


def cache_plan(setting: str, meta, directory: Path) -> CachePlan:
    """`train.cache`; auto is memory when the decoded train and val splits fit a quarter of the
    available memory, else a file in the work directory (removed with it once training ends)."""
    import psutil

    example = int(np.prod(meta.input_shape)) * np.dtype(meta.dtype).itemsize + 8  # + the int64 label
    size = example * (meta.counts["train"] + meta.counts["val"])
    budget = psutil.virtual_memory().available // 4
    mode = ("memory" if size <= budget else "file") if setting == "auto" else setting
    if mode == "file":
        shutil.rmtree(directory, ignore_errors=True)  # a killed run's partial cache (and its lock files)
        directory.mkdir(parents=True)
    return CachePlan(mode, size, budget, directory)


def class_weights(meta) -> list[float]:
    """scikit-learn's "balanced" weights, n / (classes × count), of the train split's classes (a class
    without training examples never occurs as a label: weight 1)."""
    counts = meta.class_counts["train"]
    present = [c for c in counts if c]
    total = sum(present)
    return [total / (len(present) * c) if c else 1.0 for c in counts]


def model_summary(model) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the steps
@dataclass
class Inputs:
    """The batched splits and what follows from the batch size and the strategy."""

    train: Any  # tf.data.Dataset
    val: Any
    global_batch: int
    steps_per_epoch: int
    synchronous: bool  # several workers step together on whole batches
    weights: list[float] | None  # per class, train.class_weight
    cache: CachePlan
    prepared: Path  # where they come from, for a message


def training_inputs(p, data, devices, custom: bool, work_dir: Path, tokenize=None) -> Inputs:
    """The train and val splits of `data` (PreparedData) as tf.data, batched for the strategy (text:
    as word ids, `tokenize` being a copy of the model's vectorizer)."""
    from pipeline.dataset import augmenter, make_dataset

    synchronous = custom and devices.workers > 1
    global_batch = p.batch_size * devices.replicas
    meta = data.meta
    augment = augmenter(p.augment.horizontal_flip, p.augment.translate, p.seed, p.augment.erase)
    # Several workers step together: each must get the same number of whole batches. Sharding by
    # example (every worker shuffles the whole split alike and keeps its part of each global batch)
    # guarantees it; by file, shards of unequal size would give workers unequal shares.
    common = {"workers": devices.workers, "shard": "DATA" if synchronous else None, "tokenize": tokenize}
    weights = class_weights(meta) if p.class_weight == "balanced" else None
    cache = cache_plan(p.cache, meta, work_dir / "cache")
    train = make_dataset(
        data, "train", global_batch, training=True, shuffle_buffer=p.shuffle_buffer, seed=p.seed, augment=augment,
        drop_remainder=synchronous, class_weights=weights, cache=cache.place("train"), **common,
    )  # fmt: skip
    val = make_dataset(data, "val", global_batch, training=False, cache=cache.place("val"), **common)
    if synchronous:
        # Whole batches only: a worker left with an empty last batch fails on CPU (oneDNN).
        steps_per_epoch = meta.counts["train"] // global_batch
        if steps_per_epoch == 0:
            raise PipelineError(
                f"train.batch_size: {p.batch_size} per replica × {devices.replicas} replicas = {global_batch} "
                f"is more than the {meta.counts['train']} training examples"
            )
    else:
        steps_per_epoch = -(-meta.counts["train"] // global_batch)
    return Inputs(train, val, global_batch, steps_per_epoch, synchronous, weights, cache, data.directory)


def compiled_model(p, data, devices, strategy, inputs: Inputs, custom: bool, vocabulary: list[str] | None):
    """The model `p` describes for `data`, built in the training's precision under the strategy, and
    the model that is fitted: the same, or for text the same layers after the vectorizer (the
    inputs are word ids already), compiled."""
    import keras

    from pipeline.model import model_for_data

    with strategy.scope():
        model = model_for_data(p, data, precision=devices.precision, vocabulary=vocabulary)
        fitted = model
        if vocabulary is not None:
            ids = keras.Input(shape=(p.text.sequence_length,), dtype="int32", name="word_ids")
            fitted = keras.Sequential([ids, *model.layers[1:]], name=model.name)
        fitted.compile(
            optimizer=make_optimizer(p, inputs.steps_per_epoch, devices.precision),
            loss=make_loss(p, data.meta.num_classes),
            metrics=["accuracy"],
            jit_compile=devices.jit_compile,
            steps_per_execution=(
                1 if custom else batches_per_call(p.steps_per_execution, inputs.global_batch, inputs.steps_per_epoch)
            ),
        )
    return model, fitted


def fit(model, strategy, inputs: Inputs, p, devices, recorder, work_dir: Path, shared_dir: Path | None,
        custom: bool, verbose: int) -> float:  # fmt: skip
    """Train for `p.epochs` (resuming from the work directory's state); returns the seconds it took."""
    import keras

    callbacks = [recorder]
    if p.early_stopping_patience > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=p.early_stopping_patience, restore_best_weights=True
            )
        )
    callbacks.append(interrupt_check())  # last: after the epoch's backup
    started = time.perf_counter()
    with prepared_data_faults(inputs):
        run_loop(model, strategy, inputs, p, devices, callbacks, work_dir, shared_dir, custom, verbose)
    return time.perf_counter() - started


@contextlib.contextmanager
def prepared_data_faults(inputs: Inputs):
    """A prepared split that TensorFlow finds damaged or short of what meta.json says, as one line
    (prepared.PreparedData checks each shard's size before; this is what only reading can find)."""
    import tensorflow as tf

    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as exc:
        text = " ".join(str(exc).split())
        if not re.search(r"record|cardinality|expected to contain|corrupt|truncated|DataLoss", text, re.I):
            raise
        detail = re.sub(r"\s*\[\[.*", "", text)[:200]
        raise PipelineError(
            f"{inputs.prepared}: the prepared data does not read back ({detail}); rerun `dvc repro prepare`"
        ) from None


def run_loop(model, strategy, inputs: Inputs, p, devices, callbacks: list, work_dir: Path, shared_dir: Path | None,
             custom: bool, verbose: int) -> None:  # fmt: skip
    import keras

    if custom:
        from pipeline.multi_worker import fit_custom

        fit_custom(
            model, strategy, inputs.train, inputs.val, epochs=p.epochs, steps_per_epoch=inputs.steps_per_epoch,
            callbacks=callbacks, checkpoint_dir=(shared_dir or work_dir) / CHECKPOINTS,
            scratch_dir=work_dir / CHECKPOINTS, chief=devices.is_chief, verbose=verbose,
        )  # fmt: skip
    else:
        # The recorder runs before the backup: a kill between them redoes the epoch, whose row is then
        # replaced. double_checkpoint keeps the previous epoch's backup, which Keras falls back to when a
        # kill tore the latest one mid-write.
        backup = keras.callbacks.BackupAndRestore(
            str(work_dir / "backup"), delete_checkpoint=False, double_checkpoint=True
        )
        callbacks.insert(1, backup)
        # shuffle=False: the tf.data pipeline shuffles (Keras would ignore True, with a warning).
        model.fit(
            inputs.train, validation_data=inputs.val, epochs=p.epochs, callbacks=callbacks, verbose=verbose,
            shuffle=False,
        )  # fmt: skip


def training_report(p, data, devices, inputs: Inputs, fitted, model, history: list[dict], seconds: float,
                    custom: bool):  # fmt: skip
    """reports/train.json, less the class names: epochs, best epoch, speed, devices, the setup."""
    from pipeline.model import applied_normalization

    best = min(history, key=lambda row: row.get("val_loss", float("inf")))
    per_epoch = inputs.steps_per_epoch * inputs.global_batch if inputs.synchronous else data.meta.counts["train"]
    return {
        "epochs_run": len(history),
        "best_epoch": int(best["epoch"]),
        "final": {k: history[-1][k] for k in HISTORY_COLUMNS[1:] if k in history[-1]},
        "best": {k: best[k] for k in HISTORY_COLUMNS[1:] if k in best},
        "training_seconds": round(seconds, 2),
        "examples_per_second": round(per_epoch * len(history) / seconds, 1) if seconds else None,
        "global_batch_size": inputs.global_batch,
        "steps_per_execution": int(fitted.steps_per_execution),
        "training_loop": "custom (tf.distribute)" if custom else "keras fit",
        "devices": devices.to_dict(),
        "parameters": int(model.count_params()),
        "normalization": applied_normalization(model),
        "class_weights": None if inputs.weights is None else [round(w, 6) for w in inputs.weights],
        "cache": inputs.cache.to_dict(),
        # The train section as trained: every preset value filled in (the model card shows them).
        "hyperparameters": {**p.model_dump(mode="json"), "model_name": p.model_name},
    }


# ----------------------------------------------------------------------------- the core
@dataclass
class TrainResult:
    model: Any  # the trained keras.Sequential in float32, as it is saved, evaluated and exported
    history: list[dict[str, float]]  # one row per epoch (HISTORY_COLUMNS)
    devices: Any  # devices.DeviceSetup
    seconds: float
    summary: str  # Keras' model summary
    report: dict[str, Any]  # reports/train.json, less the class names
    trained: Any = None  # the model as it trained: its precision, its compiled optimizer


def train(p, data, work_dir: Path, *, on_start: Callable | None = None, on_epoch: Callable | None = None,
          verbose: int = 2, loop: str = "auto", shared_dir: Path | None = None) -> TrainResult:  # fmt: skip
    """Train on `data` (PreparedData) as the resolved train params `p` say (presets filled in:
    presets.filled_from_preset). `work_dir` holds this process's resumable state (backup or
    checkpoints, the history so far).

    `loop`: `fit` (Keras' model.fit), `custom` (pipeline/multi_worker.py, the same steps driven by
    this project) or `auto`: custom when TF_CONFIG names a cluster, where Keras 3's fit fails.
    `shared_dir`: the chief's state directory every worker restores from (custom loop; default
    `work_dir`). `on_start(model)` runs once the model is built (so a layer list Keras rejects fails
    before it), `on_epoch(epoch, row)` after each finished epoch.
    """
    from pipeline.devices import op_determinism, setup_devices
    from pipeline.model import float32_model, text_vectorizer, text_vocabulary

    strategy, devices = setup_devices(p.mixed_precision, p.jit_compile, p.deterministic, p.seed)
    custom = loop == "custom" or (loop == "auto" and devices.strategy == "MultiWorkerMirroredStrategy")
    text = data.kind.name == "text"
    vocabulary = text_vocabulary(p, data) if text else None
    with op_determinism(devices.deterministic):
        tokenize = text_vectorizer(p, vocabulary) if text else None  # tf.data's own copy, outside the strategy
        inputs = training_inputs(p, data, devices, custom, work_dir, tokenize)
        model, fitted = compiled_model(p, data, devices, strategy, inputs, custom, vocabulary)
        if on_start is not None:
            on_start(model)
        work_dir.mkdir(parents=True, exist_ok=True)
        recorder = epoch_recorder(work_dir / "history.csv", on_epoch)
        seconds = fit(fitted, strategy, inputs, p, devices, recorder, work_dir, shared_dir, custom, verbose)
    history = recorder.history()
    if not history:
        raise PipelineError("train: no epoch finished")
    report = training_report(p, data, devices, inputs, fitted, model, history, seconds, custom)
    return TrainResult(float32_model(model), history, devices, seconds, model_summary(model), report, fitted)
