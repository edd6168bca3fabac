"""tf.distribute: MirroredStrategy over two logical CPUs trains the head like one device."""

import json
import subprocess
import sys
import textwrap

import pytest

from bcnb import Config

# Logical devices must be configured before TensorFlow starts, so this runs in its own process.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from bcnb.train import distribute
    from bcnb.train import fit
    from bcnb.model import transfer
    from bcnb.run.seeds import seed_everything

    folder = Path(sys.argv[1])
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (96, 2048)).astype(np.float32)
    y = (x[:, :8].sum(axis=1) > 0).astype(np.float32)
    np.save(folder / "all.npy", x)

    kernels, replicas = {}, {}
    for name in ("one", "mirrored"):
        strategy = distribute.make_strategy(name if name == "mirrored" else "auto")
        with strategy.scope():
            seed_everything(0)
            # dropout 0: each replica would draw its own dropout masks
            model = transfer.build_model(32, None, dropout=0.0)
            head = transfer.classifier_head(model)
            train_data = fit.FeatureBatches(folder / "all.npy", np.arange(64), y[:64], 16, shuffle=True)
            val_data = fit.FeatureBatches(folder / "all.npy", np.arange(64, 96), y[64:], 16)
            fit.compile_for_training(head, 0.01)
            head.fit(train_data, validation_data=val_data, epochs=3, shuffle=False, verbose=0)
        kernels[name] = model.get_layer("classifier").kernel.numpy()
        replicas[name] = strategy.num_replicas_in_sync
    print(json.dumps({
        "replicas": replicas,
        "difference": float(np.abs(kernels["one"] - kernels["mirrored"]).max()),
        "moved": float(np.abs(kernels["one"]).max()),
    }))
    """
)


@pytest.mark.slow
def test_mirrored_over_two_cpus_trains_like_one_device(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["replicas"] == {"one": 1, "mirrored": 2}
    assert found["difference"] < 1e-5 and found["moved"] > 0


def test_auto_on_one_device_is_the_default_strategy():
    import tensorflow as tf

    from bcnb.train.distribute import make_strategy

    assert tf.config.list_logical_devices("GPU") == [] or pytest.skip("this test assumes no GPU (as in CI)")
    assert make_strategy(Config().strategy) is tf.distribute.get_strategy()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("fma avx avx2 avx512f avx512_bf16", True), ("fma amx_bf16 amx_tile", True), ("fma avx avx2", False)],
)
def test_bf16_instructions_read_from_the_cpu_flags(tmp_path, flags, expected):
    from bcnb.train.distribute import cpu_has_bf16

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: a CPU\nflags\t\t: {flags}\n")
    assert cpu_has_bf16(cpuinfo) is expected
    assert cpu_has_bf16(tmp_path / "absent") is None  # not Linux: nothing said, nothing guessed
