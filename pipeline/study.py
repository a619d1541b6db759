"""The search's study (Optuna): where it lives, what it is called, how it samples and prunes, and
the loop every process of a search runs, the `tune` stage and each `tune_worker` alike: one trial at
a time against the shared database, until the study has its trials. Optuna's own distributed mode:
the processes share nothing but the database, so any number of them, on any machines, run one
study, and none needs to know of the others.

Storage. Optuna's tables and MLflow's cannot share one database schema: both keep their Alembic
revision in a table named `alembic_version`, and each refuses the other's revision (MLflow: "Can't
locate revision"; Optuna: "no longer compatible with the table schema"). So the study lives beside
the tracking store: for an embedded SQLite store in a sibling file (`mlflow.db` → `mlflow.optuna.db`),
for a PostgreSQL store in the schema `optuna` of the same database; `tune.storage` names another.

Trials. Each is a training (pipeline/training.py) of the params.yaml train section with the
trial's values over it, for at most `tune.epochs` epochs, reporting the validation metric after every
epoch to the pruner through training's `on_epoch` hook (Keras' `fit` and the multi-worker loop call
it alike); the pruner's verdict raises optuna.TrialPruned there, which ends the training.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError, first_line

SCHEMA = "optuna"  # the PostgreSQL schema of a study kept in the tracking store's database
HEARTBEAT_SECONDS, GRACE_SECONDS = 10, 60  # a trial whose process stopped beating this long is failed and retried
POLL_SECONDS = 2  # how often a process waiting for other workers' trials looks again


# ----------------------------------------------------------------------------- where it lives
def storage_url(configured: str | None, tracking_uri: str) -> str:
    """`tune.storage`, else beside the tracking store: a sibling SQLite file of an embedded store, the
    same PostgreSQL database (schema `optuna`) of a PostgreSQL store. A tracking server (http) keeps
    its database to itself: then `tune.storage` must name it."""
    from pipeline.tracking import project_root

    url = configured
    if url is None:
        if tracking_uri.startswith("sqlite:///"):
            store = Path(tracking_uri[len("sqlite:///") :])
            return f"sqlite:///{store.with_name(store.stem + '.optuna.db')}"
        if tracking_uri.startswith(("postgresql://", "postgresql+")):
            url = tracking_uri
        else:
            raise PipelineError(
                f"params.yaml: tune.storage is null and the tracking store is {tracking_uri}, whose database a "
                "search cannot reach through it: set tune.storage to that database (postgresql://host/database; "
                "the study goes into its schema optuna)"
            )
    if url.startswith("postgresql://"):  # SQLAlchemy 2.1 would take psycopg 3; the project installs psycopg2
        return "postgresql+psycopg2://" + url[len("postgresql://") :]
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return f"sqlite:///{project_root() / url[len('sqlite:///') :]}"  # relative: at the project root
    return url


def shown_url(url: str) -> str:
    """A storage URL as the console and reports show it: no password, a project file relative."""
    from sqlalchemy.engine import make_url

    from pipeline.tracking import portable_uri

    if url.startswith("sqlite:"):
        return portable_uri(url)
    return make_url(url).render_as_string(hide_password=True)


def connect_args(url: str) -> dict[str, Any]:
    if url.startswith("sqlite:"):
        return {"timeout": 60}  # two processes writing at once wait for each other
    if url.startswith("postgresql"):
        return {"options": f"-csearch_path={SCHEMA}"}
    return {}


def open_storage(url: str):
    """Optuna's RDB storage at `url` (PostgreSQL: in the schema `optuna`, made if missing), with
    heartbeats, so a trial whose process died is failed and run again by whoever looks next. The
    stage opens it first (it makes the tables); a worker waits until the stage's study is there
    (`has_study`): two processes making the same tables at once can both fail."""
    import optuna
    from optuna.storages import RDBStorage

    # Heartbeats and the matplotlib plots are marked experimental (since Optuna 2.8 and 2.2): said once.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if url.startswith("sqlite:"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    elif url.startswith("postgresql"):
        create_schema(url)
    kwargs = {"connect_args": connect_args(url)}
    try:
        return RDBStorage(
            url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=run_again,
        )  # fmt: skip
    except Exception as exc:  # a URL SQLAlchemy cannot open, a server that does not answer, a missing driver
        raise PipelineError(f"tune storage {shown_url(url)}: {first_line(exc)}") from None


def has_study(url: str, name: str) -> bool:
    """Whether the study `name` is in the storage yet, asked without making Optuna's tables (a
    server that does not answer is one line)."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args=connect_args(url))
        try:
            schema = SCHEMA if url.startswith("postgresql") else None
            if not sqlalchemy.inspect(engine).has_table("studies", schema=schema):
                return False
            with engine.connect() as connection:
                query = sqlalchemy.text("SELECT 1 FROM studies WHERE study_name = :name")
                return connection.execute(query, {"name": name}).first() is not None
        finally:
            engine.dispose()
    except Exception as exc:
        raise PipelineError(f"tune storage {shown_url(url)}: {first_line(exc)}") from None


