"""What TensorFlow's C++ code writes to the terminal: kept off it.

TensorFlow logs from C++ straight to file descriptor 2, past Python's streams and before
``TF_CPP_MIN_LOG_LEVEL`` is read (absl's "All log messages before absl::InitializeLog()"):
on a machine without a GPU it says "failed call to cuInit: UNKNOWN ERROR", which a new user
reads as a failure. One mechanism, :func:`native_stderr`, handles every case: the command
line and a notebook's first TensorFlow import filter those lines out, and ``bcnb reproduce``
sends whatever its kernels write to a log file in the run folder.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

# The two formats of TensorFlow's C++ log lines: absl's ("I0000 00:00:17.. 4474 port.cc:153] ...")
# and TensorFlow's own ("2026-11-29 20:20:20.123: W tensorflow/core/x.cc:12] ...").
_LOG_LINE = re.compile(
    rb"^(?:(?P<absl>[IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]"
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: (?P<tf>[IWEF]) \S+:\d+\])"
)
# Lines worth nothing to a student, whatever their level: start-up notes about absent GPUs
# (or their drivers), oneDNN and CPU instructions, and absl's note about its own start.
START_UP_NOISE = (
    b"All log messages before absl::InitializeLog() is called",
    b"failed call to cuInit",
    b"Could not find cuda drivers",
    b"Unable to register cu",  # cuDNN, cuFFT, cuBLAS factories registered twice
    b"oneDNN custom operations are on",
    b"computation placer already registered",
    b"TF-TRT Warning: Could not find TensorRT",
    b"To enable the following instructions:",  # the second line of cpu_feature_guard's note
)


def is_noise(line: bytes) -> bool:
    """True for a C++ information or warning line, or a known start-up line; errors stay."""
    if any(text in line for text in START_UP_NOISE):
        return True
    match = _LOG_LINE.match(line)
    return bool(match) and (match["absl"] or match["tf"]) in (b"I", b"W")


@contextmanager
def native_stderr(log: str | Path | None = None):
    """While inside, file descriptor 2 goes to ``log`` (appended), or without one through a
    filter that drops :func:`is_noise` lines. Python's ``sys.stderr`` keeps reaching the
    terminal: with a log it is pointed at the terminal itself, without one its lines pass
    the filter unchanged."""
    sys.stderr.flush()
    terminal = os.dup(2)
    try:
        if log is not None:
            with _to_log(Path(log), terminal):
                yield
        else:
            with _through_filter(terminal):
                yield
    finally:
        os.dup2(terminal, 2)
        os.close(terminal)


@contextmanager
def _to_log(log: Path, terminal: int):
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as stream:
        os.dup2(stream.fileno(), 2)
    python_stderr = sys.stderr
    sys.stderr = os.fdopen(os.dup(terminal), "w", buffering=1)
    try:
        yield
    finally:
        # Not closed here: a thread that took sys.stderr a moment ago (a sweep's cell, the
        # heads of one magnification) may still write to it; it closes when the last one lets go.
        sys.stderr.flush()
        sys.stderr = python_stderr


@contextmanager
def _through_filter(terminal: int):
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    pump = threading.Thread(target=_pass_on, args=(read_end, os.dup(terminal)), daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)  # the pipe's last writer here: the pump sees its end
        # A child process still holding the pipe (a worker that outlives us) must not hang
        # the command: its last lines are given a moment, then left.
        pump.join(timeout=5)


def _pass_on(read_end: int, terminal: int) -> None:
    """The pump: every line but the noise, on to the terminal (its own copy of it)."""
    try:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not is_noise(line):
                    os.write(terminal, line)
    except OSError:
        pass  # the terminal went away: nothing left to show the lines on
    finally:
        os.close(terminal)


def import_tensorflow_quietly():
    """Import TensorFlow and look for its devices without the start-up noise.

    Call it before anything else imports TensorFlow (notebooks do, through
    :func:`bcnb.run.seeds.seed_everything`). INFO logs are hidden (``TF_CPP_MIN_LOG_LEVEL=1``
    unless set); other warnings and errors still reach stderr.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    with native_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()  # the GPU probe logs here, not at import
    return tf
