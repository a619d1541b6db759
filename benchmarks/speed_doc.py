"""docs/speed.md from the benchmarks' JSON under reports/: every figure the README points to, each
table naming the file and the script that wrote it. A figure is never typed by hand; rerun a
benchmark, then this (tests/test_house.py fails while the page and the JSON disagree).

    python benchmarks/speed_doc.py [--check]

`--check` compares the page with what the JSON gives. README command 1 (`dvc repro`) rewrites some of
that JSON with this machine's timings; the committed page is then checked against the committed JSON
instead (git show HEAD:...), never a run's figures against the committed page.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REPORTS = REPO / "reports"
OUT = REPO / "docs/speed.md"


def worktree_text(relative: str) -> str | None:
    path = REPO / relative
    return path.read_text() if path.is_file() else None


def committed_text(relative: str) -> str | None:
    """The file as the last commit has it; None where there is none (or no git repository)."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(REPO), "show", f"HEAD:./{relative}"], capture_output=True, text=True, check=False
        )
    except OSError:  # no git
        return None
    return proc.stdout if proc.returncode == 0 else None


_read: Callable[[str], str | None] = worktree_text  # where `load` reads reports/ (render sets it)


def load(name: str) -> dict | None:
    text = _read(f"{REPORTS.relative_to(REPO)}/{name}")
    return json.loads(text) if text is not None else None


def table(header: list[str], rows: list[list]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows],
    ]


def source(report: str, script: str) -> str:
    return f"From `reports/{report}`, written by `python benchmarks/{script}`."


def missing(report: str, script: str) -> list[str]:
    return [f"Not measured yet: `python benchmarks/{script}` writes `reports/{report}`."]


def machine(report: dict) -> str:
    m = report.get("machine", {})
    cpus = m.get("cpus") or m.get("logical_cpus")
    return f"{cpus} logical CPUs, Python {m.get('python', '?')}" if cpus else "this machine"


def commands_section() -> list[str]:
    f, s = load("fresh_clone.json"), load("stages.json")
    lines = ["## The README's two commands", ""]
    if s:
        lines.append(f"Command 1 (`dvc repro` from scratch, after setup): {s['total_seconds'] / 60:.1f} min, "
                     "stage by stage below.")  # fmt: skip
    if f:
        verdict = "passed" if f["exit_status"] == 0 else f"failed (exit status {f['exit_status']})"
        lines.append(
            f"Command 2 as CI runs it (`CI=true bash .ci/run` in a fresh clone of `{f['commit'][:7]}`, setup "
            f"included, uv's download cache warm): {f['seconds'] / 60:.1f} min, {verdict}; the tests alone "
            f"{f['test_seconds'] / 60:.1f} min ({f['tests']}). " + source("fresh_clone.json", "fresh_clone.py")
        )
    return lines if len(lines) > 2 else lines + missing("fresh_clone.json", "fresh_clone.py")


def stages_section() -> list[str]:
    s = load("stages.json")
    lines = ["## A whole run, stage by stage", ""]
    if s is None:
        return lines + missing("stages.json", "stages.py --force")
    lines += [
        f"README command 1's `dvc repro`{' forced (every stage from scratch)' if s['forced'] else ''}, "
        f"on {machine(s)}. Each stage's seconds include its process start and DVC's hashing. "
        + source("stages.json", "stages.py --force"),
        "",
        *table(["stage", "seconds"], [[f"`{k}`", f"{v:.1f}"] for k, v in s["stage_seconds"].items()]),
        "",
        f"Total {s['total_seconds']:.1f} s, of which training {s['training_seconds']:.1f} s: "
        f"{s['total_minus_training_seconds']:.1f} s for everything else. A second `dvc repro` with nothing "
        f"changed: {s['no_op_repro_seconds']:.2f} s (median of three), running no stage.",
    ]
    o = load("stages_overhead.json")
    if o:
        forced = {k: v for k, v in o["stage_seconds"].items() if k != "train"}
        lines += [
            "",
            f"Every stage but `train` forced again with the current code, in one `{o.get('command', 'dvc repro')}`: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in forced.items())
            + f"; {o['total_seconds']:.1f} s in all, DVC's own start included. "
            + source("stages_overhead.json", "stages.py --force --except-train"),
        ]
    return lines


