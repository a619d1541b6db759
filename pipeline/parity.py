"""Parity: an exported form's outputs against the Keras model's on the test split, measured batch by
batch (nothing per example is kept but the outputs being compared, so the split can be of any size).
The reference is the Keras model's own output, which evaluate records (models/test_probabilities.npy).
Verify measures every form it can run without TensorFlow and judges them all (pipeline/verify.py);
the SavedModel, which needs TensorFlow, has its outputs recorded by export, where TensorFlow is
loaded already (`record_saved_model_outputs`), and verify measures that record like the rest."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError, first_line
from pipeline.kinds import OUTPUT_NAME

# What export records of the SavedModel: the test split in batches of the last size, and its first
# RECORDED_EXAMPLES examples in batches of each size (so every size leaves a ragged last batch).
RECORDED_BATCH_SIZES = (1, 7, 256)
RECORDED_EXAMPLES = 263


def probe_inputs(data) -> np.ndarray:
    """The probes' raw inputs for `data` (PreparedData): for text, the awkward texts as the models
    take them (pipeline/text.py); none for images and tables."""
    from pipeline.text import encode_texts, probe_texts

    texts = probe_texts(data.kind.name)
    if not texts:
        return np.zeros((0, *data.meta.input_shape), dtype=data.meta.dtype)
    return encode_texts(texts, data.meta.input_shape[0])


def expected_rows(meta) -> int:
    """Rows of a recorded output: the test split's examples, then the probes'."""
    from pipeline.text import probe_texts

    return meta.counts["test"] + len(probe_texts(meta.kind))


def keras_reference(path: Path, meta) -> np.ndarray:
    """evaluate's record of the Keras model's probabilities on the test split and the probes
    (memory-mapped: read a batch at a time), checked against what it must describe."""
    return recorded_array(path, "evaluate", meta, allow_pickle=False)


def recorded_array(path: Path, stage: str, meta, allow_pickle: bool = False, key: str | None = None) -> np.ndarray:
    """A float32 ((test examples + probes) × classes) array a stage recorded, checked against the
    test split."""
    try:
        loaded = np.load(path, mmap_mode="r" if key is None else None, allow_pickle=allow_pickle)
        probs = loaded[key] if key is not None else loaded
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found (run `dvc repro {stage}`)") from None
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:
        problem = f"{first_line(exc)}; rerun `dvc repro {stage}`"
        raise PipelineError(f"{path}: not the NumPy file {stage} writes ({problem})") from None
    expected = (expected_rows(meta), meta.num_classes)
    if probs.shape != expected or probs.dtype != np.float32:
        raise PipelineError(
            f"{path}: holds {probs.dtype} {probs.shape}, the test split needs float32 {expected} "
            f"(rerun `dvc repro {stage}`)"
        )
    return probs


def saved_model_predictor(path: Path, kind: str, input_name: str):
    """The SavedModel's serving signature as TensorFlow Serving loads it (no project code), fed the
    raw inputs: a text model's signature takes the texts, so their bytes are given as strings (or
    the texts themselves, a list of str)."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(path)).signatures["serving_default"]

    def predict(x) -> np.ndarray:
        if kind == "text":
            x = [t.encode("utf-8") if isinstance(t, str) else t.tobytes().rstrip(b"\0") for t in x]
        return signature(**{input_name: tf.constant(x)})[OUTPUT_NAME].numpy()

    return predict


