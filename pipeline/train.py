"""Stage `train`: a Keras Sequential model from params, fed by tf.data, on whatever devices are
visible, resumable after a kill, tracked in MLflow.

Writes the model, its history (one row per epoch), the training report and the MLflow run file that
later stages log into.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.atomic import atomic_file
from pipeline.cli import end_process, run_cli
from pipeline.errors import PipelineError
from pipeline.params import TrainParams, stage_params
from pipeline.presets import check_fits, resolve
from pipeline.records import META_FILE, PreparedMeta, read_meta
from pipeline.stage import Stage, write_output

if TYPE_CHECKING:
    from pipeline.devices import DeviceSetup

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
CHECKPOINTS = "checkpoints"  # the custom loop's checkpoints, under the state directory
# `train.steps_per_execution: auto` runs this many examples' batches per call of the compiled train
# step: at batch 32 Keras' per-step Python and dispatch cost ~1 ms, more than the step itself on a
# small MLP (benchmarks/throughput.py measures it against a plain `model.fit(x, y)`).
AUTO_EXAMPLES_PER_CALL = 2048


# ----------------------------------------------------------------------------- pure pieces
def make_optimizer(params: TrainParams, steps_per_epoch: int):
    import keras

    total_steps = max(1, params.epochs * steps_per_epoch)
    lr = params.learning_rate
    if params.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(params.learning_rate, decay_steps=total_steps)
    elif params.schedule == "exponential":
        # Halve the rate every quarter of training.
        lr = keras.optimizers.schedules.ExponentialDecay(params.learning_rate, total_steps // 4 or 1, 0.5)
    if params.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if params.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=params.weight_decay or 0.004)
    if params.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=params.momentum)
    return keras.optimizers.RMSprop(lr, momentum=params.momentum)


def make_loss(params: TrainParams, num_classes: int):
    import keras

    if params.label_smoothing == 0:
        return keras.losses.SparseCategoricalCrossentropy()
    # Label smoothing needs one-hot targets; smooth them inside the loss so the data stay sparse.
    smoothing = params.label_smoothing

    @keras.saving.register_keras_serializable(package="pipeline")
    def smoothed_sparse_crossentropy(y_true, y_pred):
        y_true = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, [-1]), "int32"), num_classes)
        return keras.losses.categorical_crossentropy(y_true, y_pred, label_smoothing=smoothing)

    return smoothed_sparse_crossentropy


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


def cache_plan(setting: str, meta: PreparedMeta, directory: Path) -> CachePlan:
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


def class_weights(meta: PreparedMeta) -> list[float]:
    """scikit-learn's "balanced" weights, n / (classes × count), of the train split's classes (a class
    without training examples never occurs as a label: weight 1)."""
    counts = meta.class_counts["train"]
    present = [c for c in counts if c]
    total = sum(present)
    return [total / (len(present) * c) if c else 1.0 for c in counts]


def current_learning_rate(model) -> float:
    import keras

    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def training_fingerprint(params: TrainParams, meta: PreparedMeta) -> str:
    """What a resumed backup must match: the same params and the same data."""
    blob = json.dumps({"train": params.model_dump(mode="json"), "data": meta.to_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_history(path: Path) -> list[dict[str, float]]:
    """Rows by epoch; an epoch redone after a kill (recorded, then killed before its backup) keeps its last row."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = {int(row["epoch"]): {k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)}
    return [rows[epoch] for epoch in sorted(rows)]


def write_history(rows: list[dict[str, float]], path: Path) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**row, "epoch": int(row["epoch"])} for row in rows)


def model_summary(model) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the core
@dataclass
class TrainResult:
    model: Any  # the trained keras.Sequential in float32, as it is saved, evaluated and exported
    history: list[dict[str, float]]  # one row per epoch (HISTORY_COLUMNS)
    devices: DeviceSetup
    seconds: float
    summary: str  # Keras' model summary
    report: dict[str, Any]  # reports/train.json, less the class names
    trained: Any = None  # the model as it trained: its precision policy, its compiled optimizer