def default_run_section() -> list[str]:
    metrics, train, parity = load("metrics.json"), load("train.json"), load("parity.json")
    lines = ["## The default model", ""]
    if not (metrics and train):
        return lines + ["Not measured yet: README command 1 writes `reports/metrics.json` and `reports/train.json`."]
    test = metrics["test"]
    lines += [
        f"The `cnn` preset on Fashion-MNIST, from `reports/metrics.json` and `reports/train.json` (README "
        f"command 1): test accuracy **{test['accuracy']:.4f}**, macro F1 {test['macro_f1']:.4f}, after "
        f"{train['epochs_run']} epochs and {train['training_seconds']:.0f} s of training.",
    ]
    if parity:
        forms = parity["formats"]
        lines += [
            "",
            f"Every exported form on all {parity['examples']:,} test examples (`reports/parity.json`, "
            "written by `verify`):",
            "",
            *table(
                ["form", "accuracy", "max abs. difference to Keras", "same top class"],
                [
                    [f"`{fmt}`", f"{r['accuracy']:.4f}", f"{r['max_abs_diff']:.2g}", f"{r['argmax_agreement']:.2%}"]
                    for fmt, r in forms.items()
                    if "max_abs_diff" in r
                ],  # fmt: skip
            ),
        ]
    candidates = load("default_model.json")
    if candidates:
        rows = [[f"`{name}`", candidate_accuracy(c["accuracy_run"]),
                 c["accuracy_run"].get("test_accuracy_flip_averaged", ""), c["accuracy_run"]["epochs_run"],
                 f"{c['accuracy_run']['training_seconds']:.0f}", c["why"]]
                for name, c in candidates["candidates"].items()]  # fmt: skip
        lines += [
            "",
            "Candidates for the default, each trained on one thread beside others (their seconds are not "
            "comparable with the run above); flip-averaged: the same weights scoring each test image and "
            "its mirror, as `train.test_time_flip` does. " + source("default_model.json", "default_model.py"),
            "",
            *table(["candidate", "test accuracy", "flip-averaged", "epochs run", "training s", "what"], rows),
        ]
        flip = candidates.get("test_time_flip")
        if flip:
            lines += [
                "",
                f"Test-time flip averaging of the trained default model (`models/model.keras`, the run above): "
                f"test accuracy {flip['test_accuracy']:.4f} alone, {flip['test_accuracy_flip_averaged']:.4f} "
                f"averaged with its mirror image, at {flip['inference_cost']:.0f}× the inference. "
                + source("default_model.json", "default_model.py --test-time-flip models/model.keras"),
            ]
    return lines


def candidate_accuracy(run: dict) -> str:
    """A candidate's test accuracy; with a weight average, also that of the weights it trained."""
    if run.get("test_accuracy") is None:
        return "not measured"
    if "test_accuracy_without_ema" in run:
        return f"{run['test_accuracy']} (trained weights: {run['test_accuracy_without_ema']})"
    return str(run["test_accuracy"])