def create_schema(url: str) -> None:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url)
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        engine.dispose()
    except Exception as exc:
        raise PipelineError(f"tune storage {shown_url(url)}: {first_line(exc)}") from None


# ----------------------------------------------------------------------------- what it is
# The tune settings that make a study what it is; trials, timeout, workers and storage only say how
# long and where it runs (raising `trials` continues the same study).
IDENTITY = ("space", "epochs", "metric", "sampler", "seed", "startup_trials", "pruner", "warmup_epochs")


def study_name(experiment: str, tune: dict, train: dict, data_identity: str) -> str:
    """`<experiment>-tune-<hash>`: the same search (space, settings, train section, data) has the same
    study, so a rerun after an interruption resumes it and a changed search starts a new one. Of
    `train.epochs` only what the trials train counts: set for the final model once a search is
    done, it reruns `train` on the same best values, not the search."""
    settings = {key: tune[key] for key in IDENTITY}
    searched = {**train, "epochs": trial_epochs(tune, train)}
    blob = json.dumps({"tune": settings, "train": searched, "data": data_identity}, sort_keys=True)
    return f"{experiment}-tune-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def trial_epochs(tune: dict, train: dict) -> dict[str, Any]:
    """The epochs the trials train, for each model they may train (`tune.epochs` bounding the train
    section's, or the preset's where it is null), or the train section's own when epochs is searched."""
    from pipeline.params import Params
    from pipeline.presets import filled_from_preset

    checked = Params.model_validate({"tune": tune, "train": train})
    model = checked.tune.dimensions.get("model")
    if "epochs" in checked.tune.dimensions:
        return {"searched": train["epochs"]}
    bound = checked.tune.epochs
    epochs = {}
    for name in model.choices if model else [checked.train.model]:
        resolved = filled_from_preset(checked.train.model_copy(update={"model": name})).epochs
        epochs[name if isinstance(name, str) else "layers"] = min(resolved, bound) if bound else resolved
    return epochs


def direction(metric: str) -> str:
    return "minimize" if metric.endswith("loss") else "maximize"


def make_sampler(tune, seed: int | None):
    """TPE (seeded; the constant liar keeps parallel workers from sampling the same point), random,
    or a grid of the choices and stepped ranges."""
    import optuna

    from pipeline.search_space import grid_points

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if tune.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if tune.sampler == "grid":
            space = {key: grid_points(d) for key, d in tune.dimensions.items()}
            return optuna.samplers.GridSampler(space, seed=seed)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=tune.startup_trials, constant_liar=True)


def make_pruner(tune, max_epochs: int):
    import optuna

    if tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=tune.startup_trials, n_warmup_steps=tune.warmup_epochs)
    first = max(1, tune.warmup_epochs)  # the first rung: no trial stops before it
    if tune.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=3)
    if tune.pruner == "hyperband":
        last = max(first, max_epochs)
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=last, reduction_factor=3)
    return optuna.pruners.NopPruner()


