"""Feature extraction in one process against a local Dask cluster of 1 and 2 workers.

    .venv/bin/python benchmarks/dask_extract.py            # writes benchmarks/dask_results.md

On the built-in dataset (480 images at 224x224, random weights), each way in its own run
folder copy: the single-process path (``features.feature_file``), then ``bcnb extract --dask
local:1`` and ``local:2`` (cluster start-up included, as a user waits for it), each with
chunks of 256 and of 16 images (one worker's difference is the per-task overhead).
On a 2-core machine two workers share the two cores that one TensorFlow process already
uses, so little gain is expected here: the point of --dask is more machines, not this one.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("dask_results.md")


def prepared_run(root: Path):
    """A run folder as notebooks 01-02 leave it, on the built-in dataset."""
    from bcnb import Config
    from bcnb.data import loading, splitting
    from bcnb.model import transfer
    from bcnb.run.record import record_all

    cfg = Config(weights="none", run_dir=str(root / "prepared"))
    split = splitting.split_for_run(cfg, loading.load_dataset(cfg).table)
    Path(cfg.run_dir).mkdir(parents=True)
    record_all(cfg.run_dir, cfg)
    splitting.save_split(split, cfg.run_dir)
    transfer.save_model(transfer.build_model(cfg.img_size, None), Path(cfg.run_dir) / "model_initial.keras")
    return cfg, split


def timed(label: str, cfg, root: Path, extract) -> dict:
    from bcnb.model import transfer

    folder = root / label.replace(" ", "_").replace(":", "")
    shutil.copytree(cfg.run_dir, folder)
    run = cfg.replace(run_dir=str(folder))
    model = transfer.load_model(folder / "model_initial.keras")
    started = time.perf_counter()
    extract(run, model)
    return {"way": label, "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    from bcnb.run import artifacts
    from bcnb.train import cluster, features

    root = Path(tempfile.mkdtemp(prefix="bcnb-dask-"))
    cfg, split = prepared_run(root)
    quiet = lambda line: None  # noqa: E731

    def on_cluster(address, chunk):
        def extract(run, model):
            with cluster.connect(address) as client:
                cluster.extract_on_cluster(
                    run, model, artifacts.load_split(run.run_dir), client, chunk, quiet
                )

        return extract

    rows = [
        timed("one process", cfg, root, lambda run, model: features.feature_file(run, model, split)),
        timed("local:1, chunks of 256", cfg, root, on_cluster("local:1", 256)),
        timed("local:1, chunks of 16", cfg, root, on_cluster("local:1", 16)),
        timed("local:2, chunks of 256", cfg, root, on_cluster("local:2", 256)),
        timed("local:2, chunks of 16", cfg, root, on_cluster("local:2", 16)),
    ]
    for row in rows:
        row["images/s"] = round(len(split) / row["seconds"], 1)
    chunks = {size: -(-len(split) // size) for size in (16, 256)}
    # One worker, so nothing competes: the extra time of many small chunks, per chunk.
    overhead = (rows[2]["seconds"] - rows[1]["seconds"]) / (chunks[16] - chunks[256])
    from bcnb.bench import machine

    lines = [
        "# bcnb extract --dask against one process",
        "",
        f"Machine: {machine()}. {len(split)} images, 224x224, random weights, the built-in dataset;",
        "cluster start-up included.",
        "",
        "| way | seconds | images/s |",
        "|---|---|---|",
        *[f"| {r['way']} | {r['seconds']} | {r['images/s']} |" for r in rows],
        "",
        f"Overhead per chunk (1 worker, 16- against 256-image chunks): {overhead * 1000:.0f} ms.",
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