def throughput_section() -> list[str]:
    t = load("throughput.json")
    lines = ["## Training throughput", ""]
    if t is None:
        return lines + missing("throughput.json", "throughput.py")
    rows = []

    def rate(runs: list[dict] | None) -> str:
        return f"{statistics.median(r['examples_per_second'] for r in runs):,.0f}" if runs else ""

    for preset, r in t["presets"].items():
        same = r.get("ratio_same_work")
        runs = f"{r.get('repeats', t.get('repeats', 1))} × {r.get('epochs', t.get('epochs', '?'))}"
        rows.append([f"`{preset}`", runs, rate(r["pipeline"]), rate(r["plain"]), f"{r['ratio']:.2f}",
                     rate(r.get("plain_same_work")), f"{same:.2f}" if same else ""])  # fmt: skip
    lines += [
        f"Examples per second of the pipeline's training against a plain `model.fit` script of the same "
        f"model on in-memory arrays (medians of alternating runs, side by side on {machine(t)}), and against "
        "that script doing the pipeline's work too (the preset's augmentation as Keras layers, validation every "
        "epoch). " + source("throughput.json", "throughput.py"),
        "",
        *table(
            [
                "preset",
                "runs × epochs",
                "pipeline examples/s",
                "plain fit examples/s",
                "ratio",
                "plain fit, same work",
                "ratio, same work",
            ],
            rows,
        ),  # fmt: skip
    ]
    peak, default = t.get("peak"), t.get("default_model")
    if peak and default:
        lines += [
            "",
            f"The default model trains at {default['training_gflops']:.1f} GFLOP/s, "
            f"{default['of_conv_peak']:.0%} of this machine's measured 3×3 convolution peak "
            f"({peak['conv3x3_64_gflops']:.0f} GFLOP/s).",
        ]
    return lines


def inference_section() -> list[str]:
    b = load("bench.json")
    lines = ["## Inference", ""]
    if b is None:
        return lines + missing("bench.json", "inference.py")
    m = b["machine"]
    versions = ", ".join(
        f"{k.replace('_', '-')} {m[k]}" for k in ("tensorflow", "onnxruntime", "ai_edge_litert") if k in m
    )
    lines += [
        f"Every form fed raw uint8 pixels from the test split, the engines taking turns "
        f"({b.get('rounds', 1)} rounds); batch 1: median and p99 over {b['calls']} calls; "
        f"batch 256: images/s over the test split; {b['threads']['intra_op']} intra-op threads unless the name "
        f"says one ({machine(b)}; {versions}). " + source("bench.json", "inference.py"),
        "",
        *table(
            ["engine", "batch 1 median ms", "batch 1 p99 ms", "batch 256 images/s"],
            [
                [
                    f"`{name}`",
                    f"{e['batch1']['median_ms']:.3f}",
                    f"{e['batch1']['p99_ms']:.3f}",
                    f"{e['batch256_images_per_s']:,.0f}",
                ]
                for name, e in b["engines"].items()
            ],  # fmt: skip
        ),
    ]
    engines = b["engines"]
    ours, theirs = engines.get("onnxruntime_fp32"), engines.get("onnxruntime_fp32_tf2onnx_graph")
    if ours and theirs and "saved_model" in engines:
        saved = engines["saved_model"]["batch256_images_per_s"]
        lines += [
            "",
            f"Export's graph rewrites (`pipeline/onnx_graph.py`): onnxruntime float32 at batch 1 "
            f"{ours['batch1']['median_ms']:.3f} ms against {theirs['batch1']['median_ms']:.3f} ms for tf2onnx's "
            f"graph of the same model ({ours['batch1']['median_ms'] / theirs['batch1']['median_ms']:.2f}×); at "
            f"batch 256 {ours['batch256_images_per_s'] / saved:.2f}× the SavedModel's images/s "
            f"(tf2onnx's graph: {theirs['batch256_images_per_s'] / saved:.2f}×).",
        ]
    if ours and b.get("roofline"):
        r = b["roofline"]
        twice = ", twice: the image and its mirror" if r.get("passes_per_image") == 2 else ""
        lines += [
            "",
            f"The roofline: the float32 model does {r['model_mflops']:.1f} MFLOP per image (its convolutions and "
            f"dense layers{twice}); onnxruntime's own large float32 MatMul runs at "
            f"{r['onnxruntime_matmul_gflops']:.0f} "
            f"GFLOP/s on {b['threads']['intra_op']} threads here, so no graph or session setting can take batch 1 "
            f"below {r['batch1_lower_bound_ms']:.3f} ms; the exported file's {ours['batch1']['median_ms']:.3f} ms "
            f"is {r['onnxruntime_fp32_batch1_gflops']:.0f} GFLOP/s "
            f"({r['onnxruntime_fp32_batch1_gflops'] / r['onnxruntime_matmul_gflops']:.0%} of that rate).",
        ]
    alone = engines.get("onnxruntime_fp32_one_pass")
    if ours and alone:
        lines += [
            "",
            f"The model averages each image with its mirror (`train.test_time_flip`): the network alone, one "
            f"pass an image (`onnxruntime_fp32_one_pass`, what `-S train.test_time_flip=false` exports), takes "
            f"{alone['batch1']['median_ms']:.3f} ms at batch 1 and {alone['batch256_images_per_s']:,.0f} images/s "
            f"at batch 256 against {ours['batch1']['median_ms']:.3f} ms and "
            f"{ours['batch256_images_per_s']:,.0f} images/s with the mirror.",
        ]
    if b.get("file_bytes"):
        lines += ["", *table(["file", "KiB"], [[f"`{k}`", f"{v / 1024:,.0f}"] for k, v in b["file_bytes"].items()])]
    return lines


