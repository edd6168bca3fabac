import keras
import numpy as np
import pytest
from PIL import Image

from bcnb import Config, cli, decision
from bcnb.images import fit_to_square, read_rgb
from bcnb.predict import Predictor, find_images, predict_files
from bcnb.runfolder import record_all

IMG = 32  # the size of conftest's run_dir model


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "new"
    (folder / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("a.png", "deeper/b.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(folder / name)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image suffix: ignored")
    return folder


def test_predictions_are_the_calibrated_model_output(run_dir, images, tmp_path):
    predictor = Predictor.from_run(run_dir / "model.keras")
    assert (predictor.img_size, predictor.resize) == (IMG, "center_crop")  # from the run's config
    paths = find_images(images)
    assert [p.name for p in paths] == ["a.png", "b.jpg", "empty.png"]  # sorted by path
    table = predict_files(predictor, paths, cam_dir=tmp_path / "cams").set_index("file")
    assert table.loc[str(images / "empty.png"), "refused"] == "empty file (0 bytes)"
    for path in paths[:2]:
        pixels = fit_to_square(read_rgb(path), IMG, "center_crop")[None].astype("float32")
        raw = float(predictor.model.predict(pixels, verbose=0)[0, 0])
        temperature = decision.load_decision(run_dir)["temperature"]
        expected = 1 / (1 + np.exp(-np.log(raw / (1 - raw)) / temperature))
        row = table.loc[str(path)]
        assert row["probability"] == pytest.approx(expected, abs=1e-4)
        assert row["label"] == ("malignant" if expected >= 0.5 else "benign")
        assert row["malignant"] == f"{round(100 * expected)}%"
        assert Image.open(row["grad_cam"]).size == (IMG, IMG)


def test_a_model_with_code_in_it_is_refused(run_dir, tmp_path):
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
    keras.Model(inputs, outputs).save(tmp_path / "model.keras")
    (tmp_path / "decision.json").write_bytes((run_dir / "decision.json").read_bytes())
    with pytest.raises(ValueError, match="cannot be loaded in safe mode"):
        Predictor.from_run(tmp_path / "model.keras")


def test_command_line_refuses_bad_inputs_in_one_line(run_dir, images, tmp_path, capsys):
    assert cli.main(["predict", str(images), "--model", str(tmp_path / "none.keras")]) == 2
    assert "--model:" in capsys.readouterr().err
    assert cli.main(["predict", str(tmp_path / "nowhere"), "--model", str(run_dir / "model.keras")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "nothing").mkdir()
    assert cli.main(["predict", str(tmp_path / "nothing"), "--model", str(run_dir / "model.keras")]) == 2
    assert "no image files" in capsys.readouterr().err


def test_command_line_predicts_and_names_refused_files(run_dir, images, capsys):
    assert cli.main(["predict", str(images), "--model", str(run_dir / "model.keras")]) == 2
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2 and "malignant " in out
    assert "empty.png: refused, empty file (0 bytes)" in err and "Traceback" not in err
    assert cli.main(["predict", str(images / "a.png"), "--model", str(run_dir / "model.keras")]) == 0


def test_a_model_trained_on_tiles_is_refused(run_dir, tmp_path):
    for name in ("model.keras", "decision.json"):
        (tmp_path / name).write_bytes((run_dir / name).read_bytes())
    record_all(tmp_path, Config(img_size=IMG, tiles_per_image=4))
    with pytest.raises(ValueError, match="trained on tiles"):
        Predictor.from_run(tmp_path / "model.keras")


def test_a_run_with_stain_normalisation_normalises_new_images_the_same_way(run_dir, images, tmp_path):
    import shutil

    from bcnb.stain import StainNormalizer, save_normalizer

    folder = tmp_path / "stained_run"
    shutil.copytree(run_dir, folder)
    (folder / "config.yaml").unlink()
    record_all(folder, Config(img_size=IMG, resize="center_crop", stain_normalization="reinhard"))
    normalizer = StainNormalizer("reinhard", {"mean": [-0.3, -0.02, 0.01], "std": [0.1, 0.02, 0.005]})
    save_normalizer(normalizer, folder, "a test target")
    predictor = Predictor.from_run(folder / "model.keras")
    assert predictor.stain == normalizer
    path = find_images(images)[0]
    pixels = normalizer(fit_to_square(read_rgb(path), IMG, "center_crop"))
    expected, _ = decision.apply_decision(
        predictor.rule, predictor.model.predict(pixels[None], verbose=0).ravel()
    )
    unnormalised = fit_to_square(read_rgb(path), IMG, "center_crop")
    other, _ = decision.apply_decision(
        predictor.rule, predictor.model.predict(unnormalised[None], verbose=0).ravel()
    )
    assert abs(expected[0] - other[0]) > 1e-4  # the normalisation matters to this model
    row = predict_files(predictor, [path]).iloc[0]
    assert row["probability"] == pytest.approx(expected[0], abs=1e-4)


def test_a_run_with_tta_answers_with_the_mean_of_eight_views(run_dir, images, tmp_path):
    import shutil

    from bcnb.tta import tta_probabilities

    folder = tmp_path / "tta_run"
    shutil.copytree(run_dir, folder)
    (folder / "config.yaml").unlink()
    record_all(folder, Config(img_size=IMG, resize="center_crop", tta=True))
    predictor = Predictor.from_run(folder / "model.keras")
    path = find_images(images)[0]
    pixels = fit_to_square(read_rgb(path), IMG, "center_crop")[None]
    expected, _ = decision.apply_decision(
        predictor.rule, tta_probabilities(predictor.model, [(pixels, None)])
    )
    single, _ = decision.apply_decision(predictor.rule, predictor.model.predict(pixels, verbose=0).ravel())
    assert predictor.tta and abs(expected[0] - single[0]) > 1e-5  # the views disagree on this image
    assert predict_files(predictor, [path]).iloc[0]["probability"] == pytest.approx(expected[0], abs=1e-4)
