"""The feature cache: right features, reused only while valid, streamed from disk."""

import hashlib
import json
import os

import keras
import numpy as np
import pytest
from conftest import build_tiny_model

from bcnb.data.pipeline import Preparation
from bcnb.model import transfer
from bcnb.run import artifacts
from bcnb.train import features, fit


def _fresh_model(img_size, seed=0):
    """The bcnb model on the tests' tiny base: the cache's plumbing does not depend on the base."""
    keras.utils.set_random_seed(seed)
    return build_tiny_model(img_size)


@pytest.fixture
def setup(tiny_cfg, tiny_split, tmp_path):
    part = tiny_split[tiny_split["split"] == "val"]
    return _fresh_model(tiny_cfg.img_size), part, tmp_path / "features" / "val.npy"


def _cache(model, part, path, img_size=32):
    return features.cached_features(model, part, Preparation(img_size), 8, path)


def test_features_are_pooled_2048_vectors_of_the_base(tiny_cfg, setup):
    _, part, _ = setup
    keras.utils.set_random_seed(0)
    model = transfer.build_model(tiny_cfg.img_size, None)  # ResNet50V2's 2,048 channels
    found = features.extract_features(model, part, Preparation(tiny_cfg.img_size), 8)
    assert found.shape == (len(part), 2048) and found.dtype == np.float32
    from bcnb.data.pipeline import make_dataset

    pooled = transfer.feature_extractor(model).predict(
        make_dataset(part, Preparation(tiny_cfg.img_size), 8), verbose=0
    )
    np.testing.assert_allclose(found, pooled, atol=1e-6)


def test_written_file_holds_the_same_features(setup):
    model, part, path = setup
    assert _cache(model, part, path) == path and path.suffix == ".npy"
    in_memory = features.extract_features(model, part, Preparation(32), 8)
    np.testing.assert_allclose(features.read_features(path), in_memory, atol=1e-6)
    np.testing.assert_allclose(np.load(path), in_memory, atol=1e-6)  # a standard .npy file
    rows = np.array([3, 0, 5])
    np.testing.assert_array_equal(features.read_features(path, rows), features.read_features(path)[rows])


def test_cache_is_reused_when_nothing_changed(setup, monkeypatch):
    model, part, path = setup
    _cache(model, part, path)
    stamp = path.stat().st_mtime_ns
    monkeypatch.setattr(features, "write_features", lambda *a: pytest.fail("recomputed a valid cache"))
    _cache(model, part, path)
    assert path.stat().st_mtime_ns == stamp


def test_cache_is_recomputed_when_weights_change(setup):
    model, part, path = setup
    first = features.read_features(_cache(model, part, path))
    other = _fresh_model(32, seed=1)
    second = features.read_features(_cache(other, part, path))
    assert not np.allclose(first, second)
    np.testing.assert_allclose(second, features.extract_features(other, part, Preparation(32), 8), atol=1e-6)


def test_cache_key_follows_files_image_size_and_resize(setup, tmp_path):
    model, part, _ = setup
    copy = tmp_path / "copy.png"
    copy.write_bytes(open(part.iloc[0]["path"], "rb").read())
    changed = part.copy()
    changed.iloc[0, changed.columns.get_loc("path")] = str(copy)

    def key(table, size=32, resize="squash"):
        return features.feature_cache_key(model, table, Preparation(size, resize))

    assert key(changed) != key(part)  # another file
    before = key(changed)
    os.utime(copy, ns=(1, 1))  # the same file, modified
    assert key(changed) != before
    assert key(part, 40) != key(part)  # another image size
    assert key(part, resize="center_crop") != key(part)
    assert key(part.assign(tile=1, tiles=2)) != key(part.assign(tile=0, tiles=2))


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_bytes(path.read_bytes()[:200]),  # cut short, key still there
        lambda path: path.with_suffix(".key.json").unlink(),  # died before the key was written
        lambda path: path.with_suffix(".key.json").write_text("{not json"),
    ],
)
def test_an_incomplete_cache_is_recomputed_not_read(setup, damage):
    model, part, path = setup
    good = features.read_features(_cache(model, part, path))
    damage(path)
    np.testing.assert_allclose(features.read_features(_cache(model, part, path)), good, atol=1e-6)


def _counting_writer(monkeypatch):
    """Count the calls of write_features, which still computes: how many times a cache was redone."""
    calls = []
    real = features.write_features

    def counted(*args, **kwargs):
        calls.append(args[-1])
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "write_features", counted)
    return calls


