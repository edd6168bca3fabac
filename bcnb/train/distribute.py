"""More than one device: tf.distribute, not home-made.

``strategy="auto"`` uses MirroredStrategy when several GPUs are visible and the default
(one-device) strategy otherwise; ``"mirrored"`` mirrors over every GPU, or, on a machine
without GPUs, over every logical CPU device (how the tests check it on a CPU).

Across machines: Keras 3's ``fit`` does not work with MultiWorkerMirroredStrategy
(keras-team/keras#20585), so bcnb does not pretend to train on several machines. What
scales across machines is the expensive part, feature extraction: ``bcnb extract --shard
I/N`` lets N processes or machines each fill their share of the feature cache.
"""

from __future__ import annotations

import os
from pathlib import Path


def make_strategy(name: str):
    """The tf.distribute strategy for ``name`` ("auto" or "mirrored")."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    devices = gpus or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy(devices=[device.name for device in devices])


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """Whether the CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX); None where
    ``cpuinfo`` cannot be read (not Linux). Without it TensorFlow emulates bfloat16: on a 2-core
    AVX2 machine, mixed_bfloat16 extracted 6.1 images/s against float32's 10.7."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def describe_cpu() -> str:
    """ "2 cores, with bf16 instructions" (or without, or nothing where that cannot be told)."""
    bf16 = {True: ", with bf16 instructions", False: ", without bf16 instructions", None: ""}
    return f"{os.cpu_count()} cores{bf16[cpu_has_bf16()]}"


def describe_devices() -> str:
    """Where the model runs, in words: "1 GPU (NVIDIA H100 ...)" or "the CPU (2 cores, with bf16
    instructions), no GPU"."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return f"the CPU ({describe_cpu()}), no GPU"
    names = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus]
    return f"{len(gpus)} GPU(s): {', '.join(names)}"
