"""Devices and scale: the tf.distribute strategy, mixed precision and XLA, chosen once from what is visible.

TF_CONFIG set → MultiWorkerMirroredStrategy; several GPUs → MirroredStrategy; otherwise the
default strategy (one GPU or the CPU). `auto` turns mixed precision on where the hardware computes
in 16 bits natively: float16 on GPUs of compute capability 7.0 and up, bfloat16 on CPUs with
AVX512-BF16 or AMX (oneDNN's bfloat16 kernels: the default model trains 1.2-1.35x faster on a Zen 4
EPYC; elsewhere bfloat16 is emulated and slower). XLA is for GPUs only: on CPU it made a small CNN
about 4x slower here. The trained model is saved in float32 either way (train: save_outputs).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DeviceSetup:
    strategy: str
    devices: list[str]
    gpus: int
    replicas: int
    precision: str  # Keras' dtype policy the layers compute in: float32, mixed_float16 or mixed_bfloat16
    jit_compile: bool
    deterministic: bool
    workers: int = 1
    is_chief: bool = True

    @property
    def mixed_precision(self) -> bool:
        return self.precision != "float32"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mixed_precision": self.mixed_precision}


def switch(mode: str, on_gpu: bool) -> bool:
    """An on/off/auto setting: auto is on where there is a GPU."""
    return {"on": True, "off": False}.get(mode, on_gpu)


def gpu_supports_mixed_precision() -> bool:
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        if tuple(capability) >= (7, 0):
            return True
    return False


def cpu_supports_bfloat16() -> bool:
    """Whether the CPU has bfloat16 arithmetic (Linux's flags; elsewhere: no)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def precision_policy(mode: str, on_gpu: bool) -> str:
    """Keras' dtype policy for `train.mixed_precision`: off, on (the device's 16-bit type: float16 on
    GPUs, bfloat16 on CPUs), auto (on where the device computes it natively), float16 or bfloat16."""
    if mode in ("float16", "bfloat16"):
        return f"mixed_{mode}"
    native = gpu_supports_mixed_precision() if on_gpu else cpu_supports_bfloat16()
    if mode == "off" or (mode == "auto" and not native):
        return "float32"
    return "mixed_float16" if on_gpu else "mixed_bfloat16"


def cluster_spec() -> dict[str, Any] | None:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    config = json.loads(raw)
    return config if config.get("cluster", {}).get("worker") else None


def strategy_kind(gpu_count: int) -> str:
    """Without TF_CONFIG: several GPUs mirror, else TensorFlow's default (one device)."""
    return "mirrored" if gpu_count > 1 else "default"


def choose_strategy():
    """The strategy for what this process sees; `tf.distribute`, no code of ours."""
    import tensorflow as tf

    config = cluster_spec()
    if config is not None:
        # Collective ops must be set up before TensorFlow's context starts: decide before listing devices.
        return tf.distribute.MultiWorkerMirroredStrategy()
    kind = strategy_kind(len(tf.config.list_logical_devices("GPU")))
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()  # all visible GPUs
    return tf.distribute.get_strategy()


def is_chief(config: dict[str, Any] | None) -> bool:
    if config is None:
        return True
    task = config.get("task", {})
    # Without an explicit chief, worker 0 is the chief (TensorFlow's convention).
    has_chief = "chief" in config.get("cluster", {})
    return task.get("type") == "chief" or (not has_chief and task.get("type") == "worker" and task.get("index", 0) == 0)


def public_name(strategy) -> str:
    """The strategy as tf.distribute's public API names it: MultiWorkerMirroredStrategy's class is
    CollectiveAllReduceStrategy, the default one's a private _DefaultDistributionStrategy."""
    import tensorflow as tf

    for public, name in ((tf.distribute.MultiWorkerMirroredStrategy, "MultiWorkerMirroredStrategy"),
                         (tf.distribute.MirroredStrategy, "MirroredStrategy")):  # fmt: skip
        if isinstance(strategy, public):
            return name
    return "DefaultStrategy"  # tf.distribute.get_strategy(): one device, no distribution


def setup_devices(mixed_precision: str, jit_compile: str, deterministic: str, seed: int):
    """Seed everything, pick the strategy and precision; returns (strategy, DeviceSetup). The
    precision is the layers' own (pipeline/model.py builds them with it) and determinism is
    switched on by `op_determinism` around the training: neither is left set for the process."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow
    gpus = tf.config.list_physical_devices("GPU")
    on_gpu = bool(gpus)
    strategy = choose_strategy()
    config = cluster_spec()
    setup = DeviceSetup(
        strategy=public_name(strategy),
        devices=[d.name for d in tf.config.list_logical_devices() if d.device_type in ("CPU", "GPU")],
        gpus=len(gpus),
        replicas=int(strategy.num_replicas_in_sync),
        precision=precision_policy(mixed_precision, on_gpu),
        jit_compile=switch(jit_compile, on_gpu),
        deterministic=switch(deterministic, not on_gpu),
        workers=len(config["cluster"]["worker"]) + len(config["cluster"].get("chief", [])) if config else 1,
        is_chief=is_chief(config),
    )
    return strategy, setup


@contextlib.contextmanager
def op_determinism(enabled: bool) -> Iterator[None]:
    """TensorFlow's deterministic kernels for the block (when `enabled`), then the process's setting
    as it was: a notebook or test that trains and then does other work is not left deterministic."""
    from tensorflow.python.framework import config  # the public API can turn it on, not back off

    before = config.is_op_determinism_enabled()
    if enabled:
        config.enable_op_determinism()
    try:
        yield
    finally:
        if enabled and not before:
            config.disable_op_determinism()
