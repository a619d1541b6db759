"""The README's commands that switch the data or the runner, run as written through `dvc exp run`
(each one an experiment: tests/test_experiments.py proves how experiments and MLflow meet)."""

import json
import re

import pytest
import yaml

from helpers.commands import REPO, committed_params, experiments, run
from helpers.data import (
    write_cifar10_dataset,
    write_idx_dataset,
    write_image_folder_dataset,
    write_text_folder_dataset,
)
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


def write_topics_table(directory, n: int, seed: int = 0) -> str:
    """`directory`/topics.csv, a `text,label` table of tiny learnable texts, as scripts/fortunes.py
    writes the topics."""
    import csv

    import numpy as np

    from helpers.data import balanced_labels, make_texts

    topics = ["weather", "sport", "food", "computers"]
    labels = balanced_labels(n, len(topics), np.random.default_rng(seed))
    directory.mkdir(parents=True)
    with open(directory / "topics.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([text, topics[label]] for text, label in zip(make_texts(labels, seed), labels, strict=True))
    return str(directory)


def write_breast_cancer_table(directory) -> str:
    from sklearn.datasets import load_breast_cancer

    cancer = load_breast_cancer()
    directory.mkdir(parents=True)
    diagnosis = [str(cancer.target_names[i]) for i in cancer.target]
    write_table(directory / "train.csv", cancer.data, diagnosis, list(cancer.feature_names), label_column="diagnosis")
    return str(directory)


# The local copy each README command's data.source is pointed at (this machine is offline), in the
# command's format: tiny sets, or scikit-learn's copy of the Wisconsin breast-cancer data (569 rows,
# 30 features) as a user would bring it; the texts are tiny ones in the fortune data sets' layouts.
# And what each must reach (the synthetic sets are easy; scikit-learn's own logistic regression gets
# ~0.96 on the breast-cancer split).
SOURCES = {
    "idx": (lambda d: write_idx_dataset(d, n_train=600, n_test=100, n_classes=10)["source"], 0.9),
    "cifar10": (lambda d: write_cifar10_dataset(d, n_train=(200,) * 5, n_test=100)["source"], 0.4),
    "image_folder": (
        lambda d: write_image_folder_dataset(d, n_train=160, n_test=4, n_classes=2, rgb=True)["source"],
        0.9,
    ),  # fmt: skip
    "csv": (write_breast_cancer_table, 0.94),
    "text_folder": (lambda d: write_text_folder_dataset(d, n_train=400, n_test=4)["source"], 0.9),
    "text_table": (lambda d: write_topics_table(d, 400), 0.9),
}


def data_format(command: list[str]) -> str:
    return next((a.split("=", 1)[1] for a in command if a.startswith("data.format=")), "idx")


def test_every_data_switch_command_of_the_readme_has_a_local_source():
    assert sorted(data_format(c) for c in readme_data_switch_commands()) == sorted(SOURCES)


@pytest.mark.parametrize("fmt", SOURCES)
def test_the_readmes_data_switch_command_runs_as_written(fmt, dvc_repo, tmp_path):
    """The README's command for MNIST, CIFAR-10, an image folder, a CSV table or a text layout,
    literally, with only data.source pointed at a local copy in its format: it runs the pipeline
    through its own gate (`evaluate`: what follows is the same for every format, and
    test_presets_pipeline and test_text_pipeline take each kind of data through export and parity)
    and leaves the workspace's params alone (`--temp`). The image folder and the table have two
    classes, and two-class tasks also report ROC AUC."""
    (command,) = [c for c in readme_data_switch_commands() if data_format(c) == fmt]
    write, floor = SOURCES[fmt]
    source = write(tmp_path / "local")
    # The repo runs the project's own defaults (the cnn preset, its gate), as a fresh clone does.
    params = yaml.safe_load((dvc_repo / "params.yaml").read_text())
    project = committed_params()
    params["train"] = project["train"]
    params["data"] = project["data"]  # every format's section, Fashion-MNIST's checksums included
    (dvc_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "commit", "-qam", "project defaults"], dvc_repo)
    before = (dvc_repo / "params.yaml").read_text()

    local = [f"data.source={source}" if a.startswith("data.source=") else a for a in command]
    proc = run([*local[:3], "-n", f"readme-{fmt}", *local[3:], "evaluate"], dvc_repo, check=False)
    assert proc.returncode == 0, f"{' '.join(command)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert (dvc_repo / "params.yaml").read_text() == before  # --temp: the workspace stays as it is
    metrics = experiments(dvc_repo)[f"readme-{fmt}"]["metrics"]
    test = metrics["test"]
    assert test["accuracy"] >= floor, test["accuracy"]
    assert metrics["gate"]["passed"], metrics["gate"]
    if fmt in ("image_folder", "csv"):
        assert test["task"]["type"] == "binary" and test["roc_auc"] >= 0.9, test
    if fmt == "csv":
        assert test["task"]["positive_class"] == "malignant"


def test_the_readmes_beam_command_runs_as_written_offline(reproduced_copy):
    """README, Scale: `prepare` on Apache Beam's runner in multi-process mode, the network cut, run
    as written up to its stage (that train reads Beam's output as it reads the local runner's is
    test_prepare's: both runners give the same splits)."""
    import shlex

    from helpers.commands import offline

    line = next(line for line in (REPO / "README.md").read_text().splitlines()
                if line.startswith("dvc exp run -S prepare.runner=beam"))  # fmt: skip
    proc = run(offline([*shlex.split(line), "prepare"]), reproduced_copy, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.findall(r"Running stage '(\w+)'", proc.stdout) == ["prepare"], proc.stdout
    params = yaml.safe_load((reproduced_copy / "params.yaml").read_text())["prepare"]
    assert params["runner"] == "beam" and params["beam_options"][0] == "--direct_running_mode=multi_processing"
    data = json.loads((reproduced_copy / "reports/data.json").read_text())
    assert data["counts"] == {"train": 108, "val": 12, "test": 40}
