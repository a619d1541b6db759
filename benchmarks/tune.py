"""The adaptive search against a plain one on the same budget: on a subset of Fashion-MNIST, the same
search space (params.yaml's `tune.space`), the same number of trials of at most the same epochs and
the same seed, `tune` with TPE and successive halving (the best quarter at each rung, the default;
or the best third), Hyperband or the median pruner against random search without pruning (what a
hand-written sweep does: every point runs every epoch). Then the model trained on the best values of
the adaptive search that found the best against the default preset, both as `train`
trains them (the preset's own epochs), on the test split, which no search ever sees. Writes
reports/tune.json, the figures of docs/speed.md's Tuning section.

    python benchmarks/tune.py [--examples 10000] [--trials 24] [--epochs 9] [--seeds 42] [--only SEARCH ...]

Trials of 9 epochs give successive halving its rungs (after epochs 1 and 4; 1, 3 and 9 for the best
third); with 3 the most a pruned trial can save is 2 epochs (measured: 17 % fewer epochs for the
best third at 24 trials on 20,000 examples).

Each search is the real stage, `python -m pipeline.tune` with the command line dvc.yaml gives it, in
a scratch project with its own MLflow store and study; the final models go through `train` and
`evaluate` (gate off) the same way. The subset is drawn from the training files (stratified,
seeded); the test split is the whole test file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # helpers.writers, helpers.data: the tests' own IDX writer and fetch/prepare

SEARCHES = {
    "adaptive": {"sampler": "tpe", "pruner": "halving", "reduction_factor": 3},  # the best third go on
    "adaptive_quarter": {"sampler": "tpe", "pruner": "halving", "reduction_factor": 4},  # the default
    "adaptive_hyperband": {"sampler": "tpe", "pruner": "hyperband", "reduction_factor": 3},
    "adaptive_median": {"sampler": "tpe", "pruner": "median"},  # stops what is below the others' median
    "random": {"sampler": "random", "pruner": "none"},  # a sweep: every point trains every epoch
}


def cpu_name() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    found = re.search(r"^Model name:\s+(.+)$", out, re.M)
    family = re.search(r"^CPU family:\s+(\d+)", out, re.M)
    model = re.search(r"^Model:\s+(\d+)", out, re.M)
    name = found.group(1).strip() if found else platform.processor()
    return f"{name} (family {family.group(1)}, model {model.group(1)})" if family and model else name


def subset_source(params: dict, examples: int, seed: int, out: Path) -> dict:
    """The first `examples` of a stratified, seeded draw of the training files, and the whole test
    file, as an IDX data set at `out`; returns the `data` section for it."""
    from pipeline.formats.idx import read_idx

    from helpers.writers import write_idx

    source, idx = Path(params["data"]["source"]), params["data"]["idx"]
    images, labels = read_idx(source / idx["train_images"], (3, 4)), read_idx(source / idx["train_labels"], (1,))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = examples // len(classes)
    keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in classes]))
    out.mkdir(parents=True, exist_ok=True)
    write_idx(out / idx["train_images"], images[keep])
    write_idx(out / idx["train_labels"], labels[keep])
    for name in (idx["test_images"], idx["test_labels"]):
        (out / name).write_bytes((source / name).read_bytes())
    return {**params["data"], "source": str(out), "name": "fashion-mnist-subset", "idx": {**idx, "sha256": None}}


def stage(name: str, work: Path) -> float:
    """One stage as dvc.yaml runs it, in `work`; returns its seconds."""
    command = shlex.split(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][name]["cmd"])
    command = [sys.executable, *command[1:]]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    subprocess.run(command, cwd=work, env=env, check=True)
    return time.perf_counter() - started


def project(base: dict, work: Path, prepared: Path, **sections) -> Path:
    """A scratch project over the prepared subset: its params, its own MLflow store."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "data").mkdir(exist_ok=True)
    if not (work / "data/prepared").exists():
        (work / "data/prepared").symlink_to(prepared)
    params = json.loads(json.dumps(base))
    for name, values in sections.items():
        params[name] = {**params.get(name, {}), **values}
    params["mlflow"] = {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "experiment_name": "bench-tune",
                        "registered_model_name": "bench-tune"}  # fmt: skip
    params["evaluate"]["gate"] = {"min_accuracy": 0.0, "max_drop": None, "baseline": None}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return work


def trial_seconds(work: Path) -> list[float]:
    """Each finished trial's seconds, from the study (Optuna records when each started and ended)."""
    import optuna

    storage = f"sqlite:///{work / 'mlflow.optuna.db'}"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    return [t.duration.total_seconds() for t in study.trials if t.duration is not None]


def run_search(kind: str, base: dict, work: Path, prepared: Path, trials: int, epochs: int, seed: int):
    """The stage's search; returns its figures and the models/tuned.yaml it wrote."""
    settings = {**SEARCHES[kind], "enabled": True, "trials": trials, "epochs": epochs, "seed": seed, "workers": 1}
    directory = project(base, work, prepared, tune=settings)
    seconds = stage("tune", directory)
    report = json.loads((directory / "reports/search.json").read_text())
    per_trial = trial_seconds(directory)
    return {
        "settings": settings,
        "commit": commit(),
        "seconds": round(seconds, 1),
        "trial_seconds_median": round(statistics.median(per_trial), 1),
        "best_val_accuracy": report["best"]["value"],
        "best": report["best"]["values"],
        "trials": report["trials"],
        "epochs_run": report["epochs"]["run"],
        "epochs_without_pruning": report["epochs"]["without_pruning"],
    }, (directory / "models/tuned.yaml").read_text()


