"""Cross-validation costs: K folds against one run, and the 5-fold protocol at BreakHis' size.

    .venv/bin/python benchmarks/crossval.py                  # both parts (about 25 minutes)
    .venv/bin/python benchmarks/crossval.py --part builtin   # 5 folds vs one run, built-in data
    .venv/bin/python benchmarks/crossval.py --part breakhis  # 5 folds on 7,872 images of 700x460

Each measurement is one `bcnb reproduce` in a fresh process, timed from outside; where its
time went comes from the executed notebooks (papermill records each one's duration). The
BreakHis-size images are generated once (82 patients, 24 images per patient and
magnification, 700x460 PNG: BreakHis has 7,909) into --data. Writes
benchmarks/crossval_results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOTEBOOKS = ("01_data", "02_model", "03_train", "04_evaluate")


def reproduce(out: Path, *args: str, cache: Path | None = None) -> float:
    """Seconds one `bcnb reproduce` took, in its own process (with ``cache`` as BCNB_CACHE: a
    fresh one means the images are scanned from scratch)."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "bcnb", "reproduce", "--out", str(out), *args]
    env = {**os.environ, **({"BCNB_CACHE": str(cache)} if cache else {})}
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - started


def durations(run: Path) -> dict[str, float]:
    """Seconds each notebook of a run folder took (from the executed notebooks)."""
    found = {}
    for name in NOTEBOOKS:
        notebook = json.loads((run / "notebooks" / f"{name}.ipynb").read_text())
        found[name] = notebook["metadata"]["papermill"]["duration"]
    return found


def fold_table(out: Path, folds: int) -> list[str]:
    rows = ["| fold | " + " | ".join(NOTEBOOKS) + " | total |", "|---" * (len(NOTEBOOKS) + 2) + "|"]
    for k in range(1, folds + 1):
        seconds = durations(out / f"fold-{k}")
        cells = " | ".join(f"{seconds[name]:.0f}" for name in NOTEBOOKS)
        rows.append(f"| {k} | {cells} | {sum(seconds.values()):.0f} |")
    return rows


def shared_inodes(out: Path, folds: int) -> int:
    return len({os.stat(out / f"fold-{k}" / "features" / "all.npy").st_ino for k in range(1, folds + 1)})


def builtin(work: Path) -> list[str]:
    one = reproduce(work / "one")
    five = reproduce(work / "five", "--folds", "5")
    lines = [
        "## K=5 against one run, built-in dataset (480 images, 40 patients, 224x224, float32)",
        "",
        f"- one run (`bcnb reproduce`, notebooks 01-04 and 06): {one:.0f} s",
        f"- 5 folds (`bcnb reproduce --folds 5`, notebooks 01-04 per fold, summary): {five:.0f} s "
        f"({five / one:.1f}x one run)",
        f"- feature files: {shared_inodes(work / 'five', 5)} for 5 folds (hard links to one extraction)",
        "",
        *fold_table(work / "five", 5),
    ]
    return lines


def breakhis_size(work: Path, data: Path) -> list[str]:
    if not (data / "manifest.csv").is_file():
        from bcnb.data.synthetic import SyntheticSpec, write_synthetic_dataset

        write_synthetic_dataset(SyntheticSpec(patients=82, images_per_patient=24, scale=2), data)
    images = sum(1 for _ in data.rglob("*.png"))
    options = ["--folds", "5", "--set", f"dataset={data}", "--set", "precision=mixed_bfloat16"]
    seconds = reproduce(work / "breakhis", *options, cache=work / "cold-cache")
    target = "met" if seconds < 600 else "NOT met"
    return [
        f"## The 5-fold protocol at BreakHis' size ({images} generated images of 700x460, 82 patients, "
        "224x224, mixed_bfloat16)",
        "",
        f"- `bcnb reproduce --folds 5`, nothing cached (the scan of every image included): {seconds:.0f} s "
        f"= {seconds / 60:.1f} min (target under 10 min: {target})",
        f"- feature files: {shared_inodes(work / 'breakhis', 5)} for 5 folds",
        "",
        *fold_table(work / "breakhis", 5),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("builtin", "breakhis", "both"), default="both")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "bcnb-breakhis-size")
    parser.add_argument("--out", type=Path, default=HERE / "crossval_results.md")
    args = parser.parse_args()
    import tensorflow as tf

    lines = [
        "# Cross-validation benchmark",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{len(tf.config.list_physical_devices('GPU'))} GPU(s), Python {platform.python_version()}, "
        f"TensorFlow {tf.__version__}. Random weights (no ImageNet download here): the same work.",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="bcnb-crossval-") as work:
        if args.part in ("builtin", "both"):
            lines += [*builtin(Path(work)), ""]
        if args.part in ("breakhis", "both"):
            lines += [*breakhis_size(Path(work), args.data), ""]
    text = "\n".join(lines)
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
