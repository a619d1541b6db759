"""The search's MLflow runs: one parent run per study (its settings and search space, the train and
validation splits it searched on, then the best trial, the study's plots and every trial's outcome)
and one run nested under it per trial (the trial's train params, its per-epoch curves, its state:
complete, pruned or failed). Explicit clients only, through pipeline/tracking.py's Run; the study
itself is pipeline/study.py's.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from pipeline.tracking import Run, portable_uri, project_root, resolve_tracking_uri

STATES = {"complete": "FINISHED", "pruned": "FINISHED", "failed": "FAILED"}  # tune.state → the run's status


class TrialRun:
    """One trial's run, nested under the search's parent run (MLflow's `mlflow.parentRunId` tag)."""

    def __init__(self, run: Run):
        self.run = run

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @classmethod
    def start(cls, tracking_uri: str, search, number: int, values: dict[str, Any], p) -> TrialRun:
        from pipeline.params import dotted
        from pipeline.study import format_value, worker_name

        settings = search.settings
        tags = {
            "mlflow.parentRunId": settings.parent_run_id,
            "mlflow.source.name": "pipeline.tune (a trial of the search)",
            "tune.study": search.study.study_name,
            "tune.trial": str(number),
            "tune.state": "running",
            "tune.worker": worker_name(),
            "model.preset": p.model_name,
        }
        shown = ", ".join(f"{k}={format_value(v)}" for k, v in values.items())
        run = Run.start(tracking_uri, settings.experiment, run_name=f"trial-{number:03d}", tags=tags)
        run.log_params(dotted(p.model_dump(mode="json"), "train."))
        run.set_description(f"Trial {number} of the search {search.study.study_name}: {shown}")
        return cls(run)

    def log_epoch(self, epoch: int, row: dict[str, float]) -> None:
        self.run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)

    def end(self, state: str, epochs: int, value: float | None = None) -> None:
        self.run.set_tags({"tune.state": state})
        metrics = {"epochs_run": epochs}
        if value is not None:
            metrics["tune.value"] = value
        self.run.log_metrics(metrics)
        self.run.end(STATES[state])


class WorkerTracking:
    """What a worker logs: its trials' runs, into the store MLFLOW_TRACKING_URI names, else the one
    the search's stage logs to (recorded in the study)."""

    def __init__(self, recorded_uri: str):
        self.tracking_uri = resolve_tracking_uri(recorded_uri)

    def trial_run(self, search, number: int, values: dict[str, Any], p) -> TrialRun:
        return TrialRun.start(self.tracking_uri, search, number, values, p)


class SearchTracking(WorkerTracking):
    """The stage's tracking: the parent run of the study, opened once the study is known (the study's
    own when it has one: a resumed search continues its run), its trials' runs, and its end."""

    def __init__(self, configured_uri: str | None, experiment_name: str | None):
        super().__init__(configured_uri)
        self.experiment_name = experiment_name
        self.run: Run | None = None

    @property
    def run_id(self) -> str | None:
        return self.run.run_id if self.run is not None else None

    def open(self, search) -> None:
        from pipeline.lineage import dvc_experiment_tags, git_state, log_dataset_inputs, split_inputs
        from pipeline.params import dotted
        from pipeline.study import record_parent
        from pipeline.study_storage import shown_url

        meta = search.data.meta
        tags = {
            **git_state(project_root()),
            **dvc_experiment_tags(),
            "mlflow.source.name": "pipeline.tune (dvc.yaml stage tune)",
            "tune.study": search.study.study_name,
            "tune.storage": shown_url(search.url),
            "data.sha256": search.data.identity,
            "data.name": meta.name,
        }
        resume = search.settings.parent_run_id
        name = f"search-{time.strftime('%Y%m%d-%H%M%S')}"
        self.run = Run.start(self.tracking_uri, search.settings.experiment, name, tags, resume_run_id=resume)
        if self.run.run_id != resume:
            self.run.log_params(dotted(search.tune.model_dump(mode="json", exclude={"storage"}), "tune."))
            self.run.log_text(json.dumps(search.tune.space, indent=2) + "\n", "search/space.json")
            hashes = {split: meta.split_sha256[split] for split in ("train", "val")}
            log_dataset_inputs(self.run, meta.name, meta.source, split_inputs(meta, hashes))
            record_parent(search, self.run.run_id)
        self.run.set_description(
            f"Search {search.study.study_name}: {search.budget or 'unbounded'} trials of "
            f"{', '.join(search.tune.dimensions)} by {search.tune.sampler}, pruned by {search.tune.pruner}, "
            f"on {meta.name}'s validation split ({search.tune.metric}); each trial is a run nested below"
        )

    def fail(self, interrupted: bool) -> None:
        """The parent run killed or failed, as far as the store lets it within a few seconds."""

        def end() -> None:
            with contextlib.suppress(Exception):
                if self.run is not None:
                    self.run.end("KILLED" if interrupted else "FAILED")

        ending = threading.Thread(target=end, daemon=True)
        ending.start()
        ending.join(timeout=5)

    def finish(self, facts: dict[str, Any], plots: list[Path]) -> None:
        """The best trial, the counts, the plots and every trial's outcome into the parent run."""
        run = self.run
        best, report = facts["best"], facts["report"]
        run.set_tags({
            "tune.best_trial": best["trial"],
            "tune.best_run_id": best["run_id"] or "",
            **{f"tune.best.{key}": value for key, value in best["values"].items()},
        })  # fmt: skip
        numbers = {f"best.{k}": v for k, v in best["values"].items() if isinstance(v, (int, float))}
        counts = report["trials"]
        run.log_metrics({
            f"best.{report['metric']}": best["value"],
            **numbers,
            **{f"trials.{state}": counts[state] for state in ("complete", "pruned", "failed")},
            "epochs_run": report["epochs"]["run"],
            "epochs_saved_fraction": report["epochs"]["saved_fraction"],
        }, step=counts["complete"] + counts["pruned"] + counts["failed"])  # fmt: skip
        for plot in plots:
            run.log_artifact(plot, "search")
        run.log_text(facts["trials_csv"], "search/trials.csv")
        self.end_lost_trials(facts["study"])
        run.end()

    def end_lost_trials(self, study) -> None:
        """The runs of trials whose process died (killed, or its machine lost) end as killed, failed."""
        import optuna

        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
            run_id = trial.user_attrs.get("mlflow_run_id")
            if run_id and self.run.client.get_run(run_id).info.status == "RUNNING":
                lost = Run(self.run.client, run_id, self.run.experiment_id, self.tracking_uri)
                lost.set_tags({"tune.state": "failed"})
                lost.end("KILLED")

    def tuned_search(self, search, best: dict[str, Any]) -> dict[str, Any]:
        """The provenance models/tuned.yaml records with the best values."""
        from pipeline.study_storage import shown_url

        return {
            "study": search.study.study_name,
            "storage": shown_url(search.url),
            "trial": best["trial"],
            "metric": search.tune.metric,
            "value": best["value"],
            "mlflow_parent_run_id": self.run_id,
            "mlflow_trial_run_id": best["run_id"],
            "tracking_uri": portable_uri(self.tracking_uri),
        }


# ----------------------------------------------------------------------------- what the study found
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
