"""Stain normalisation against cases computed by hand, and in the pipeline."""

import numpy as np
import pandas as pd
import pytest

from bcnb.data import pipeline, stain
from bcnb.data.stain import StainNormalizer
from bcnb.run import artifacts

# Two stain colours in optical density (unit vectors), haematoxylin with the larger red part.
H = np.array([0.65, 0.70, 0.29]) / np.linalg.norm([0.65, 0.70, 0.29])
E = np.array([0.25, 0.90, 0.35]) / np.linalg.norm([0.25, 0.90, 0.35])


def _mixed(amounts: np.ndarray, stains=(H, E)) -> np.ndarray:
    """8-bit RGB pixels holding ``amounts`` (n, 2) of two stains (Beer-Lambert)."""
    return stain.from_optical_density(amounts @ np.array(stains)).reshape(-1, 1, 3)


def _two_stain_image(seed=0, n=3000, top=(1.2, 0.8)) -> tuple[np.ndarray, np.ndarray]:
    """A third of the pixels haematoxylin alone (nuclei), a third eosin alone (stroma), a
    third both: the extreme directions Macenko's method looks for are the pure stains."""
    rng = np.random.default_rng(seed)
    amounts = rng.uniform(0.8, 1.0, (n, 2)) * np.array(top)
    amounts[: n // 3, 1] = 0
    amounts[n // 3 : 2 * n // 3, 0] = 0
    return _mixed(amounts), amounts


def test_optical_density_of_white_is_zero_and_the_inverse_round_trips():
    assert stain.optical_density(np.array([255, 255, 255])) == pytest.approx([0, 0, 0])
    # by hand: I = 127 -> -ln(128 / 256) = ln 2
    assert stain.optical_density(np.array([127]))[0] == pytest.approx(np.log(2))
    every = np.arange(256, dtype=np.uint8).repeat(3).reshape(-1, 3)
    assert np.array_equal(stain.from_optical_density(stain.optical_density(every)), every)


def test_lab_round_trip_is_exact_on_8_bit_colours():
    colours = np.random.default_rng(1).integers(0, 256, (5000, 3), dtype=np.uint8)
    assert np.array_equal(stain.lab_to_rgb(stain.rgb_to_lab(colours)), colours)


def test_reinhard_on_two_colours_by_hand():
    """Half the pixels colour a, half colour b: each channel's mean is (a+b)/2 and its standard
    deviation |a-b|/2, so after matching a target (m, s) the two colours sit at m -+ s."""
    a, b = np.array([200, 120, 180], np.uint8), np.array([90, 40, 120], np.uint8)
    image = np.stack([a, b] * 50).reshape(10, 10, 3)
    lab_a, lab_b = stain.rgb_to_lab(a), stain.rgb_to_lab(b)
    found = stain.reinhard_parameters(image)
    np.testing.assert_allclose(found["mean"], (lab_a + lab_b) / 2)
    np.testing.assert_allclose(found["std"], np.abs(lab_a - lab_b) / 2)
    target = {"mean": [-0.3, -0.02, 0.01], "std": [0.1, 0.02, 0.005]}
    out = StainNormalizer("reinhard", target)(image)
    sign = np.sign(lab_a - lab_b)  # a lies on the high side of each channel where a > b
    expected_a = np.array(target["mean"]) + sign * np.array(target["std"])
    np.testing.assert_allclose(stain.rgb_to_lab(out[0, 0]), expected_a, atol=0.01)
    assert np.abs(out.astype(int) - stain.lab_to_rgb(expected_a)).reshape(-1, 3)[0].max() <= 1


def test_reinhard_onto_its_own_parameters_changes_nothing():
    image, _ = _two_stain_image()
    own = stain.reinhard_parameters(image)
    assert np.abs(StainNormalizer("reinhard", own)(image).astype(int) - image).max() <= 1


def test_macenko_recovers_the_stains_and_their_amounts():
    image, amounts = _two_stain_image()
    found = stain.macenko_parameters(image)
    stains = np.array(found["stains"])
    assert np.abs(stains[0] - H).max() < 0.01 and np.abs(stains[1] - E).max() < 0.01  # H first
    np.testing.assert_allclose(found["max_amounts"], np.percentile(amounts, 99, axis=0), rtol=0.05)


def test_macenko_remixes_the_amounts_with_the_target_stains():
    """An image of stains (H, E) normalised onto a target of stains (H2, E2) with twice the
    amounts is, pixel for pixel, the same amounts doubled in the target's stains."""
    image, amounts = _two_stain_image()
    source = stain.macenko_parameters(image)
    h2, e2 = np.array([0.55, 0.75, 0.37]), np.array([0.15, 0.95, 0.27])
    h2, e2 = h2 / np.linalg.norm(h2), e2 / np.linalg.norm(e2)
    target = {
        "stains": [h2.tolist(), e2.tolist()],
        "max_amounts": (2 * np.array(source["max_amounts"])).tolist(),
    }
    out = StainNormalizer("macenko", target)(image)
    expected = _mixed(2 * amounts, (h2, e2))
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 2.0


@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_images_that_cannot_be_fitted_are_kept_and_say_why(method):
    normalizer = StainNormalizer(method, {})  # no target needed: nothing gets transformed
    white = np.full((40, 40, 3), 255, np.uint8)
    kept, why = normalizer.apply(white)
    assert np.array_equal(kept, white) and why.startswith("no tissue")
    flat = np.full((40, 40, 3), [190, 110, 170], np.uint8)
    kept, why = normalizer.apply(flat)
    flat_reasons = {"reinhard": "a single flat colour", "macenko": "one stain only"}
    assert np.array_equal(kept, flat) and why.startswith(flat_reasons[method])


def test_the_median_target_skips_what_it_cannot_fit_and_needs_one_image():
    image, _ = _two_stain_image()
    white = np.full_like(image, 255)
    target, reasons = stain.median_target("reinhard", [image, white, image])
    assert reasons[0] == reasons[2] == "" and reasons[1].startswith("no tissue")
    assert target == stain.reinhard_parameters(image)
    with pytest.raises(ValueError, match="stain_target: none of the 1 images could be fitted"):
        stain.median_target("macenko", [white])


def test_the_key_changes_with_method_and_target():
    pairs = [("reinhard", {"a": 1}), ("reinhard", {"a": 2}), ("macenko", {"a": 1})]
    keys = {StainNormalizer(method, target).key() for method, target in pairs}
    assert len(keys) == 3


# --------------------------------------------------------------------------- in a run
@pytest.fixture
def stained_cfg(tiny_cfg, tmp_path):
    return tiny_cfg.replace(run_dir=str(tmp_path), stain_normalization="macenko")


def test_a_run_fits_on_training_images_and_the_pipeline_applies_it(stained_cfg, tiny_split, tmp_path):
    normalizer, skipped = pipeline.fit_stain_normalizer(stained_cfg, tiny_split)
    record = stain.load_normalizer(tmp_path, "macenko")
    assert record == normalizer and "training images" in (tmp_path / artifacts.STAIN_TARGET_FILE).read_text()
    assert list(pd.read_csv(tmp_path / artifacts.STAIN_SKIPPED_FILE).columns) == ["path", "split", "reason"]
    assert skipped.empty  # every generated image has tissue
    rows = tiny_split.head(2)
    raw = np.stack(list(pipeline._raw_inputs(stained_cfg, rows)))
    expected = np.stack([normalizer(image) for image in raw])
    assert not np.array_equal(expected, raw)
    np.testing.assert_array_equal(pipeline.load_images(stained_cfg, rows), expected)
    batch, _ = next(iter(pipeline.image_dataset(stained_cfg.replace(batch_size=2), rows)))
    np.testing.assert_array_equal(batch.numpy(), expected)


def test_the_target_uses_no_validation_or_test_image(stained_cfg, tiny_split):
    """Changing every val and test image's colours leaves the fitted target as it was."""
    first, _ = pipeline.fit_stain_normalizer(stained_cfg, tiny_split)
    shuffled = tiny_split.copy()
    held_out = shuffled["split"] != "train"
    shuffled.loc[held_out, "path"] = shuffled.loc[held_out, "path"].sample(frac=1, random_state=3).to_numpy()
    second, _ = pipeline.fit_stain_normalizer(stained_cfg, shuffled)
    assert first == second


def test_an_image_file_target_and_a_bad_one(stained_cfg, tiny_split, tmp_path):
    target_image = tiny_split["path"].iloc[0]
    cfg = stained_cfg.replace(stain_target=target_image)
    normalizer, _ = pipeline.fit_stain_normalizer(cfg, tiny_split)
    assert "the image" in (tmp_path / artifacts.STAIN_TARGET_FILE).read_text()
    assert normalizer.target == pipeline.stain_target_parameters(cfg)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"^stain_target: .*notes.png is not a readable image"):
        pipeline.fit_stain_normalizer(cfg.replace(stain_target=str(tmp_path / "notes.png")), tiny_split)
    white = tmp_path / "white.png"
    from PIL import Image

    Image.new("RGB", (64, 64), "white").save(white)
    with pytest.raises(ValueError, match=r"white.png cannot be fitted by macenko \(no tissue"):
        pipeline.stain_target_parameters(cfg.replace(stain_target=str(white)))


def test_the_feature_cache_key_includes_the_normaliser(tiny_cfg, tiny_split):
    from bcnb.model import transfer
    from bcnb.train.features import feature_cache_key

    model = transfer.build_model(32, None)
    rows = tiny_split.head(2)
    plain = feature_cache_key(model, rows, pipeline.Preparation(32))
    reinhard = StainNormalizer("reinhard", {"mean": [0, 0, 0], "std": [1, 1, 1]})
    macenko = StainNormalizer("macenko", {"stains": [[1, 0, 0], [0, 1, 0]], "max_amounts": [1, 1]})
    keys = {
        plain,
        feature_cache_key(model, rows, pipeline.Preparation(32, stain=reinhard)),
        feature_cache_key(model, rows, pipeline.Preparation(32, stain=macenko)),
    }
    assert len(keys) == 3


@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_real_breakhis_images_are_fitted_and_normalised(breakhis_sample, method):
    """On real H&E fields every image is fitted; after Reinhard an image has the target's
    statistics, and Macenko finds haematoxylin as the stain that absorbs more red."""
    from bcnb.data.images import fit_to_square, read_rgb

    paths = sorted(breakhis_sample.rglob("*.png"))[:8]
    images = [fit_to_square(read_rgb(path), 128) for path in paths]
    target, reasons = stain.median_target(method, images)
    assert reasons == [""] * len(images)
    normalizer = StainNormalizer(method, target)
    out, why = normalizer.apply(images[0])
    assert why == "" and out.shape == images[0].shape and out.dtype == np.uint8
    if method == "reinhard":
        found = stain.reinhard_parameters(out)
        np.testing.assert_allclose(found["mean"], target["mean"], atol=0.01)
        np.testing.assert_allclose(found["std"], target["std"], rtol=0.05)
    else:
        haematoxylin, eosin = target["stains"]
        assert haematoxylin[0] > eosin[0] and eosin[1] > eosin[0]
