"""Inference speed, side by side on the test split: Keras model.predict, a direct Keras call, the
SavedModel signature, onnxruntime float32 and int8, LiteRT float32 and int8 (ai-edge-litert's
interpreter, XNNPACK), all fed raw inputs (uint8 pixels): every form normalises inside its graph.

Batch 1: median and p99 latency over --calls calls (after --warmup calls); batch 256: throughput in
images/s. The engines take turns, --rounds times over, so that they share this shared machine's
drift. Every engine runs with the same intra-op thread count (physical cores, or --threads) and
one inter-op thread; the onnxruntime and LiteRT files run a second time on one thread (`*_1_thread`).
Two more onnxruntime engines: the same model as tf2onnx converts it, before export's graph rewrites
(`onnxruntime_fp32_tf2onnx_graph`), and the exported file with I/O binding (`*_iobinding`); for a
model that averages each image with its mirror (train.test_time_flip), a third: the network alone,
one pass an image (`onnxruntime_fp32_one_pass`).
Writes reports/bench.json and prints a table with ratios to the fastest.

    python benchmarks/inference.py [--calls 500] [--threads N] [--compare NAME=PATH.onnx ...]

--compare adds other ONNX files (e.g. an earlier export) as engines in the same run, fed the test
inputs in the dtype the file declares (timing does not depend on the values).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def timed_calls(fn, x, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - started) * 1000)
    return times


def latency(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {
        "median_ms": round(statistics.median(times), 4),
        "p99_ms": round(times[min(len(times) - 1, int(0.99 * len(times)))], 4),
    }


def batched_pass(fn, x, batch: int) -> tuple[int, float]:
    """Images and seconds of one pass over `x` in full batches."""
    started, n = time.perf_counter(), 0
    for i in range(0, len(x) - batch + 1, batch):
        fn(x[i : i + batch])
        n += batch
    return n, time.perf_counter() - started


def matmul_peak(threads: int, n: int = 1024, seconds: float = 2.0) -> float:
    """GFLOP/s of onnxruntime on one large float32 MatMul (n x n) with `threads` intra-op threads: the
    most this runtime's kernels do on this machine, the roofline a model's latency is held against."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "peak",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], [weight],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.ones((n, n), np.float32)
    session.run(None, {"x": x})
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, {"x": x})
        runs += 1
    return 2 * n**3 * runs / (time.perf_counter() - started) / 1e9


