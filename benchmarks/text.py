"""Text classification on real text, offline: each text preset through the whole pipeline (fetch →
prepare → train → evaluate → export → verify) beside scikit-learn's TF-IDF + logistic regression on
the same split, on Debian's fortunes (scripts/fortunes.py): 8 languages (~91,000 texts) and 14 English
topics (~4,700). Writes reports/text.json (docs/speed.md renders it).

    python benchmarks/text.py [--tasks languages topics] [--presets text_bag text_cnn text_lstm]

Per task and preset: test accuracy and macro F1, training seconds and examples/s, the same figures
for a plain `model.fit` of the same Keras model on the same arrays (the texts' bytes, every epoch
tokenized inside the model, as a hand-written script would) over two epochs, verify's parity
verdict, and verify's batch-1 latency and batch-256 throughput of the ONNX and LiteRT files. The
baseline is what every text-classification user tries first, `TfidfVectorizer()` +
`LogisticRegression()` with scikit-learn's defaults (more iterations), fitted on the same training
split and scored on the same test split (the texts as the model reads them: the first max_bytes
bytes); a character n-gram TF-IDF (2-5, sublinear) is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # helpers.commands: the stages' own command lines

PRESETS = ["text_bag", "text_cnn", "text_lstm"]
TASKS = ["languages", "topics"]
PLAIN_EPOCHS = 2


def cpu_name() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def lay_out(task: str, where: Path) -> dict:
    subprocess.run([sys.executable, str(REPO / "scripts/fortunes.py"), task, str(where)], check=True)
    return {"format": "text_folder", "source": str(where), "text_folder": {"test": None}}


def run_preset(preset: str, data: dict, work: Path) -> dict:
    from helpers.commands import run_stages

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"] = {**params["data"], "format": data["format"], "source": data["source"],
                      "text_folder": {**params["data"]["text_folder"], **data["text_folder"]}}  # fmt: skip
    params["train"]["model"] = preset
    params["evaluate"]["gate"] = {"min_accuracy": 0.0, "max_drop": None, "baseline": None}
    params["mlflow"] = {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "experiment_name": "text",
                        "registered_model_name": f"bench-{preset}"}  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    started = time.perf_counter()
    run_stages(work, "fetch", "prepare", "train", "evaluate", "export", "verify")
    total = time.perf_counter() - started
    trained = json.loads((work / "reports/train.json").read_text())
    metrics = json.loads((work / "reports/metrics.json").read_text())["test"]
    parity = json.loads((work / "reports/parity.json").read_text())
    exported = json.loads((work / "exported/metadata.json").read_text())
    return {
        "hyperparameters": {
            k: trained["hyperparameters"][k] for k in ("epochs", "batch_size", "learning_rate", "text")
        },
        "epochs_run": trained["epochs_run"],
        "test_accuracy": metrics["accuracy"],
        "test_macro_f1": metrics["macro_f1"],
        "training_seconds": trained["training_seconds"],
        "examples_per_second": trained["examples_per_second"],
        "precision": trained["devices"]["precision"],
        "plain_fit": plain_fit(work, trained),
        "parity_passed": parity["passed"],
        "parity": {
            fmt: {k: r[k] for k in ("max_abs_diff", "accuracy") if k in r} for fmt, r in parity["formats"].items()
        },
        "latency": parity["latency"]["engines"],
        "bytes": {name: info["bytes"] for name, info in exported["files"].items()},
        "pipeline_seconds": round(total, 1),
    }


def plain_fit(work: Path, trained: dict) -> dict:
    """The same model (built as train builds it, in the same precision, new weights) fitted with a
    plain `model.fit(x, y, validation_data=...)` on the splits' arrays for PLAIN_EPOCHS epochs: the
    texts' bytes go in, the model tokenizes them every step."""
    import keras

    from pipeline.model import build_model, load_keras_model
    from pipeline.prepared import PreparedData

    hyper, data = trained["hyperparameters"], PreparedData.open(work / "data/prepared")
    (x, y), validation = data.arrays("train"), data.arrays("val")
    vectorizer = load_keras_model(str(work / "models/model.keras")).layers[0]
    precision, vocabulary_size = trained["devices"]["precision"], hyper["text"]["vocabulary_size"]
    model = build_model(hyper["model"], data.meta.input_shape, data.meta.num_classes, [vectorizer], kind="text",
                        precision=precision, vocabulary_size=vocabulary_size)  # fmt: skip
    model.compile(
        keras.optimizers.Adam(hyper["learning_rate"]), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    started = time.perf_counter()
    model.fit(x, y, batch_size=hyper["batch_size"], epochs=PLAIN_EPOCHS, validation_data=validation, verbose=0)
    seconds = time.perf_counter() - started
    return {"epochs": PLAIN_EPOCHS, "seconds": round(seconds, 2),
            "examples_per_second": round(len(x) * PLAIN_EPOCHS / seconds, 1)}  # fmt: skip


def baselines(work: Path) -> dict:
    """TF-IDF + logistic regression on the same split as the pipeline's (its prepared data)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    from pipeline.prepared import PreparedData
    from pipeline.text import decode_text

    data = PreparedData.open(work / "data/prepared")
    splits = {split: data.arrays(split) for split in ("train", "test")}
    texts = {split: [decode_text(row) for row in x] for split, (x, _) in splits.items()}
    results = {}
    characters = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)
    for name, vectorizer in (("tfidf_words", TfidfVectorizer()), ("tfidf_chars", characters)):
        started = time.perf_counter()
        features = vectorizer.fit_transform(texts["train"])
        classifier = LogisticRegression(max_iter=2000).fit(features, splits["train"][1])
        predicted = classifier.predict(vectorizer.transform(texts["test"]))
        truth = splits["test"][1]
        results[name] = {
            "test_accuracy": float(accuracy_score(truth, predicted)),
            "test_macro_f1": float(f1_score(truth, predicted, average="macro")),
            "seconds": round(time.perf_counter() - started, 1),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--out", default=str(REPO / "reports/text.json"))
    args = parser.parse_args()
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {"tasks": {}}
    report["machine"] = {"cpu": cpu_name(), "cpus": os.cpu_count(), "platform": platform.platform()}
    with tempfile.TemporaryDirectory(prefix="bench-text-") as scratch:
        for task in args.tasks:
            data = lay_out(task, Path(scratch) / task)
            entry = report["tasks"].setdefault(task, {"presets": {}})
            for preset in args.presets:
                print(f"== {task} {preset}", flush=True)
                work = Path(scratch) / f"{task}-{preset}"
                entry["presets"][preset] = run_preset(preset, data, work)
                print(json.dumps(entry["presets"][preset]), flush=True)
                if "baselines" not in entry or preset == args.presets[0]:
                    entry["baselines"] = baselines(work)
                    print(json.dumps(entry["baselines"]), flush=True)
                entry["counts"] = json.loads((work / "reports/data.json").read_text())["counts"]
            out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
