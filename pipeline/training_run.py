"""The train stage's MLflow run (pipeline/tracking.py's Run): opened once Keras has built the model,
fed each epoch, finished with the outcome or failed. The trained model is the run's MLflow 3 logged
model, its per-epoch metrics linked to the split each was measured on."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from pipeline.tracking import Run, portable_uri, project_root, resolve_tracking_uri, store_problem

KERAS_MODEL = "keras-model"  # the trained model's name among the experiment's logged models


class TrainingRun:
    """The chief's MLflow run for one training: opened once Keras has built the model (a bad layer
    list leaves no run), fed each epoch, finished with the outcome (or failed: killed or failed).
    Other workers of a multi-machine training open none. The trained model is the run's MLflow 3
    logged model (`keras-model`): each epoch's metrics are its too, linked to the split they were
    measured on, and its files are the saved model and its summary."""

    def __init__(self, configured_uri: str | None, experiment_name: str | None):
        self.configured_uri, self.experiment_name = configured_uri, experiment_name
        self.run: Run | None = None
        self.monitor = None
        self.unlogged: list[tuple[int, dict[str, float]]] = []  # epochs the store did not take
        self.model_id: str | None = None
        self.splits: dict[str, tuple[str, str]] = {}  # metric → the dataset (name, digest) it was measured on

    @property
    def tracking_uri(self) -> str:
        return self.run.tracking_uri if self.run is not None else resolve_tracking_uri(self.configured_uri)

    @property
    def run_id(self) -> str | None:
        return self.run.run_id if self.run is not None else None

    def start(self, p, data, model, resume_id: str | None) -> None:
        """Open (or reopen, for a resumed training) the run: tags of where it came from, the train
        params as trained, a one-line description, the train and val splits as datasets."""
        from pipeline.lineage import dvc_experiment_tags, git_state, log_dataset_inputs, split_inputs
        from pipeline.params import dotted

        meta = data.meta
        tags = {
            **git_state(project_root()),
            **dvc_experiment_tags(),
            "mlflow.source.name": "pipeline.train (dvc.yaml stage train)",
            "data.sha256": data.identity,
            "data.name": meta.name,
            "model.preset": p.model_name,
        }
        self.run = Run.start(
            self.configured_uri,
            self.experiment_name or meta.name,
            run_name=f"{p.model_name}-{time.strftime('%Y%m%d-%H%M%S')}",
            tags=tags,
            resume_run_id=resume_id,
        )
        resumed = self.run.run_id == resume_id
        self.monitor = self.run.start_system_metrics(resume=resumed)
        self.run.log_params(dotted(p.model_dump(mode="json"), "train."))  # this stage's params, as trained
        self.run.set_description(run_summary(p, meta, model))
        if not resumed:
            hashes = {split: meta.split_sha256[split] for split in ("train", "val")}
            log_dataset_inputs(self.run, meta.name, meta.source, split_inputs(meta, hashes))
        train, val = ((f"{meta.name}/{split}", meta.split_sha256[split][:32]) for split in ("train", "val"))
        self.splits = {"loss": train, "accuracy": train, "val_loss": val, "val_accuracy": val}
        self.model_id = self.run.logged_model(KERAS_MODEL, dotted(p.model_dump(mode="json"), "train."), "keras")

    def log_epoch(self, epoch: int, row: dict[str, float]) -> None:
        """The epoch's metrics into the run. A store that stops answering does not stop the training:
        one warning, and the epochs it missed are logged when the training is published."""
        if self.run is None:
            return
        metrics = {k: v for k, v in row.items() if k != "epoch"}
        if self.unlogged:
            self.unlogged.append((epoch, metrics))
            return
        try:
            self.run.log_metrics(metrics, step=epoch, model_id=self.model_id, datasets=self.splits)
        except Exception as exc:
            problem = store_problem(exc)
            if problem is None:
                raise
            self.unlogged.append((epoch, metrics))
            print(f"train: warning: MLflow store {portable_uri(self.run.tracking_uri)}: {problem}; training goes on, "
                  "and logs its epochs when it is done", file=sys.stderr, flush=True)  # fmt: skip

    def stop_monitor(self) -> None:
        if self.monitor is not None:
            self.monitor.finish()
            self.monitor = None

    def fail(self, interrupted: bool) -> None:
        """Mark the run killed or failed, as far as the store lets it within a few seconds: an
        interrupt can land inside one of its writes, whose lock the next write would wait for."""

        def end() -> None:
            with contextlib.suppress(Exception):
                self.stop_monitor()
                if self.run is not None:
                    self.run.end("KILLED" if interrupted else "FAILED")
                    if self.model_id is not None and not interrupted:  # killed: a rerun resumes it
                        self.run.client.finalize_logged_model(self.model_id, "FAILED")

        ending = threading.Thread(target=end, daemon=True)
        ending.start()
        ending.join(timeout=5)

    def finish(self, result, artifacts: dict[str, Path]) -> None:
        """Tags, summary metrics and artifacts of a finished training (training.TrainResult)."""
        self.stop_monitor()
        run, devices, report = self.run, result.devices, result.report
        for epoch, metrics in self.unlogged:
            run.log_metrics(metrics, step=epoch, model_id=self.model_id, datasets=self.splits)
        self.unlogged = []
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
        for option, path in artifacts.items():
            run.log_artifact(path, "model" if option == "model" else "training")
        with tempfile.TemporaryDirectory(prefix="keras-model-") as tmp:
            shutil.copy2(artifacts["model"], Path(tmp) / Path(artifacts["model"]).name)
            (Path(tmp) / "summary.txt").write_text(result.summary)
            run.finish_model(self.model_id, Path(tmp))
        run.end()

    def run_file(self) -> dict[str, str]:
        """What later stages find the run by (models/mlflow_run.json)."""
        return self.run.run_file()


def run_summary(p, meta, model=None) -> str:
    """The run's one-line description: model, training setup, data."""
    size = f"{model.count_params():,} parameters; " if model is not None else ""
    counts = meta.counts
    return (
        f"{p.model_name} ({size}{p.epochs} epochs of {p.optimizer}, learning rate {p.learning_rate:g}, "
        f"batch {p.batch_size}) on {meta.name} ({meta.format}, {counts['train']:,} train / "
        f"{counts['val']:,} validation / {counts['test']:,} test examples, {meta.num_classes} classes)"
    )
