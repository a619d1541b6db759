"""`python -m pipeline.tune_worker`: one more process running trials of a search the `tune` stage
runs, on this machine (the stage starts `tune.workers - 1` of them) or on another one with the same
prepared data and access to the study's database and the tracking store (README: Tuning).

    python -m pipeline.tune_worker --params params.yaml --prepared data/prepared     # another machine
    python -m pipeline.tune_worker --storage URL --study NAME --prepared data/prepared

With `--params` it finds the study as the stage does (the same params.yaml, tracking store and data
give the same study); it waits for the stage to start it, runs trials until the study has its
trials, and writes nothing but the trials (their MLflow runs log to MLFLOW_TRACKING_URI, else to the
store the stage logs to). Optuna's storage is the only thing the processes share.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli import end_process, run_cli


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tune_worker", description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", required=True, type=Path, help="the prepared data (data/prepared)")
    parser.add_argument("--params", type=Path, help="params.yaml: find the study as the tune stage does")
    parser.add_argument("--storage", help="the study's database URL (instead of --params)")
    parser.add_argument("--study", help="the study's name (with --storage)")
    parser.add_argument("--index", type=int, help="a local worker's number (the stage gives it): its seed and cores")
    parser.add_argument("--wait", type=float, default=600, help="seconds to wait for the stage to start the study")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser


def study_of(args) -> tuple[str, str]:
    """The storage URL and the study's name: given, or as the tune stage finds them from params.yaml."""
    from pipeline.errors import PipelineError
    from pipeline.params import load_params
    from pipeline.prepared import PreparedData
    from pipeline.study_design import study_name
    from pipeline.study_storage import storage_url
    from pipeline.tracking import resolve_tracking_uri

    if args.params is None:
        if not (args.storage and args.study):
            raise PipelineError("tune_worker: give --params, or both --storage and --study")
        return args.storage, args.study
    params = load_params(args.params)
    data = PreparedData.open(args.prepared)
    experiment = params.mlflow.experiment_name or data.meta.name
    url = storage_url(params.tune.storage, resolve_tracking_uri(params.mlflow.tracking_uri))
    tune, train = params.tune.model_dump(mode="json"), params.train.model_dump(mode="json")
    return url, study_name(experiment, tune, train, data.identity)


def work(argv: list[str] | None) -> None:
    from pipeline.prepared import PreparedData
    from pipeline.search_runs import WorkerTracking
    from pipeline.study import join_search, limit_threads

    args = parser().parse_args(argv)
    url, name = study_of(args)
    data = PreparedData.open(args.prepared)
    search = join_search(url, name, data, args.index, wait=args.wait)
    if args.index is not None:
        limit_threads(search.tune.workers)
    ran = search.run_trials(WorkerTracking(search.settings.tracking_uri), search.tune.timeout)
    print(f"tune worker: {ran} trial(s) of study {name} run here; the study has its trials", flush=True)


def main(argv: list[str] | None = None) -> None:
    run_cli(work, argv)


if __name__ == "__main__":
    main()
    end_process()