def record_saved_model_outputs(saved_model: Path, data, out: Path) -> None:
    """The SavedModel's outputs on the test split of `data` (PreparedData) in batches of the largest
    recorded size, then on the probes (texts: given whole, so the graph cuts them itself), and on the
    split's first RECORDED_EXAMPLES examples in batches of each size, into `out` (.npz)."""
    from pipeline.text import probe_texts

    predict = saved_model_predictor(saved_model, data.kind.name, data.meta.input_name)
    test, first = [], []
    for x, _ in data.batches("test", RECORDED_BATCH_SIZES[-1]):
        test.append(np.asarray(predict(x), dtype=np.float32))
        if sum(map(len, first)) < RECORDED_EXAMPLES:
            first.append(x)
    probes = probe_texts(data.kind.name)
    if probes:
        test.append(np.asarray(predict(probes), dtype=np.float32))
    sample = np.concatenate(first)[:RECORDED_EXAMPLES]
    sizes = {f"batch_{size}": predict_in_batches(predict, sample, size) for size in RECORDED_BATCH_SIZES}
    with open(out, "wb") as f:
        np.savez(f, test=np.concatenate(test), **sizes)


class Recorded:
    """Outputs recorded elsewhere, served in the order the test split is read: a predictor for
    `measure`, with the outputs recorded at each batch size for its batch check."""

    def __init__(self, path: Path, meta):
        self.outputs = recorded_array(path, "export", meta, key="test")
        with np.load(path) as recorded:
            missing = [f"batch_{size}" for size in RECORDED_BATCH_SIZES if f"batch_{size}" not in recorded]
            if missing:
                raise PipelineError(f"{path}: holds no {missing[0]} (rerun `dvc repro export`)")
            self.batch_outputs = [recorded[f"batch_{size}"] for size in RECORDED_BATCH_SIZES]
        self.position = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        rows = self.outputs[self.position : self.position + len(x)]
        self.position += len(x)
        return rows


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
    return np.concatenate([np.asarray(fn(x[i : i + batch]), dtype=np.float32) for i in range(0, len(x), batch)])


def batch_consistency(fn, x: np.ndarray, sizes: list[int]) -> float:
    """Largest per-example difference between the batch sizes on the same inputs (for a Recorded
    form, between the outputs it recorded at each size)."""
    outputs = fn.batch_outputs if isinstance(fn, Recorded) else [predict_in_batches(fn, x, b) for b in sizes]
    last = np.asarray(outputs[-1], dtype=np.float64)
    return float(max(np.abs(np.asarray(o, dtype=np.float64) - last).max() for o in outputs))


def measure(reference: np.ndarray, predictors: dict[str, Callable], data, limits) -> tuple[int, dict[str, dict]]:
    """Each predictor's agreement with `reference` in one pass over the raw test split of `data`
    (PreparedData), in `limits.batch_size` batches, and for float32 forms the batch-size check on the
    split's first `limits.batch_check_examples` examples; with the reference's own accuracy as `keras`."""
    keras, agreements, first = Agreement(), {fmt: Agreement() for fmt in predictors}, []
    kept = position = 0
    for x, labels in data.batches("test", limits.batch_size):
        expected = np.asarray(reference[position : position + len(x)], dtype=np.float64)
        position += len(x)
        keras.add(expected, expected, labels)
        for fmt, fn in predictors.items():
            agreements[fmt].add(expected, fn(x), labels)
        if kept < limits.batch_check_examples:
            first.append(x)
            kept += len(x)
    sample = np.concatenate(first)[: limits.batch_check_examples]
    probes = probe_inputs(data)
    results = {"keras": {"accuracy": keras.result()["accuracy"]}}
    for fmt, fn in predictors.items():
        results[fmt] = agreements[fmt].result()
        if len(probes):  # after the split, where the reference and the recorded forms hold them
            expected = np.asarray(reference[position : position + len(probes)], dtype=np.float64)
            probed = np.asarray(fn(probes), dtype=np.float64)
            results[fmt]["probe_max_abs_diff"] = float(np.abs(probed - expected).max())
            results[fmt]["probe_argmax_agreement"] = float(np.mean(probed.argmax(1) == expected.argmax(1)))
        if "int8" not in fmt:
            results[fmt]["batch_max_abs_diff"] = batch_consistency(fn, sample, list(limits.batch_sizes))
    return keras.examples, results
