"""Strategy, precision and XLA choices, as far as a CPU-only machine can exercise them."""

import json
import textwrap
from pathlib import Path

import pytest

from pipeline.devices import cluster_spec, cpu_supports_bfloat16, is_chief, precision_policy, strategy_kind, switch

from helpers.commands import run


@pytest.mark.parametrize(
    "mode, on_gpu, expected", [("auto", True, True), ("auto", False, False), ("on", False, True), ("off", True, False)]
)
def test_auto_means_gpu_only(mode, on_gpu, expected):
    assert switch(mode, on_gpu) is expected


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("off", "float32"),
        ("on", "mixed_bfloat16"),
        ("float16", "mixed_float16"),
        ("bfloat16", "mixed_bfloat16"),
        # Native bfloat16 only: emulated, it is slower than float32.
        ("auto", "mixed_bfloat16" if cpu_supports_bfloat16() else "float32"),
    ],
)
def test_precision_on_a_cpu(mode, expected):
    assert precision_policy(mode, on_gpu=False) == expected


def test_bfloat16_support_is_read_from_the_cpu_flags():
    flags = Path("/proc/cpuinfo").read_text()
    assert cpu_supports_bfloat16() is ("avx512_bf16" in flags or "amx_bf16" in flags)


@pytest.mark.parametrize("gpus, expected", [(0, "default"), (1, "default"), (4, "mirrored")])
def test_strategy_follows_what_is_visible(gpus, expected):
    """Without TF_CONFIG (with it: MultiWorkerMirroredStrategy, tests/test_scale_out.py)."""
    assert strategy_kind(gpus) == expected


def test_tf_config_chief_rules(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert cluster_spec() is None and is_chief(None)
    workers = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": workers, "task": {"type": "worker", "index": 1}}))
    assert not is_chief(cluster_spec())
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": workers, "task": {"type": "worker", "index": 0}}))
    assert is_chief(cluster_spec())
    with_chief = {**workers, "chief": ["127.0.0.1:3"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}}))
    assert not is_chief(cluster_spec())


def test_cpu_setup_is_default_strategy_no_xla_and_sets_nothing_for_the_process(tmp_path):
    """The precision is chosen, not set: Keras' global dtype policy stays float32 (the layers get the
    precision as their dtype, pipeline/model.py), and op determinism is left off (`op_determinism`
    turns it on around a training only)."""
    code = textwrap.dedent("""
        import json, keras
        from tensorflow.python.framework import config
        from pipeline.devices import op_determinism, setup_devices
        strategy, setup = setup_devices("auto", "auto", "auto", seed=1)
        with op_determinism(setup.deterministic):
            inside = config.is_op_determinism_enabled()
        print(json.dumps({**setup.to_dict(), "policy": keras.mixed_precision.global_policy().name,
                          "determinism_inside": inside, "determinism_after": config.is_op_determinism_enabled()}))
    """)
    setup = json.loads(run(["python", "-c", code], tmp_path, TF_CONFIG="").stdout.strip().splitlines()[-1])
    assert setup["strategy"] == "DefaultStrategy"
    assert setup["gpus"] == 0 and setup["replicas"] == 1
    assert setup["jit_compile"] is False and setup["deterministic"] is True
    assert setup["precision"] == ("mixed_bfloat16" if cpu_supports_bfloat16() else "float32")
    assert setup["mixed_precision"] is (setup["precision"] != "float32")
    assert setup["policy"] == "float32"  # nothing set for the process
    assert setup["determinism_inside"] is True and setup["determinism_after"] is False


def test_model_trains_under_mirrored_strategy_with_mixed_precision(tmp_path):
    """Two logical CPUs stand in for two GPUs: our model compiles and fits in a MirroredStrategy scope
    under the mixed_float16 policy, and its softmax head still outputs float32."""
    code = textwrap.dedent("""
        import json, keras, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        from pipeline.devices import setup_devices
        _, setup = setup_devices("float16", "off", "off", seed=1)
        from pipeline.model import build_model
        from pipeline.normalization import Normalization, preprocessing_layers
        with strategy.scope():
            model = build_model("mlp", (8, 8, 1), 3, preprocessing_layers(Normalization(mean=0.5, std=0.25)),
                                precision=setup.precision)
            model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        import numpy as np
        x = np.random.randint(0, 256, (16, 8, 8, 1)).astype("uint8"); y = np.arange(16) % 3
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
        model.fit(ds, epochs=1, verbose=0)
        print(json.dumps({"replicas": strategy.num_replicas_in_sync,
                          "policies": {layer.name: layer.dtype_policy.name for layer in model.layers},
                          "global_policy": keras.mixed_precision.global_policy().name,
                          "mixed": setup.mixed_precision,
                          "out_dtype": str(model.predict(x[:2], verbose=0).dtype)}))
    """)
    out = json.loads(run(["python", "-c", code], tmp_path).stdout.strip().splitlines()[-1])
    policies = out.pop("policies")
    assert out == {"replicas": 2, "global_policy": "float32", "mixed": True, "out_dtype": "float32"}
    # The body and the logits compute in float16; the normalisation and the softmax in float32.
    assert policies.pop("normalize") == policies.pop("probabilities") == "float32"
    assert set(policies.values()) == {"mixed_float16"}, policies