SERVERS = {
    "mlflow": "`mlflow models serve` of the registered model",
    "mlflow_2_workers": "the same, `--workers 2`",
    "pipeline_serve": "`pipeline-serve`",
    "pipeline_serve_no_batching": "`pipeline-serve --no-batching`",
    "pipeline_serve_spinning": "`pipeline-serve --spin` (onnxruntime's threads spinning)",
    "baseline_fastapi": "hand-written FastAPI + onnxruntime (`benchmarks/serving_baseline.py`)",
}


def serving_section() -> list[str]:
    s = load("serving.json")
    lines = ["## Serving", ""]
    if s is None:
        return lines + missing("serving.json", "serving.py")
    m, cells = s["machine"], s["cells"]
    rounds = len(cells[0]["rounds"])
    flip = ", each image and its mirror" if s["model"].get("test_time_flip") else ""
    lines += [
        f"Servers of the same ONNX file (the default preset's graph{flip}) "
        f"answering the same pre-encoded requests from concurrent clients, the servers taking turns cell by cell, "
        f"{rounds} rounds, medians; the clients run in one aiohttp process on the same machine ({m['cpu']}, "
        f"{m['logical_cpus']} logical CPUs, shared with other work: compare within a table, not with other pages). "
        "JSON is MLflow's `/invocations` body of raw pixels; binary is the Open Inference Protocol's binary "
        "tensor data as `tritonclient` sends it. " + source("serving.json", "serving.py"),
        "",
    ]
    shapes = sorted({(c["clients"], c["batch"]) for c in cells})
    rows = []
    for server, label in SERVERS.items():
        for encoding in ("json", "binary"):
            found = {(c["clients"], c["batch"]): c for c in cells if (c["server"], c["encoding"]) == (server, encoding)}
            if found:
                rows.append([f"{label}, {encoding}", *[
                    f"{found[k]['images_per_second']:,.0f} ({found[k]['p50_ms']:.0f} / {found[k]['p99_ms']:.0f})"
                    if k in found and found[k]["p50_ms"] is not None else "–" for k in shapes
                ]])  # fmt: skip
    lines += table(["server", *[f"{c} client{'s' if c > 1 else ''}, batch {b}" for c, b in shapes]], rows)
    lines += ["", "Each cell: images/s (p50 / p99 latency, ms)."]
    t = s.get("targets")
    if t:
        gains = t["batching_on_vs_off_8_clients_batch_1"]
        lines += [
            "",
            f"Under 8 clients at batch 32 (JSON), `pipeline-serve` gives "
            f"**{t['pipeline_serve_vs_baseline_8_clients_batch_32_json']:.2f}×** the hand-written app's images/s, "
            f"`mlflow models serve` {t['mlflow_vs_baseline_8_clients_batch_32_json']:.2f}×. Dynamic batching against "
            f"none under 8 clients at batch 1, in the table's cells: {gains['json']:.2f}× (JSON), "
            f"{gains['binary']:.2f}× (binary).",
        ]
    ab = s.get("batching_ab")
    if ab:
        pairs = len(next(iter(ab.values()))["ratios"])
        lines[-1] += (
            f" Measured again in {pairs} pairs of runs back to back (the machine's speed swings between rounds), "
            "the median of the pairs' ratios: "
            + ", ".join(
                f"**{a['median_ratio']:.2f}×** ({encoding}; {a['images_per_second']['on']:,.0f} against "
                f"{a['images_per_second']['off']:,.0f} images/s, {a['requests_per_runtime_call']:.1f} requests "
                "merged per runtime call)"
                for encoding, a in ab.items()
            )
            + "."
        )
    r = s.get("runtime_alone")
    if r:
        rates = r["images_per_second"]
        lines += [
            "",
            "onnxruntime alone in the same run, images/s by batch size: "
            + ", ".join(f"{k.removeprefix('batch_')}: {v:,.0f}" for k, v in rates.items())
            + f" ({rates['batch_64'] / rates['batch_1']:.2f}× from batch 1 to 64): the most that merging "
            "requests into one call can gain from the runtime itself on this CPU; the rest of the gain is "
            "per-call overhead saved.",
        ]
    b = s.get("metrics_after")
    if b:
        lines += [
            "",
            f"Over the whole run `pipeline-serve` made {b['runtime_calls']:,} runtime calls of "
            f"{b['requests_per_call']:.2f} requests ({b['images_per_call']:.1f} images) on average (its `/metrics`).",
        ]
    mixed, correctness = s.get("mixed"), s.get("correctness")
    if mixed:
        lines += [
            "",
            "The mixed load (8 clients; three requests in four of one image, one in four of 32; one in twenty "
            "malformed: a value of 256, a wrong shape, a wrong input name, fractions, broken JSON): "
            + "; ".join(
                f"{SERVERS[name]} {f['images_per_second']:,.0f} images/s, statuses "
                + ", ".join(f"{code}: {n}" for code, n in f["statuses"].items())
                + (", alive after" if f["alive_after"] else ", **dead after**")
                for name, f in mixed.items()
            )
            + ".",
        ]
    if correctness:
        exact = all(c["exact"] for c in correctness.values())
        accepted = {
            SERVERS[name]: [kind for kind, code in c["malformed_statuses"].items() if not 400 <= code < 500]
            for name, c in correctness.items()
        }
        lines += [
            "",
            f"Checked before timing: every server's answers {'equal' if exact else '**differ from**'} "
            f"onnxruntime's probabilities exactly (JSON, and binary for `pipeline-serve`); of the malformed requests "
            f"({', '.join(next(iter(correctness.values()))['malformed_statuses'])}) "
            + "; ".join(f"{name} answered {', '.join(kinds)} with a 2xx" for name, kinds in accepted.items() if kinds)
            + (
                "; every other answer was a 4xx."
                if any(accepted.values())
                else "every one got a 4xx from every server."
            ),
        ]
    rss = s.get("rss")
    if rss:
        lines += [
            "",
            f"Memory over {rss['seconds']:.0f} s of the mixed load ({rss['requests']:,} requests) against "
            f"`pipeline-serve`: RSS {rss['rss_mib_first_tenth']:.0f} MiB in the first tenth, "
            f"{rss['rss_mib_last_tenth']:.0f} MiB in the last, at most {rss['rss_mib_max']:.0f} MiB.",
        ]
    path = s.get("mlflow_request_path_ms")
    if path:
        steps = list(next(iter(path.values())))
        lines += [
            "",
            "Where a request's time goes in MLflow's scoring server (`mlflow.pyfunc.scoring_server.invocations`, "
            "which `mlflow models serve` runs for each request, timed whole in-process, then each step alone on "
            "the same body), ms:",
            "",
            *table(
                ["step", *[k.replace("_", " ") for k in path]],
                [[s_.replace("_", " "), *[f"{path[k][s_]:.2f}" for k in path]] for s_ in steps],
            ),  # fmt: skip
        ]
    return lines


