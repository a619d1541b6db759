"""Parity: an exported form's outputs against the Keras model's on the test split, measured batch by
batch (nothing per example is kept, so the split can be of any size). The reference is the Keras
model's own output, which evaluate records (models/test_probabilities.npy); export measures the
SavedModel it writes, verify every other form, and verify judges them all (pipeline/verify.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError, first_line
from pipeline.records import OUTPUT_NAME


def keras_reference(path: Path, meta) -> np.ndarray:
    """evaluate's record of the Keras model's probabilities on the test split (memory-mapped: read a
    batch at a time), checked against the split it must describe."""
    try:
        probs = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found (run `dvc repro evaluate`)") from None
    except (ValueError, OSError) as exc:
        raise PipelineError(f"{path}: not a NumPy array file ({first_line(exc)}; rerun `dvc repro evaluate`)") from None
    expected = (meta.counts["test"], meta.num_classes)
    if probs.shape != expected or probs.dtype != np.float32:
        raise PipelineError(
            f"{path}: holds {probs.dtype} {probs.shape}, the test split needs float32 {expected} "
            "(rerun `dvc repro evaluate`)"
        )
    return probs


def saved_model_predictor(path: Path, input_name: str):
    """The SavedModel's serving signature as TensorFlow Serving loads it (no project code)."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    return lambda x: signature(**{input_name: tf.constant(x)})[OUTPUT_NAME].numpy()


class Agreement:
    """One form's outputs against the reference's, accumulated batch by batch."""

    def __init__(self):
        self.max_abs, self.sum_abs, self.values, self.agree, self.correct, self.examples = 0.0, 0.0, 0, 0, 0, 0

    def add(self, reference: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> None:
        diff = np.abs(np.asarray(probs, dtype=np.float64) - reference)
        self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
        self.sum_abs += float(diff.sum())
        self.values += diff.size
        predicted = np.asarray(probs).argmax(1)
        self.agree += int(np.sum(predicted == reference.argmax(1)))
        self.correct += int(np.sum(predicted == labels))
        self.examples += len(labels)

    def result(self) -> dict[str, float]:
        return {
            "max_abs_diff": self.max_abs,
            "mean_abs_diff": self.sum_abs / max(self.values, 1),
            "argmax_agreement": self.agree / max(self.examples, 1),
            "accuracy": self.correct / max(self.examples, 1),
        }


def predict_in_batches(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([np.asarray(fn(x[i : i + batch]), dtype=np.float64) for i in range(0, len(x), batch)])


def batch_consistency(fn, x: np.ndarray, sizes: list[int]) -> float:
    """Largest per-example difference between the batch sizes on the same inputs."""
    outputs = [predict_in_batches(fn, x, b) for b in sizes]
    return float(max(np.abs(o - outputs[-1]).max() for o in outputs))


# The row `measure` gives a float32 form (an int8 one has no batch_max_abs_diff).
FLOAT32_ROW = ("max_abs_diff", "mean_abs_diff", "argmax_agreement", "accuracy", "batch_max_abs_diff")


def measure(
    reference: np.ndarray, predictors: dict[str, Callable], prepared_dir: str, meta, limits
) -> tuple[int, dict[str, dict]]:
    """Each predictor's agreement with `reference` in one pass over the raw test split (in
    `limits.batch_size` batches), and for float32 forms the batch-size check on the split's first
    `limits.batch_check_examples` examples; with the reference's own accuracy as `keras`."""
    from pipeline.records import iter_batches

    keras, agreements, first = Agreement(), {fmt: Agreement() for fmt in predictors}, []
    kept = position = 0
    for x, labels in iter_batches(prepared_dir, meta, "test", limits.batch_size):
        expected = np.asarray(reference[position : position + len(x)], dtype=np.float64)
        position += len(x)
        keras.add(expected, expected, labels)
        for fmt, fn in predictors.items():
            agreements[fmt].add(expected, fn(x), labels)
        if kept < limits.batch_check_examples:
            first.append(x)
            kept += len(x)
    sample = np.concatenate(first)[: limits.batch_check_examples]
    results = {"keras": {"accuracy": keras.result()["accuracy"]}}
    for fmt, fn in predictors.items():
        results[fmt] = agreements[fmt].result()
        if "int8" not in fmt:
            results[fmt]["batch_max_abs_diff"] = batch_consistency(fn, sample, list(limits.batch_sizes))
    return keras.examples, results
