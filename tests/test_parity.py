"""Parity measurement (pipeline/parity.py): one form's agreement with the Keras reference accumulated
batch by batch, the batch-size check, and the SavedModel's outputs as export records them for verify.
On the tiny prepared data and hand-made predictors; the SavedModel is the hand-set model's
(tests/helpers/exports.py)."""

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.params import parse_params
from pipeline.parity import (
    RECORDED_BATCH_SIZES,
    RECORDED_EXAMPLES,
    Agreement,
    Recorded,
    batch_consistency,
    measure,
    record_saved_model_outputs,
    recorded_array,
)


def test_agreement_by_hand():
    reference = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]])
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.7, 0.3]])
    agreement = Agreement()
    agreement.add(reference[:2], probs[:2], np.array([0, 1]))  # two batches, as measure feeds it
    agreement.add(reference[2:], probs[2:], np.array([1]))
    result = agreement.result()
    assert result["max_abs_diff"] == pytest.approx(0.2)
    assert result["mean_abs_diff"] == pytest.approx((0.1 + 0.1 + 0.2 + 0.2 + 0 + 0) / 6)
    assert result["argmax_agreement"] == pytest.approx(2 / 3)  # the second example's class flips
    assert result["accuracy"] == pytest.approx(1 / 3)  # only the first is right


def fixed_reference_of(x: np.ndarray, classes: int) -> np.ndarray:
    """Probabilities that depend on each input alone: a softmax of its first pixels."""
    logits = x.reshape(len(x), -1)[:, :classes].astype(np.float64) / 50
    return (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)


def test_measure_holds_each_predictor_to_the_reference_on_the_whole_split(tiny_exports):
    data = tiny_exports.data
    n = data.meta.num_classes
    reference = fixed_reference_of(data.arrays("test")[0], n)
    limits = parse_params({"verify": {"batch_size": 16, "batch_check_examples": 24}}).verify

    def same(x):
        return fixed_reference_of(x, n)

    def shifted(x):  # every row rotated by one class: right nowhere
        return np.roll(fixed_reference_of(x, n), 1, axis=1)

    examples, results = measure(reference, {"same": same, "shifted_int8": shifted}, data, limits)
    assert examples == data.meta.counts["test"] == 40
    assert results["same"]["max_abs_diff"] <= 1e-6 and results["same"]["argmax_agreement"] == 1.0
    assert results["same"]["batch_max_abs_diff"] == 0.0
    assert results["shifted_int8"]["argmax_agreement"] < 1.0
    assert "batch_max_abs_diff" not in results["shifted_int8"]  # int8 forms: no batch check
    _, labels = data.arrays("test")
    assert results["keras"]["accuracy"] == pytest.approx(np.mean(reference.argmax(1) == labels))


def test_the_batch_check_finds_a_form_whose_output_depends_on_the_batch():
    x = np.random.default_rng(0).integers(0, 256, size=(20, 4), dtype=np.uint8)

    def steady(batch):
        return batch.astype(np.float32) / 255

    def batch_dependent(batch):  # what a graph that mixes examples does
        return batch.astype(np.float32) / 255 + np.float32(len(batch)) * 1e-3

    assert batch_consistency(steady, x, [1, 7, 16]) == 0.0
    assert batch_consistency(batch_dependent, x, [1, 7, 16]) == pytest.approx(15e-3, rel=1e-3)


def test_export_records_the_saved_model_as_tensorflow_serving_serves_it(tiny_exports, tmp_path):
    """The test split in batches of the largest size, the split's first examples at every size; read
    back by verify through `Recorded`, row for row in the split's order."""
    from pipeline.parity import saved_model_predictor

    data = tiny_exports.data
    record_saved_model_outputs(tiny_exports.directory / "saved_model", data, tmp_path / "outputs.npz")
    x, _ = data.arrays("test")
    served = saved_model_predictor(tiny_exports.directory / "saved_model", "image", "image")(x)
    with np.load(tmp_path / "outputs.npz") as recorded:
        assert sorted(recorded) == sorted(["test", *(f"batch_{size}" for size in RECORDED_BATCH_SIZES)])
        np.testing.assert_allclose(recorded["test"], served, atol=1e-6)
        for size in RECORDED_BATCH_SIZES:
            assert recorded[f"batch_{size}"].shape == (min(RECORDED_EXAMPLES, len(x)), data.meta.num_classes)
            np.testing.assert_allclose(recorded[f"batch_{size}"], served[:RECORDED_EXAMPLES], atol=1e-6)
    replay = Recorded(tmp_path / "outputs.npz", data.meta)
    np.testing.assert_array_equal(np.concatenate([replay(x[:16]), replay(x[16:])]), recorded_array(
        tmp_path / "outputs.npz", "export", data.meta, key="test"))  # fmt: skip


def test_a_record_of_another_shape_or_dtype_names_the_stage_to_rerun(tiny_exports, tmp_path):
    meta = tiny_exports.data.meta
    np.save(tmp_path / "float64.npy", np.zeros((40, 4)))
    with pytest.raises(PipelineError, match=r"float64\.npy: holds float64 \(40, 4\), the test split needs float32 "
                       r"\(40, 4\) \(rerun `dvc repro evaluate`\)$"):  # fmt: skip
        recorded_array(tmp_path / "float64.npy", "evaluate", meta)
    with pytest.raises(PipelineError, match=r"absent\.npy: not found \(run `dvc repro evaluate`\)$"):
        recorded_array(tmp_path / "absent.npy", "evaluate", meta)
