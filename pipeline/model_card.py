"""The model card (reports/model_card.md): what a deployer should know about the exported model,
from what the stages recorded. `verify` writes it, since only it knows the parity results, logs it
to the MLflow run and makes it the registered version's description.

Pure functions of the stages' reports (dicts): no TensorFlow, no MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CardInputs:
    registered: dict[str, str] | None  # {"name", "version"} from exported/metadata.json
    run: dict[str, str]  # run_id, git commit, summary (the run's description)
    data: dict[str, Any]  # name, format, source, checksums, and reports/data.json
    metadata: dict[str, Any]  # exported/metadata.json
    training: dict[str, Any]  # reports/train.json
    hyper: dict[str, Any]  # the train section as trained (resolved preset values)
    evaluation: dict[str, Any]  # reports/metrics.json
    parity: dict[str, Any]  # reports/parity.json (this verify's, with its latency measurements)


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def _shape(shape: list) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _inputs(metadata: dict) -> str:
    shape = metadata["input"]["shape"][1:]
    if len(shape) == 3:
        return f"{shape[0]}×{shape[1]} {'greyscale' if shape[2] == 1 else 'colour'} images"
    return f"table rows of {shape[0]} features"


def class_list(names: list[str], shown: int = 20) -> str:
    if len(names) <= shown:
        return ", ".join(names)
    return ", ".join(names[:shown]) + f", … ({len(names):,} in all: `metadata.json`)"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def data_section(c: CardInputs) -> list[str]:
    d, report = c.data, c.data.get("report", {})
    counts = report.get("counts", {})
    dup = report.get("duplicates", {})
    lines = [
        "## Data",
        "",
        f"- **Data set:** {d['name']} ({d['format']} files), source `{d['source']}`.",
        f"- **Examples:** {counts.get('train', 0):,} train, {counts.get('val', 0):,} validation, "
        f"{counts.get('test', 0):,} test; {len(c.metadata['class_names'])} classes (per class: `reports/data.json`).",
        f"- **Leakage check:** {dup.get('test_in_train', 'n/a')} test and {dup.get('val_in_train', 'n/a')} validation "
        "examples are byte-identical to a training example.",
        f"- **Prepared data:** sha256 `{d.get('sha256', '')[:16]}…`; test split `{d.get('test_sha256', '')[:16]}…`.",
    ]
    if d.get("checksums"):
        lines += ["- **Source checksums** (sha256 of the decompressed content):", ""]
        lines += [f"  - `{name}`: `{sha}`" for name, sha in d["checksums"].items()]
    else:
        lines.append("- **Source checksums:** none configured (`data.<format>.sha256` is empty).")
    return lines


def model_section(c: CardInputs) -> list[str]:
    t, h, m = c.training, c.hyper, c.metadata
    inp, out = m["input"], m["output"]
    augment = h.get("augment", {})
    return [
        "## Model",
        "",
        f"- **Architecture:** `{h.get('model_name', h.get('model'))}`, {t.get('parameters', 0):,} parameters, "
        "Keras `Sequential`; normalisation is the model's first layer.",
        f"- **Input:** `{inp['name']}` {inp['dtype']} `{_shape(inp['shape'])}` ({inp.get('meaning', '')}).",
        f"- **Output:** `{out['name']}` {out['dtype']} `{_shape(out['shape'])}`, softmax over the class names below.",
        *(
            [
                "- **Test-time flip:** every form scores each image and its left-right mirror and averages the two "
                "(twice the inference work of one pass)."
            ]
            if m.get("test_time_flip")
            else []
        ),
        f"- **Training:** {t.get('epochs_run')} epochs (best {t.get('best_epoch')}), {h.get('optimizer')} at learning "
        f"rate {h.get('learning_rate')} ({h.get('schedule')} schedule), batch {t.get('global_batch_size')}, label "
        f"smoothing {h.get('label_smoothing')}, augmentation: flip {augment.get('horizontal_flip')}, translate "
        f"{augment.get('translate')}, erase {augment.get('erase')}; {t.get('training_loop')}, "
        f"{t.get('training_seconds', 0):,.0f} s.",
        f"- **Classes:** {class_list(m['class_names'])}.",
    ]


# The headline metrics, in the card's order, where the task has them (evaluate leaves the others out).
HEADLINE = (
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("top2_accuracy", "top-2 accuracy"),
    ("top5_accuracy", "top-5 accuracy"),
    ("macro_f1", "macro F1"),
    ("roc_auc", "ROC AUC"),
    ("average_precision", "average precision"),
    ("loss", "log loss"),
    ("ece", "calibration (ECE)"),
)


def task_lines(test: dict) -> list[str]:
    """Which task this is and which metrics apply, as evaluate decided."""
    task = test.get("task", {})
    kind = task.get("type", "multiclass")
    what = f"**Task:** {kind}, {task.get('classes', '?')} classes"
    if kind == "binary":
        what += f"; the positive class (ROC AUC, average precision, confusion) is **{task.get('positive_class')}**"
    lines = [what + "."]
    left_out = task.get("left_out", {})
    if left_out:
        lines.append("Left out: " + "; ".join(f"{k.replace('_', ' ')} ({why})" for k, why in left_out.items()) + ".")
    return lines


def class_rows(test: dict) -> tuple[str, list[list[Any]]]:
    """The per-class table: every class, or the weakest when there are too many to list."""
    table = test.get("per_class")
    title = "Per class:"
    if table is None:
        table = test.get("worst_classes", {})
        title = f"The {len(table)} weakest classes by F1 (every class: `reports/per_class.csv`):"
    rows = [
        [v.get("class", k), f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", v["support"]]
        for k, v in table.items()
    ]
    return title, rows


def results_section(c: CardInputs) -> list[str]:
    test, fmts = c.evaluation["test"], c.parity["formats"]
    headline = [(key, label) for key, label in HEADLINE if key in test]
    title, rows = class_rows(test)
    lines = [
        "## Results",
        "",
        f"On the {test['examples']:,} test examples (never seen in training or model selection):",
        "",
        *task_lines(test),
        "",
        *_table([label for _, label in headline], [[f"{test[key]:.4f}" for key, _ in headline]]),
    ]
    if "confusion" in test:
        cm = test["confusion"]
        lines += [
            "",
            f"Confusion for {test['task']['positive_class']} at the default decision (the larger probability): "
            f"{cm['true_positives']} true positives, {cm['false_positives']} false positives, "
            f"{cm['true_negatives']} true negatives, {cm['false_negatives']} false negatives.",
        ]
    lines += [
        "",
        title,
        "",
        *_table(["class", "precision", "recall", "F1", "support"], rows),
        "",
        "Exported forms against the Keras model on the same test set (`reports/parity.json`):",
        "",
        *_table(
            ["form", "accuracy", "max abs. difference", "same top class"],
            [
                [f, f"{r['accuracy']:.4f}", f"{r['max_abs_diff']:.2g}", _pct(r["argmax_agreement"])]
                if "max_abs_diff" in r
                else [f"{f} (reference)", f"{r['accuracy']:.4f}", "", ""]
                for f, r in fmts.items()
            ],
        ),
    ]
    drops = [f"{fmt} {r['accuracy_drop_vs_float32']:.4f}" for fmt, r in fmts.items() if "accuracy_drop_vs_float32" in r]
    if drops:
        lines += ["", f"int8 accuracy drop against the same runtime's float32 file: {', '.join(drops)} "
                      f"(allowed: {c.parity.get('max_int8_drop', '')})."]  # fmt: skip
    in_float32 = c.metadata.get("litert_int8_float_ops") or []
    if in_float32:
        lines += ["", f"`model.int8.tflite` keeps these ops in float32 (no int8 kernel): {', '.join(in_float32)}."]
    lines += ["", *latency_lines(c.parity)]
    return lines


def latency_lines(parity: dict) -> list[str]:
    timed = parity.get("latency")
    if not timed:
        return ["Latency: not measured."]
    rows = [[name, f"{e['batch1_median_ms']:.3f}", f"{e['batch256_images_per_s']:,.0f}"]
            for name, e in timed["engines"].items()]  # fmt: skip
    return [
        f"Latency of these very files, timed by `verify` ({timed['cpus']} logical CPUs, onnxruntime "
        f"{timed['onnxruntime']} CPU provider, ai-edge-litert {timed.get('ai-edge-litert', '?')} with XNNPACK, "
        "each runtime's default threads; `benchmarks/inference.py` measures more carefully):",
        "",
        *_table(["file", "batch 1 median ms", "batch 256 images/s"], rows),
        "",
        "Session settings: keep onnxruntime's defaults (graph optimisation `ORT_ENABLE_ALL`, one intra-op thread "
        "per physical core, the CPU provider); the ONNX graph is already simplified at export, so do not save "
        "an onnxruntime-optimised copy (it would hold kernels for the CPU that saved it). LiteRT: the "
        "interpreter's XNNPACK delegate, on by default.",
    ]


def limits_section(c: CardInputs) -> list[str]:
    test = c.evaluation["test"]
    weakest = sorted((test.get("per_class") or test.get("worst_classes", {})).values(), key=lambda v: v["f1"])[:2]
    return [
        "## Intended use and limits",
        "",
        f"- Classifies {_inputs(c.metadata)} into the {len(c.metadata['class_names'])} classes above; it knows "
        "no other class and always answers one of them (there is no 'none of these').",
        f"- Trained and tested on {c.data['name']} only. Inputs from another source (other cameras, framing, "
        "backgrounds, colours or sizes than the training data) are out of its distribution: measure before use.",
        "- Weakest classes: " + ", ".join(f"{v.get('class')} (F1 {v['f1']:.3f})" for v in weakest) + ".",
        f"- Probabilities are calibrated to within {test['ece']:.3f} (ECE); treat them as scores, not guarantees.",
        "- Runs with onnxruntime alone (`model.onnx`, `model.int8.onnx`), ai-edge-litert alone on phones and "
        "edge devices (`model.tflite`, `model.int8.tflite`) or TensorFlow (`saved_model/`), raw input in, "
        "probabilities out; see `metadata.json` for the exact contract.",
    ]


def render(c: CardInputs) -> str:
    title = f"{c.registered['name']} v{c.registered['version']}" if c.registered else c.data["name"]
    lines = [
        f"# Model card: {title}",
        "",
        c.run.get("summary", ""),
        "",
        *data_section(c),
        "",
        *model_section(c),
        "",
        *results_section(c),
        "",
        *limits_section(c),
        "",
        "## Provenance",
        "",
        f"- MLflow run `{c.run.get('run_id')}`; git commit `{c.run.get('commit', 'unknown')}`.",
        f"- Producers: {', '.join(f'{k} {v}' for k, v in c.metadata.get('producer_versions', {}).items())}.",
        "- Written by `python -m pipeline.verify` from `reports/` and `exported/metadata.json`.",
    ]
    return "\n".join(lines) + "\n"
