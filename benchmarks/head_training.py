"""Seconds for 100 epochs of the head on cached features, the way bcnb trained it before and now.

    .venv/bin/python benchmarks/head_training.py                 # demo and BreakHis sizes
    .venv/bin/python benchmarks/head_training.py --sizes demo    # one size
    .venv/bin/python benchmarks/head_training.py --notebook runs/demo   # and notebook 03 there

Both ways run bcnb's own ``fit_phase`` (EarlyStopping and ResumeTraining as in notebook 03) on
random 2,048-feature vectors, from the same starting weights and seed, for 100 epochs
(patience 100, so every epoch runs):

- ``before``: :class:`bcnb.train.fit.FeatureBatches`, a Keras PyDataset reading each batch's
  rows from the feature file in Python (what ``training_inputs`` returned until issue 23);
- ``now``: :func:`bcnb.train.fit.feature_epochs`, the rows in memory and a tf.data pipeline
  drawing each epoch's order once (what ``training_inputs`` returns).

It checks that both give the same kernel, bias and history, bit for bit, and prints the
wall-clock and CPU seconds of each. ``--notebook RUN`` also runs notebook 03 through papermill
on a copy of the finished run folder RUN (its features cached already) and prints its seconds.
Timings depend on what else runs on the machine: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

# (train rows, validation rows): 480 images split 60/20/20 by patient; BreakHis' 7,909 the same.
SIZES = {"demo": (288, 96), "breakhis": (4745, 1582)}
EPOCHS = 100
ROOT = Path(__file__).resolve().parent.parent


def features_and_split(n_train: int, n_val: int, seed: int = 0):
    """Random features, labels that a linear rule with noise gives them, and a split table."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n_train + n_val, 2048)).astype(np.float32)
    y = (x[:, :16].sum(axis=1) + rng.normal(0, 2, len(x)) > 0).astype(np.float32)
    split = pd.DataFrame(
        {
            "path": [f"image{i}.png" for i in range(len(x))],
            "label": np.where(y > 0, "malignant", "benign"),
            "split": ["train"] * n_train + ["val"] * n_val,
        }
    )
    return x, y, split


def train_once(way: str, x, y, split, start: Path, folder: Path) -> dict:
    """100 epochs of the head, fed ``way`` (before/now); its time, weights and history."""
    import keras

    from bcnb import Config
    from bcnb.model import transfer
    from bcnb.run.seeds import seed_everything
    from bcnb.train import fit

    n_train = int((split["split"] == "train").sum())
    folder.mkdir(parents=True)
    cfg = Config(run_dir=str(folder), epochs=EPOCHS, patience=EPOCHS, weights="none", img_size=32)
    seed_everything(cfg.seed)
    model = transfer.load_model(start)
    head = transfer.classifier_head(model)
    train_y, val_y = y[:n_train], y[n_train:]
    val_batch = max(cfg.batch_size, fit.VALIDATION_BATCH)
    if way == "before":
        np.save(folder / "all.npy", x)
        rows = np.arange(len(x))
        train = fit.FeatureBatches(
            folder / "all.npy", rows[:n_train], train_y, cfg.batch_size, shuffle=True, seed=cfg.seed
        )
        val = fit.FeatureBatches(folder / "all.npy", rows[n_train:], val_y, val_batch)
        steps = 64  # HEAD_STEPS_PER_CALL before
    else:
        train = fit.feature_epochs(x[:n_train], train_y, cfg.batch_size, shuffle=True, seed=cfg.seed)
        val = fit.feature_epochs(x[n_train:], val_y, val_batch)
        steps = fit.steps_per_call(train)
    fit.compile_for_training(head, cfg.learning_rate, steps)
    wall, cpu = time.perf_counter(), time.process_time()
    done = fit.fit_phase(cfg, split, "head", head, train, val)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    layer = model.get_layer("classifier")
    keras.backend.clear_session()
    return {
        "wall": wall,
        "cpu": cpu,
        "kernel": layer.kernel.numpy(),
        "bias": layer.bias.numpy(),
        "history": pd.DataFrame(done.history),
    }


def compare(size: str, scratch: Path) -> dict:
    from bcnb.model import transfer
    from bcnb.run.seeds import seed_everything

    n_train, n_val = SIZES[size]
    x, y, split = features_and_split(n_train, n_val)
    seed_everything(0)
    start = transfer.save_model(transfer.build_model(32, None), scratch / f"{size}_start.keras")
    results = {
        way: train_once(way, x, y, split, start, scratch / f"{size}_{way}") for way in ("before", "now")
    }
    before, now = results["before"], results["now"]
    same = (
        np.array_equal(before["kernel"], now["kernel"])
        and np.array_equal(before["bias"], now["bias"])
        and before["history"].equals(now["history"])
    )
    return {"size": size, "train": n_train, "val": n_val, "same": same, **{w: results[w] for w in results}}


def notebook_seconds(run: Path, scratch: Path) -> tuple[float, float]:
    """Notebook 03 on a copy of the finished run folder ``run``: (whole notebook, fit cell) seconds."""
    import json

    import papermill

    copy = scratch / "notebook_run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("notebooks", "checkpoint"))
    output = scratch / "03_train.ipynb"
    started = time.perf_counter()
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "03_train.ipynb"),
        str(output),
        parameters={"run_dir": str(copy), "interactive": False},
        cwd=str(ROOT / "notebooks"),
        progress_bar=False,
    )
    whole = time.perf_counter() - started
    cells = json.loads(output.read_text())["cells"]
    fit_cell = next(c for c in cells if "model_to_fit.fit(" in "".join(c["source"]))
    return whole, fit_cell["metadata"]["papermill"]["duration"]


def machine() -> str:
    import tensorflow as tf

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, TensorFlow {tf.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["demo", "breakhis"])
    parser.add_argument("--notebook", type=Path, help="a finished run folder whose notebook 03 to time")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as scratch:
        for size in args.sizes:
            found = compare(size, Path(scratch))
            print(
                f"{size} ({found['train']} train + {found['val']} val rows, {EPOCHS} epochs): "
                f"before {found['before']['wall']:.1f} s (CPU {found['before']['cpu']:.1f} s), "
                f"now {found['now']['wall']:.1f} s (CPU {found['now']['cpu']:.1f} s); "
                f"{found['before']['wall'] / found['now']['wall']:.1f}x; "
                f"same kernel, bias and history: {found['same']}",
                flush=True,
            )
        if args.notebook:
            whole, fit_cell = notebook_seconds(args.notebook, Path(scratch))
            print(f"notebook 03 on {args.notebook}: {whole:.1f} s in all, the fit cell {fit_cell:.1f} s")


if __name__ == "__main__":
    main()
