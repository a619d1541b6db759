"""Stage `evaluate`: the held-out test split's verdict on the trained model.

Metrics (scikit-learn) to reports/metrics.json, one row per test example to reports/predictions.csv
(DVC's confusion plot), figures to reports/figures/, everything into the training's MLflow run,
and a quality gate whose failure stops the pipeline before export.
"""

from __future__ import annotations

import csv
import io
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cli import end_process
from pipeline.figures import MANY_CLASSES
from pipeline.params import GateParams, dotted
from pipeline.stage import Stage, StageResult, json_text, log_into_run, resume_training_run


# ----------------------------------------------------------------------------- metrics
def metric_key(name: str) -> str:
    """A class name as the part of a metric key: MLflow starts a chart group at each '/' and a
    flattened key's parts are separated by '.', so every character but letters, digits, '_', '-'
    and space becomes '_' ("T-shirt/top" → "T-shirt_top"). The entry keeps the name itself."""
    return re.sub(r"[^\w\- ]", "_", name).strip() or "_"


def class_keys(class_names: list[str]) -> list[str]:
    """metric_key of each class name, made unique ("a/b" and "a_b" → "a_b", "a_b_2")."""
    keys: list[str] = []
    for name in class_names:
        key, n = metric_key(name), 1
        while key in keys:
            n += 1
            key = f"{metric_key(name)}_{n}"
        keys.append(key)
    return keys


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int) -> float:
    """Top-label ECE: scikit-learn's calibration_curve per confidence bin, weighted by bin size."""
    from sklearn.calibration import calibration_curve

    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(int)
    if correct.min() == correct.max():  # calibration_curve needs both outcomes present
        return float(abs(correct.mean() - confidence.mean()))
    accuracy_in_bin, confidence_in_bin = calibration_curve(correct, confidence, n_bins=bins, strategy="uniform")
    counts = np.histogram(confidence, bins=np.linspace(0, 1, bins + 1))[0]
    weights = counts[counts > 0] / len(labels)
    return float(np.sum(weights * np.abs(accuracy_in_bin - confidence_in_bin)))


# More classes than this: the report keeps the weakest classes (reports/per_class.csv has every one),
# as the confusion figure keeps the largest confusions.
WORST_CLASSES = 10
TOP_K = (2, 5)  # top-k accuracy for each k below the class count (top-2 of two classes is always 1)


def task_of(class_names: list[str], positive_class: str | None) -> dict[str, Any]:
    """What kind of classification this is, and which metrics apply to it."""
    n = len(class_names)
    task: dict[str, Any] = {"type": "binary" if n == 2 else "multiclass", "classes": n}
    if n == 2:
        task["positive_class"] = positive_class or class_names[1]
    left_out = {f"top{k}_accuracy": f"needs more than {k} classes" for k in TOP_K if k >= n}
    if n != 2:
        left_out["roc_auc"] = left_out["average_precision"] = "binary tasks only"
    if n > MANY_CLASSES:
        left_out["per_class"] = f"more than {MANY_CLASSES} classes: worst_classes here, every class in per_class.csv"
    task["left_out"] = left_out
    return task


def per_class_table(labels: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of every class (scikit-learn), keyed for metric names."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(
        labels, predicted, labels=list(range(len(class_names))), zero_division=0
    )
    return [
        {"key": key, "class": name, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
         "support": int(s[i])}
        for i, (key, name) in enumerate(zip(class_keys(class_names), class_names, strict=True))
    ]  # fmt: skip


