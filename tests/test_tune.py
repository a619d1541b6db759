"""The `tune` stage: its params validated like every key, off by default (no search, nothing heavy
imported), a search that prunes and logs every trial as an MLflow run nested under the search's run,
the best values that `train` takes, a study resumed after an interruption, the pruning hook on both
training loops, and the stage in DVC: a second `dvc repro` does nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial

import pytest
import yaml

from conftest import make_dvc_repo
from helpers.commands import REPO, run, run_stages, set_params, stage_argv, tool_env

pytestmark = pytest.mark.slow

# A search the tiny data decides quickly: a learning rate that learns and one that cannot, so the
# pruner has trials to stop, and two batch sizes.
SPACE = {"learning_rate": {"choices": [0.03, 1e-7]}, "batch_size": {"choices": [8, 16]}}
SEARCH = {"enabled": True, "space": SPACE, "trials": 6, "epochs": 3, "startup_trials": 2, "seed": 4, "pruner": "median"}


@pytest.fixture
def searching(project):
    """The `project` with a search on: six trials of at most 3 epochs, every epoch run unless pruned."""
    set_params(project, "train", epochs=3, early_stopping_patience=0)
    set_params(project, "tune", **SEARCH)
    return project


def tracking_uri(project) -> str:
    return yaml.safe_load((project / "params.yaml").read_text())["mlflow"]["tracking_uri"]


def test_a_search_prunes_logs_nested_runs_and_train_takes_its_best(searching):
    import optuna
    from mlflow.tracking import MlflowClient

    run_stages(searching, "tune")
    report = json.loads((searching / "reports/search.json").read_text())
    store = tracking_uri(searching)
    study = optuna.load_study(study_name=report["study"], storage=store.replace("mlflow.db", "mlflow.optuna.db"))
    trials = study.get_trials()
    states = [t.state.name for t in trials]
    assert len(trials) == 6 and set(states) == {"COMPLETE", "PRUNED"}, states
    assert report["trials"] == {"complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
                                "failed": 0, "budget": 6}  # fmt: skip
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert all(t.params["learning_rate"] == 1e-7 and len(t.intermediate_values) < 3 for t in pruned)
    assert report["epochs"]["run"] == sum(t.user_attrs["epochs_run"] for t in trials) < 18
    assert report["epochs"]["without_pruning"] == 18

    best = yaml.safe_load((searching / "models/tuned.yaml").read_text())
    assert best["train"] == {"learning_rate": 0.03, "batch_size": study.best_trial.params["batch_size"]}
    assert best["search"]["study"] == report["study"] and best["search"]["trial"] == study.best_trial.number

    client = MlflowClient(store)
    parent = client.get_run(best["search"]["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["tune.best_trial"] == str(study.best_trial.number)
    assert parent.data.metrics["trials.pruned"] == len(pruned)
    assert parent.data.params["tune.space.learning_rate.choices"] == "[0.03, 1e-07]"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "search")}
    assert {"search/optimization_history.png", "search/param_importances.png", "search/space.json",
            "search/trials.csv"} <= artifacts  # fmt: skip
    # The search never saw the test split: its datasets are train and validation.
    assert {i.dataset.name.rsplit("/", 1)[1] for i in parent.inputs.dataset_inputs} == {"train", "val"}
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=100
    )
    assert sorted(int(r.data.tags["tune.trial"]) for r in children) == list(range(6))
    for child in children:
        trial = trials[int(child.data.tags["tune.trial"])]
        assert child.data.tags["tune.state"] == trial.state.name.lower()
        assert child.data.params["train.learning_rate"] == str(trial.params["learning_rate"])
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")]
        assert steps == list(range(1, trial.user_attrs["epochs_run"] + 1))
        assert trial.user_attrs["mlflow_run_id"] == child.info.run_id

    # train takes the best values over params.yaml's section and says where they come from.
    run_stages(searching, "train")
    trained = json.loads((searching / "reports/train.json").read_text())["hyperparameters"]
    assert trained["learning_rate"] == 0.03 and trained["batch_size"] == best["train"]["batch_size"]
    assert trained["epochs"] == 3  # tune.epochs bounds the trials, not the final training
    run_id = json.loads((searching / "models/mlflow_run.json").read_text())["run_id"]
    assert client.get_run(run_id).data.tags["tune.study"] == report["study"]


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["killed", "ctrl-c"])
def test_a_rerun_continues_the_study_and_an_interrupted_one_resumes(searching, stop):
    """Raising tune.trials continues the same study (its trials kept, the same MLflow run); a search
    killed or interrupted mid-trial resumes: the finished trials stay, the one it lost runs again."""
    import optuna
    from mlflow.tracking import MlflowClient

    set_params(searching, "tune", trials=2, pruner="none")
    run_stages(searching, "tune")
    first = json.loads((searching / "reports/search.json").read_text())
    parent = yaml.safe_load((searching / "models/tuned.yaml").read_text())["search"]["mlflow_parent_run_id"]

    set_params(searching, "tune", trials=4)
    storage = tracking_uri(searching).replace("mlflow.db", "mlflow.optuna.db")
    study = optuna.load_study(study_name=first["study"], storage=storage)
    proc = subprocess.Popen(stage_argv("tune"), cwd=searching, env=tool_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not any(t.number == 3 and "mlflow_run_id" in t.user_attrs for t in study.get_trials()):  # trial 3 under way
        assert proc.poll() is None and time.monotonic() < deadline, "the search ended before trial 3 began"
        time.sleep(0.2)
    os.killpg(proc.pid, stop)
    assert proc.wait(timeout=60) in (-signal.SIGKILL, 130)

    run_stages(searching, "tune")
    report = json.loads((searching / "reports/search.json").read_text())
    assert report["study"] == first["study"]
    assert report["trials"]["complete"] == 4 and report["trials"]["failed"] == 0
    trials = optuna.load_study(study_name=report["study"], storage=storage).get_trials()
    states = {t.number: t.state.name for t in trials}
    assert states[0] == states[1] == states[2] == "COMPLETE"  # kept, not run again
    assert states[3] == "FAIL"  # the killed one, whose values ran again as the next trial
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 3]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE" and retried[0].params == trials[3].params
    lost = MlflowClient(tracking_uri(searching)).get_run(trials[3].user_attrs["mlflow_run_id"])
    assert lost.info.status == "KILLED" and lost.data.tags["tune.state"] == "failed"
    assert yaml.safe_load((searching / "models/tuned.yaml").read_text())["search"]["mlflow_parent_run_id"] == parent


@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_the_pruner_stops_training_after_an_epoch_on_both_loops(project, tmp_path, loop):
    """The pruning hook lives in training's on_epoch, which Keras' fit and the multi-worker loop both call."""
    import optuna

    from pipeline.history import read_history
    from pipeline.params import parse_params
    from pipeline.prepared import PreparedData
    from pipeline.presets import filled_from_preset
    from pipeline.training import train

    p = filled_from_preset(parse_params({"train": {**yaml.safe_load((project / "params.yaml").read_text())["train"],
                                                   "epochs": 4, "early_stopping_patience": 0}}).train)  # fmt: skip
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(lower=2.0))  # every value is below 2
    trial = study.ask()

    def on_epoch(epoch, row):
        trial.report(row["val_accuracy"], epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()

    with pytest.raises(optuna.TrialPruned):
        train(p, PreparedData.open(project / "data/prepared"), tmp_path / loop, on_epoch=on_epoch, verbose=0, loop=loop)
    assert [row["epoch"] for row in read_history(tmp_path / loop / "history.csv")] == [1]


def pruned_as_the_stage_prunes(tune: dict, max_epochs: int = 9):
    """The pruner the stage makes from the `tune` section, on a study of its own: returns
    `stopped_after(curve)`, a new trial reporting `curve` epoch by epoch and the epoch it stopped after."""
    import optuna

    from pipeline.params import Params
    from pipeline.study_design import make_pruner

    pruner = make_pruner(Params.model_validate({"tune": tune}).tune, max_epochs=max_epochs)
    return partial(stopped_after_epoch, optuna.create_study(direction="maximize", pruner=pruner))


def stopped_after_epoch(study, curve: list[float]) -> int:
    """A trial of `study` reporting `curve` epoch by epoch: the epoch it stopped after, the pruner's
    verdict or its last."""
    import optuna

    trial = study.ask()
    for epoch, value in enumerate(curve, start=1):
        trial.report(value, epoch)
        if epoch < len(curve) and trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return epoch
    study.tell(trial, curve[-1])
    return len(curve)


def test_successive_halving_the_default_keeps_the_best_quarter_at_rungs_after_1_and_4_epochs():
    """The default pruner as the stage makes it (rungs at warmup_epochs × 4^k: epochs 1, 4, 16): fed
    the epoch values of trials, it stops a trial below the best quarter of those that reached a rung
    and lets the best go on to the last epoch."""
    from pipeline.params import Params

    tune = Params.model_validate({"tune": {}}).tune
    assert (tune.pruner, tune.reduction_factor, tune.warmup_epochs) == ("halving", 4, 1)
    stopped_after = pruned_as_the_stage_prunes({})
    for start in (0.5, 0.6, 0.7):  # each better than those before at every rung: on to the end
        assert stopped_after([start + 0.01 * e for e in range(9)]) == 9
    # Not the best of four at epoch 1 (only the top quarter goes on): stopped there.
    assert stopped_after([0.55] + [0.9] * 8) == 1
    # Best at epoch 1, then below the best quarter at epoch 4 (a rung a factor of 3 does not have).
    assert stopped_after([0.95, 0.5, 0.5, 0.5] + [0.5] * 5) == 4


def test_a_reduction_factor_of_3_keeps_the_best_third_at_rungs_after_1_3_and_9_epochs():
    stopped_after = pruned_as_the_stage_prunes({"reduction_factor": 3})
    first = stopped_after([0.5 + 0.01 * e for e in range(9)])  # alone at every rung: goes on
    assert first == 9
    assert stopped_after([0.6 + 0.01 * e for e in range(9)]) == 9  # better at each rung than the first
    assert stopped_after([0.2] * 9) == 1  # below the best third after epoch 1
    assert stopped_after([0.7, 0.7, 0.3] + [0.3] * 6) == 3  # passes epoch 1, falls behind by epoch 3


def test_off_the_stage_writes_no_values_and_starts_nothing_heavy(project):
    script = (
        "import sys; from pipeline import tune; tune.main(sys.argv[1:]); "
        "print(sorted(m for m in ('tensorflow', 'optuna', 'mlflow', 'keras') if m in sys.modules))"
    )
    proc = run([sys.executable, "-c", script, *stage_argv("tune")[3:]], project)
    assert proc.stdout.splitlines()[-1] == "[]", proc.stdout
    assert "no search (tune.enabled is false)" in proc.stdout
    assert yaml.safe_load((project / "models/tuned.yaml").read_text()) == {"train": {}, "search": None}
    assert json.loads((project / "reports/search.json").read_text()) == {"enabled": False}


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        ({"space": {"learnin_rate": {"low": 0.1, "high": 1}}}, "tune.space.learnin_rate is not a key of train"),
        ({"space": {"learning_rate": {"low": 0, "high": 0.1}}}, "tune.space.learning_rate.low must be > 0.0, got 0"),
        ({"space": {"learning_rate": {"low": 0.1, "high": 20}}}, "tune.space.learning_rate.high must be <= 10.0"),
        ({"space": {"batch_size": {"low": 8, "high": 4}}}, "tune.space.batch_size.low must be below high (4), got 8"),
        ({"space": {"optimizer": {"low": 1, "high": 2}}}, "tune.space.optimizer takes no range"),
        ({"space": {"optimizer": {"choices": ["adam", "nadam"]}}}, "tune.space.optimizer.choices[1] must be 'adam'"),
        ({"space": {"augment": {"translate": {"low": 0, "high": 0.6}}}}, "tune.space.augment.translate.high must be"),
        ({"space": {"label_smoothing": {"low": 0, "high": 0.2, "log": True}}}, "low must be > 0 for a log range"),
        ({"space": {"model": {"choices": ["cnn", "resnet"]}}}, "tune.space.model.choices[1] must be a preset"),
        ({"space": {"model": {"choices": ["cnn", "lenet"]}}, "enabled": True}, "tune.space.model.choices[1]: preset"),
        ({"trials": None}, "tune.trials is null and so is timeout"),
        ({"sampler": "grid"}, "tune.space.learning_rate: a grid needs choices or a stepped range"),
        ({"storage": "http://db:5000"}, "tune.storage must be a database URL"),
        ({"workers": 0}, "tune.workers must be >= 1, got 0"),
    ],
)
def test_bad_tune_params_are_one_line_naming_the_key(project, tune, message):
    set_params(project, "tune", **tune)
    proc = run(stage_argv("tune"), project, check=False)
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr, proc.stderr


def test_tuned_values_a_file_holds_are_validated_naming_the_file(project):
    (project / "models").mkdir()
    (project / "models/tuned.yaml").write_text("train:\n  learning_rate: -1\nsearch: null\n")
    proc = run(stage_argv("train"), project, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: models/tuned.yaml: train.learning_rate must be > 0.0, got -1", proc.stderr


def test_in_dvc_the_search_is_a_stage_train_depends_on_and_nothing_reruns_unchanged(tmp_path, tiny_data):
    """Off, `dvc repro` runs the stage once (no search) and a second `dvc repro` nothing; on, train
    reruns on the best values, and then nothing again."""
    repo = make_dvc_repo(tmp_path / "repo", tiny_data, train={"epochs": 2})
    first = run(["dvc", "repro", "train"], repo)
    assert "Running stage 'tune'" in first.stdout and "no search" in first.stdout
    assert "Running stage" not in run(["dvc", "repro", "train"], repo).stdout

    set_params(repo, "tune", enabled=True, trials=2, startup_trials=1, epochs=2,
               space={"learning_rate": {"choices": [0.02, 0.03]}})  # fmt: skip
    searched = run(["dvc", "repro", "train"], repo).stdout
    assert "Running stage 'tune'" in searched and "Running stage 'train'" in searched, searched
    assert json.loads((repo / "reports/train.json").read_text())["hyperparameters"]["learning_rate"] in (0.02, 0.03)
    assert "Running stage" not in run(["dvc", "repro", "train"], repo).stdout
    assert (repo / "mlflow.optuna.db").is_file()  # the study, beside the store (never committed: .gitignore)
    assert "/mlflow.optuna.db" in (REPO / ".gitignore").read_text().splitlines()


def test_training_the_final_model_longer_keeps_the_search_s_study():
    """The study's name counts of train.epochs only what the trials train (bounded by tune.epochs):
    raising train.epochs for the final model reruns train on the same study's best values (a rerun
    of the same study runs no trial again: test_a_rerun_continues_the_study...), while a change to
    what the trials train is another search."""
    from pipeline.params import Params
    from pipeline.study_design import study_name

    def name(tune: dict, train: dict) -> str:
        checked = Params.model_validate({"tune": {**SEARCH, **tune}, "train": train})
        return study_name("e", checked.tune.model_dump(mode="json"), checked.train.model_dump(mode="json"), "d")

    trials = name({"epochs": 2}, {"epochs": 2})
    assert name({"epochs": 2}, {"epochs": 4}) == trials
    assert name({"epochs": 3}, {"epochs": 4}) != trials
    assert name({"epochs": 2}, {"epochs": 2, "learning_rate": 0.5}) != trials
    # The reduction factor sets halving's rungs (another search), and nothing of the median pruner's.
    halving = name({"epochs": 2, "pruner": "halving"}, {"epochs": 2})
    assert name({"epochs": 2, "pruner": "halving", "reduction_factor": 3}, {"epochs": 2}) != halving
    assert name({"epochs": 2, "reduction_factor": 3}, {"epochs": 2}) == trials  # SEARCH's pruner: median


def test_a_study_database_that_does_not_answer_is_one_line(project):
    from helpers.servers import free_port

    where = f"nobody@127.0.0.1:{free_port()}/nothing"
    set_params(project, "tune", **SEARCH, storage=f"postgresql://{where}")  # the driver installed: psycopg2
    proc = run(stage_argv("tune"), project, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: tune storage postgresql+psycopg2://{where}: "), proc.stderr
    assert proc.stderr.count("\n") == 1 and "Connection refused" in proc.stderr, proc.stderr