def train(
    params,
    prepared_dir: Path,
    work_dir: Path,
    on_epoch=None,
    on_start=None,
    verbose: int = 2,
    meta: PreparedMeta | None = None,
    loop: str = "auto",
    shared_dir: Path | None = None,
) -> TrainResult:
    """Train on the prepared splits. `params` has the `train` section (its null keys take the preset's
    values here). `work_dir` holds this process's resumable state (backup or checkpoints, history so far).

    `loop`: `fit` (Keras' model.fit), `custom` (pipeline/multi_worker.py, the same steps driven by
    this project) or `auto`: custom when TF_CONFIG names a cluster, where Keras 3's fit fails.
    `shared_dir`: the chief's state directory every worker restores from (custom loop; default
    `work_dir`). `on_start(model)` runs once the model is built (so a layer list Keras rejects fails
    before it), `on_epoch(epoch, row)` after each finished epoch.
    """
    import keras

    from pipeline.dataset import augmenter, make_dataset
    from pipeline.devices import setup_devices
    from pipeline.model import applied_normalization, float32_model, model_for_data

    p = resolve(params.train)  # the preset's values for the keys left null
    meta = meta or read_meta(str(prepared_dir))
    previous_policy = keras.mixed_precision.global_policy()
    try:
        strategy, devices = setup_devices(p.mixed_precision, p.jit_compile, p.deterministic, p.seed)
        custom = loop == "custom" or (loop == "auto" and devices.strategy == "MultiWorkerMirroredStrategy")
        synchronous = custom and devices.workers > 1
        global_batch = p.batch_size * devices.replicas

        augment = augmenter(p.augment.horizontal_flip, p.augment.translate, p.seed, p.augment.erase)
        # Several workers step together: each must get the same number of whole batches. Sharding by
        # example (every worker shuffles the whole split alike and keeps its part of each global batch)
        # guarantees it; by file, shards of unequal size would give workers unequal shares.
        common = {"workers": devices.workers, "shard": "DATA" if synchronous else None}
        weights = class_weights(meta) if p.class_weight == "balanced" else None
        cache = cache_plan(p.cache, meta, work_dir / "cache")
        train_ds = make_dataset(
            str(prepared_dir), meta, "train", global_batch, training=True, shuffle_buffer=p.shuffle_buffer,
            seed=p.seed, augment=augment, drop_remainder=synchronous, class_weights=weights,
            cache=cache.place("train"), **common,
        )  # fmt: skip
        val_ds = make_dataset(
            str(prepared_dir), meta, "val", global_batch, training=False, cache=cache.place("val"), **common
        )
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

        with strategy.scope():
            model = model_for_data(p, meta)
            model.compile(
                optimizer=make_optimizer(p, steps_per_epoch),
                loss=make_loss(p, meta.num_classes),
                metrics=["accuracy"],
                jit_compile=devices.jit_compile,
                steps_per_execution=(
                    1 if custom else batches_per_call(p.steps_per_execution, global_batch, steps_per_epoch)
                ),
            )
    finally:
        # The layers keep the policy they were built with; the process goes on in what it had (a
        # notebook or test building models after a mixed-precision training gets float32 ones).
        keras.mixed_precision.set_global_policy(previous_policy)

    if on_start is not None:
        on_start(model)
    work_dir.mkdir(parents=True, exist_ok=True)
    history_path = work_dir / "history.csv"

    # Rows of the epochs an interrupted run of this same training finished, then this run's.
    rows = {int(row["epoch"]): row for row in read_history(history_path)}

    class EpochRecorder(keras.callbacks.Callback):
        """Adds the learning rate to the epoch's logs and keeps the history in the work directory, so
        a resumed training continues it (an epoch redone after a kill replaces its row)."""

        def on_epoch_end(self, epoch, logs=None):
            row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
            row["learning_rate"] = current_learning_rate(self.model)
            rows[epoch + 1] = row
            write_history([rows[e] for e in sorted(rows)], history_path)
            if on_epoch is not None:
                on_epoch(epoch + 1, row)

    callbacks = [EpochRecorder()]
    if p.early_stopping_patience > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=p.early_stopping_patience, restore_best_weights=True
            )
        )
    started = time.perf_counter()
    if custom:
        from pipeline.multi_worker import fit_custom

        fit_custom(
            model, strategy, train_ds, val_ds, epochs=p.epochs, steps_per_epoch=steps_per_epoch,
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
            train_ds, validation_data=val_ds, epochs=p.epochs, callbacks=callbacks, verbose=verbose, shuffle=False
        )
    seconds = time.perf_counter() - started

    history = [rows[e] for e in sorted(rows)]
    if not history:
        raise PipelineError("train: no epoch finished")
    best = min(history, key=lambda row: row.get("val_loss", float("inf")))
    seen = (steps_per_epoch * global_batch if synchronous else meta.counts["train"]) * len(history)
    report = {
        "epochs_run": len(history),
        "best_epoch": int(best["epoch"]),
        "final": {k: history[-1][k] for k in HISTORY_COLUMNS[1:] if k in history[-1]},
        "best": {k: best[k] for k in HISTORY_COLUMNS[1:] if k in best},
        "training_seconds": round(seconds, 2),
        "examples_per_second": round(seen / seconds, 1) if seconds else None,
        "global_batch_size": global_batch,
        "steps_per_execution": int(model.steps_per_execution),
        "training_loop": "custom (tf.distribute)" if custom else "keras fit",
        "devices": devices.to_dict(),
        "parameters": int(model.count_params()),
        "normalization": applied_normalization(model),
        "class_weights": None if weights is None else [round(w, 6) for w in weights],
        "cache": cache.to_dict(),
        # The train section as trained: every preset value filled in (the model card shows them).
        "hyperparameters": {**p.model_dump(mode="json"), "model_name": p.model_name},
    }
    return TrainResult(float32_model(model), history, devices, seconds, model_summary(model), report, model)


