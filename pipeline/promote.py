"""Stage `promote`: champion / challenger, with MLflow model aliases.

`export` registers every model as a new version with the alias `challenger`. This stage runs the
challenger and the current `champion` (both ONNX files from the registry's artifacts, onnxruntime)
on the same test split and moves `champion` to the challenger only when every check passes:

- accuracy: not more than `promote.max_drop` below the champion's;
- per class: no class's F1 more than `promote.max_class_f1_drop` below the champion's;
- McNemar's exact test (statsmodels) on the per-example outcomes: always reported; a significant
  improvement is required only with `promote.require_significant`.

The first model becomes champion. Each decision goes to reports/promotion.json (a DVC metric) and
onto both versions' tags. A challenger that loses is an outcome, not an error: the stage succeeds.

    dvc repro promote                                                  # the stage
    python -m pipeline.promote --registration reports/export.json --rollback     # champion back
    python -m pipeline.promote --registration reports/export.json --champion 3   # champion to v3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cli import end_process, run_cli
from pipeline.errors import PipelineError
from pipeline.params import PromoteParams
from pipeline.registry import CHAMPION
from pipeline.stage import Stage, StageResult, json_text, read_output

PREVIOUS = "promotion.previous_champion"


# ----------------------------------------------------------------------------- the comparison
def mcnemar_exact(champion_correct: np.ndarray, challenger_correct: np.ndarray) -> dict[str, Any]:
    """McNemar's exact (binomial) test on the paired outcomes: only the examples exactly one model
    gets right count."""
    from statsmodels.stats.contingency_tables import mcnemar

    champion_only = int(np.sum(champion_correct & ~challenger_correct))
    challenger_only = int(np.sum(challenger_correct & ~champion_correct))
    both = int(np.sum(champion_correct & challenger_correct))
    neither = int(np.sum(~champion_correct & ~challenger_correct))
    result = mcnemar([[both, champion_only], [challenger_only, neither]], exact=True)
    return {"champion_only_correct": champion_only, "challenger_only_correct": challenger_only,
            "p_value": float(result.pvalue)}  # fmt: skip


def compare(labels: np.ndarray, champion: np.ndarray, challenger: np.ndarray, class_names: list[str],
            params: PromoteParams) -> dict[str, Any]:  # fmt: skip
    """Every check of the challenger's predicted classes against the champion's, on the same labels."""
    from sklearn.metrics import f1_score

    classes = list(range(len(class_names)))
    accuracy = {"champion": float(np.mean(champion == labels)), "challenger": float(np.mean(challenger == labels))}
    f1 = {
        who: f1_score(labels, predicted, labels=classes, average=None, zero_division=0)
        for who, predicted in (("champion", champion), ("challenger", challenger))
    }
    f1_drops = f1["champion"] - f1["challenger"]
    worst = int(np.argmax(f1_drops))
    test = mcnemar_exact(champion == labels, challenger == labels)
    better = test["challenger_only_correct"] > test["champion_only_correct"]
    test["significant_improvement"] = bool(better and test["p_value"] < params.alpha)
    checks = {
        "accuracy": {
            "passed": accuracy["champion"] - accuracy["challenger"] <= params.max_drop + 1e-12,
            "drop": accuracy["champion"] - accuracy["challenger"],
            "max_drop": params.max_drop,
        },
        "class_f1": {
            "passed": bool(f1_drops[worst] <= params.max_class_f1_drop + 1e-12),
            "worst_class": class_names[worst],
            "worst_drop": float(f1_drops[worst]),
            "max_drop": params.max_class_f1_drop,
        },
        "mcnemar": {
            **test,
            "alpha": params.alpha,
            "required": params.require_significant,
            "passed": test["significant_improvement"] or not params.require_significant,
        },  # fmt: skip
    }
    return {"accuracy": accuracy, "checks": checks, "passed": all(c["passed"] for c in checks.values())}


def failed_reasons(result: dict[str, Any]) -> str:
    checks, reasons = result["checks"], []
    if not checks["accuracy"]["passed"]:
        c = checks["accuracy"]
        reasons.append(f"accuracy {c['drop']:.4f} below the champion's (promote.max_drop {c['max_drop']})")
    if not checks["class_f1"]["passed"]:
        c = checks["class_f1"]
        reasons.append(
            f"F1 of {c['worst_class']} {c['worst_drop']:.4f} below (promote.max_class_f1_drop {c['max_drop']})"
        )
    if not checks["mcnemar"]["passed"]:
        reasons.append(f"no significant improvement (McNemar p = {checks['mcnemar']['p_value']:.3g})")
    return "; ".join(reasons)


# ----------------------------------------------------------------------------- running the models
def comparable(classifier, meta) -> bool:
    """Whether a registered model predicts this data's classes from this data's input."""
    return classifier.class_names == meta.class_names and classifier.input_shape == tuple(meta.input_shape)


def predicted_classes(data, *models) -> tuple[np.ndarray, ...]:
    """The test labels and each model's predicted classes on `data` (PreparedData), the split
    streamed a batch at a time."""
    labels, predicted = [], [[] for _ in models]
    for x, y in data.batches("test", 512):
        labels.append(y)
        for out, model in zip(predicted, models, strict=True):
            out.append(model.probabilities(x, batch_size=512).argmax(axis=1))
    return np.concatenate(labels), *(np.concatenate(p) for p in predicted)


# ----------------------------------------------------------------------------- the decision
def decide(registry, name: str, challenger: str, data, params) -> dict[str, Any]:
    """The decision: compare the challenger with the champion on the same test split (reading the
    registry, changing nothing in it)."""
    champion = registry.version_by_alias(name, CHAMPION)
    version = registry.version(name, challenger)
    decision: dict[str, Any] = {
        "registered_model": name,
        "challenger": challenger,
        "champion_before": str(champion.version) if champion else None,
        "test_sha256": data.meta.split_sha256["test"],
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if version.tags.get("parity") != "passed":
        return conclude(decision, False, f"v{challenger} has not passed verify's parity checks")
    if champion is None:
        return conclude(decision, True, "first model: no champion yet")
    if str(champion.version) == challenger:
        return conclude(decision, True, f"v{challenger} is already the champion")

    from pipeline.classifier import OnnxClassifier  # the deployment's own reader of an exported file

    with tempfile.TemporaryDirectory(prefix="promote-") as tmp:
        try:
            champion_model = OnnxClassifier(registry.download_onnx(name, champion.version, Path(tmp) / "champion"))
        except PipelineError:  # not a model this pipeline exported
            champion_model = None
        if champion_model is None or not comparable(champion_model, data.meta):
            reason = (f"champion v{champion.version} predicts other classes or takes another input; compare "
                      "impossible (move the alias by hand: --champion VERSION)")  # fmt: skip
            return conclude(decision, False, reason)
        challenger_model = OnnxClassifier(registry.download_onnx(name, challenger, Path(tmp) / "challenger"))
        labels, champion_pred, challenger_pred = predicted_classes(data, champion_model, challenger_model)
    result = compare(labels, champion_pred, challenger_pred, data.meta.class_names, params)
    decision.update(result, examples=int(len(labels)),
                    champion_test_sha256=champion.tags.get("data.test_sha256"))  # fmt: skip
    return conclude(decision, result["passed"], "every check passed" if result["passed"] else failed_reasons(result))


def conclude(decision: dict[str, Any], promoted: bool, reason: str) -> dict[str, Any]:
    before = decision["champion_before"]
    return {**decision, "promoted": promoted, "reason": reason,
            "champion_after": decision["challenger"] if promoted else before}  # fmt: skip


def record(registry, decision: dict[str, Any]) -> None:
    """The decision in the registry: `champion` moved when the challenger won, both versions tagged."""
    name, challenger, before = decision["registered_model"], decision["challenger"], decision["champion_before"]
    reason, promoted = decision["reason"], decision["promoted"]
    tags = {"promotion.decision": "champion" if promoted else "rejected", "promotion.reason": reason,
            "promotion.time": decision["time"]}  # fmt: skip
    if "checks" in decision:
        tags["promotion.mcnemar_p"] = f"{decision['checks']['mcnemar']['p_value']:.4g}"
    if before and before != challenger:
        tags["promotion.compared_with"] = f"v{before}"
        verdict = "replaced by" if promoted else "kept against"
        registry.tag_version(name, before, {f"promotion.v{challenger}": f"{verdict} v{challenger}: {reason}"})
    if promoted and before != challenger:
        if before:
            tags[PREVIOUS] = before
        registry.set_alias(name, CHAMPION, challenger)
    registry.tag_version(name, challenger, tags)


def set_champion(registry, name: str, version: str | None) -> str:
    """Move `champion` to `version`, or (None) back to the version the current champion replaced."""
    current = registry.version_by_alias(name, CHAMPION)
    if version is None:
        if current is None:
            raise PipelineError(f"registered model {name} has no champion to roll back")
        version = current.tags.get(PREVIOUS)
        if not version:
            raise PipelineError(f"{name} v{current.version} replaced no earlier champion: nothing to roll back to")
    rollback = current is not None and current.tags.get(PREVIOUS) == str(version)
    registry.version(name, version)  # exists, or one line saying it does not
    if current is not None and str(current.version) != str(version):
        if rollback:  # the restored champion keeps its own predecessor: a second rollback goes further back
            registry.tag_version(name, current.version, {"promotion.decision": f"rolled back to v{version}"})
            registry.tag_version(
                name, version, {"promotion.decision": f"champion again (rollback from v{current.version})"}
            )
        else:  # by hand: a rollback undoes it
            registry.tag_version(name, version, {PREVIOUS: current.version, "promotion.decision": "champion (by hand)"})
    registry.set_alias(name, CHAMPION, str(version))
    return str(version)


def registry_of(registration: dict):
    """The registry that holds the exported model (MLFLOW_TRACKING_URI wins, as for every stage)."""
    from pipeline.registry import Registry
    from pipeline.tracking import existing_store_client, portable_uri, resolve_tracking_uri

    uri = resolve_tracking_uri(registration["tracking_uri"])
    missing = f"MLflow store {portable_uri(uri)} does not exist (set MLFLOW_TRACKING_URI, or run `dvc repro`)"
    return Registry(existing_store_client(uri, missing), uri)


def open_registry(params, inputs: dict[str, Path]):
    return registry_of(read_output(inputs["registration"], "export", "name and version"))


def promote(inputs: dict[str, Path], params, outputs: dict[str, Path], registry) -> StageResult:
    """The decision, from the registry as it is (nothing changed in it here), into the report."""
    from pipeline.prepared import PreparedData

    registered = read_output(inputs["registration"], "export", "name and version")
    data = PreparedData.open(inputs["prepared"])
    name = registered["name"]
    decision = decide(registry, name, str(registered["version"]), data, params.promote)
    outputs["report"].write_text(json_text(decision))
    verdict = "promoted to champion" if decision["promoted"] else f"kept champion v{decision['champion_before']}"
    return StageResult(f"{name} v{decision['challenger']} {verdict} ({decision['reason']})", facts=decision)


def publish(result: StageResult, registry, outputs: dict[str, Path]) -> dict:
    """The decision in the registry; the report is put in place after it."""
    record(registry, result.facts)
    return {}


STAGE = Stage("promote", __doc__, params=("promote",), inputs=("prepared", "registration"), outputs=("report",),
              core=promote, tracking=open_registry, publish=publish)  # fmt: skip


def move_by_hand(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.promote", description="move the champion alias by hand")
    parser.add_argument("--registration", required=True, type=Path, help="export's report (reports/export.json)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--rollback", action="store_true", help="move champion back to the version it replaced")
    what.add_argument("--champion", metavar="VERSION", help="move champion to this registered version")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    registered = read_output(args.registration, "export", "name and version")
    version = set_champion(registry_of(registered), registered["name"], args.champion)
    print(f"promote: {registered['name']}@champion is now v{version}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--rollback" in argv or "--champion" in argv:
        run_cli(move_by_hand, argv)
    else:
        STAGE.run(argv)


if __name__ == "__main__":
    main()
    end_process()
