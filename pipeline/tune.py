"""Stage `tune`: the adaptive hyperparameter search. Optuna samples `tune.space` over the train
section (TPE by default, seeded), each trial trains for at most `tune.epochs` epochs on the train
split and reports its validation metric after every epoch, and the pruner stops the trials that fall
behind (median or Hyperband). Each trial is an MLflow run nested under the search's run; the study
lives in the tracking store's database (pipeline/study.py), where `tune.workers` processes here and
`python -m pipeline.tune_worker` on other machines run its trials together.

Writes the best trial's values (models/tuned.yaml), which `train` trains on, and the search's report.
With `tune.enabled: false` it writes no values (`train: {}`) and starts neither Optuna, TensorFlow nor
MLflow. A rerun of the same search (same space, settings, train section and data) continues its
study: trials already finished are kept, and it runs only the ones missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.cli import end_process
from pipeline.errors import PipelineError
from pipeline.stage import Stage, StageResult, json_text
from pipeline.tuned import tuned_text

OFF = {"enabled": False}


def checked_search_data(train, tune, prepared: Path):
    """The prepared data, and whether the train section and every preset the space names fit it."""
    from pipeline.presets import check_fits, filled_from_preset
    from pipeline.train import checked_data

    data = checked_data(filled_from_preset(train), prepared)
    model = tune.dimensions.get("model")
    for i, preset in enumerate(model.choices if model else ()):
        misfit = check_fits(preset, data.meta.input_shape, data.kind.name)
        if misfit:
            raise PipelineError(f"params.yaml: tune.space.model.choices[{i}]: {misfit} ({prepared}/meta.json)")
    return data


def start_workers(search, count: int, prepared: Path, tracking_uri: str) -> list[subprocess.Popen]:
    """`count` more processes on this machine running the study's trials (pipeline/tune_worker.py,
    as another machine would), each with its own sampler seed."""
    from pipeline import tune_worker  # (its module name: the worker's code is this stage's code too)

    procs = []
    for index in range(1, count + 1):
        argv = [sys.executable, "-m", tune_worker.__name__, "--storage", search.url,
                "--study", search.study.study_name, "--prepared", str(prepared), "--index", str(index)]  # fmt: skip
        procs.append(subprocess.Popen(argv, env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}))
    return procs


def stop_workers(procs: list[subprocess.Popen], failed: bool) -> None:
    """Wait for the workers (or, when the search failed here, stop them); a worker that failed is one line."""
    for proc in procs:
        if failed and proc.poll() is None:
            proc.terminate()
    statuses = [proc.wait() for proc in procs]
    problems = [f"worker {i} exited with status {status}" for i, status in enumerate(statuses, 1) if status != 0]
    if problems and not failed:
        raise PipelineError(f"tune: {'; '.join(problems)} (its error is above)")


def search_report(search, seconds: float, best) -> dict[str, Any]:
    """reports/search.json: the trials' outcomes, the epochs pruning saved, the best trial."""
    from pipeline.study import counts
    from pipeline.study_design import RUNGS, direction

    now = counts(search.study)
    budget_epochs = now.finished * search.max_epochs()
    return {
        "enabled": True,
        "study": search.study.study_name,
        "metric": search.tune.metric,
        "direction": direction(search.tune.metric),
        "sampler": search.tune.sampler,
        "pruner": search.tune.pruner,
        "reduction_factor": search.tune.reduction_factor if search.tune.pruner in RUNGS else None,
        "trials": {"complete": now.complete, "pruned": now.pruned, "failed": now.failed, "budget": search.budget},
        "epochs": {
            "run": now.epochs,
            "without_pruning": budget_epochs,  # every finished trial trained to its last epoch
            "saved_fraction": round(1 - now.epochs / budget_epochs, 4) if budget_epochs else 0.0,
        },
        "best": {
            "trial": best.number,
            "value": best.value,
            "values": dict(best.params),
            "epochs_run": best.user_attrs.get("epochs_run"),
            "run_id": best.user_attrs.get("mlflow_run_id"),
        },
        "seconds": round(seconds, 1),
        "workers": search.tune.workers,
        "trials_run_here": len(search.trials_run),
    }


def tune_stage(inputs: dict[str, Path], params, outputs: dict[str, Path], tracking) -> StageResult:
    """The search, resumed when this exact one has a study already; the best values into `best`."""
    tune = params.tune
    if not tune.enabled:
        outputs["best"].write_text(tuned_text({}, None))
        outputs["report"].write_text(json_text(OFF))
        return StageResult("no search (tune.enabled is false): train takes params.yaml's train section as it is")
    from pipeline.search_runs import trials_csv
    from pipeline.study import create_search, format_value, limit_threads
    from pipeline.study_storage import shown_url

    data = checked_search_data(params.train, tune, inputs["prepared"])
    experiment = params.mlflow.experiment_name or data.meta.name
    limit_threads(tune.workers)
    search = create_search(tune, params.train, data, experiment, tracking.tracking_uri)
    tracking.open(search)
    print(f"tune: study {search.study.study_name} in {shown_url(search.url)}; MLflow run {tracking.run_id}",
          flush=True)  # fmt: skip
    started = time.perf_counter()
    workers = start_workers(search, tune.workers - 1, inputs["prepared"], tracking.tracking_uri)
    failed = True
    try:
        search.run_trials(tracking, tune.timeout, wait=True)
        failed = False
    finally:
        stop_workers(workers, failed)
    best = search.best()
    report = search_report(search, time.perf_counter() - started, best)
    best_facts = {**report["best"], "value": best.value}
    outputs["best"].write_text(tuned_text(dict(best.params), tracking.tuned_search(search, best_facts)))
    outputs["report"].write_text(json_text(report))
    trials, epochs = report["trials"], report["epochs"]
    shown = ", ".join(f"{k}={format_value(v)}" for k, v in best.params.items())
    return StageResult(
        f"{trials['complete']} trials complete, {trials['pruned']} pruned, {trials['failed']} failed in "
        f"{report['seconds']:.0f} s; best trial {best.number}: {tune.metric} {best.value:.4f} ({shown}); "
        f"{epochs['run']} epochs, {epochs['saved_fraction']:.0%} fewer than without pruning; "
        f"MLflow run {tracking.run_id}",
        facts={"study": search.study, "best": best_facts, "report": report, "trials_csv": trials_csv(search.study)},
    )  # fmt: skip


def publish(result: StageResult, tracking, outputs: dict[str, Path]) -> dict:
    """The search's outcome into its MLflow run: the best trial, the counts, the study's plots."""
    from pipeline.search_runs import write_plots

    if tracking is None:
        return {}
    with tempfile.TemporaryDirectory(prefix="tune-plots-") as tmp:
        study = result.facts["study"]
        plots = write_plots(study, Path(tmp), result.facts["report"]["metric"])
        tracking.finish(result.facts, plots)
    return {}


def open_search_tracking(params, inputs: dict[str, Path]):
    """The search's MLflow run (opened once the study is known), or none when the search is off."""
    if not params.tune.enabled:
        return None
    from pipeline.search_runs import SearchTracking

    return SearchTracking(params.mlflow.tracking_uri, params.mlflow.experiment_name)


STAGE = Stage(
    "tune",
    __doc__,
    params=("tune", "train", "mlflow.tracking_uri", "mlflow.experiment_name"),
    inputs=("prepared",),
    outputs=("best", "report"),
    core=tune_stage,
    tracking=open_search_tracking,
    publish=publish,
)


def main(argv: list[str] | None = None) -> None:
    STAGE.run(argv)


if __name__ == "__main__":
    main()
    end_process()
