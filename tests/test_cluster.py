"""bcnb extract --dask: feature extraction on a local Dask cluster of worker processes."""

import os
import signal

import numpy as np
import pytest

pytest.importorskip("distributed", reason="the [dask] extra is not installed")  # the test extra has it

from conftest import build_tiny_model  # noqa: E402

from bcnb import cli  # noqa: E402
from bcnb.data import splitting  # noqa: E402
from bcnb.data.pipeline import Preparation  # noqa: E402
from bcnb.model import transfer  # noqa: E402
from bcnb.run import artifacts  # noqa: E402
from bcnb.run.record import record_all  # noqa: E402
from bcnb.train import cluster, features  # noqa: E402


@pytest.fixture(scope="module")
def run(tiny_cfg, tiny_split, tmp_path_factory):
    """A run as notebooks 01-02 leave it (record, split, initial model), and the features
    the single-process path computes for it."""
    folder = tmp_path_factory.mktemp("dask") / "run"
    folder.mkdir()
    cfg = tiny_cfg.replace(run_dir=str(folder))
    record_all(folder, cfg)
    splitting.save_split(tiny_split, folder)
    transfer.save_model(build_tiny_model(cfg.img_size), folder / artifacts.INITIAL_MODEL_FILE)
    model = transfer.load_model(folder / artifacts.INITIAL_MODEL_FILE)
    reference = features.extract_features(
        model, artifacts.load_split(folder), Preparation(cfg.img_size), features.EXTRACTION_BATCH
    )
    return cfg, model, reference


def _fresh(cfg, tmp_path):
    """A copy of the run folder without features."""
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(cfg.run_dir, folder, ignore=shutil.ignore_patterns("features"))
    return cfg.replace(run_dir=str(folder))


@pytest.mark.slow
def test_two_workers_write_the_single_process_cache_even_when_one_is_killed(run, tmp_path):
    """Chunks of 4 images on 2 worker processes; one worker is killed once the first chunk is
    in. Dask redoes its chunks elsewhere, and the file equals the single-process features
    (within float tolerance 1e-5: batches are composed differently) under the same key."""
    cfg, model, reference = run
    cfg = _fresh(cfg, tmp_path)
    split = artifacts.load_split(cfg.run_dir)
    lines = []
    with cluster.connect("local:2") as client:
        pids = list(client.run(os.getpid).values())

        def say(line):
            if not lines:  # the first chunk is done: kill a worker with work still queued
                os.kill(pids[0], signal.SIGKILL)
            lines.append(line)

        path = cluster.extract_on_cluster(cfg, model, split, client, chunk=4, say=say)
        said = []  # and a second run finds it current: nothing is submitted
        cluster.extract_on_cluster(cfg, model, split, client, say=said.append)
        stored = np.load(path, mmap_mode="r+")  # values changed in place, same shape: redone, and said
        stored[[0, 5], :3] += 1.5
        stored.flush()
        del stored
        redone = []
        cluster.extract_on_cluster(cfg, model, split, client, chunk=8, say=redone.append)
    np.testing.assert_allclose(np.load(path), reference, atol=1e-5)
    assert features.is_current(
        path, features.feature_cache_key(model, split, Preparation(cfg.img_size)), len(split)
    )
    assert len(lines) == -(-len(split) // 4) and lines[-1].startswith(f"chunk {len(lines)}/{len(lines)} done")
    assert said == [f"{path}: already computed for this run"]
    assert redone[0] == f"{path}: the stored features did not match their checksum: recomputing"


@pytest.mark.slow
def test_an_unreadable_image_stops_the_job_naming_it(run, tmp_path, capsys):
    cfg, _, _ = run
    cfg = _fresh(cfg, tmp_path)
    split = artifacts.load_split(cfg.run_dir)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    split.loc[3, "path"] = str(broken)
    splitting.save_split(split, cfg.run_dir)
    status = cli.main(["extract", "--out", cfg.run_dir, "--dask", "local:1", "--chunk", "8"])
    err = capsys.readouterr().err
    assert status == 2 and f"{broken}: " in err and "no features written" in err
    assert not (tmp_path / "run" / "features" / "all.npy").exists()


@pytest.mark.slow
def test_an_unreachable_scheduler_is_one_line(run, capsys):
    cfg, _, _ = run
    assert cli.main(["extract", "--out", cfg.run_dir, "--dask", "tcp://127.0.0.1:9"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cannot reach a Dask scheduler at tcp://127.0.0.1:9" in lines[0]


def test_a_scheduler_address_gives_a_client_of_that_scheduler():
    from dask.distributed import LocalCluster

    local = {"host": "127.0.0.1", "protocol": "tcp", "dashboard_address": ":0"}
    with LocalCluster(n_workers=0, processes=False, **local) as scheduler:
        with cluster.connect(scheduler.scheduler_address, timeout="5s") as client:
            assert client.scheduler.address == scheduler.scheduler_address


def test_an_address_that_listens_but_never_answers_is_given_up():
    """Something that accepts the connection and says nothing (not a scheduler): dask's client
    alone would wait past its timeout; connect gives up a few seconds after it."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as silent:  # the backlog accepts; nobody answers
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(ValueError, match=f"cannot reach a Dask scheduler at {address} .no answer in 6 s"):
            cluster.connect(address, timeout="1s")


def test_without_dask_the_option_says_what_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "dask.distributed", None)
    with pytest.raises(ValueError, match=r'needs dask.distributed, .*pip install -e "\.\[dask\]"'):
        cluster.connect("local:1")


@pytest.mark.parametrize("address", ["local:0", "local:two"])
def test_a_local_cluster_needs_a_number_of_workers(address):
    with pytest.raises(ValueError, match="expected local:N with N >= 1"):
        cluster.connect(address)


def test_chunk_bounds_cover_every_row_once():
    assert cluster.chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert cluster.chunk_bounds(0, 4) == []
