"""Champion / challenger: the comparison's numbers, and the real pipeline moving (or not moving) the
`champion` alias in a real MLflow registry, the rollback command, and a second clone's run files."""

import json

import numpy as np
import pytest

from pipeline.params import PromoteParams
from pipeline.promote import compare, mcnemar_exact

from helpers.commands import run, set_params


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_pairs():
    from scipy.stats import binomtest

    champion = np.array([True] * 80 + [True] * 3 + [False] * 12 + [False] * 5)
    challenger = np.array([True] * 80 + [False] * 3 + [True] * 12 + [False] * 5)
    result = mcnemar_exact(champion, challenger)
    assert (result["champion_only_correct"], result["challenger_only_correct"]) == (3, 12)
    assert result["p_value"] == pytest.approx(binomtest(3, 15, 0.5).pvalue)


def test_checks_compare_accuracy_per_class_f1_and_significance():
    labels = np.array([0] * 50 + [1] * 50)
    champion = labels.copy()
    champion[:10] = 1  # 10 errors in class 0
    better = labels.copy()
    better[:2] = 1
    result = compare(labels, champion, better, ["a", "b"], PromoteParams())
    assert result["passed"] and result["accuracy"] == {"champion": 0.9, "challenger": 0.98}
    assert result["checks"]["mcnemar"]["challenger_only_correct"] == 8
    assert result["checks"]["mcnemar"]["significant_improvement"]  # 8 against 0: p = 2^-7

    worse_in_b = labels.copy()
    worse_in_b[:10] = 1
    worse_in_b[50:53] = 0  # same errors in a, three more in b
    result = compare(labels, champion, worse_in_b, ["a", "b"], PromoteParams(max_drop=0.05))
    assert result["checks"]["accuracy"]["passed"]  # 0.03 below, within max_drop 0.05
    assert not result["checks"]["class_f1"]["passed"] and result["checks"]["class_f1"]["worst_class"] == "b"
    assert not result["passed"]

    tie = compare(labels, champion, champion, ["a", "b"], PromoteParams(require_significant=True))
    assert not tie["passed"] and tie["checks"]["mcnemar"]["p_value"] == 1.0


@pytest.mark.slow
def test_champion_moves_only_for_a_better_challenger_and_rolls_back(dvc_repo, tmp_path):
    from mlflow.tracking import MlflowClient

    set_params(dvc_repo, "train", epochs=6, learning_rate=0.01, early_stopping_patience=0)
    set_params(dvc_repo, "evaluate", gate={"min_accuracy": 0.5, "max_drop": 0.02, "baseline": "champion"})
    set_params(dvc_repo, "export", calibration_size=60)
    run(["git", "commit", "-qam", "tiny params"], dvc_repo)
    run(["dvc", "repro"], dvc_repo)
    client = MlflowClient(f"sqlite:///{dvc_repo / 'mlflow.db'}")
    name = "source-classifier"
    first = json.loads((dvc_repo / "reports/metrics.json").read_text())["test"]["accuracy"]
    assert first >= 0.9 and str(client.get_model_version_by_alias(name, "champion").version) == "1"

    # A deliberately worse challenger (one epoch at a tiny learning rate) that the gate lets through.
    worse = run(
        ["dvc", "exp", "run", "-S", "train.epochs=1", "-S", "train.learning_rate=0.00001",
         "-S", "evaluate.gate.min_accuracy=0", "-S", "evaluate.gate.max_drop=null"],
        dvc_repo,
    )  # fmt: skip
    assert "promote: source-classifier v2 kept champion v1 (accuracy" in worse.stdout
    assert "Downloading artifacts" not in worse.stderr + worse.stdout  # MLflow's progress bar, off
    decision = json.loads((dvc_repo / "reports/promotion.json").read_text())
    assert not decision["promoted"] and decision["champion_after"] == "1"
    assert decision["test_sha256"] == decision["champion_test_sha256"]
    assert decision["accuracy"]["champion"] == first and decision["accuracy"]["challenger"] < first
    mcnemar = decision["checks"]["mcnemar"]
    assert mcnemar["champion_only_correct"] > mcnemar["challenger_only_correct"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"
    assert client.get_model_version(name, "2").tags["promotion.decision"] == "rejected"
    assert client.get_model_version(name, "1").tags["promotion.v2"].startswith("kept against v2: accuracy")
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], dvc_repo).stdout)[""]["data"]
    assert shown["reports/promotion.json"]["data"]["promoted"] is False

    # By hand, then the documented rollback; a first champion has nothing to roll back to.
    assert "champion is now v2" in run(["python", "-m", "pipeline.promote", "--champion", "2"], dvc_repo).stdout
    assert "champion is now v1" in run(["python", "-m", "pipeline.promote", "--rollback"], dvc_repo).stdout
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    again = run(["python", "-m", "pipeline.promote", "--rollback"], dvc_repo, check=False)
    assert again.returncode == 1
    assert again.stderr.strip() == f"error: {name} v1 replaced no earlier champion: nothing to roll back to"


@pytest.mark.slow
def test_a_second_clone_reaches_the_run_through_the_shared_store_or_stops_with_one_line(dvc_repo, tmp_path):
    set_params(dvc_repo, "evaluate", gate={"min_accuracy": 0.0})
    run(["dvc", "repro", "train"], dvc_repo)
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], dvc_repo)
    run(["dvc", "push", "-q"], dvc_repo)
    run(["git", "add", "-A"], dvc_repo)
    run(["git", "commit", "-qm", "trained"], dvc_repo)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(dvc_repo), str(clone)], tmp_path)
    run(["dvc", "pull", "-q", "--with-deps", "train"], clone)

    alone = run(["python", "-m", "pipeline.evaluate"], clone, check=False)
    assert alone.returncode == 1
    (line,) = alone.stderr.strip().splitlines()
    run_id = json.loads((clone / "models/mlflow_run.json").read_text())["run_id"]
    assert line.startswith(f"error: models/mlflow_run.json: MLflow run {run_id} is in the embedded store")
    assert not (clone / "mlflow.db").exists() and not (clone / "reports/metrics.json").exists()

    # The team's store (here the first clone's, as a server would serve it): evaluate logs into the run.
    store = f"sqlite:///{dvc_repo / 'mlflow.db'}"
    shared = run(["python", "-m", "pipeline.evaluate"], clone, MLFLOW_TRACKING_URI=store)
    assert shared.stdout.startswith("evaluate: test accuracy")
    assert not (clone / "mlflow.db").exists()