# ----------------------------------------------------------------------------- the stage
STAGE = Stage(
    "train",
    __doc__,
    params=("train", "mlflow.tracking_uri", "mlflow.experiment_name"),
    inputs=("prepared",),
    outputs=("model", "history", "report", "run_file", "work_dir"),
)
CHIEF_STATE = "fingerprint.json"  # in the work directory: which training it holds, and its MLflow run


class TrainingState:
    """The work directory of one training, the one place its resumable state lives: Keras' backup
    (or the custom loop's checkpoints), the history so far, and which training and MLflow run they
    belong to. Kept until the training finishes; another training's state is cleared."""

    def __init__(self, directory: Path, fingerprint: str):
        self.directory, self.fingerprint = directory, fingerprint

    def open(self) -> str | None:
        """Keep a backup only if it belongs to this exact training; returns the run id it logged to."""
        stamp = self.directory / CHIEF_STATE
        if stamp.exists():
            saved = json.loads(stamp.read_text())
            if saved.get("fingerprint") == self.fingerprint:
                print(f"train: resuming interrupted training from {self.directory}", file=sys.stderr)
                return saved.get("run_id")
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        return None

    def remember(self, run_id: str) -> None:
        (self.directory / CHIEF_STATE).write_text(json.dumps({"fingerprint": self.fingerprint, "run_id": run_id}))

    def resumable(self) -> bool:
        return any((self.directory / name).exists() for name in ("backup", CHECKPOINTS))

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class RunTracking:
    """The chief's MLflow run for one training: opened once Keras has built the model (a bad layer
    list leaves no run), fed each epoch, closed with the outcome. Other workers track nothing."""

    def __init__(self, params, meta: PreparedMeta, state: TrainingState, resume_id: str | None, data_sha256: str):
        self.params, self.meta, self.state, self.resume_id = params, meta, state, resume_id
        self.data_sha256 = data_sha256
        self.run = None
        self.monitor = None

    def start(self, model=None) -> None:
        from pipeline.lineage import dvc_experiment_tags, git_state, log_dataset_inputs, split_inputs
        from pipeline.tracking import Run, project_root

        p, meta = self.params.train, self.meta
        tags = {
            **git_state(project_root()),
            **dvc_experiment_tags(),
            "mlflow.source.name": "pipeline.train (dvc.yaml stage train)",
            "data.sha256": self.data_sha256,
            "data.name": meta.name,
            "model.preset": p.model_name,
        }
        self.run = Run.start(
            self.params.mlflow.tracking_uri,
            self.params.mlflow.experiment_name or meta.name,
            run_name=f"{p.model_name}-{time.strftime('%Y%m%d-%H%M%S')}",
            tags=tags,
            resume_run_id=self.resume_id,
        )
        resumed = self.run.run_id == self.resume_id
        self.monitor = self.run.start_system_metrics(resume=resumed)
        self.state.remember(self.run.run_id)
        self.run.log_params(flatten_section("train", p))  # this stage's params, as trained
        self.run.set_description(run_summary(p, meta, model))
        if not resumed:
            hashes = {split: meta.split_sha256[split] for split in ("train", "val")}
            log_dataset_inputs(self.run, meta.name, meta.source, split_inputs(meta, hashes))

    def stop_monitor(self) -> None:
        if self.monitor is not None:
            self.monitor.finish()
            self.monitor = None

    def log_epoch(self, epoch: int, row: dict[str, float]) -> None:
        if self.run is not None:
            self.run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)

    def fail(self, interrupted: bool) -> None:
        self.stop_monitor()
        if self.run is not None:
            self.run.end("KILLED" if interrupted else "FAILED")

    def record(self, result: TrainResult, paths: dict[str, Path]) -> None:
        """Tags, summary metrics and artifacts of a finished training; the run file later stages use."""
        self.stop_monitor()
        run, devices, report = self.run, result.devices, result.report
        run.set_tags({
            "train.strategy": devices.strategy,
            "train.devices": ",".join(devices.devices),
            "train.mixed_precision": devices.mixed_precision,
            "train.precision": devices.precision,
            "train.jit_compile": devices.jit_compile,
            "train.deterministic": devices.deterministic,
            "train.replicas": devices.replicas,
            "train.workers": devices.workers,
            "train.loop": report["training_loop"],
            "train.cache": report["cache"]["mode"],
        })  # fmt: skip
        run.log_metrics({
            "training_seconds": report["training_seconds"],
            "examples_per_second": report["examples_per_second"] or 0.0,
            "best_epoch": report["best_epoch"],
        })  # fmt: skip
        run.log_text(result.summary, "model/summary.txt")
        for option, directory in (("history", "training"), ("report", "training"), ("model", "model")):
            run.log_artifact(paths[option], directory)
        run.write_run_file(paths["run_file"])
        run.end()


