"""Every task shape users bring, through the real stages on data made here: skewed classes with and
without class weights, a thousand classes in a table, a hundred class folders of images. (Two
classes run through `dvc repro` as the README's data switches: tests/test_readme_commands.py.)"""

import csv
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from helpers.commands import run_stages
from helpers.writers import write_table

pytestmark = pytest.mark.slow

QUIET_GATE = {"gate": {"min_accuracy": 0.0, "max_drop": None}}


def project(directory, data: dict, train: dict, **sections) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    params = {
        "data": data,
        "train": train,
        "evaluate": QUIET_GATE,
        "mlflow": {"tracking_uri": f"sqlite:///{directory / 'mlflow.db'}"},
        **sections,
    }
    (directory / "params.yaml").write_text(yaml.safe_dump(params))


def skewed_table(directory, rng) -> dict:
    """500 common examples and 20 rare ones whose features overlap the common class's."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, (common, rare) in (("train.csv", (500, 20)), ("test.csv", (250, 10))):
        x = np.concatenate([rng.normal(0, 1, (common, 2)), rng.normal(1.5, 1, (rare, 2))])
        write_table(directory / name, x, ["common"] * common + ["rare"] * rare, ["f0", "f1"])
    return {"format": "csv", "source": str(directory)}


def test_class_weights_lift_the_rare_class(tmp_path, capsys):
    data = skewed_table(tmp_path / "source", np.random.default_rng(0))
    results = {}
    for weighting in (None, "balanced"):
        where = tmp_path / str(weighting)
        project(where, data, {"model": "tabular_mlp", "class_weight": weighting, "epochs": 30})
        run_stages(where, "fetch", "prepare", "train", "evaluate")
        results[weighting] = json.loads((where / "reports/metrics.json").read_text())["test"]
        trained = json.loads((where / "reports/train.json").read_text())
        if weighting:  # n / (classes × count) of the 450 common and 18 rare training examples
            assert trained["class_weights"] == [round(468 / (2 * 450), 6), round(468 / (2 * 18), 6)]
        else:
            assert trained["class_weights"] is None
    assert "prepare: warning: skewed classes: 'rare' has 18 training examples, 'common' 450 (1:25)" in (
        capsys.readouterr().err
    )
    plain, weighted = results[None], results["balanced"]
    assert plain["task"]["positive_class"] == "rare"  # the second class name
    assert weighted["per_class"]["rare"]["recall"] >= plain["per_class"]["rare"]["recall"] + 0.2
    assert weighted["balanced_accuracy"] >= plain["balanced_accuracy"] + 0.1
    assert weighted["confusion"]["true_positives"] > plain["confusion"]["true_positives"]


def test_the_multi_worker_loop_weighs_classes_as_fit_does(tmp_path):
    from pipeline.params import load_params
    from pipeline.prepared import PreparedData
    from pipeline.presets import filled_from_preset
    from pipeline.training import train

    data = skewed_table(tmp_path / "source", np.random.default_rng(1))
    project(tmp_path, data, {"model": "tabular_mlp", "class_weight": "balanced", "epochs": 3,
                             "early_stopping_patience": 0})  # fmt: skip
    run_stages(tmp_path, "fetch", "prepare")
    p = filled_from_preset(load_params(tmp_path / "params.yaml").train)
    prepared = PreparedData.open(tmp_path / "data/prepared")
    fit, custom = (train(p, prepared, tmp_path / loop, verbose=0, loop=loop) for loop in ("fit", "custom"))
    for a, b in zip(fit.model.get_weights(), custom.model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(fit.history, custom.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["accuracy"] == pytest.approx(b["accuracy"])


def test_a_thousand_classes_train_evaluate_export_and_verify(tmp_path):
    """A table of 1,000 classes (12 training rows each): the report keeps its size, top-k its sense."""
    rng = np.random.default_rng(0)
    n, features = 1000, 16
    centres = rng.normal(0, 3, (n, features))
    source = tmp_path / "source"
    source.mkdir()
    names = [f"part-{i:04d}" for i in range(n)]
    for file, per_class in (("train.csv", 12), ("test.csv", 3)):
        labels = np.repeat(np.arange(n), per_class)
        x = centres[labels] + rng.normal(0, 1, (len(labels), features))
        write_table(source / file, x, [names[i] for i in labels], [f"f{i}" for i in range(features)])
    project(
        tmp_path / "p",
        {"format": "csv", "source": str(source)},
        {"model": [{"Dense": {"units": 128, "activation": "relu"}}], "epochs": 8, "batch_size": 64,
         "learning_rate": 0.003, "early_stopping_patience": 0},
        export={"calibration_size": 200},
    )  # fmt: skip
    run_stages(tmp_path / "p", "fetch", "prepare", "train", "evaluate", "export", "verify")
    reports = tmp_path / "p/reports"
    test = json.loads((reports / "metrics.json").read_text())["test"]
    assert test["task"]["classes"] == n and test["accuracy"] > 0.5
    assert test["accuracy"] <= test["top2_accuracy"] <= test["top5_accuracy"]
    assert "per_class" not in test and len(test["worst_classes"]) == 10
    with open(reports / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n and rows[0]["class"] == "part-0000" and sum(int(r["support"]) for r in rows) == 3 * n
    with Image.open(reports / "figures/confusion_matrix.png") as image:  # the largest confusions, bounded
        assert max(image.size) < 1500
    assert not (reports / "figures/worst_errors.png").exists()  # table rows are no pictures
    parity = json.loads((reports / "parity.json").read_text())
    assert parity["passed"] and parity["formats"]["onnx"]["argmax_agreement"] == 1.0
    card = (tmp_path / "p/reports/model_card.md").read_text()
    assert "The 10 weakest classes by F1 (every class: `reports/per_class.csv`)" in card
    assert "(1,000 in all: `metadata.json`)" in card and "top-5 accuracy" in card


def test_a_hundred_class_folders_of_images(tmp_path):
    rng = np.random.default_rng(0)
    n = 100
    for part, count in (("train", 6), ("test", 2)):
        for c in range(n):
            folder = tmp_path / "source" / part / f"kind {c:03d}"
            folder.mkdir(parents=True)
            for i in range(count):  # each class its own 4×4 block lit on a 16×16 grey image
                image = rng.integers(0, 40, (16, 16), dtype=np.uint8)
                image[(c // 10) * 1 : (c // 10) * 1 + 6, (c % 10) : (c % 10) + 6] = 220
                Image.fromarray(image).save(folder / f"{i}.png")
    project(
        tmp_path / "p",
        {"format": "image_folder", "source": str(tmp_path / "source"),
         "image_folder": {"image_size": [16, 16]}},
        {"model": [{"Conv2D": {"filters": 16, "kernel_size": 3, "activation": "relu"}}, {"Flatten": {}}],
         "epochs": 10, "batch_size": 16, "learning_rate": 0.003, "early_stopping_patience": 0},
        prepare={"val_fraction": 0.2},
        export={"calibration_size": 100},
    )  # fmt: skip
    run_stages(tmp_path / "p", "fetch", "prepare", "train", "evaluate", "export")
    reports = tmp_path / "p/reports"
    test = json.loads((reports / "metrics.json").read_text())["test"]
    assert test["task"] == {"type": "multiclass", "classes": n, "left_out": test["task"]["left_out"]}
    assert test["examples"] == 2 * n and test["top5_accuracy"] >= test["accuracy"] > 0.2
    for figure in ("confusion_matrix.png", "worst_errors.png"):
        with Image.open(reports / "figures" / figure) as image:
            assert max(image.size) < 1500, figure
    metadata = json.loads((tmp_path / "p/exported/metadata.json").read_text())
    assert len(metadata["class_names"]) == n and metadata["class_names"][7] == "kind 007"
