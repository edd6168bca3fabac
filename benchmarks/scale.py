"""Memory and speed at scale: a generated IDC-like dataset of 5,000 and 20,000 patches.

For each size, in a fresh process (so the peak memory is that run's alone): generate the
dataset (cached), scan every file, extract ResNet50V2 features for every patch through
bcnb's streaming pipeline and feature cache, and train the head for one epoch. Prints a
Markdown table with the machine, and writes it to benchmarks/scale_results.md.

    .venv/bin/python benchmarks/scale.py                      # 5,000 and 20,000 at 224x224
    .venv/bin/python benchmarks/scale.py --images 2000 8000 --img-size 96   # quicker

Weights are random (weights=none): speed and memory do not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(n_images: int, img_size: int, batch_size: int) -> dict:
    """One size, in this process: the figures for one table row."""
    from bcnb import Config
    from bcnb.data import loading, splitting
    from bcnb.data.synthetic import default_cache_dir, write_idc_like_dataset
    from bcnb.model.transfer import build_transfer_model
    from bcnb.train import features, fit

    root = default_cache_dir().parent / "benchmarks" / f"idc_like-{n_images}"
    if not (root / "manifest.csv").exists():
        write_idc_like_dataset(root, n_images)
    run_dir = tempfile.mkdtemp(prefix="bcnb-bench-")
    cfg = Config(
        dataset=str(root),
        layout="idc",
        img_size=img_size,
        batch_size=batch_size,
        weights="none",
        epochs=1,
        run_dir=run_dir,
    )
    started = time.perf_counter()
    table = loading.load_dataset(cfg).table
    scanned = time.perf_counter()
    split = splitting.split_by_patient(table, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    model, _ = build_transfer_model(cfg)
    extract_start = time.perf_counter()
    features.feature_file(cfg, model, split)
    extracted = time.perf_counter()
    fit.train_model(cfg, model, split)  # finds the features cached
    trained = time.perf_counter()
    return {
        "images": len(table),
        "patients": int(table["patient_id"].nunique()),
        "scan_s": round(scanned - started, 1),
        "extract_images_per_s": round(len(table) / (extracted - extract_start), 1),
        "train_one_epoch_s": round(trained - extracted, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def machine() -> str:
    import tensorflow as tf

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, TensorFlow {tf.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.img_size, args.batch_size)))
        return
    rows = []
    for n in args.images:
        command = [
            sys.executable,
            __file__,
            "--one",
            str(n),
            "--img-size",
            str(args.img_size),
            "--batch-size",
            str(args.batch_size),
        ]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
        print(f"measured {n} images", file=sys.stderr, flush=True)
    header = (
        "| images | patients | scan (s) | feature extraction (images/s) | head, 1 epoch (s) | peak RSS (MB) |"
    )
    size = f"{args.img_size}x{args.img_size}"
    lines = [
        f"Machine: {machine()}. Input {size}, batch {args.batch_size}, random weights.",
        "",
        header,
        "|---|---|---|---|---|---|",
        *(
            f"| {r['images']} | {r['patients']} | {r['scan_s']} | {r['extract_images_per_s']} | "
            f"{r['train_one_epoch_s']} | {r['peak_rss_mb']} |"
            for r in rows
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "scale_results.md").write_text("# benchmarks/scale.py\n\n" + text)


if __name__ == "__main__":
    main()
