"""What a search's study is: its name (the same search resumes its study), the epochs its trials
train, how it samples (TPE, random, grid) and prunes (median, successive halving, Hyperband), and the
train params of one trial."""

from __future__ import annotations

import hashlib
import json
import warnings
from typing import Any

# The tune settings that make a study what it is; trials, timeout, workers and storage only say how
# long and where it runs (raising `trials` continues the same study).
IDENTITY = (
    "space",
    "epochs",
    "metric",
    "sampler",
    "seed",
    "startup_trials",
    "pruner",
    "reduction_factor",
    "warmup_epochs",
)

RUNGS = ("halving", "hyperband")  # the pruners whose rungs tune.reduction_factor sets


def study_name(experiment: str, tune: dict, train: dict, data_identity: str) -> str:
    """`<experiment>-tune-<hash>`: the same search (space, settings, train section, data) has the same
    study, so a rerun after an interruption resumes it and a changed search starts a new one. Of
    `train.epochs` only what the trials train counts: set for the final model once a search is
    done, it reruns `train` on the same best values, not the search."""
    settings = {key: tune[key] for key in IDENTITY}
    if tune["pruner"] not in RUNGS:  # the factor only shapes halving's and Hyperband's rungs
        del settings["reduction_factor"]
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
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=tune.reduction_factor)
    if tune.pruner == "hyperband":
        last = max(first, max_epochs)
        return optuna.pruners.HyperbandPruner(
            min_resource=first, max_resource=last, reduction_factor=tune.reduction_factor
        )
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
