"""The epochs' record of a training: history.csv (one row per epoch, an epoch redone after a kill
replacing its row), the callback that writes it each epoch, and the one that ends a training a
swallowed Ctrl-C interrupted."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from pipeline.atomic import atomic_file
from pipeline.errors import raise_if_interrupted

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")


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


def epoch_recorder(history_path: Path, on_epoch: Callable | None):
    """A Keras callback that adds the learning rate to each epoch's logs and keeps the history in the
    work directory, so a resumed training continues it (an epoch redone after a kill replaces its
    row); its `rows` are the epochs an interrupted run of this training finished, then this run's."""
    import keras

    class EpochRecorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.rows = {int(row["epoch"]): row for row in read_history(history_path)}

        def on_epoch_end(self, epoch, logs=None):
            row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
            row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            self.rows[epoch + 1] = row
            write_history(self.history(), history_path)
            if on_epoch is not None:
                on_epoch(epoch + 1, row)

        def history(self) -> list[dict[str, float]]:
            return [self.rows[e] for e in sorted(self.rows)]

    return EpochRecorder()


def interrupt_check():
    """A callback ending the training at the epoch's end when a Ctrl-C came whose KeyboardInterrupt a
    library swallowed (errors.INTERRUPTED); the epoch's backup is written by then."""
    import keras

    class InterruptCheck(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise_if_interrupted()

    return InterruptCheck()