def _corrupt_values(path):
    """Change a few values of a feature file in place: same shape, same size, same header."""
    stored = np.load(path, mmap_mode="r+")
    stored[[0, 2], :3] += 1.5
    stored.flush()
    del stored


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_corrupt_values, "the stored features did not match their checksum"),
        (lambda path: path.write_bytes(b""), "the stored features were an empty file"),
    ],
)
def test_damaged_values_are_recomputed_and_reported(setup, monkeypatch, damage, reason):
    model, part, path = setup
    good = features.read_features(_cache(model, part, path))
    damage(path)
    calls = _counting_writer(monkeypatch)
    np.testing.assert_allclose(features.read_features(_cache(model, part, path)), good, atol=1e-6)
    assert len(calls) == 1
    assert features.recompute_note(path) == f"{path}: {reason}: recomputed"
    _cache(model, part, path)  # now current again: used as it is, and nothing to report
    assert len(calls) == 1 and features.recompute_note(path) is None


def test_an_unchanged_cache_is_neither_recomputed_nor_reported(setup, monkeypatch):
    model, part, path = setup
    calls = _counting_writer(monkeypatch)
    _cache(model, part, path)
    assert len(calls) == 1 and features.recompute_note(path) is None  # the first computation: no note
    for _ in range(2):
        _cache(model, part, path)
    assert len(calls) == 1 and features.recompute_note(path) is None
    stored = json.loads(path.with_suffix(".key.json").read_text())
    assert stored["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_key_without_a_checksum_is_not_trusted(setup, monkeypatch):
    """A key file written before checksums existed cannot vouch for the values: recomputed."""
    model, part, path = setup
    _cache(model, part, path)
    key_path = path.with_suffix(".key.json")
    key_path.write_text(
        json.dumps({k: v for k, v in json.loads(key_path.read_text()).items() if k != "sha256"})
    )
    calls = _counting_writer(monkeypatch)
    _cache(model, part, path)
    assert len(calls) == 1 and "no checksum" in features.recompute_note(path)


def test_feature_batches_cover_every_row_once_in_a_seeded_order(setup):
    model, part, path = setup
    _cache(model, part, path)
    labels = np.arange(len(part)) % 2
    everything = features.read_features(path)
    orders = []
    for seed in (0, 1, 0):
        batches = fit.FeatureBatches(
            path, np.arange(len(part)), labels.astype(np.float32), batch_size=3, shuffle=True, seed=seed
        )
        assert len(batches) == -(-len(part) // 3)
        seen = []
        for index in range(len(batches)):
            x, y = batches[index]
            rows = [int(np.flatnonzero((everything == row).all(axis=1))[0]) for row in x]
            assert list(y.ravel()) == list(labels[rows])
            seen += rows
        assert sorted(seen) == list(range(len(part)))
        orders.append(seen)
    assert orders[0] != orders[1] and orders[0] == orders[2]  # the seed alone decides the order


def test_feature_batches_read_only_their_rows(setup):
    model, part, path = setup
    _cache(model, part, path)
    rows = np.array([4, 1, 6])
    batches = fit.FeatureBatches(path, rows, np.array([1.0, 0.0, 1.0]), batch_size=2)
    x0, y0 = batches[0]
    x1, y1 = batches[1]
    np.testing.assert_array_equal(np.concatenate([x0, x1]), features.read_features(path, rows))
    assert np.concatenate([y0, y1]).ravel().tolist() == [1.0, 0.0, 1.0]


def test_last_partial_batch_gives_the_same_features(setup):
    model, part, _ = setup
    whole = features.extract_features(model, part, Preparation(32), len(part))
    np.testing.assert_allclose(features.extract_features(model, part, Preparation(32), 4), whole, atol=1e-5)


# --------------------------------------------------------------------------- shards
def _run_folder(tiny_cfg, tiny_split, folder):
    """What notebooks 01 and 02 leave: config, split, untrained model."""
    from bcnb.data import splitting
    from bcnb.run import artifacts
    from bcnb.run.record import record_all

    cfg = tiny_cfg.replace(run_dir=str(folder))
    record_all(folder, cfg)
    splitting.save_split(tiny_split, folder)
    keras.utils.set_random_seed(0)
    transfer.save_model(build_tiny_model(cfg.img_size), folder / artifacts.INITIAL_MODEL_FILE)
    return cfg


def test_shard_rows_cover_every_row_once():
    for n_rows, shards in [(10, 3), (7, 7), (5, 8)]:
        covered = [i for s in range(shards) for i in range(n_rows)[features.shard_rows(n_rows, s, shards)]]
        assert covered == list(range(n_rows))


@pytest.mark.slow
def test_two_processes_fill_the_cache_like_one(tiny_cfg, tiny_split, tmp_path, monkeypatch):
    """`bcnb extract --shard 0/2` and `1/2`, run at once, merge into the single-process cache,
    and the head trained on it is the same model."""
    import subprocess
    import sys

    from bcnb.run import artifacts
    from bcnb.train import fit

    sharded = _run_folder(tiny_cfg, tiny_split, tmp_path / "sharded")
    single = _run_folder(tiny_cfg, tiny_split, tmp_path / "single")
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "bcnb", "extract", "--out", sharded.run_dir, "--shard", f"{i}/2"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for worker in workers:
        assert worker.wait(timeout=600) == 0, worker.stderr.read()[-2000:]
    split = artifacts.load_split(sharded.run_dir)
    models = {}
    for cfg in (sharded, single):
        keras.utils.set_random_seed(0)
        models[cfg.run_dir] = transfer.load_model(f"{cfg.run_dir}/{artifacts.INITIAL_MODEL_FILE}")
    with monkeypatch.context() as patch:  # the sharded run must merge, not extract again
        patch.setattr(features, "write_features", lambda *a: pytest.fail("extracted instead of merging"))
        merged = features.read_features(features.feature_file(sharded, models[sharded.run_dir], split))
    whole = features.read_features(features.feature_file(single, models[single.run_dir], split))
    np.testing.assert_allclose(merged, whole, atol=1e-5)
    kernels = []
    for cfg in (sharded, single):
        from bcnb.run.seeds import seed_everything

        seed_everything(cfg.seed)
        model = transfer.load_model(f"{cfg.run_dir}/{artifacts.INITIAL_MODEL_FILE}")
        fit.train_model(cfg, model, split)
        kernels.append(model.get_layer("classifier").kernel.numpy())
    np.testing.assert_allclose(kernels[0], kernels[1], atol=1e-4)


def test_an_incomplete_set_of_shards_is_not_used(tiny_cfg, tiny_split, tmp_path):
    cfg = _run_folder(tiny_cfg, tiny_split, tmp_path)
    model = transfer.load_model(tmp_path / artifacts.INITIAL_MODEL_FILE)
    features.extract_shard(cfg, model, tiny_split, 0, 2)  # shard 1 of 2 never ran
    path = features.feature_file(cfg, model, tiny_split)
    np.testing.assert_allclose(
        features.read_features(path),
        features.extract_features(model, tiny_split, Preparation(32), 8),
        atol=1e-5,
    )


def test_a_damaged_shard_is_not_merged(tiny_cfg, tiny_split, tmp_path, monkeypatch):
    """Both shards are there with their keys, but one's values changed: the merge is not made
    from it; the features are computed again and equal the single-process ones."""
    cfg = _run_folder(tiny_cfg, tiny_split, tmp_path)
    model = transfer.load_model(tmp_path / artifacts.INITIAL_MODEL_FILE)
    shards = [features.extract_shard(cfg, model, tiny_split, shard, 2) for shard in range(2)]
    _corrupt_values(shards[1])
    calls = _counting_writer(monkeypatch)
    path = features.feature_file(cfg, model, tiny_split)
    assert len(calls) == 1  # extracted, not merged
    np.testing.assert_allclose(
        features.read_features(path),
        features.extract_features(model, tiny_split, Preparation(32), 8),
        atol=1e-5,
    )


def test_the_run_cache_damaged_between_stages_is_recomputed_with_a_note(tiny_cfg, tiny_split, tmp_path):
    """feature_file, which training and evaluation read all.npy through, checks it each time."""
    cfg = _run_folder(tiny_cfg, tiny_split, tmp_path)
    model = transfer.load_model(tmp_path / artifacts.INITIAL_MODEL_FILE)
    path = features.feature_file(cfg, model, tiny_split)
    good = features.read_features(path)
    _corrupt_values(path)
    np.testing.assert_allclose(
        features.read_features(features.feature_file(cfg, model, tiny_split)), good, atol=1e-6
    )
    note = features.recompute_note(f"{cfg.run_dir}/features/all.npy")  # as notebook 03 asks
    assert note.endswith("all.npy: the stored features did not match their checksum: recomputed")
