"""DVC experiments and MLflow pointing at each other: `dvc exp run -S`, a queue run two at a time in
temp copies, `dvc exp show`, `dvc exp apply`, and one MLflow run per experiment in the repo's store."""

import json
import time

import pytest
import yaml

from helpers.commands import REPO, committed_params, run, set_params
from helpers.writers import write_table

pytestmark = pytest.mark.slow


def experiments(repo) -> dict[str, dict]:
    """name -> {params, metrics} from `dvc exp show --json`."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for revision in exp.get("revs", []):
                data = revision.get("data") or {}
                metrics = data.get("metrics", {})
                found[revision.get("name") or exp.get("name")] = {
                    "params": data.get("params", {}).get("params.yaml", {}).get("data", {}),
                    "metrics": metrics.get("reports/metrics.json", {}).get("data", {}),
                    "parity": metrics.get("reports/parity.json", {}).get("data", {}),
                }
    return found


def test_experiments_each_become_one_tagged_mlflow_run(dvc_repo):
    from mlflow.tracking import MlflowClient

    set_params(dvc_repo, "train", epochs=2, early_stopping_patience=0)
    set_params(dvc_repo, "evaluate", gate={"min_accuracy": 0.0, "max_drop": None})  # variants: promote judges
    set_params(dvc_repo, "export", calibration_size=40)
    set_params(dvc_repo, "verify", max_int8_drop=1.0)
    run(["git", "commit", "-qam", "tiny sweep baseline"], dvc_repo)
    baseline = run(["git", "rev-parse", "HEAD"], dvc_repo).stdout.strip()

    run(["dvc", "exp", "run", "-n", "lr-high", "-S", "train.epochs=3", "-S", "train.learning_rate=0.01"], dvc_repo)
    for lr in ("0.003", "0.0003"):
        run(["dvc", "exp", "run", "--queue", "-n", f"lr-{lr}", "-S", f"train.learning_rate={lr}"], dvc_repo)
    run(["dvc", "queue", "start", "-j", "2"], dvc_repo)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], dvc_repo).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert "Failed" not in status, status + run(["dvc", "queue", "logs", "lr-0.003"], dvc_repo, check=False).stdout

    shown = experiments(dvc_repo)
    assert {"lr-high", "lr-0.003", "lr-0.0003"} <= set(shown), shown.keys()
    assert shown["lr-high"]["params"]["train"]["epochs"] == 3
    assert shown["lr-0.003"]["params"]["train"]["learning_rate"] == 0.003
    for name in ("lr-high", "lr-0.003", "lr-0.0003"):  # each evaluated on the whole test split, gate recorded
        assert shown[name]["metrics"]["test"]["examples"] == 40
        assert shown[name]["metrics"]["gate"]["passed"] is True

    # All three trained into the repo's own store, also the two that ran in temp copies.
    client = MlflowClient(f"sqlite:///{dvc_repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("source").experiment_id])  # the data set's name
    by_exp = {r.data.tags.get("dvc.experiment"): r for r in runs}
    assert {"lr-high", "lr-0.003", "lr-0.0003"} <= set(by_exp)
    assert len({r.info.run_id for r in runs}) == len(runs) == 3
    for name, mlrun in by_exp.items():
        assert mlrun.data.tags["dvc.baseline_rev"] == baseline
        assert mlrun.data.tags["verify.parity"] == "passed"
        assert mlrun.data.metrics["test.accuracy"] == pytest.approx(shown[name]["metrics"]["test"]["accuracy"])
        artifacts = client.list_artifacts(mlrun.info.run_id, "figures")
        assert artifacts, f"{name}: figures missing (artifacts of a temp copy lost?)"
    assert by_exp["lr-0.003"].data.params["train.learning_rate"] == "0.003"
    # Each registered as a version; promote, also in the temp copies, compared it with the champion.
    versions = client.search_model_versions("name='source-classifier'")
    assert len(versions) == 3 and all("promotion.decision" in v.tags for v in versions)
    promoted = {str(v.version) for v in versions if v.tags["promotion.decision"] == "champion"}
    assert "1" in promoted  # the first experiment's model: no champion before it
    champion = client.get_model_version_by_alias("source-classifier", "champion")  # raises when there is none
    assert str(champion.version) in promoted

    run(["dvc", "exp", "apply", "lr-0.003"], dvc_repo)
    applied = yaml.safe_load((dvc_repo / "params.yaml").read_text())
    assert applied["train"]["learning_rate"] == 0.003


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