def presets_section() -> list[str]:
    p = load("presets.json")
    lines = ["## Presets", ""]
    if p is None:
        return lines + missing("presets.json", "presets.py")
    rows = []
    for preset, r in p["presets"].items():
        if "refused" in r:
            rows.append([f"`{preset}`", "refused: " + r["refused"], "", "", "", "", "", ""])
            continue
        rows.append([
            f"`{preset}`" + (" (data rewritten)" if "rewritten_from" in r["data"] else ""),
            f"{r['test_accuracy']:.4f}",
            r["epochs_run"],
            f"{r['training_seconds']:.0f}",
            f"{r['onnx_max_abs_diff']:.1g}",
            f"{r['litert_max_abs_diff']:.1g}" if "litert_max_abs_diff" in r else "",
            f"{r['int8_test_accuracy']:.4f} / {r['litert_int8_test_accuracy']:.4f}"
            if "litert_int8_test_accuracy" in r else f"{r['int8_test_accuracy']:.4f}",
            ("passed" if r.get("parity_passed") else "failed: " + "; ".join(r.get("parity_failures", [])))
            if "parity_passed" in r else "",
        ])  # fmt: skip
    lines += [
        "Each preset through fetch → prepare → train → evaluate → export → verify with its own "
        f"hyperparameters, on {p['data']['format']} data ({machine(p)}); presets made for other inputs get "
        "the same images rewritten as an image folder or a CSV table. " + source("presets.json", "presets.py"),
        "",
        *table(
            [
                "preset",
                "test accuracy",
                "epochs",
                "training s",
                "ONNX max abs. diff",
                "LiteRT max abs. diff",
                "int8 accuracy (ONNX / LiteRT)",
                "verify",
            ],
            rows,
        ),  # fmt: skip
    ]
    return lines