def final_model(base: dict, work: Path, prepared: Path, tuned: str | None) -> dict:
    """`train` (the preset's own epochs) and `evaluate` on the test split: on the defaults, or on a
    search's models/tuned.yaml (`tuned`, its text) as the pipeline's train takes it."""
    from pipeline.tuned import read_tuned

    directory = project(base, work, prepared)
    (directory / "models").mkdir(exist_ok=True)
    if tuned is not None:
        (directory / "models/tuned.yaml").write_text(tuned)
    train_seconds = stage("train", directory)
    stage("evaluate", directory)
    trained = json.loads((directory / "reports/train.json").read_text())
    metrics = json.loads((directory / "reports/metrics.json").read_text())["test"]
    return {
        "values": read_tuned(directory / "models/tuned.yaml").train,
        "model": trained["hyperparameters"]["model_name"],
        "epochs_run": trained["epochs_run"],
        "training_seconds": trained["training_seconds"],
        "stage_seconds": round(train_seconds, 1),
        "val_accuracy_best_epoch": trained["best"].get("val_accuracy"),
        "test_accuracy": metrics["accuracy"],
        "test_macro_f1": metrics["macro_f1"],
    }


def earlier_runs(out: Path, budget: dict, examples: int, rerun: list[str]) -> tuple[dict, dict]:
    """The searches of the report at `out` that this run does not repeat, and its final models, when
    it measured the same budget on the same data (else nothing): the same search at the same seed
    trains the same trials, so only its seconds would differ. Each search records its commit."""
    if not out.exists():
        return {}, {}
    report = json.loads(out.read_text())
    if report.get("budget") != budget or report.get("data", {}).get("examples") != examples:
        return {}, {}
    kept = {seed: {kind: run for kind, run in searches.items() if kind not in rerun and kind in SEARCHES}
            for seed, searches in report["searches"].items()}  # fmt: skip
    return kept, report.get("final") or {}


def commit() -> str:
    found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "pipeline"], cwd=REPO, capture_output=True, text=True)
    return found.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000, help="training examples drawn from the train files")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=9, help="epochs each trial trains at most")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="one pair of searches per seed")
    parser.add_argument("--no-final", action="store_true", help="skip the two final trainings (keep the report's)")
    parser.add_argument("--only", nargs="+", choices=sorted(SEARCHES), default=sorted(SEARCHES),
                        help="run these searches; the report keeps the others' figures from its last run "
                             "when the budget and data are the same")  # fmt: skip
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--out", default=str(REPO / "reports/tune.json"))
    args = parser.parse_args()

    from helpers.data import fetch_and_prepare

    base = yaml.safe_load(Path(args.params).read_text())
    space = base["tune"]["space"]  # params.yaml's, for both searches
    budget = {"trials": args.trials, "epochs_per_trial": args.epochs, "seeds": args.seeds, "space": space}
    runs, kept_final = earlier_runs(Path(args.out), budget, args.examples, args.only)
    tuned_files: dict[tuple[int, str], str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as scratch:
        root = Path(scratch)
        data = subset_source(base, args.examples, 42, root / "source")
        base["data"] = data
        _, meta = fetch_and_prepare(data, root / "data", prepare={"shard_size": 10_000})
        prepared = root / "data/prepared"
        for seed in args.seeds:
            for kind in args.only:
                print(f"== {kind} search, seed {seed}", flush=True)
                runs.setdefault(str(seed), {})[kind], tuned_files[(seed, kind)] = run_search(
                    kind, base, root / f"{kind}-{seed}", prepared, args.trials, args.epochs, seed
                )
                print(json.dumps(runs[str(seed)][kind]), flush=True)
        final = kept_final
        adaptive = [kind for kind in args.only if kind != "random"]
        if adaptive and not args.no_final:
            chosen = max(adaptive, key=lambda kind: runs[str(args.seeds[0])][kind]["best_val_accuracy"])
            final = {"tuned_from": chosen}  # the adaptive search whose best validation accuracy was highest
            best = tuned_files[(args.seeds[0], chosen)]
            for name, tuned in (("default_preset", None), ("tuned", best)):
                print(f"== final model: {name}", flush=True)
                final[name] = final_model(base, root / f"final-{name}", prepared, tuned)
                print(json.dumps(final[name]), flush=True)

    def median(kind: str, key: str) -> float:
        return statistics.median(run[kind][key] for run in runs.values())

    summary = {}
    measured = [kind for kind in SEARCHES if all(kind in run for run in runs.values())]
    for kind in sorted(measured, key=lambda kind: kind != "random"):  # the baseline first
        summary[kind] = {
            "best_val_accuracy_median": median(kind, "best_val_accuracy"),
            "epochs_median": median(kind, "epochs_run"),
            "seconds_median": median(kind, "seconds"),
            "trial_seconds_median": median(kind, "trial_seconds_median"),
        }
        if kind != "random":
            saved = statistics.median(1 - r[kind]["epochs_run"] / r["random"]["epochs_run"] for r in runs.values())
            summary[kind]["epochs_saved_vs_random_median"] = round(saved, 4)
            summary[kind]["goal_met"] = bool(
                summary[kind]["best_val_accuracy_median"] >= summary["random"]["best_val_accuracy_median"]
                and saved >= 0.4
            )
    report = {
        "data": {"examples": args.examples, "counts": meta.counts, "source": "Fashion-MNIST (Debian's package)"},
        "budget": budget,
        "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "searches": runs,
        "summary": summary,
        "final": final,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
