"""The README's commands that switch the data or the runner, run as written through `dvc exp run`
(each one an experiment: tests/test_experiments.py proves how experiments and MLflow meet)."""

import json

import pytest
import yaml

from helpers.commands import REPO, committed_params, experiments, run
from helpers.writers import write_table

pytestmark = pytest.mark.slow


def readme_data_switch_commands() -> list[list[str]]:
    """Every `dvc exp run --temp -S data.…` command of the README, as the shell would split it."""
    import shlex

    from helpers.commands import REPO

    lines = (REPO / "README.md").read_text().splitlines()
    commands, current = [], ""
    for line in lines:
        if current or line.startswith("dvc exp run --temp -S data."):
            current += line.rstrip("\\").strip() + " "
            if not line.endswith("\\"):
                commands.append(shlex.split(current))
                current = ""
    return commands


def write_topics_table(path, n: int, seed: int = 0) -> None:
    """A `text,label` CSV table of tiny learnable texts, as scripts/fortunes.py writes the topics."""
    import csv

    import numpy as np

    from helpers.data import balanced_labels, make_texts

    topics = ["weather", "sport", "food", "computers"]
    labels = balanced_labels(n, len(topics), np.random.default_rng(seed))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([text, topics[label]] for text, label in zip(make_texts(labels, seed), labels, strict=True))


def test_the_readmes_data_switch_commands_run_as_written(dvc_repo, tmp_path):
    """The README's commands for MNIST, CIFAR-10, an image folder, a CSV table and the two text layouts,
    literally, with only data.source pointed at local copies in each format (this machine is offline;
    the texts are tiny ones in the fortune data sets' layouts): each runs the pipeline through its own
    gate (`evaluate`: what follows is the same for every format, and test_presets_pipeline and
    test_text_pipeline take each kind of data through export and parity) and leaves the workspace's
    params alone (`--temp`). The image
    folder and the table have two classes: the table is scikit-learn's copy of the Wisconsin
    breast-cancer data (569 rows, 30 features), as a user would bring it."""
    from sklearn.datasets import load_breast_cancer

    from helpers.data import (
        write_cifar10_dataset,
        write_idx_dataset,
        write_image_folder_dataset,
        write_text_folder_dataset,
    )

    cancer = load_breast_cancer()
    (tmp_path / "breast-cancer").mkdir()
    diagnosis = [str(cancer.target_names[i]) for i in cancer.target]
    write_table(tmp_path / "breast-cancer/train.csv", cancer.data, diagnosis, list(cancer.feature_names),
                label_column="diagnosis")  # fmt: skip
    sources = {
        "idx": write_idx_dataset(tmp_path / "mnist", n_train=600, n_test=100, n_classes=10)["source"],
        "cifar10": write_cifar10_dataset(tmp_path / "cifar", n_train=(200,) * 5, n_test=100)["source"],
        "image_folder": write_image_folder_dataset(
            tmp_path / "cats-vs-dogs", n_train=600, n_test=4, n_classes=2, rgb=True
        )["source"],
        "csv": str(tmp_path / "breast-cancer"),
        "text_folder": write_text_folder_dataset(tmp_path / "languages", n_train=400, n_test=4)["source"],
        "text_table": str(tmp_path / "fortunes"),
    }
    (tmp_path / "fortunes").mkdir()
    write_topics_table(tmp_path / "fortunes/topics.csv", 400)
    # What each must reach (the synthetic sets are easy; scikit-learn's own logistic regression gets
    # ~0.96 on the breast-cancer split); two-class tasks also report ROC AUC.
    floors = {"idx": 0.9, "cifar10": 0.4, "image_folder": 0.9, "csv": 0.94, "text_folder": 0.9, "text_table": 0.9}
    # The repo runs the project's own defaults (the cnn preset, its gate), as a fresh clone does.
    params = yaml.safe_load((dvc_repo / "params.yaml").read_text())
    project = committed_params()
    params["train"] = project["train"]
    params["data"] = project["data"]  # every format's section, Fashion-MNIST's checksums included
    (dvc_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "commit", "-qam", "project defaults"], dvc_repo)
    before = (dvc_repo / "params.yaml").read_text()

    commands = readme_data_switch_commands()
    names = {}
    for command in commands:
        fmt = next((a.split("=", 1)[1] for a in command if a.startswith("data.format=")), "idx")
        local = [f"data.source={sources[fmt]}" if a.startswith("data.source=") else a for a in command]
        names[fmt] = f"readme-{fmt}"
        proc = run([*local[:3], "-n", names[fmt], *local[3:], "evaluate"], dvc_repo, check=False)
        assert proc.returncode == 0, f"{' '.join(command)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        assert (dvc_repo / "params.yaml").read_text() == before  # --temp: the workspace stays as it is
    assert set(names) == {"idx", "cifar10", "image_folder", "csv", "text_folder", "text_table"}
    shown = experiments(dvc_repo)
    for fmt, name in names.items():
        test = shown[name]["metrics"]["test"]
        assert test["accuracy"] >= floors[fmt], (fmt, test["accuracy"])
        assert shown[name]["metrics"]["gate"]["passed"], (fmt, shown[name]["metrics"]["gate"])
        if fmt in ("image_folder", "csv"):
            assert test["task"]["type"] == "binary" and test["roc_auc"] >= 0.9, (fmt, test)
    assert shown[names["csv"]]["metrics"]["test"]["task"]["positive_class"] == "malignant"


def test_the_readmes_beam_command_runs_as_written_offline(reproduced_copy):
    """README, Scale: `prepare` on Apache Beam's runner in multi-process mode, the network cut; the
    pipeline goes on from its output (Beam may order the examples otherwise, so train reruns)."""
    import shlex

    from helpers.commands import offline

    line = next(line for line in (REPO / "README.md").read_text().splitlines()
                if line.startswith("dvc exp run -S prepare.runner=beam"))  # fmt: skip
    proc = run(offline(shlex.split(line)), reproduced_copy, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Running stage 'prepare'" in proc.stdout and "promote: " in proc.stdout
    params = yaml.safe_load((reproduced_copy / "params.yaml").read_text())["prepare"]
    assert params["runner"] == "beam" and params["beam_options"][0] == "--direct_running_mode=multi_processing"
    data = json.loads((reproduced_copy / "reports/data.json").read_text())
    assert data["counts"] == {"train": 108, "val": 12, "test": 40}
