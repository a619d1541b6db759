"""DVC experiments and MLflow pointing at each other: `dvc exp run --queue -S`, the queue run two at
a time in temp copies (`dvc exp run --run-all -j 2`, as the README shows), `dvc exp show`, `dvc exp
apply`, and one MLflow run per experiment in the repo's store. (`dvc exp run -S` in the workspace:
test_promote; `--temp`: test_readme_commands.)"""

import pytest
import yaml

from helpers.commands import experiments, run, set_params

pytestmark = pytest.mark.slow


def test_experiments_each_become_one_tagged_mlflow_run(dvc_repo):
    from mlflow.tracking import MlflowClient

    set_params(dvc_repo, "train", epochs=2, early_stopping_patience=0)
    set_params(dvc_repo, "evaluate", gate={"min_accuracy": 0.0, "max_drop": None})  # variants: promote judges
    set_params(dvc_repo, "export", calibration_size=40)
    set_params(dvc_repo, "verify", max_int8_drop=1.0)
    run(["git", "commit", "-qam", "tiny sweep baseline"], dvc_repo)
    baseline = run(["git", "rev-parse", "HEAD"], dvc_repo).stdout.strip()

    queue = ["dvc", "exp", "run", "--queue"]
    run([*queue, "-n", "lr-high", "-S", "train.epochs=3", "-S", "train.learning_rate=0.01"], dvc_repo)
    run([*queue, "-n", "lr-0.003", "-S", "train.learning_rate=0.003"], dvc_repo)
    # Two at a time, waiting for both (README: Experiments).
    ran = run(["dvc", "exp", "run", "--run-all", "-j", "2"], dvc_repo, check=False)
    status = run(["dvc", "queue", "status"], dvc_repo).stdout
    assert ran.returncode == 0 and "Failed" not in status, f"{status}\n{ran.stdout[-3000:]}\n{ran.stderr[-3000:]}"
    assert status.count("Success") == 2, status

    shown = experiments(dvc_repo)
    assert {"lr-high", "lr-0.003"} <= set(shown), shown.keys()
    assert shown["lr-high"]["params"]["train"]["epochs"] == 3
    assert shown["lr-0.003"]["params"]["train"]["learning_rate"] == 0.003
    for name in ("lr-high", "lr-0.003"):  # each evaluated on the whole test split, gate recorded
        assert shown[name]["metrics"]["test"]["examples"] == 40
        assert shown[name]["metrics"]["gate"]["passed"] is True

    # Both trained into the repo's own store, though they ran in temp copies.
    client = MlflowClient(f"sqlite:///{dvc_repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("source").experiment_id])  # the data set's name
    by_exp = {r.data.tags.get("dvc.experiment"): r for r in runs}
    assert {"lr-high", "lr-0.003"} <= set(by_exp)
    assert len({r.info.run_id for r in runs}) == len(runs) == 2
    for name, mlrun in by_exp.items():
        assert mlrun.data.tags["dvc.baseline_rev"] == baseline
        assert mlrun.data.tags["verify.parity"] == "passed"
        assert mlrun.data.metrics["test.accuracy"] == pytest.approx(shown[name]["metrics"]["test"]["accuracy"])
        artifacts = client.list_artifacts(mlrun.info.run_id, "figures")
        assert artifacts, f"{name}: figures missing (artifacts of a temp copy lost?)"
    assert by_exp["lr-0.003"].data.params["train.learning_rate"] == "0.003"
    # Each registered as a version; promote, in the temp copies two at a time, compared it with the
    # champion: the first to get there found none and became it.
    versions = client.search_model_versions("name='source-classifier'")
    assert len(versions) == 2 and all("promotion.decision" in v.tags for v in versions)
    promoted = {str(v.version) for v in versions if v.tags["promotion.decision"] == "champion"}
    assert promoted
    champion = client.get_model_version_by_alias("source-classifier", "champion")  # raises when there is none
    assert str(champion.version) in promoted

    run(["dvc", "exp", "apply", "lr-0.003"], dvc_repo)
    applied = yaml.safe_load((dvc_repo / "params.yaml").read_text())
    assert applied["train"]["learning_rate"] == 0.003