def binary_metrics(labels: np.ndarray, probs: np.ndarray, positive: int) -> dict[str, Any]:
    """The positive class's ranking quality and the confusion at the default decision (the larger
    probability, i.e. a threshold of 0.5 on the positive class)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    truth, predicted = labels == positive, probs.argmax(axis=1) == positive
    out: dict[str, Any] = {}
    if truth.all() or not truth.any():  # a ranking metric needs both classes in the test split
        out["left_out"] = {"roc_auc": "the test split holds one class", "average_precision": "idem"}
    else:
        out["roc_auc"] = float(roc_auc_score(truth, probs[:, positive]))
        out["average_precision"] = float(average_precision_score(truth, probs[:, positive]))
    out["confusion"] = {
        "true_positives": int(np.sum(truth & predicted)),
        "false_positives": int(np.sum(~truth & predicted)),
        "true_negatives": int(np.sum(~truth & ~predicted)),
        "false_negatives": int(np.sum(truth & ~predicted)),
    }
    return out


def compute_metrics(
    labels: np.ndarray, probs: np.ndarray, class_names: list[str], bins: int = 15, positive_class: str | None = None
) -> dict:
    """The test metrics that apply to this task (`task_of`): every metric scikit-learn computes."""
    from sklearn.metrics import accuracy_score, log_loss, precision_recall_fscore_support, top_k_accuracy_score

    classes = list(range(len(class_names)))
    task = task_of(class_names, positive_class)
    # A float32 softmax sums to 1 within ~1e-7; sklearn's log_loss wants float64 exactness.
    probs = probs / probs.sum(axis=1, keepdims=True)
    predicted = probs.argmax(axis=1)
    table = per_class_table(labels, predicted, class_names)
    metrics: dict[str, Any] = {
        "task": task,
        "loss": float(log_loss(labels, probs, labels=classes)),
        "accuracy": float(accuracy_score(labels, predicted)),
        # scikit-learn's balanced_accuracy_score: the mean recall of the classes the test split holds.
        "balanced_accuracy": float(np.mean([row["recall"] for row in table if row["support"]])),
    }
    for k in TOP_K:
        if f"top{k}_accuracy" not in task["left_out"]:
            metrics[f"top{k}_accuracy"] = float(top_k_accuracy_score(labels, probs, k=k, labels=classes))
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            labels, predicted, labels=classes, average=average, zero_division=0
        )
        metrics.update({f"{average}_precision": float(p), f"{average}_recall": float(r), f"{average}_f1": float(f)})
    if task["type"] == "binary":
        binary = binary_metrics(labels, probs, class_names.index(task["positive_class"]))
        task["left_out"].update(binary.pop("left_out", {}))
        metrics.update(binary)
    metrics["ece"] = expected_calibration_error(labels, probs, bins)
    metrics["examples"] = int(len(labels))
    if len(class_names) <= MANY_CLASSES:
        metrics["per_class"] = {row["key"]: {k: v for k, v in row.items() if k != "key"} for row in table}
    else:
        worst = sorted(table, key=lambda row: (row["f1"], row["key"]))[:WORST_CLASSES]
        metrics["worst_classes"] = {row["key"]: {k: v for k, v in row.items() if k != "key"} for row in worst}
    return metrics


# ----------------------------------------------------------------------------- gate
@dataclass(frozen=True)
class Baseline:
    accuracy: float | None  # None: nothing to compare with, for the reason in `source`
    source: str


def champion_baseline(registry, name: str, test_sha256: str) -> Baseline:
    """The registry champion's test accuracy, when it was measured on this very test split."""
    from pipeline.registry import CHAMPION

    champion = registry.version_by_alias(name, CHAMPION)
    if champion is None:
        return Baseline(None, f"no champion of {name} yet")
    where = f"champion {name} v{champion.version}"
    if champion.tags.get("data.test_sha256") != test_sha256 or "test.accuracy" not in champion.tags:
        return Baseline(None, f"{where} was tested on another test split")
    return Baseline(float(champion.tags["test.accuracy"]), where)


def apply_gate(test: dict, gate: GateParams, baseline: Baseline | None) -> dict:
    """The verdict: passed, and one reason per failed check (metric, threshold, value)."""
    reasons = []
    accuracy = test["accuracy"]
    if accuracy < gate.min_accuracy:
        reasons.append(f"test.accuracy {accuracy:.4f} is below evaluate.gate.min_accuracy {gate.min_accuracy:.4f}")
    if gate.max_drop is not None and baseline is not None and baseline.accuracy is not None:
        drop = baseline.accuracy - accuracy
        if drop > gate.max_drop:
            reasons.append(
                f"test.accuracy {accuracy:.4f} dropped {drop:.4f} below the baseline "
                f"{baseline.accuracy:.4f} of {baseline.source}, more than evaluate.gate.max_drop "
                f"{gate.max_drop:.4f}"
            )
    return {
        "passed": not reasons,
        "reason": "; ".join(reasons) or "all checks passed",
        "min_accuracy": gate.min_accuracy,
        "max_drop": gate.max_drop,
        "baseline_accuracy": baseline.accuracy if baseline else None,
        "baseline": baseline.source if baseline else None,
    }


