"""Every preset, on a tiny data set of its kind, through the real stages in order:
fetch → prepare → train → evaluate → export → verify; then the ONNX model alone, as deployed.

Only `train.model` and the `data` section change between cases (plus 2 epochs, to stay quick):
the preset brings its own optimizer, batch size and normalisation.
"""

import json
import shutil

import numpy as np
import pytest
import yaml

from pipeline.classifier import OnnxClassifier
from pipeline.model import load_keras_model
from pipeline.prepared import PreparedData
from pipeline.presets import PRESETS

from helpers.commands import run, run_stages
from helpers.data import (
    write_cifar10_dataset,
    write_csv_dataset,
    write_idx_dataset,
    write_image_folder_dataset,
    write_text_folder_dataset,
    write_text_table_dataset,
)

DATA = {
    "idx": lambda d: write_idx_dataset(d),
    "cifar10": lambda d: write_cifar10_dataset(d),
    "image_folder_grey": lambda d: write_image_folder_dataset(d),
    "image_folder_rgb_no_test": lambda d: {
        **write_image_folder_dataset(d, size=32, rgb=True),
        "image_folder": {"test": None, "color_mode": "rgb", "image_size": [32, 32]},
    },
    "csv": lambda d: write_csv_dataset(d),
    "text_folder": lambda d: write_text_folder_dataset(d),
    "text_table_jsonl": lambda d: write_text_table_dataset(d, suffix=".jsonl"),
}
# Text: a vocabulary and texts the size of the tiny data sets (the presets' own are for real corpora).
TINY_TEXT = {"vocabulary_size": 64, "sequence_length": 12}  # the tiny texts are 8 words

CASES = [
    ("cnn", "idx"),
    ("mlp", "cifar10"),
    ("rnn", "idx"),
    ("keras_mlp", "idx"),
    ("mlp_128_64", "image_folder_grey"),
    ("lenet", "cifar10"),
    ("cnn4", "image_folder_rgb_no_test"),
    ("cnn2", "idx"),
    ("tabular_mlp", "csv"),
    ("text_cnn", "text_table_jsonl"),
    ("text_lstm", "text_folder"),
]


# Presets whose run through every stage is another file's subject (it goes on to deploy it).
ELSEWHERE = {"text_bag": "tests/test_text_pipeline.py"}


def test_every_preset_has_a_case():
    from helpers.commands import REPO

    assert {preset for preset, _ in CASES} | set(ELSEWHERE) == set(PRESETS)
    for preset, path in ELSEWHERE.items():
        assert f'"model": "{preset}"' in (REPO / path).read_text(), path


@pytest.mark.slow
@pytest.mark.parametrize("preset, data_kind", CASES)
def test_preset_runs_end_to_end_with_onnx_parity(preset, data_kind, tmp_path, monkeypatch, empty_mlflow_store):
    data = DATA[data_kind](tmp_path / "source")
    shutil.copy(empty_mlflow_store, tmp_path / "mlflow.db")
    params = {
        "data": data,
        "prepare": {"shard_size": 64},
        "train": {
            "model": preset,
            "epochs": 2,
            "shuffle_buffer": 256,
            **({"text": TINY_TEXT} if data_kind.startswith("text") else {}),
        },  # fmt: skip
        "evaluate": {"gate": {"min_accuracy": 0.0}, "worst_examples": 4},
        "export": {"calibration_size": 40},
        "verify": {"max_int8_drop": 1.0},
        "mlflow": {
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "experiment_name": "presets",
            "registered_model_name": f"tiny-{preset}",
        },
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run_stages(tmp_path, "fetch", "prepare", "train", "evaluate", "export", "verify")
    monkeypatch.chdir(tmp_path)

    hyper = PRESETS[preset].hyper
    trained = json.loads((tmp_path / "reports/train.json").read_text())
    assert trained["global_batch_size"] == hyper.batch_size
    parity = json.loads((tmp_path / "reports/parity.json").read_text())
    assert parity["passed"], parity["failures"]
    assert set(parity["formats"]) == {"keras", "saved_model", "onnx", "onnx_int8", "litert", "litert_int8",
                                      "mlflow_pyfunc"}  # fmt: skip
    for fmt in ("saved_model", "onnx", "litert", "mlflow_pyfunc"):  # all fed the same raw test inputs
        result = parity["formats"][fmt]
        assert result["max_abs_diff"] <= 1e-4 and result["argmax_agreement"] == 1.0, fmt

    # Deployed: onnxruntime with the model's own metadata (shape, class names) on the raw test inputs.
    prepared = PreparedData.open("data/prepared")
    meta = prepared.meta
    raw_inputs, _ = prepared.arrays("test")
    keras_probs = load_keras_model("models/model.keras")(raw_inputs).numpy()
    classifier = OnnxClassifier("exported/model.onnx")
    assert classifier.class_names == meta.class_names and classifier.input_shape == meta.input_shape
    onnx_probs = classifier.probabilities(raw_inputs)
    assert np.abs(onnx_probs - keras_probs).max() <= 1e-4
    assert (onnx_probs.argmax(1) == keras_probs.argmax(1)).all()
    figures = {p.name for p in (tmp_path / "reports/figures").iterdir()}
    assert ("worst_errors.png" in figures) == (meta.kind != "table")  # images, or texts: no table rows

    if meta.kind == "table":
        # The deployed table model reads a CSV with the training columns (labels and all) as it is.
        proc = run(["pipeline-predict", "--json", "--top-k", "1", "data/raw/test.csv"], tmp_path)
        lines = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [line["input"] for line in lines] == [f"data/raw/test.csv:{row}" for row in range(2, 62)]
        predicted = [line["predictions"][0]["class"] for line in lines]
        assert predicted == [meta.class_names[i] for i in keras_probs.argmax(1)]
