"""Champion / challenger: the comparison's numbers, and the real pipeline moving (or not moving) the
`champion` alias in a real MLflow registry, the rollback command, and a second clone's run files."""

import json

import numpy as np
import pytest

from pipeline.params import PromoteParams
from pipeline.promote import compare, mcnemar_exact

from helpers.commands import run, stage_argv


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
def test_champion_moves_only_for_a_better_challenger_and_rolls_back(reproduced_copy):
    from mlflow.tracking import MlflowClient

    repo = reproduced_copy
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    name = "source-classifier"
    first = json.loads((repo / "reports/metrics.json").read_text())["test"]["accuracy"]
    assert first >= 0.9 and str(client.get_model_version_by_alias(name, "champion").version) == "1"

    # A deliberately worse challenger (one epoch at a tiny learning rate) that the gate lets through.
    worse = run(
        ["dvc", "exp", "run", "-S", "train.epochs=1", "-S", "train.learning_rate=0.00001",
         "-S", "evaluate.gate.min_accuracy=0", "-S", "evaluate.gate.max_drop=null"],
        repo,
    )  # fmt: skip
    assert "promote: source-classifier v2 kept champion v1 (accuracy" in worse.stdout
    assert "Downloading artifacts" not in worse.stderr + worse.stdout  # MLflow's progress bar, off
    decision = json.loads((repo / "reports/promotion.json").read_text())
    assert not decision["promoted"] and decision["champion_after"] == "1"
    assert decision["test_sha256"] == decision["champion_test_sha256"]
    assert decision["accuracy"]["champion"] == first and decision["accuracy"]["challenger"] < first
    mcnemar = decision["checks"]["mcnemar"]
    assert mcnemar["champion_only_correct"] > mcnemar["challenger_only_correct"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"
    assert client.get_model_version(name, "2").tags["promotion.decision"] == "rejected"
    assert client.get_model_version(name, "1").tags["promotion.v2"].startswith("kept against v2: accuracy")
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)[""]["data"]
    assert shown["reports/promotion.json"]["data"]["promoted"] is False

    # By hand, then the documented rollback; a first champion has nothing to roll back to.
    by_hand = ["python", "-m", "pipeline.promote", "--registration", "reports/export.json"]
    assert "champion is now v2" in run([*by_hand, "--champion", "2"], repo).stdout
    assert "champion is now v1" in run([*by_hand, "--rollback"], repo).stdout
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    again = run([*by_hand, "--rollback"], repo, check=False)
    assert again.returncode == 1
    assert again.stderr.strip() == f"error: {name} v1 replaced no earlier champion: nothing to roll back to"


@pytest.mark.slow
def test_a_second_clone_gets_the_outputs_through_a_dvc_remote_and_reaches_the_run_or_stops(reproduced_copy, tmp_path):
    """`dvc push` to a remote, `git clone` and `dvc pull` elsewhere: every output back without
    retraining, nothing left to run; the run files name the embedded store relative to the project,
    so without the team's store `evaluate` stops with one line and creates none, and with it (here
    the first repo's store, as a server would serve it) it logs into the same run."""
    repo = reproduced_copy
    run(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote")], repo)
    run(["dvc", "push", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "pipeline results"], repo)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "exported").exists()
    run(["dvc", "pull", "-q"], clone)
    assert (clone / "exported/model.onnx").read_bytes() == (repo / "exported/model.onnx").read_bytes()
    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone).stdout
    assert "Running stage" not in run(["dvc", "repro"], clone).stdout  # nothing retrained

    alone = run(stage_argv("evaluate"), clone, check=False)
    assert alone.returncode == 1
    (line,) = alone.stderr.strip().splitlines()
    run_id = json.loads((clone / "models/mlflow_run.json").read_text())["run_id"]
    assert line.startswith(f"error: models/mlflow_run.json: MLflow run {run_id} is in the embedded store")
    assert not (clone / "mlflow.db").exists()
    shared = run(stage_argv("evaluate"), clone, MLFLOW_TRACKING_URI=f"sqlite:///{repo / 'mlflow.db'}")
    assert shared.stdout.startswith("evaluate: test accuracy")
    assert not (clone / "mlflow.db").exists()
