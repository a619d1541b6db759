"""The search's study (Optuna): where it lives, what it is called, how it samples and prunes, and
the loop every process of a search runs (where the study lives: pipeline/study_storage.py; its
name, sampler and pruner: pipeline/study_design.py), the `tune` stage and each `tune_worker` alike: one trial at
a time against the shared database, until the study has its trials. Optuna's own distributed mode:
the processes share nothing but the database, so any number of them, on any machines, run one
study, and none needs to know of the others.

Trials. Each is a training (pipeline/training.py) of the params.yaml train section with the
trial's values over it, for at most `tune.epochs` epochs, reporting the validation metric after every
epoch to the pruner through training's `on_epoch` hook (Keras' `fit` and the multi-worker loop call
it alike); the pruner's verdict raises optuna.TrialPruned there, which ends the training.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError, first_line
from pipeline.study_design import (
    direction,
    grid_size,
    make_pruner,
    make_sampler,
    study_name,
    suggest,
    trial_train_params,
)
from pipeline.study_storage import has_study, open_storage, run_again, shown_url, storage_url

POLL_SECONDS = 2  # how often a process waiting for other workers' trials looks again


# ----------------------------------------------------------------------------- the search
@dataclass
class Settings:
    """What every process of one search needs, kept in the study (its user attributes), so a worker
    joins with the storage and the study's name alone."""

    tune: dict  # the tune section (params.TuneParams, dumped)
    train: dict  # params.yaml's train section, every trial's base
    experiment: str
    data: str  # the prepared data's identity (PreparedData.identity): a worker's must be the same
    tracking_uri: str  # where the chief logs (a worker's MLFLOW_TRACKING_URI wins)
    parent_run_id: str | None = None

    def to_attrs(self) -> dict[str, Any]:
        return {"tune": self.tune, "train": self.train, "experiment": self.experiment, "data": self.data,
                "tracking_uri": self.tracking_uri, "parent_run_id": self.parent_run_id}  # fmt: skip

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> Settings:
        return cls(**{key: attrs.get(key) for key in cls.__dataclass_fields__})


@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0  # failed for good (a trial whose process died is run again, and not counted)
    running: int = 0
    waiting: int = 0
    epochs: int = 0  # epochs trained by finished trials

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed


def counts(study) -> Counts:
    import optuna

    State = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    found = Counts()
    for t in trials:
        if t.state == State.COMPLETE:
            found.complete += 1
        elif t.state == State.PRUNED:
            found.pruned += 1
        elif t.state == State.FAIL and t.number not in retried:
            found.failed += 1
        elif t.state == State.RUNNING:
            found.running += 1
        elif t.state == State.WAITING:
            found.waiting += 1
        if t.state.is_finished():
            found.epochs += int(t.user_attrs.get("epochs_run", 0))
    return found


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_dead_trials(study, settle: float = 5) -> None:
    """Trials left running by a process of this machine that no longer exists (a killed search) are
    failed and queued again at once; other machines' once their heartbeat is stale (Optuna); a trial
    a Ctrl-C stopped (Optuna failed it) is queued again too. A trial started in the last `settle`
    seconds is left alone: its process may not have named itself yet."""
    import optuna
    from optuna.storages import fail_stale_trials

    host, now = socket.gethostname(), time.time()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        name, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if name != host or not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        if trial.datetime_start is None or now - trial.datetime_start.timestamp() < settle:
            continue
        with contextlib.suppress(RuntimeError, ValueError):  # another process failed it first
            run_again(study, study.tell(trial.number, state=optuna.trial.TrialState.FAIL))
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    for trial in trials:  # interrupted by Ctrl-C: failed by Optuna as it stopped, queued again here
        interrupted = trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs.get("interrupted")
        if interrupted and trial.number not in retried:
            run_again(study, trial)
    fail_stale_trials(study)