def flatten_section(name: str, section) -> dict[str, Any]:
    """A params section as dotted keys, as MLflow shows params."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}", inner)
        else:
            out[prefix] = value

    walk(name, section.model_dump(mode="json"))
    return out


def run_summary(p: TrainParams, meta: PreparedMeta, model=None) -> str:
    """The run's one-line description: model, training setup, data."""
    size = f"{model.count_params():,} parameters; " if model is not None else ""
    counts = meta.counts
    return (
        f"{p.model_name} ({size}{p.epochs} epochs of {p.optimizer}, learning rate {p.learning_rate:g}, "
        f"batch {p.batch_size}) on {meta.name} ({meta.format}, {counts['train']:,} train / "
        f"{counts['val']:,} validation / {counts['test']:,} test examples, {meta.num_classes} classes)"
    )


def checked_meta(p: TrainParams, prepared: Path) -> PreparedMeta:
    """The prepared data's metadata, and whether the model fits it: before MLflow or TensorFlow start."""
    meta = read_meta(str(prepared))
    misfit = check_fits(p.model, meta.input_shape)
    if misfit:
        raise PipelineError(f"params.yaml: train.model: {misfit} ({prepared}/meta.json)")
    return meta


def save_outputs(result: TrainResult, paths: dict[str, Path], report: dict[str, Any]) -> None:
    """The chief's files: the model, its history and the training report, each written atomically."""
    write_output(paths["model"], result.model.save)
    write_output(paths["history"], lambda path: write_history(result.history, path))
    write_output(paths["report"], report)