def text_section() -> list[str]:
    t = load("text.json")
    lines = ["## Text", ""]
    if t is None:
        return lines + missing("text.json", "text.py")
    cpu = t.get("machine", {}).get("cpu", "this machine")
    lines += [
        "Each text preset through fetch → prepare → train → evaluate → export → verify on Debian's fortunes "
        "(`scripts/fortunes.py`), beside scikit-learn's TF-IDF + logistic regression fitted on the same training "
        "split and scored on the same test split (words: `TfidfVectorizer()`, what users try first; characters: "
        f"2-5-grams, sublinear). Training examples/s against a plain `model.fit` of the same model in the same "
        f"precision (it tokenizes every epoch); latency and throughput are verify's, per file ({cpu}). "
        + source("text.json", "text.py"),
    ]
    for task, entry in t["tasks"].items():
        counts, base = entry.get("counts", {}), entry.get("baselines", {})
        rows = [[f"TF-IDF {kind} + logistic regression", f"{b['test_accuracy']:.4f}", f"{b['test_macro_f1']:.4f}",
                 "", "", "", "", "", ""] for kind, b in (("words", base.get("tfidf_words")),
                                                         ("characters", base.get("tfidf_chars"))) if b]  # fmt: skip
        for preset, r in entry["presets"].items():
            onnx, litert = r["latency"]["onnx"], r["latency"]["litert"]
            rows.append([
                f"`{preset}`", f"{r['test_accuracy']:.4f}", f"{r['test_macro_f1']:.4f}",
                f"{r['training_seconds']:.0f} ({r['epochs_run']} epochs)",
                f"{r['examples_per_second'] / r['plain_fit']['examples_per_second']:.2f}x",
                "passed" if r["parity_passed"] else "failed",
                f"{onnx['batch1_median_ms']:.2f} / {litert['batch1_median_ms']:.2f}",
                f"{onnx['batch256_images_per_s']:,.0f} / {litert['batch256_images_per_s']:,.0f}",
                f"{r['bytes']['model.onnx'] / 2**20:.1f} MB",
            ])  # fmt: skip
        total = sum(counts.values()) if counts else 0
        lines += [
            "",
            f"**{task}** ({total:,} texts: {counts.get('train', 0):,} train, {counts.get('val', 0):,} validation, "
            f"{counts.get('test', 0):,} test):",
            "",
            *table(["model", "test accuracy", "macro F1", "training s", "examples/s vs plain fit", "parity",
                    "batch 1 ms (ONNX / LiteRT)", "batch 256 texts/s (ONNX / LiteRT)", "ONNX file"], rows),
        ]  # fmt: skip
    return lines