def grid_size(tune) -> int | None:
    from pipeline.search_space import grid_points

    if tune.sampler != "grid":
        return None
    size = 1
    for dimension in tune.dimensions.values():
        size *= len(grid_points(dimension))
    return size


def suggest(trial, dimensions: dict) -> dict[str, Any]:
    """The trial's value of each dimension (search_space.Dimension), by dotted key below train."""
    values = {}
    for key, d in dimensions.items():
        if d.kind == "choice":
            values[key] = trial.suggest_categorical(key, list(d.choices))
        elif d.kind == "int":
            values[key] = trial.suggest_int(key, int(d.low), int(d.high), step=int(d.step or 1), log=d.log)
        else:
            values[key] = trial.suggest_float(key, d.low, d.high, step=d.step, log=d.log)
    return values


def trial_train_params(base, values: dict[str, Any], epochs: int | None):
    """The resolved train params of a trial: `base` (params.TrainParams) with the trial's values
    over it, the preset's values filled in, at most `epochs` epochs unless epochs is searched."""
    from pipeline.presets import filled_from_preset
    from pipeline.tuned import Tuned, apply_tuned, nested

    p = filled_from_preset(apply_tuned(base, Tuned(nested(values), None), "tune.space"))
    if epochs is not None and "epochs" not in values:
        p = p.model_copy(update={"epochs": min(p.epochs, epochs)})
    return p


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


def run_again(study, trial) -> None:
    """Queue the values of a trial whose process died, once: the study gets the trial it lost. The
    new trial names the lost one (`failed_trial`, as Optuna's own retry callback does), which is then
    not counted among the failures."""
    import optuna

    if "failed_trial" in trial.system_attrs:
        return  # a retry that died too: not again
    study.add_trial(
        optuna.create_trial(
            state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            system_attrs={"failed_trial": trial.number},
        )
    )  # fmt: skip


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
            message = first_line(exc)
            trial.set_user_attr("error", message)
            if run is not None:
                with contextlib.suppress(Exception):
                    run.end("failed", len(epochs))
            print(f"tune: trial {trial.number} failed: {message} ({shown})", file=out, flush=True)
            raise TrialFailed(message) from exc
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


# ----------------------------------------------------------------------------- what it found
def write_plots(study, directory: Path, metric: str) -> list[Path]:
    """The study as images a person looks at: the optimisation history (each trial's value and the
    best so far), the parameters' importances (fANOVA, from two complete trials on) and every
    trial's curve of `metric` by epoch (where the pruned ones stopped). Matplotlib, no browser."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    made = []
    directory.mkdir(parents=True, exist_ok=True)
    drawings = {
        "optimization_history.png": lambda: plots.plot_optimization_history(study, target_name=metric),
        "param_importances.png": lambda: plots.plot_param_importances(study),
        "intermediate_values.png": lambda: plots.plot_intermediate_values(study),
    }
    for name, draw in drawings.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                axes = draw()
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # e.g. importances of fewer than two complete trials: nothing to draw
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(9, 5.5)
        figure.tight_layout()
        figure.savefig(directory / name, dpi=100)
        plt.close(figure)
        made.append(directory / name)
    return made


def trials_csv(study) -> str:
    """Every trial of the study: number, state, value, epochs, its values, its MLflow run and worker."""
    import csv
    import io

    trials = study.get_trials(deepcopy=False)
    keys = sorted({key for t in trials for key in t.params})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["trial", "state", "value", "epochs_run", *keys, "mlflow_run_id", "worker"])
    for t in trials:
        writer.writerow([t.number, t.state.name.lower(), "" if t.value is None else t.value,
                         t.user_attrs.get("epochs_run", ""), *[t.params.get(k, "") for k in keys],
                         t.user_attrs.get("mlflow_run_id", ""), t.user_attrs.get("worker", "")])  # fmt: skip
    return out.getvalue()
