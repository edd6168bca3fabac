"""The input preparation: one value per run, the same pixels and cache keys as before it."""

import hashlib
from pathlib import Path

import keras
import numpy as np
import pytest

from bcnb.data import images, pipeline
from bcnb.data.pipeline import Preparation
from bcnb.data.stain import StainNormalizer, save_normalizer
from bcnb.model import transfer
from bcnb.train import features

REINHARD = StainNormalizer("reinhard", {"mean": [-0.3, -0.02, 0.01], "std": [0.1, 0.02, 0.005]})


@pytest.mark.parametrize("resize", ["squash", "center_crop"])
@pytest.mark.parametrize("stain", [None, REINHARD])
@pytest.mark.parametrize(("tiles", "tile"), [(0, 0), (3, 2)])
def test_an_image_prepared_is_load_for_model_with_the_same_arguments(tiny_split, resize, stain, tiles, tile):
    path = tiny_split["path"].iloc[0]
    prepared = Preparation(24, resize, stain).prepare(path, tiles, tile)
    np.testing.assert_array_equal(prepared, images.load_for_model(path, 24, resize, tiles, tile, stain))


def test_the_runs_preparation_is_its_config_and_fitted_target(tiny_cfg, tmp_path):
    assert Preparation.from_run(tiny_cfg.replace(resize="center_crop")) == Preparation(32, "center_crop")
    cfg = tiny_cfg.replace(run_dir=str(tmp_path), stain_normalization="reinhard")
    save_normalizer(REINHARD, tmp_path, "a test target")
    assert Preparation.from_run(cfg) == Preparation(32, "squash", REINHARD)


def test_a_tables_inputs_are_its_rows_prepared_in_order(tiny_split):
    table = tiny_split.head(2)
    table = table.loc[table.index.repeat(2)].assign(tile=[0, 1, 0, 1], tiles=2)
    preparation = Preparation(32, stain=REINHARD)
    found = list(preparation.inputs_of(table))
    expected = [preparation.prepare(row.path, row.tiles, row.tile) for row in table.itertuples()]
    assert len(found) == 4 and all(np.array_equal(a, b) for a, b in zip(found, expected))


def test_the_cache_key_of_a_run_without_stain_normalisation_is_as_before(tiny_cfg, tiny_split):
    """The key as bcnb computed it before the preparation was one value, written out: caches
    already on disk stay valid."""
    keras.utils.set_random_seed(0)
    model = transfer.build_model(tiny_cfg.img_size, None)
    rows = tiny_split.head(5).assign(tile=0, tiles=0)
    base = transfer.base_of(model)
    header = f"img_size=32|resize=center_crop|base={base.name}|precision={base.dtype_policy.name}"
    digest = hashlib.sha256(header.encode())
    for path, tile, tiles in zip(rows["path"], rows["tile"], rows["tiles"]):
        stat = Path(path).stat()
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{tile}/{tiles}\n".encode())
    for weight in transfer.feature_extractor(model).weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    preparation = Preparation.from_run(tiny_cfg.replace(resize="center_crop"))
    assert features.feature_cache_key(model, rows, preparation) == digest.hexdigest()
    stained = features.feature_cache_key(model, rows, Preparation(32, "center_crop", REINHARD))
    assert stained != digest.hexdigest()  # a normalised run's features are others


def test_the_pipeline_streams_prepared_images(tiny_split):
    table = tiny_split.head(3)
    preparation = Preparation(32, "center_crop", REINHARD)
    batch, labels = next(iter(pipeline.make_dataset(table, preparation, batch_size=3)))
    np.testing.assert_array_equal(batch.numpy(), np.stack(list(preparation.inputs_of(table))))
    np.testing.assert_array_equal(labels.numpy().ravel(), pipeline.labels_of(table))