def search_label(settings: dict) -> str:
    """`TPE + successive halving, best quarter (the default)` for a search of benchmarks/tune.py."""
    from pipeline.params import TuneParams
    from pipeline.study_design import RUNGS

    if settings["sampler"] == "random":
        return "random, no pruning"
    defaults = {key: TuneParams.model_fields[key].default for key in ("pruner", "reduction_factor")}
    pruners = {"halving": "successive halving", "median": "median pruner", "hyperband": "Hyperband"}
    # Reports written before the factor was a setting measured 3, its value then.
    factor = settings.get("reduction_factor", 3) if settings["pruner"] in RUNGS else None
    is_default = settings["pruner"] == defaults["pruner"] and factor in (None, defaults["reduction_factor"])
    kept = {3: ", best third", 4: ", best quarter"}.get(factor, f", 1 in {factor}") if factor else ""
    pruner = pruners.get(settings["pruner"], settings["pruner"])
    return f"TPE + {pruner}{kept}" + (" (the default)" if is_default else "")


def tune_section() -> list[str]:
    t = load("tune.json")
    lines = ["## Tuning", ""]
    if t is None:
        return lines + missing("tune.json", "tune.py")
    budget, data, m = t["budget"], t["data"], t["machine"]
    seeds = ", ".join(map(str, budget["seeds"]))
    counts = data["counts"]
    lines += [
        f"The `tune` stage's search against random search without pruning (a hand-written sweep: every point "
        f"trains every epoch) on the same budget: {budget['trials']} trials of at most {budget['epochs_per_trial']} "
        f"epochs over `params.yaml`'s `tune.space`, seed {seeds}, one process, on a {data['examples']:,}-example "
        f"subset of Fashion-MNIST ({counts['train']:,} train, {counts['val']:,} validation; the search never sees "
        f"the {counts['test']:,} test examples), on {m['cpu']} ({m['cpus']} logical CPUs, shared with other work: "
        f"compare the seconds within this table only). Medians over the seeds. A search rerun alone (`--only`) "
        f"keeps the others' rows; each records the commit it ran at. " + source("tune.json", "tune.py"),
        "",
    ]
    rows = []
    for kind, s in t["summary"].items():
        run = next(iter(t["searches"].values()))[kind]
        saved = s.get("epochs_saved_vs_random_median")
        label = search_label(run["settings"])
        rows.append([
            label, f"{s['best_val_accuracy_median']:.4f}", f"{s['epochs_median']:.0f}",
            "" if saved is None else f"{saved:.0%}", f"{run['trials']['complete']} / {run['trials']['pruned']}",
            f"{s['seconds_median'] / 60:.1f}", f"{s['trial_seconds_median']:.0f}",
            "" if "goal_met" not in s else ("yes" if s["goal_met"] else "no"),
        ])  # fmt: skip
    lines += table(["search", "best validation accuracy", "epochs run", "fewer epochs than random",
                    "trials complete / pruned", "minutes", "s per trial", "goal met"], rows)  # fmt: skip
    lines += ["", "The goal: a best validation accuracy at least random search's with at least 40 % fewer epochs."]
    final = t.get("final") or {}
    if "tuned" in final:
        rows = []
        chosen = next(iter(t["searches"].values()))[final["tuned_from"]]["settings"]
        labels = {"default_preset": "the default preset", "tuned": f"the best values of {search_label(chosen)}"}
        for name, label in labels.items():
            f = final[name]
            shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in f["values"].items())
            trained = f"`{f['model']}`" + (f" ({shown})" if shown else "")
            scores = [f"{f['test_accuracy']:.4f}", f"{f['test_macro_f1']:.4f}", f"{f['training_seconds']:.0f}"]
            rows.append([label, trained, f["epochs_run"], *scores])
        lines += [
            "",
            "Then `train` as the pipeline runs it (each model's own epochs) and `evaluate` on the test split:",
            "",
            *table(["model", "trained as", "epochs", "test accuracy", "macro F1", "training s"], rows),
        ]
    return lines


