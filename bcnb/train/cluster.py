"""Feature extraction on a Dask cluster: ``bcnb extract --out RUN --dask SCHEDULER``.

Extraction is the expensive step of a run and embarrassingly parallel: every image's
features depend on that image and the frozen base alone. Here the split's rows are cut into
chunks, each Dask worker loads the run's model once and turns chunks into feature rows, and
this process writes the rows into the very cache file the single-process path writes (same
key, same order), so ``bcnb reproduce --resume`` trains on it as on any other.

Dask supplies what a hand-started set of shard processes lacks: a worker that dies has its
chunks redone elsewhere (the result is the same, since a chunk is a pure function of its
rows), a slow machine simply takes fewer chunks, and the scheduler can run on SLURM
(dask-jobqueue), Kubernetes (dask-kubernetes) or a set of machines. The workers read the
run folder and the images by path: on a cluster they must see the same file system.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from bcnb.config import Config
from bcnb.run.files import replace_from_writer
from bcnb.run.record import load_run_config

CHUNK_ROWS = 256  # images per task: large enough that the per-task overhead is small
INSTALL_HINT = 'pip install -e ".[dask]"'
ANSWER_GRACE_S = 5  # beyond the client's own timeout, before a silent scheduler address is given up


class ChunkDataError(ValueError):
    """A chunk failed because of an image file, which the message names."""


def connect(address: str, timeout: str = "10s"):
    """A dask.distributed Client: ``local:N`` starts N worker processes on this machine
    (127.0.0.1 only), anything else is a scheduler's address, e.g. tcp://host:8786."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise ValueError(f"--dask: needs dask.distributed, which is not installed ({INSTALL_HINT})") from None
    if address.startswith("local:"):
        workers = address.removeprefix("local:")
        if not workers.isdigit() or int(workers) < 1:
            raise ValueError(f"--dask: expected local:N with N >= 1 worker processes, got {address!r}")
        # The client starts (and on closing stops) its own local cluster of worker processes.
        return Client(
            n_workers=int(workers),
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
        )
    try:
        if _refused(address):  # said at once, not after the client's timeout
            raise ConnectionRefusedError("connection refused: nothing listens there")
        return _client_within(address, timeout)
    except (OSError, TimeoutError, ValueError) as error:
        reason = " ".join(str(error).split())[:160] or error.__class__.__name__
        raise ValueError(f"--dask: cannot reach a Dask scheduler at {address} ({reason})") from None


def _client_within(address: str, timeout: str):
    """``Client(address, timeout=timeout)``, or TimeoutError once ``timeout`` and a few seconds
    have passed: where something accepts the connection but never answers as a scheduler
    would (a wrong service, a stopped process), dask's client waits on past its own timeout.
    It is made in a thread of its own, which is left behind (the command then stops)."""
    import threading

    from dask.distributed import Client
    from dask.utils import parse_timedelta

    made: dict = {}

    def make_client() -> None:
        try:
            made["client"] = Client(address, timeout=timeout)
        except BaseException as error:  # handed to the caller below
            made["error"] = error

    thread = threading.Thread(target=make_client, name="bcnb-dask-connect", daemon=True)
    thread.start()
    waited = parse_timedelta(timeout) + ANSWER_GRACE_S
    thread.join(waited)
    if thread.is_alive():
        raise TimeoutError(f"no answer in {waited:.0f} s: whatever listens there is not a Dask scheduler")
    if "error" in made:
        raise made["error"]
    return made["client"]


