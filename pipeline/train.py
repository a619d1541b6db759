"""Stage `train`: a Keras Sequential model from params, fed by tf.data, on whatever devices are
visible, resumable after a kill, tracked in MLflow (pipeline/training.py trains; this module is the
stage around it).

Writes the model, its history (one row per epoch), the training report and the MLflow run file that
later stages log into. The train section is params.yaml's with the best values of a search over it
(`--tuned`, models/tuned.yaml: `train: {}` when there was none; pipeline/tuned.py). Under TF_CONFIG
it is one worker of several: the chief writes the outputs and the run, the others only train.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

from pipeline.cli import end_process
from pipeline.errors import PipelineError
from pipeline.history import write_history
from pipeline.presets import check_fits, filled_from_preset
from pipeline.stage import Stage, StageResult, json_text
from pipeline.training import CHECKPOINTS, TrainResult, train
from pipeline.tuned import apply_tuned, read_tuned

CHIEF_STATE = "fingerprint.json"  # in the work directory: which training it holds, and its MLflow run


def training_fingerprint(p, data) -> str:
    """What a resumed backup must match: the same params and the same data."""
    blob = json.dumps({"train": p.model_dump(mode="json"), "data": data.meta.to_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class TrainingState:
    """The work directory of one training, the one place its resumable state lives: Keras' backup
    (or the custom loop's checkpoints), the history so far, and which training and MLflow run they
    belong to. Kept until the training is published; another training's state is cleared."""

    def __init__(self, directory: Path, fingerprint: str):
        self.directory, self.fingerprint = directory, fingerprint

    def open(self) -> str | None:
        """Keep a backup only if it belongs to this exact training; returns the run id it logged to."""
        stamp = self.directory / CHIEF_STATE
        if stamp.exists():
            saved = json.loads(stamp.read_text())
            if saved.get("fingerprint") == self.fingerprint:
                print(f"train: resuming interrupted training from {self.directory}", file=sys.stderr)
                return saved.get("run_id")
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        return None

    def remember(self, run_id: str) -> None:
        (self.directory / CHIEF_STATE).write_text(json.dumps({"fingerprint": self.fingerprint, "run_id": run_id}))

    def resumable(self) -> bool:
        return any((self.directory / name).exists() for name in ("backup", CHECKPOINTS))

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def checked_data(p, prepared: Path):
    """The prepared data, and whether the model fits it: before MLflow or TensorFlow start."""
    from pipeline.prepared import PreparedData

    data = PreparedData.open(prepared)
    misfit = check_fits(p.model, data.meta.input_shape, data.kind.name)
    if misfit:
        raise PipelineError(f"params.yaml: train.model: {misfit} ({prepared}/meta.json)")
    data.kind.check_augment(p.augment)
    if p.test_time_flip and not data.kind.mirrors:
        raise PipelineError(f"params.yaml: train.test_time_flip: mirrors images, the data is {data.kind.name}")
    return data


def train_stage(inputs: dict[str, Path], params, outputs: dict[str, Path], run) -> StageResult:
    """Train (resuming an interrupted run of the same training) and write the model, its history
    and its report; `run` (training_run.TrainingRun) is opened once Keras has built the model."""
    from pipeline.devices import cluster_spec, is_chief

    tuned = read_tuned(inputs.get("tuned"))
    p = filled_from_preset(apply_tuned(params.train, tuned, str(inputs.get("tuned"))))
    data = checked_data(p, inputs["prepared"])
    chief = is_chief(cluster_spec())
    # The chief keeps the resumable state in the shared place; other workers keep their own (the
    # checkpoint copies saving requires of them) in a scratch directory, removed at the end.
    work_dir = inputs["work_dir"] if chief else Path(tempfile.mkdtemp(prefix="train-worker-"))
    state = TrainingState(work_dir, training_fingerprint(p, data))
    resume_id = state.open() if chief else None

    def started(model) -> None:
        run.start(p, data, model, resume_id)
        if tuned.search:  # trained on a search's best values: which search, which trial
            keys = ("study", "trial", "mlflow_parent_run_id")
            run.run.set_tags({f"tune.{key}": value for key, value in tuned.search.items() if key in keys})
        state.remember(run.run_id)

    try:
        result = train(
            p, data, work_dir, on_start=started if chief else None, on_epoch=run.log_epoch,
            verbose=1 if sys.stdout.isatty() else 2, shared_dir=inputs["work_dir"],
        )  # fmt: skip
    except BaseException:
        if not chief or not state.resumable():
            state.remove()  # nothing to resume from: leave no empty state behind
        raise
    if not chief:
        state.remove()
        return StageResult(f"worker done ({result.report['epochs_run']} epochs); the chief wrote the outputs",
                           discard=True)  # fmt: skip
    report = {**result.report, "class_names": data.meta.class_names}
    result.model.save(outputs["model"])
    write_history(result.history, outputs["history"])
    outputs["report"].write_text(json_text(report))
    best = report["best"]
    return StageResult(
        f"{report['epochs_run']} epochs in {report['training_seconds']:.0f} s on {result.devices.strategy} "
        f"({result.devices.replicas} replica(s), {report['training_loop']}); best epoch {report['best_epoch']} "
        f"val_accuracy {best.get('val_accuracy', float('nan')):.4f}; MLflow run {run.run_id}",
        facts={"result": result, "state": state},
    )


def publish(result: StageResult, run, outputs: dict[str, Path]) -> dict:
    """The finished training into its MLflow run; the resumable state goes once the run holds it. A
    store that stopped answering keeps the state: the rerun publishes without training again."""
    from pipeline.tracking import portable_uri, store_problem

    trained: TrainResult = result.facts["result"]
    state = result.facts["state"]
    try:
        run.finish(trained, {option: outputs[option] for option in ("history", "report", "model")})
    except Exception as exc:
        problem = store_problem(exc)
        if problem is None:
            raise
        raise PipelineError(
            f"MLflow store {portable_uri(run.tracking_uri)}: {problem}; the training is kept in {state.directory}: "
            "rerun `dvc repro train` once the store answers, and it resumes from there"
        ) from None
    state.remove()
    return {"run_file": run.run_file()}


def open_training_run(params, inputs: dict[str, Path]):
    from pipeline.training_run import TrainingRun

    return TrainingRun(params.mlflow.tracking_uri, params.mlflow.experiment_name)


STAGE = Stage(
    "train",
    __doc__,
    params=("train", "mlflow.tracking_uri", "mlflow.experiment_name"),
    inputs=("prepared", "tuned"),
    outputs=("model", "history", "report", "run_file"),
    state=("work_dir",),
    core=train_stage,
    tracking=open_training_run,
    publish=publish,
)


def main(argv: list[str] | None = None) -> None:
    STAGE.run(argv)


if __name__ == "__main__":
    main()
    end_process()