def limit_threads(processes: int) -> None:
    """This process's share of the machine's cores when `processes` run trials on it: TensorFlow's
    thread pools, sized before TensorFlow starts (one process's pools on every core would make
    processes sharing them wait on each other)."""
    if processes <= 1:
        return
    import tensorflow as tf

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = max(1, cores // processes)
    with contextlib.suppress(RuntimeError):  # TensorFlow started already in this process: keep its pools
        tf.config.threading.set_intra_op_parallelism_threads(share)
        tf.config.threading.set_inter_op_parallelism_threads(share)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TrialFailed(Exception):
    """A trial that failed (its error recorded and printed); the search goes on with the next."""


@dataclass
class Search:
    """One process's view of a study: the study, its settings, and the data its trials train on."""

    study: Any  # optuna.Study
    settings: Settings
    tune: Any  # params.TuneParams
    base: Any  # params.TrainParams
    data: Any  # prepared.PreparedData
    url: str  # the storage's URL
    trials_run: list[int] = field(default_factory=list)  # by this process

    @property
    def budget(self) -> int | None:
        """Finished trials the study is to have: `tune.trials`, at most the grid's size."""
        size = grid_size(self.tune)
        if self.tune.trials is None:
            return size
        return self.tune.trials if size is None else min(self.tune.trials, size)

    def max_epochs(self) -> int:
        from pipeline.presets import filled_from_preset

        resolved = filled_from_preset(self.base).epochs
        return min(resolved, self.tune.epochs) if self.tune.epochs else resolved

    def run_trials(self, tracking, seconds: float | None = None, wait: bool = False, out=sys.stdout) -> int:
        """Trials one at a time until the study has its trials, counting those other processes run or
        are running (`wait`: and until theirs have finished too, taking over any whose process died),
        `seconds` have passed, or a grid is done; returns how many ran here."""

        started, said = time.monotonic(), False
        while seconds is None or time.monotonic() - started < seconds:
            fail_dead_trials(self.study)
            now = counts(self.study)
            if self.budget is not None and now.finished >= self.budget:
                break
            if self.budget is not None and now.finished + now.running >= self.budget:
                if not wait:
                    break
                if not said:
                    print(f"tune: waiting for {now.running} trial(s) other workers are running", file=out, flush=True)
                    said = True
                time.sleep(POLL_SECONDS)
                continue
            before = len(self.trials_run)
            self.study.optimize(
                lambda trial: self.objective(trial, tracking, out), n_trials=1, catch=(TrialFailed,),
                gc_after_trial=True,
            )  # fmt: skip
            if len(self.trials_run) == before:
                break  # the sampler had nothing to give (a grid sampled through)
        while wait and counts(self.study).running:  # out of time: the trials under way still count
            time.sleep(POLL_SECONDS)
            fail_dead_trials(self.study)
        return len(self.trials_run)

    def objective(self, trial, tracking, out) -> float:
        """Train the trial's params, reporting each epoch's metric to the pruner; the best epoch's
        metric is the trial's value."""
        import optuna

        from pipeline.training import train

        self.trials_run.append(trial.number)
        trial.set_user_attr("worker", worker_name())
        values = suggest(trial, self.tune.dimensions)
        shown = ", ".join(f"{k}={format_value(v)}" for k, v in values.items())
        metric = self.tune.metric
        run = None
        work_dir = Path(tempfile.mkdtemp(prefix=f"tune-trial-{trial.number}-"))
        epochs: list[float] = []

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            run.log_epoch(epoch, row)
            epochs.append(row[metric])
            trial.set_user_attr("epochs_run", epoch)
            trial.report(row[metric], epoch)
            # After its last epoch a trial is done: stopping it then would save nothing and lose its
            # value (successive halving's rungs run past any trial's length).
            if epoch < p.epochs and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        try:
            p = trial_train_params(self.base, values, self.tune.epochs)
            run = tracking.trial_run(self, trial.number, values, p)
            trial.set_user_attr("mlflow_run_id", run.run_id)
            try:
                train(p, self.data, work_dir, on_epoch=on_epoch, verbose=0)
            except optuna.TrialPruned:
                run.end("pruned", len(epochs))
                print(f"tune: trial {trial.number} pruned after epoch {len(epochs)}: {metric} "
                      f"{epochs[-1]:.4f} ({shown})", file=out, flush=True)  # fmt: skip
                raise
            value = min(epochs) if direction(metric) == "minimize" else max(epochs)
            run.end("complete", len(epochs), value)
            print(f"tune: trial {trial.number} complete: {metric} {value:.4f} in {len(epochs)} epochs ({shown})",
                  file=out, flush=True)  # fmt: skip
            return value
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:  # Ctrl-C: Optuna fails the trial; the next run of the search runs it again
            with contextlib.suppress(Exception):
                trial.set_user_attr("interrupted", True)
            raise
        except Exception as exc:
            from pipeline.tracking import store_problem

            if store_problem(exc) is not None:
                raise  # the tracking store or the study's database, not this trial: the search stops
            raise trial_failed(trial, run, exc, len(epochs), shown, out) from exc
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
            clear_keras()

    def best(self):
        """The best complete trial, or one line saying why there is none."""
        import optuna

        complete = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not complete:
            now = counts(self.study)
            failed = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
            why = f"; trial {failed[0].number}: {failed[0].user_attrs.get('error', 'failed')}" if failed else ""
            raise PipelineError(
                f"tune: no trial completed ({now.pruned} pruned, {now.failed} failed{why}) in study "
                f"{self.study.study_name}"
            )
        return self.study.best_trial


def trial_failed(trial, run, exc: Exception, epochs: int, shown: str, out) -> TrialFailed:
    """A trial's own failure, recorded on the trial and its run and printed."""
    message = first_line(exc)
    trial.set_user_attr("error", message)
    if run is not None:
        with contextlib.suppress(Exception):
            run.end("failed", epochs)
    print(f"tune: trial {trial.number} failed: {message} ({shown})", file=out, flush=True)
    return TrialFailed(message)


def format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def clear_keras() -> None:
    """Forget the finished trial's models and graphs, so the next trial starts as the first did."""
    if "keras" in sys.modules:
        import keras

        keras.backend.clear_session()


# ----------------------------------------------------------------------------- opening
def create_search(tune, train, data, experiment: str, tracking_uri: str, seed: int | None = None) -> Search:
    """The stage's study: created, or loaded to resume when this exact search has one already."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tune_dump, train_dump = tune.model_dump(mode="json"), train.model_dump(mode="json")
    url = storage_url(tune.storage, tracking_uri)
    storage = open_storage(url)
    name = study_name(experiment, tune_dump, train_dump, data.identity)
    settings = Settings(tune_dump, train_dump, experiment, data.identity, tracking_uri)
    probe = Search(None, settings, tune, train, data, url)
    study = optuna.create_study(
        study_name=name, storage=storage, direction=direction(tune.metric), load_if_exists=True,
        sampler=make_sampler(tune, tune.seed if seed is None else seed), pruner=make_pruner(tune, probe.max_epochs()),
    )  # fmt: skip
    # A resumed study keeps its MLflow run; the budget (trials, timeout, workers) is this run's, which
    # the workers read from here.
    settings.parent_run_id = study.user_attrs.get("settings", {}).get("parent_run_id")
    study.set_user_attr("settings", settings.to_attrs())
    return Search(study, settings, tune, train, data, url)


def join_search(url: str, name: str, data, index: int | None, wait: float = 600, out=sys.stdout) -> Search:
    """A worker's view of the study `name` at `url`: its settings from the study, the data checked
    against them, its sampler seeded apart (worker_seed). A study not there yet (the stage starts
    it) is waited for, up to `wait` seconds."""
    import optuna

    from pipeline.params import Params

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = None
    deadline, said = time.monotonic() + wait, False
    while True:
        if storage is None and has_study(url, name):  # the stage has made the tables: open them
            storage = open_storage(url)
        try:
            probe = optuna.load_study(study_name=name, storage=storage) if storage is not None else None
            if probe is not None and probe.user_attrs.get("settings", {}).get("parent_run_id"):
                break
        except KeyError:
            pass
        if time.monotonic() > deadline:
            raise PipelineError(f"tune storage {shown_url(url)}: no study {name} (is the search running, with the "
                                "same params.yaml and data?)")  # fmt: skip
        if not said:
            print(f"tune: waiting for the search to start study {name} in {shown_url(url)}", file=out, flush=True)
            said = True
        time.sleep(5)
    settings = Settings.from_attrs(probe.user_attrs["settings"])
    if settings.data != data.identity:
        raise PipelineError(f"{data.directory}: not the prepared data study {name} searches on (run "
                            "`dvc pull` or `dvc repro prepare` with the search's params.yaml)")  # fmt: skip
    checked = Params.model_validate({"tune": settings.tune, "train": settings.train})
    tune, train = checked.tune, checked.train
    probe_search = Search(None, settings, tune, train, data, url)
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=make_sampler(tune, worker_seed(tune.seed, index)),
        pruner=make_pruner(tune, probe_search.max_epochs()),
    )  # fmt: skip
    return Search(study, settings, tune, train, data, url)


def record_parent(search: Search, run_id: str) -> None:
    search.settings.parent_run_id = run_id
    search.study.set_user_attr("settings", search.settings.to_attrs())


def worker_seed(base: int, index: int | None) -> int:
    """A worker's sampler seed: the search's seed plus its index (local workers: 1, 2, ...), or for a
    worker of another machine one drawn from its host and process (no two draw the same points)."""
    if index is not None:
        return (base + index) % 2**32
    return int(hashlib.sha256(f"{base}:{worker_name()}".encode()).hexdigest()[:8], 16)