def _refused(address: str) -> bool:
    """True when a TCP scheduler address refuses connections outright (a wrong port, no
    scheduler started); False where it cannot tell, for the client to try."""
    from distributed.comm import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme not in ("tcp", "tls"):
            return False
        socket.create_connection(parse_host_port(location), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except (OSError, ValueError, TypeError):  # unreachable, slow or unparsable: the client says
        return False
    return False


def chunk_bounds(n_rows: int, chunk: int) -> list[tuple[int, int]]:
    """(start, stop) of each chunk of ``chunk`` rows (the last one shorter)."""
    return [(start, min(start + chunk, n_rows)) for start in range(0, n_rows, chunk)]


# --------------------------------------------------------------------------- on a worker
_MODELS: dict = {}  # per worker process: the model of each run folder, loaded once


def features_of_chunk(run_dir: str, start: int, stop: int) -> np.ndarray:
    """On a worker: the features of rows ``start:stop`` of the run's split, as the
    single-process path computes them (same batch size, resize and stain normalisation)."""
    from bcnb.data.pipeline import Preparation
    from bcnb.run.artifacts import load_split
    from bcnb.train.features import EXTRACTION_BATCH, extract_features

    cfg = load_run_config(run_dir)
    rows = load_split(run_dir).iloc[start:stop]
    model = _worker_model(run_dir)
    # As the single-process path, but never more than the chunk: a batch is padded to full
    # size, so a 16-image chunk in a 64-image batch would cost four times its work.
    batch_size = min(max(cfg.batch_size, EXTRACTION_BATCH), len(rows))
    try:
        return extract_features(model, rows, Preparation.from_run(cfg), batch_size)
    except Exception:
        _raise_for_bad_file(rows)  # a reason of the data: name the file
        raise


def _worker_model(run_dir: str):
    from bcnb.model.transfer import load_model
    from bcnb.run.artifacts import INITIAL_MODEL_FILE

    path = Path(run_dir) / INITIAL_MODEL_FILE
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _MODELS:
        _MODELS[key] = load_model(path)
    return _MODELS[key]


def _raise_for_bad_file(rows: pd.DataFrame) -> None:
    from bcnb.data.scan import inspect_file

    for path in rows["path"]:
        problem = inspect_file(Path(path))[0]
        if problem:
            raise ChunkDataError(f"{path}: {problem} (no features written; fix or remove it, then run again)")


# --------------------------------------------------------------------------- the driver
def extract_on_cluster(
    cfg: Config,
    model,
    split: pd.DataFrame,
    client,
    chunk: int = CHUNK_ROWS,
    say: Callable[[str], None] = print,
) -> Path:
    """Stage entry point: run_dir/features/all.npy computed chunk by chunk on ``client``'s
    workers, with its key, unless a current one is there already."""
    from bcnb.data.pipeline import Preparation
    from bcnb.model.transfer import feature_extractor
    from bcnb.run.artifacts import ALL_FEATURES, FEATURES_DIR
    from bcnb.train.features import ABSENT, feature_cache_key, stale_reason, write_feature_key

    path = Path(cfg.run_dir) / FEATURES_DIR / ALL_FEATURES
    key = feature_cache_key(model, split, Preparation.from_run(cfg))
    reason = stale_reason(path, key, len(split))
    if reason is None:
        say(f"{path}: already computed for this run")
        return path
    if reason != ABSENT:  # stored features that are stale or damaged: say why they are redone
        say(f"{path}: {reason}: recomputing")
    path.with_suffix(".key.json").unlink(missing_ok=True)
    shape = (len(split), feature_extractor(model).output.shape[-1])
    replace_from_writer(path, lambda temporary: _gather(client, cfg.run_dir, shape, chunk, temporary, say))
    write_feature_key(path, key, len(split))
    return path


def _gather(client, run_dir: str, shape: tuple, chunk: int, temporary: Path, say) -> None:
    """Submit every chunk, and write each one's rows into place as it arrives."""
    from dask.distributed import as_completed

    from bcnb.train.features import DTYPE

    bounds = chunk_bounds(shape[0], chunk)
    futures = {client.submit(features_of_chunk, str(run_dir), a, b, pure=False): (a, b) for a, b in bounds}
    out = np.lib.format.open_memmap(temporary, mode="w+", dtype=DTYPE, shape=shape)
    started, done_rows = time.perf_counter(), 0
    try:
        for done, future in enumerate(as_completed(futures), start=1):
            start, stop = futures[future]
            out[start:stop] = future.result()
            done_rows += stop - start
            speed = done_rows / max(time.perf_counter() - started, 1e-9)
            say(f"chunk {done}/{len(bounds)} done: {done_rows} of {shape[0]} images, {speed:.1f} images/s")
    except BaseException:
        client.cancel(list(futures))  # nothing more is computed for a file that will not be written
        raise
    out.flush()
