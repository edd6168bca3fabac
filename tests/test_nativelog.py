"""TensorFlow's C++ lines: kept off the terminal by every command, errors still shown."""

import os
import subprocess
import sys
import textwrap

import pytest

from bcnb.run.nativelog import is_noise

CUINIT = (
    b"E0000 00:00:1795983948.013161    4474 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\n"
)
ONEDNN = b"I0000 00:00:1795983945.112730    4474 port.cc:153] oneDNN custom operations are on.\n"
CPU = b"I0000 00:00:1795983945.155497    4474 cpu_feature_guard.cc:227] This TensorFlow binary is optimized\n"
WARNING = b"2026-11-29 20:20:20.123456: W tensorflow/core/framework/op.cc:12] some warning\n"
REAL_ERROR = b"E0000 00:00:1795983948.013161    4474 bfc_allocator.cc:12] Allocator ran out of memory\n"


@pytest.mark.parametrize(
    "line", [CUINIT, ONEDNN, CPU, WARNING, b"To enable the following instructions: AVX2\n"]
)
def test_start_up_lines_and_cpp_notes_are_noise(line):
    assert is_noise(line)


@pytest.mark.parametrize(
    "line", [REAL_ERROR, b"bcnb: error: --out: x\n", b"W0000 a real warning\n", b"Traceback\n"]
)
def test_errors_and_python_s_own_lines_are_kept(line):
    assert not is_noise(line)


def test_the_filter_passes_the_rest_in_order():
    script = textwrap.dedent(
        f"""
        import os, sys
        from bcnb.run.nativelog import native_stderr
        with native_stderr():
            os.write(2, {CUINIT!r})
            print("bcnb: from python", file=sys.stderr, flush=True)
            os.write(2, {REAL_ERROR!r})
            os.write(2, {ONEDNN!r})
        os.write(2, b"after\\n")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert result.returncode == 0
    assert result.stderr == b"bcnb: from python\n" + REAL_ERROR + b"after\n"


def _bcnb(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "bcnb", *map(str, args)], capture_output=True, text=True, timeout=300, **kwargs
    )


def test_commands_that_start_tensorflow_show_none_of_its_lines(tmp_path, run_dir):
    """bcnb weights status starts TensorFlow and succeeds; bcnb predict on a file that is no
    model starts it and fails: either way stderr holds bcnb's own lines only."""
    status = _bcnb("weights", "status", env={**os.environ, "KERAS_HOME": str(tmp_path / "k")})
    assert status.returncode == 0 and status.stderr == ""
    fake = tmp_path / "model.keras"
    fake.write_bytes(b"not a model")
    for name in ("decision.json", "config.yaml", ".bcnb.json"):
        (tmp_path / name).write_bytes((run_dir / name).read_bytes())
    image = tmp_path / "x.png"
    image.write_bytes(_png())
    result = _bcnb("predict", image, "--model", fake)
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if not line.startswith("bcnb: ")] == []
    assert "cannot be loaded in safe mode" in result.stderr


def _png() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()
