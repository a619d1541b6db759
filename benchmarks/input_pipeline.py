"""Is the input pipeline the bottleneck? One model, trained for the same epochs, fed two ways:

  pipeline   the real tf.data pipeline (TFRecord → decode → cache → shuffle → batch → prefetch)
  in_memory  the same raw examples, already decoded, as in-memory tensors (from_tensor_slices)

(the model normalises its raw input itself, the same way in both)

plus the pipeline alone (no model) in examples/s. Writes reports/bench_input.json; the ratio
pipeline/in_memory epoch time near 1.0 means the model, not the input, sets the pace.

    python benchmarks/input_pipeline.py [--epochs 3] [--prepared data/prepared] [--params params.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default="reports/bench_input.json")
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from pipeline.dataset import make_dataset
    from pipeline.model import model_for_data
    from pipeline.params import load_params
    from pipeline.prepared import PreparedData
    from pipeline.presets import filled_from_preset

    params = filled_from_preset(load_params(args.params).train)  # the preset's values, as train uses them
    data = PreparedData.open(args.prepared)
    keras.utils.set_random_seed(params.seed)

    def pipeline_ds():
        return make_dataset(
            data,
            "train",
            params.batch_size,
            training=True,
            shuffle_buffer=params.shuffle_buffer,
            seed=params.seed,
        )

    # The pipeline alone: how fast can it deliver batches?
    started = time.perf_counter()
    n = sum(int(x.shape[0]) for x, _ in pipeline_ds())
    pipeline_only_first = n / (time.perf_counter() - started)

    x = tf.concat([x for x, _ in make_dataset(data, "train", 4096, training=False)], 0)
    y = tf.concat([y for _, y in make_dataset(data, "train", 4096, training=False)], 0)
    in_memory = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(params.shuffle_buffer, seed=params.seed)
        .batch(params.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )

    def epoch_times(dataset) -> list[float]:
        keras.utils.set_random_seed(params.seed)
        model = model_for_data(params, data)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        times = []

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                times.append(time.perf_counter() - self.t)

        model.fit(dataset, epochs=args.epochs, callbacks=[Timer()], verbose=2)
        return times

    fed = {"pipeline": epoch_times(pipeline_ds()), "in_memory": epoch_times(in_memory)}
    # Epoch 1 includes tracing and, for the pipeline, filling the cache: compare the later epochs.
    steady = {k: statistics.median(v[1:] or v) for k, v in fed.items()}
    started = time.perf_counter()
    ds = pipeline_ds()
    for _ in ds:  # second pass: warm cache
        pass
    started = time.perf_counter()
    n = sum(int(x.shape[0]) for x, _ in ds)
    pipeline_only_cached = n / (time.perf_counter() - started)

    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "tensorflow": tf.__version__,
        },
        "model": params.model if isinstance(params.model, str) else "custom",
        "batch_size": params.batch_size,
        "epoch_seconds": {k: [round(t, 2) for t in v] for k, v in fed.items()},
        "median_epoch_seconds_after_first": {k: round(v, 2) for k, v in steady.items()},
        "pipeline_over_in_memory": round(steady["pipeline"] / steady["in_memory"], 3),
        "first_epoch_pipeline_over_in_memory": round(fed["pipeline"][0] / fed["in_memory"][0], 3),
        "pipeline_alone_examples_per_second": {
            "first_pass": round(pipeline_only_first),
            "cached": round(pipeline_only_cached),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
