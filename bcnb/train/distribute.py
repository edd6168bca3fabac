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


def make_strategy(name: str):
    """The tf.distribute strategy for ``name`` ("auto" or "mirrored")."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    devices = gpus or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy(devices=[device.name for device in devices])


def describe_devices() -> str:
    """Where the model runs, in words: "1 GPU (NVIDIA H100 ...)" or "the CPU (2 cores), no GPU"."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return f"the CPU ({os.cpu_count()} cores), no GPU"
    names = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus]
    return f"{len(gpus)} GPU(s): {', '.join(names)}"