# ----------------------------------------------------------------------------- the core
def predict_split(model, data, split: str, batch_size: int, worst=None) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels and probabilities (float32) of a split of `data` (PreparedData), streamed a batch at a
    time (`worst`, a figures.WorstErrors, sees each batch's inputs), and the inference throughput
    in examples/s."""
    labels, probs, seconds, seen = [], [], 0.0, 0
    for x, y in data.batches(split, batch_size):
        started = time.perf_counter()
        p = np.asarray(model.predict_on_batch(x), dtype=np.float32)
        seconds += time.perf_counter() - started
        if worst is not None:
            worst.add(seen, x, y, p)
        labels.append(y)
        probs.append(p)
        seen += len(y)
    return np.concatenate(labels), np.concatenate(probs), seen / seconds if seconds else 0.0


def predictions_csv(labels, probs, class_names: list[str]) -> str:
    """One row per test example (DVC's confusion plot reads it)."""
    predicted = probs.argmax(axis=1)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["index", "actual", "predicted", "confidence"])
    for i, (a, p) in enumerate(zip(labels, predicted, strict=True)):
        writer.writerow([i, class_names[a], class_names[p], f"{probs[i, p]:.4f}"])
    return out.getvalue()


def per_class_csv(table: list[dict[str, Any]]) -> str:
    """Every class's precision, recall, F1 and support: the per-class table of any number of classes."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["class", "precision", "recall", "f1", "support"], extrasaction="ignore",
                            lineterminator="\n")  # fmt: skip
    writer.writeheader()
    writer.writerows(table)
    return out.getvalue()


def evaluate(inputs: dict[str, Path], params, outputs: dict[str, Path], run) -> StageResult:
    """The test split's metrics, the gate's verdict against the registry's champion, the figures, and
    the Keras model's outputs on the test split (verify's reference for every exported form)."""
    from pipeline.figures import WorstErrors
    from pipeline.model import load_keras_model
    from pipeline.prepared import PreparedData
    from pipeline.registry import registered_model_name

    settings = params.evaluate
    data = PreparedData.open(inputs["prepared"])
    test_sha256 = data.meta.split_sha256["test"]
    name = registered_model_name(params.mlflow.registered_model_name, data.meta)
    compare = settings.gate.max_drop is not None and settings.gate.baseline == "champion"
    baseline = champion_baseline(run.registry, name, test_sha256) if compare else None
    model = load_keras_model(str(inputs["model"]))
    worst = WorstErrors(settings.worst_examples) if data.kind.name != "table" else None  # a row is no picture
    labels, probs, throughput = predict_split(model, data, "test", settings.batch_size, worst)

    test = compute_metrics(labels, probs, data.meta.class_names, settings.calibration_bins, data.meta.positive_class)
    test["examples_per_second"] = round(throughput, 1)
    gate = apply_gate(test, settings.gate, baseline)
    write_evaluation(outputs, inputs["history"], data, labels, probs, worst)
    np.save(outputs["probabilities"], np.concatenate([probs, probe_probabilities(model, data)]))
    outputs["metrics"].write_text(json_text({"test": test, "gate": gate, "data": {"test_sha256": test_sha256}}))
    ranking = f"ROC AUC {test['roc_auc']:.4f} ({test['task']['positive_class']}), " if "roc_auc" in test else ""
    return StageResult(
        f"test accuracy {test['accuracy']:.4f}, macro F1 {test['macro_f1']:.4f}, {ranking}"
        f"loss {test['loss']:.4f}, ECE {test['ece']:.4f}; {throughput:,.0f} examples/s; "
        f"gate {'passed' if gate['passed'] else 'FAILED'}",
        metrics=dotted({k: v for k, v in test.items() if k != "task"}, "test.", numbers_only=True),
        tags={
            "evaluate.gate": "passed" if gate["passed"] else "failed",
            "evaluate.gate_reason": gate["reason"],
            **{f"evaluate.task.{k}": v for k, v in test["task"].items() if k != "left_out"},
        },  # fmt: skip
        artifacts={
            "figures": "figures",
            "metrics": "evaluation",
            "predictions": "evaluation",
            "per_class": "evaluation",
        },  # fmt: skip
        facts={"datasets": (data.meta, {"test": test_sha256})},
        failure=None if gate["passed"] else f"quality gate failed: {gate['reason']}",
    )


def probe_probabilities(model, data) -> np.ndarray:
    """The Keras model's outputs on verify's probes (pipeline/parity.py: for text, the awkward texts),
    recorded after the test split's: every form is held to them."""
    from pipeline.parity import probe_inputs

    probes = probe_inputs(data)
    if not len(probes):
        return np.zeros((0, data.meta.num_classes), dtype=np.float32)
    return np.asarray(model.predict_on_batch(probes), dtype=np.float32)


def write_evaluation(outputs: dict[str, Path], history: Path, data, labels, probs, worst) -> None:
    """Everything evaluate writes beside its metrics and the model's outputs: the per-example and
    per-class tables, the figures."""
    from pipeline.figures import FIGURES, plot_confusion_matrix, plot_training_curves, plot_worst_errors

    class_names, predicted = data.meta.class_names, probs.argmax(axis=1)
    outputs["predictions"].write_text(predictions_csv(labels, probs, class_names))
    outputs["per_class"].write_text(per_class_csv(per_class_table(labels, predicted, class_names)))
    figures = outputs["figures"]
    plot_training_curves(history, figures / FIGURES[0])
    plot_confusion_matrix(labels, predicted, class_names, figures / FIGURES[1])
    if worst is not None:
        plot_worst_errors(worst.worst(), class_names, figures / FIGURES[2], data.kind.name)


def publish(result: StageResult, run, outputs: dict[str, Path]) -> dict:
    """The run's metrics, tags and artifacts, and the test split as one of its datasets."""
    from pipeline.lineage import log_dataset_inputs, split_inputs

    log_into_run(result, run, outputs)
    meta, hashes = result.facts["datasets"]
    log_dataset_inputs(run, meta.name, meta.source, split_inputs(meta, hashes))
    return {}


STAGE = Stage(
    "evaluate",
    __doc__,
    params=("evaluate", "mlflow.registered_model_name"),
    inputs=("prepared", "model", "history", "run_file"),
    outputs=("metrics", "predictions", "per_class", "probabilities", "figures"),
    core=evaluate,
    tracking=resume_training_run,
    publish=publish,
)


def main(argv: list[str] | None = None) -> None:
    STAGE.run(argv)


if __name__ == "__main__":
    main()
    end_process()