def measure_interleaved(engines: dict, x, one, calls: int, warmup: int, repeats: int, rounds: int) -> dict:
    """Every engine in turn, `rounds` times over: this machine's speed drifts (its host is shared), and
    engines measured one after another would each meet another drift; in rounds, they share it. Batch
    1: the median of all `calls` calls; batch 256: images/s over `repeats` passes of the test split,
    each round taking its share."""
    for fn in engines.values():
        for _ in range(warmup):
            fn(one)
        fn(x[:256])
    times = {name: [] for name in engines}
    images = {name: [0, 0.0] for name in engines}
    bounds = [len(x) * r // rounds for r in range(rounds + 1)]
    for r in range(rounds):
        for name, fn in engines.items():
            times[name] += timed_calls(fn, one, calls // rounds)
            for _ in range(repeats):
                n, seconds = batched_pass(fn, x[bounds[r] : bounds[r + 1]], 256)
                images[name][0] += n
                images[name][1] += seconds
    return {
        name: {"batch1": latency(times[name]), "batch256_images_per_s": round(images[name][0] / images[name][1], 1)}
        for name in engines
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/model.keras")
    parser.add_argument("--exported", default="exported")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=1, help="passes over the test split for throughput")
    parser.add_argument("--rounds", type=int, default=5, help="times every engine takes its turn")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="reports/bench.json")
    parser.add_argument(
        "--compare", action="append", default=[], metavar="NAME=PATH", help="another ONNX file to time side by side"
    )
    args = parser.parse_args()
    threads = args.threads or physical_cores()

    import onnx
    import onnxruntime as ort
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    from throughput import forward_flops  # benchmarks/throughput.py: the default model's FLOP count

    from pipeline.classifier import LiteRTClassifier, OnnxClassifier
    from pipeline.export import load_for_export, serving_function
    from pipeline.hashing import file_sha256
    from pipeline.kinds import OUTPUT_NAME
    from pipeline.mirror import averages_mirrors, single_pass
    from pipeline.model import load_keras_model
    from pipeline.onnx_export import simplified, tf2onnx_graph
    from pipeline.parity import saved_model_predictor
    from pipeline.prepared import PreparedData

    data = PreparedData.open(args.prepared)
    meta = data.meta
    x, _ = data.arrays("test")  # raw, as a deployer feeds them
    one = x[:1]

    model = load_keras_model(args.model)
    exported = onnx.load(f"{args.exported}/model.onnx")

    def with_metadata(graph, path: Path) -> str:
        """A graph saved with the exported file's metadata, so the pipeline's classifier opens it."""
        del graph.metadata_props[:]
        graph.metadata_props.extend(exported.metadata_props)
        onnx.save(graph, str(path))
        return str(path)

    def iobinding_session(path, intra):
        """onnxruntime with the input and output bound to NumPy buffers (no per-call allocation or
        copies): what a latency-bound deployer can add in a few lines."""
        session = OnnxClassifier(path, intra).session
        input_name = session.get_inputs()[0].name
        bound: dict[int, tuple] = {}  # batch size -> (binding, output buffer), made once

        def run(batch):
            if len(batch) not in bound:
                out = np.empty((len(batch), len(meta.class_names)), np.float32)
                binding = session.io_binding()
                binding.bind_output(OUTPUT_NAME, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
                bound[len(batch)] = (binding, out)
            binding, out = bound[len(batch)]
            binding.bind_cpu_input(input_name, batch)
            session.run_with_iobinding(binding)
            return out

        return run

    def ort_session(path, intra=threads):
        return OnnxClassifier(path, intra).run  # the deployment's own reader (pipeline/classifier.py)

    engines = {
        "keras_predict": lambda b: model.predict(b, verbose=0, batch_size=len(b)),
        "keras_call": lambda b: model(b, training=False).numpy(),
        "saved_model": saved_model_predictor(Path(f"{args.exported}/saved_model"), meta.kind, meta.input_name),
        "onnxruntime_fp32": ort_session(f"{args.exported}/model.onnx"),
    }
    if Path(f"{args.exported}/model.int8.onnx").exists():
        engines["onnxruntime_int8"] = ort_session(f"{args.exported}/model.int8.onnx")
    if threads > 1:
        # One thread: no hand-off to a thread pool, which at batch 1 costs more than it saves.
        engines["onnxruntime_fp32_1_thread"] = ort_session(f"{args.exported}/model.onnx", 1)
        if Path(f"{args.exported}/model.int8.onnx").exists():
            engines["onnxruntime_int8_1_thread"] = ort_session(f"{args.exported}/model.int8.onnx", 1)
    for file, label in (("model.tflite", "litert_fp32"), ("model.int8.tflite", "litert_int8")):
        if Path(f"{args.exported}/{file}").exists():
            engines[label] = LiteRTClassifier(f"{args.exported}/{file}", threads).run
            if threads > 1:
                engines[f"{label}_1_thread"] = LiteRTClassifier(f"{args.exported}/{file}", 1).run
    # The same model as tf2onnx writes it, before export's graph rewrites (pipeline/onnx_graph.py).
    unfolded = Path(tempfile.mkdtemp(prefix="bench-inference-")) / "tf2onnx.onnx"
    graph = tf2onnx_graph(serving_function(load_for_export(Path(args.model), meta)), 17, unfolded)
    engines["onnxruntime_fp32_tf2onnx_graph"] = ort_session(with_metadata(graph, unfolded))
    engines["onnxruntime_fp32_iobinding"] = iobinding_session(f"{args.exported}/model.onnx", threads)
    passes = 2 if averages_mirrors(model) else 1
    if passes == 2:
        # The network alone, one pass an image (train.test_time_flip: false), as export simplifies it.
        one_pass = Path(tempfile.mkdtemp(prefix="bench-inference-")) / "one_pass.onnx"
        graph = tf2onnx_graph(serving_function(single_pass(load_for_export(Path(args.model), meta))), 17, one_pass)
        engines["onnxruntime_fp32_one_pass"] = ort_session(with_metadata(simplified(graph, x[:500])[0], one_pass))
    for spec in args.compare:
        label, _, path = spec.partition("=")
        engines[label] = ort_session(path)

    results = measure_interleaved(engines, x, one, args.calls, args.warmup, args.repeats, args.rounds)

    fastest_latency = min(r["batch1"]["median_ms"] for r in results.values())
    fastest_throughput = max(r["batch256_images_per_s"] for r in results.values())
    for r in results.values():
        r["batch1_vs_fastest"] = round(r["batch1"]["median_ms"] / fastest_latency, 2)
        r["batch256_vs_fastest"] = round(fastest_throughput / r["batch256_images_per_s"], 2)
    # The roofline: the float32 model's arithmetic at this runtime's own large-MatMul rate is the least
    # time batch 1 can take here, whatever the graph or session settings.
    flops, peak = forward_flops(model) * passes, matmul_peak(threads)
    fp32 = results["onnxruntime_fp32"]["batch1"]["median_ms"]
    roofline = {
        "model_mflops": round(flops / 1e6, 2),
        "passes_per_image": passes,  # 2: the model averages each image with its mirror
        "onnxruntime_matmul_gflops": round(peak, 1),
        "batch1_lower_bound_ms": round(flops / (peak * 1e9) * 1000, 4),
        "onnxruntime_fp32_batch1_gflops": round(flops / (fp32 / 1000) / 1e9, 1),
    }
    report = {
        "machine": {
            "logical_cpus": os.cpu_count(),
            "physical_cores": physical_cores(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "onnxruntime": ort.__version__,
            "ai_edge_litert": version("ai-edge-litert"),
        },
        "threads": {"intra_op": threads, "inter_op": 1},
        "calls": args.calls,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "test_examples": int(len(x)),
        # The model card shows these latencies as this model's only when the file is the same.
        "model_sha256": file_sha256(Path(f"{args.exported}/model.onnx")),
        "file_bytes": {p.name: p.stat().st_size for p in sorted(Path(args.exported).glob("model*"))},
        "engines": results,
        "roofline": roofline,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")

    print(
        f"\n{'engine':<26} {'b1 median ms':>12} {'b1 p99 ms':>10} {'× fastest':>9} {'b256 img/s':>11} {'× fastest':>9}"
    )
    for name, r in results.items():
        print(
            f"{name:<26} {r['batch1']['median_ms']:>12.3f} {r['batch1']['p99_ms']:>10.3f} "
            f"{r['batch1_vs_fastest']:>9.2f} {r['batch256_images_per_s']:>11,.0f} {r['batch256_vs_fastest']:>9.2f}"
        )


if __name__ == "__main__":
    main()
