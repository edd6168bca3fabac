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
import tempfile
from contextlib import contextmanager


def make_strategy(name: str):
    """The tf.distribute strategy for ``name`` ("auto" or "mirrored")."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    devices = gpus or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy(devices=[device.name for device in devices])


# TensorFlow's start-up lines on a machine without a GPU (or without its drivers), which a
# student can do nothing about; they come from C++, past Python's streams.
START_UP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "failed call to cuInit",
    "Could not find cuda drivers",
    "Unable to register cu",  # cuDNN, cuFFT, cuBLAS factories registered twice
    "oneDNN custom operations are on",
    "computation placer already registered",
    "TF-TRT Warning: Could not find TensorRT",
)


def import_tensorflow_quietly():
    """Import TensorFlow and look for its devices, leaving out the start-up noise.

    Call it before anything else imports TensorFlow (notebooks do, through
    :func:`bcnb.seeds.seed_everything`). INFO logs are hidden (``TF_CPP_MIN_LOG_LEVEL=1``
    unless set); other warnings and errors still reach stderr.
    """
    import sys

    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    with _native_stderr_filtered(START_UP_NOISE):
        import tensorflow as tf

        tf.config.list_physical_devices()  # the GPU probe logs here, not at import
    return tf


@contextmanager
def _native_stderr_filtered(noise: tuple[str, ...]):
    """Catch what C++ code writes to file descriptor 2 meanwhile; pass on the lines that are
    not ``noise``."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            lines = caught.read().decode(errors="replace").splitlines(keepends=True)
            kept = [line for line in lines if not any(text in line for text in noise)]
            if kept:
                os.write(2, "".join(kept).encode())


def describe_devices() -> str:
    """Where the model runs, in words: "1 GPU (NVIDIA H100 ...)" or "the CPU (2 cores), no GPU"."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return f"the CPU ({os.cpu_count()} cores), no GPU"
    names = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus]
    return f"{len(gpus)} GPU(s): {', '.join(names)}"