def scale_section() -> list[str]:
    s = load("scale.json")
    lines = ["## Scale", ""]
    if s is None:
        return lines + missing("scale.json", "scale.py")
    rows = [[f"{int(n):,}", how, f"{r['images_per_second']:,.0f}", f"{r['peak_rss_mb']:,.0f}"]
            for n, runs in s["prepare"].items() for how, r in runs.items()]  # fmt: skip
    lines += [
        f"`prepare` on {s['images']}; memory: {s['memory']} ({machine(s)}). `before` is the prepare of an "
        "earlier version that held the data set in memory. " + source("scale.json", "scale.py"),
        "",
        *table(["images", "prepare", "images/s", "peak memory MB"], rows),
    ]
    if s.get("stages"):
        sizes = list(s["stages"])
        stage_names = list(s["stages"][sizes[0]])
        lines += [
            "",
            "The stages after it on the same images, peak memory MB (train caches its split in memory by "
            "design while it fits: `train.cache: auto`):",
            "",
            *table(["stage", *[f"{int(n):,} images" for n in sizes]],
                   [[f"`{st}`", *[f"{s['stages'][n][st]['peak_rss_mb']:,.0f}" for n in sizes]] for st in stage_names]),
        ]  # fmt: skip
    return lines


def other_section() -> list[str]:
    lines = ["## Input pipeline and training across machines", ""]
    i, w = load("bench_input.json"), load("multi_worker.json")
    if i:
        lines += [
            f"`tf.data` from the TFRecord shards against in-memory arrays, epoch seconds after the first "
            f"(median): {i['median_epoch_seconds_after_first']['pipeline']:.1f} s against "
            f"{i['median_epoch_seconds_after_first']['in_memory']:.1f} s; the input pipeline alone reads "
            f"{i['pipeline_alone_examples_per_second']['first_pass']:,} examples/s on its first pass. "
            + source("bench_input.json", "input_pipeline.py"),
            "",
        ]
    if w:
        two, one = w["runs"]["two_workers"], w["runs"]["one_process"]
        lines += [
            f"Two workers through `MultiWorkerMirroredStrategy` on loopback ({w['note']}): "
            f"{two['training_seconds']:.0f} s against {one['training_seconds']:.0f} s in one process, histories "
            f"within {w['max_history_difference']:.3f}. " + source("multi_worker.json", "multi_worker.py"),
        ]
    return lines


def render(read: Callable[[str], str | None] = worktree_text) -> str:
    """The page from the reports `read` gives: the working tree's, or the last commit's."""
    global _read
    _read = read
    try:
        return _render()
    finally:
        _read = worktree_text


def is_current() -> bool:
    """Whether docs/speed.md is what its JSON gives: the working tree's page from the working tree's
    JSON, or else, while the page is the committed one, the committed page from the committed JSON
    (README command 1 rewrites reports/metrics.json, train.json, parity.json with this machine's run)."""
    page = worktree_text(OUT.relative_to(REPO).as_posix())
    if page is not None and page == render():
        return True
    committed = committed_text(OUT.relative_to(REPO).as_posix())
    return committed is not None and page == committed and render(committed_text) == committed


def _render() -> str:
    parts = [
        [
            "# Speed, memory and accuracy",
            "",
            "Every figure here comes from a JSON file under `reports/` that a script in `benchmarks/` "
            "wrote; `python benchmarks/speed_doc.py` makes this page from them. The machine is shared "
            "and noisy: compare figures measured side by side in one run, not across tables.",
        ],
        commands_section(),
        stages_section(),
        default_run_section(),
        inference_section(),
        serving_section(),
        presets_section(),
        text_section(),
        throughput_section(),
        tune_section(),
        scale_section(),
        other_section(),
    ]
    return "\n\n".join("\n".join(part) for part in parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/speed.md is not what the JSON gives")
    args = parser.parse_args()
    if args.check:
        sys.exit(0 if is_current() else 1)
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
