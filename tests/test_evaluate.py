"""Evaluation: metrics checked by hand on a tiny prediction set, the gate, and the figures."""

import numpy as np
import pytest

from pipeline.evaluate import Baseline, apply_gate, class_keys, compute_metrics, expected_calibration_error
from pipeline.params import GateParams

# Four examples, three classes. Predicted: 0, 1, 1, 2; actual: 0, 1, 2, 2.
LABELS = np.array([0, 1, 2, 2])
PROBS = np.array(
    [
        [0.8, 0.1, 0.1],
        [0.2, 0.7, 0.1],
        [0.1, 0.6, 0.3],
        [0.3, 0.1, 0.6],
    ]
)
NAMES = ["a", "b", "c"]


def test_metrics_match_hand_computation():
    m = compute_metrics(LABELS, PROBS, NAMES, bins=10)
    assert m["accuracy"] == pytest.approx(0.75)
    # Top-2: example 3's true class c is 2nd (0.3 after 0.6), so all four hit.
    assert m["top2_accuracy"] == pytest.approx(1.0)
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.8, 0.7, 0.3, 0.6])))
    # a: P=1 R=1; b: P=1/2 R=1; c: P=1 R=1/2.
    assert m["per_class"]["a"] == {"class": "a", "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.5) and m["per_class"]["b"]["f1"] == pytest.approx(2 / 3)
    assert m["per_class"]["c"]["recall"] == pytest.approx(0.5) and m["per_class"]["c"]["support"] == 2
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert m["weighted_f1"] == pytest.approx((1 * 1 + 1 * 2 / 3 + 2 * 2 / 3) / 4)
    assert m["macro_precision"] == pytest.approx((1 + 0.5 + 1) / 3)


def test_calibration_error_by_hand():
    # Confidences 0.8, 0.7, 0.6, 0.6 with correctness 1, 1, 0, 1; ten bins:
    # bin (0.5, 0.6]: conf 0.6, 0.6 acc 0.5 → |0.5 - 0.6| * 2/4;
    # (0.6, 0.7]: 0.7 vs 1 → 0.3/4; (0.7, 0.8]: 0.8 vs 1 → 0.2/4
    assert expected_calibration_error(LABELS, PROBS, bins=10) == pytest.approx(0.1 * 2 / 4 + 0.3 / 4 + 0.2 / 4)


def test_gate_passes_and_fails_with_the_numbers():
    test = {"accuracy": 0.91}
    assert apply_gate(test, GateParams(min_accuracy=0.9), None)["passed"]
    verdict = apply_gate(test, GateParams(min_accuracy=0.93), None)
    assert not verdict["passed"]
    assert verdict["reason"] == "test.accuracy 0.9100 is below evaluate.gate.min_accuracy 0.9300"


def test_gate_against_a_baseline():
    gate = GateParams(min_accuracy=0.5, max_drop=0.01)
    baseline = Baseline(0.93, "champion m v3")
    assert apply_gate({"accuracy": 0.925}, gate, baseline)["passed"]
    verdict = apply_gate({"accuracy": 0.90}, gate, baseline)
    assert not verdict["passed"] and verdict["baseline_accuracy"] == 0.93
    assert "dropped 0.0300 below the baseline 0.9300 of champion m v3" in verdict["reason"]
    assert "evaluate.gate.max_drop 0.0100" in verdict["reason"]


def test_a_baseline_without_accuracy_checks_nothing_and_says_why():
    gate = GateParams(min_accuracy=0.5, max_drop=0.01)
    verdict = apply_gate({"accuracy": 0.6}, gate, Baseline(None, "no champion of m yet"))
    assert verdict["passed"] and verdict["baseline"] == "no champion of m yet"
    assert verdict["baseline_accuracy"] is None


def test_metric_keys_keep_class_names_readable_and_unique():
    """MLflow starts a chart group at each '/', and '.' separates a flat key's parts."""
    assert class_keys(["T-shirt/top", "Ankle boot", "a.b", "a/b", "a_b", "é:1"]) == [
        "T-shirt_top", "Ankle boot", "a_b", "a_b_2", "a_b_3", "é_1",
    ]  # fmt: skip
    m = compute_metrics(LABELS, PROBS, ["T-shirt/top", "b", "c"])
    assert m["per_class"]["T-shirt_top"]["class"] == "T-shirt/top"


def test_two_classes_get_the_binary_metrics_and_no_top_k():
    """Positive class b: scores 0.9, 0.8, 0.3 for the b examples, 0.6, 0.2 for the a ones."""
    labels = np.array([1, 1, 1, 0, 0])
    positive = np.array([0.9, 0.8, 0.3, 0.6, 0.2])
    probs = np.stack([1 - positive, positive], axis=1)
    m = compute_metrics(labels, probs, ["a", "b"])
    assert m["task"]["type"] == "binary" and m["task"]["positive_class"] == "b"
    assert "top2_accuracy" not in m and "top5_accuracy" not in m
    assert set(m["task"]["left_out"]) == {"top2_accuracy", "top5_accuracy"}
    # Pairs (positive, negative) ranked right: 0.9 and 0.8 beat both negatives, 0.3 beats 0.2 only.
    assert m["roc_auc"] == pytest.approx(5 / 6)
    # Precision at each positive's rank: 1/1, 2/2, 3/4.
    assert m["average_precision"] == pytest.approx((1 + 1 + 3 / 4) / 3)
    assert m["confusion"] == {"true_positives": 2, "false_positives": 1, "true_negatives": 1, "false_negatives": 1}
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    from sklearn.metrics import balanced_accuracy_score

    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, probs.argmax(1)))

    flipped = compute_metrics(labels, probs, ["a", "b"], positive_class="a")
    assert flipped["task"]["positive_class"] == "a" and flipped["roc_auc"] == pytest.approx(5 / 6)
    assert flipped["confusion"]["true_positives"] == 1  # a predicted a: example 4
    one_class = compute_metrics(np.array([1, 1]), probs[:2], ["a", "b"])
    assert "roc_auc" not in one_class and one_class["task"]["left_out"]["roc_auc"] == "the test split holds one class"


def test_many_classes_keep_the_report_bounded():
    from pipeline.evaluate import per_class_csv, per_class_table

    from helpers.data import thousand_class_predictions

    labels, probs, names = thousand_class_predictions()
    n = len(names)
    m = compute_metrics(labels, probs, names)
    assert m["task"] == {
        "type": "multiclass",
        "classes": n,
        "left_out": {
            "roc_auc": "binary tasks only",
            "average_precision": "binary tasks only",
            "per_class": m["task"]["left_out"]["per_class"],
        },
    }
    assert "per_class" not in m and len(m["worst_classes"]) == 10
    assert 0 < m["top2_accuracy"] <= m["top5_accuracy"] <= 1 and m["accuracy"] <= m["top2_accuracy"]
    assert min(v["f1"] for v in m["worst_classes"].values()) == min(r["f1"] for r in per_class_table(
        labels, probs.argmax(1), names))  # fmt: skip
    assert len(per_class_csv(per_class_table(labels, probs.argmax(1), names)).splitlines()) == n + 1


def test_five_classes_get_top_2_but_not_top_5():
    labels = np.arange(5)
    probs = np.eye(5)[[0, 1, 2, 3, 0]] * 0.6 + 0.08
    m = compute_metrics(labels, probs, list("abcde"))
    assert "top2_accuracy" in m and "top5_accuracy" not in m and "roc_auc" not in m
    assert m["task"]["left_out"]["top5_accuracy"] == "needs more than 5 classes"