def main(argv: list[str] | None = None) -> None:
    run_cli(train_stage, argv)


def train_stage(argv: list[str] | None) -> None:
    """The stage's edge. Unlike the others it logs while it works (each epoch into the MLflow run it
    starts) and may be one worker of several; the pieces are run_stage's (pipeline/stage.py)."""
    args = STAGE.parser().parse_args(argv)
    paths = {option: getattr(args, option) for option in (*STAGE.inputs, *STAGE.outputs)}
    params = stage_params(args.params, STAGE.params)
    p = resolve(params.train)  # the preset's values, once
    resolved = ResolvedParams(train=p, mlflow=params.mlflow)
    meta = checked_meta(p, paths["prepared"])

    from pipeline.devices import cluster_spec, is_chief

    chief = is_chief(cluster_spec())
    # The chief keeps the resumable state in the shared place; other workers keep their own (the
    # checkpoint copies saving requires of them) in a scratch directory, removed at the end.
    work_dir = paths["work_dir"] if chief else Path(tempfile.mkdtemp(prefix="train-worker-"))
    state = TrainingState(work_dir, training_fingerprint(p, meta))
    tracking = RunTracking(resolved, meta, state, state.open() if chief else None, data_sha256(paths["prepared"]))
    if not chief:
        work_dir.mkdir(parents=True, exist_ok=True)
    verbose = 1 if sys.stdout.isatty() else 2
    try:
        result = train(
            resolved, paths["prepared"], work_dir, on_epoch=tracking.log_epoch,
            on_start=tracking.start if chief else None, verbose=verbose, meta=meta, shared_dir=paths["work_dir"],
        )  # fmt: skip
    except BaseException:
        tracking.fail(isinstance(sys.exc_info()[1], KeyboardInterrupt))
        if not chief or not state.resumable():
            state.remove()  # nothing to resume from: leave no empty state behind
        raise

    report = {**result.report, "class_names": meta.class_names}
    if not chief:
        state.remove()
        print(f"train: worker done ({report['epochs_run']} epochs); the chief wrote the outputs")
        return
    save_outputs(result, paths, report)
    tracking.record(result, paths)
    state.remove()
    best = report["best"]
    print(
        f"train: {report['epochs_run']} epochs in {report['training_seconds']:.0f} s on {result.devices.strategy} "
        f"({result.devices.replicas} replica(s), {report['training_loop']}); best epoch {report['best_epoch']} "
        f"val_accuracy {best.get('val_accuracy', float('nan')):.4f}; MLflow run {tracking.run.run_id}"
    )


@dataclass(frozen=True)
class ResolvedParams:
    """What train reads: its own section with the preset's values filled in, and mlflow's keys."""

    train: TrainParams
    mlflow: Any


def data_sha256(prepared: Path) -> str:
    """The prepared data's identity: its meta.json holds every split's content hash and the statistics."""
    return hashlib.sha256((prepared / META_FILE).read_bytes()).hexdigest()


if __name__ == "__main__":
    main()
    end_process()
