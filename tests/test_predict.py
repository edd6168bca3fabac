import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_scan import bomb_png

from bcnb import Config, cli
from bcnb.data.images import fit_to_square, read_rgb
from bcnb.data.pipeline import Preparation
from bcnb.evaluate import decision
from bcnb.predict import (
    MIN_SIDE,
    Predictor,
    describe_predictions,
    describe_rule,
    example_images,
    find_images,
    predict_files,
)
from bcnb.run import artifacts
from bcnb.run.record import record_all

IMG = 32  # the size of conftest's run_dir model
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "new"
    (folder / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("a.png", "deeper/b.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(folder / name)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image type: refused")
    return folder


def run_like(run_dir, folder, **parameters):
    """A run folder with run_dir's model and decision, made with other ``parameters``."""
    folder.mkdir()
    for name in ("model.keras", "decision.json"):
        (folder / name).write_bytes((run_dir / name).read_bytes())
    record_all(folder, Config(img_size=IMG, resize="center_crop", **parameters))
    return folder


def save_image(path, width=40, height=30, seed=0, **options):
    """A random RGB image file (its type by suffix); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **options)
    return path


def test_predictions_are_the_calibrated_model_output(run_dir, images, tmp_path):
    predictor = Predictor.from_run(run_dir / "model.keras")
    assert predictor.preparation == Preparation(IMG, "center_crop")  # from the run's config
    paths = find_images(images)
    assert [p.name for p in paths] == ["a.png", "b.jpg", "empty.png", "notes.txt"]  # sorted by path
    table = predict_files(predictor, paths, cam_dir=tmp_path / "cams").set_index("file")
    assert table.loc[str(images / "empty.png"), "refused"] == "empty file (0 bytes)"
    assert table.loc[str(images / "notes.txt"), "refused"].startswith("not a supported image type (.txt;")
    for path in paths[:2]:
        pixels = fit_to_square(read_rgb(path), IMG, "center_crop")[None].astype("float32")
        raw = float(predictor.model.predict(pixels, verbose=0)[0, 0])
        temperature = artifacts.load_decision(run_dir)["temperature"]
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


def test_a_model_the_rule_was_not_fitted_on_is_refused(run_dir, images, tmp_path, capsys):
    # The run's decision.json beside other weights (its untrained model, another run's model):
    # the run's temperature and threshold would be applied to probabilities they were not fitted on.
    other = run_like(run_dir, tmp_path / "run")
    model = keras.models.load_model(other / "model.keras")
    model.get_layer("classifier").bias.assign([-0.3])
    model.save(other / "model.keras")
    with pytest.raises(ValueError, match=r"is not the model .*decision.json was fitted on"):
        Predictor.from_run(other / "model.keras")
    assert cli.main(["predict", str(images), "--model", str(other / "model.keras")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"bcnb: error: --model: {other / 'model.keras'} is not the model")
    assert Predictor.from_run(run_dir / "model.keras").rule["threshold"] == 0.5  # its own: taken


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
    assert len(out.splitlines()) == 3 and "probability of malignancy" in out  # the rule, two rows
    assert "empty.png: refused, empty file (0 bytes)" in err and "Traceback" not in err
    assert "notes.txt: refused, not a supported image type (.txt" in err
    assert cli.main(["predict", str(images / "a.png"), "--model", str(run_dir / "model.keras")]) == 0


def test_a_model_trained_on_tiles_is_refused(run_dir, tmp_path):
    folder = run_like(run_dir, tmp_path / "tiles_run", tiles_per_image=4)
    with pytest.raises(ValueError, match="trained on tiles"):
        Predictor.from_run(folder / "model.keras")


def test_a_run_with_stain_normalisation_normalises_new_images_the_same_way(run_dir, images, tmp_path):
    from bcnb.data.stain import StainNormalizer, save_normalizer

    folder = run_like(run_dir, tmp_path / "stained_run", stain_normalization="reinhard")
    normalizer = StainNormalizer("reinhard", {"mean": [-0.3, -0.02, 0.01], "std": [0.1, 0.02, 0.005]})
    save_normalizer(normalizer, folder, "a test target")
    predictor = Predictor.from_run(folder / "model.keras")
    assert predictor.preparation == Preparation(IMG, "center_crop", normalizer)
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
    from bcnb.evaluate.tta import tta_probabilities

    folder = run_like(run_dir, tmp_path / "tta_run", tta=True)
    predictor = Predictor.from_run(folder / "model.keras")
    path = find_images(images)[0]
    pixels = fit_to_square(read_rgb(path), IMG, "center_crop")[None]
    expected, _ = decision.apply_decision(
        predictor.rule, tta_probabilities(predictor.model, [(pixels, None)])
    )
    single, _ = decision.apply_decision(predictor.rule, predictor.model.predict(pixels, verbose=0).ravel())
    assert predictor.tta and abs(expected[0] - single[0]) > 1e-5  # the views disagree on this image
    assert predict_files(predictor, [path]).iloc[0]["probability"] == pytest.approx(expected[0], abs=1e-4)


# --------------------------------------------------------------------------- files refused (issue 20)
def test_every_file_that_cannot_be_classified_is_refused_with_its_reason(run_dir, tmp_path, capsys):
    """A 1x1 image is not squashed to the model's size, a GIF or a broken symlink is not
    skipped without a word, and a decompression bomb is one refused file, not a traceback;
    hidden files are left out, and the images beside them predicted."""
    folder = tmp_path / "mixed"
    good = save_image(folder / "good.png")
    edge = save_image(folder / "edge.png", MIN_SIDE, MIN_SIDE)
    save_image(folder / "dot.png", 1, 1)
    save_image(folder / "thin.png", 200, MIN_SIDE - 1)
    save_image(folder / "anim.gif")  # decodes fine, but is not a type bcnb takes
    (folder / "huge.png").write_bytes(bomb_png())
    os.symlink(folder / "gone.png", folder / "link.png")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    save_image(folder / ".thumbs" / "x.png")
    assert sorted(p.name for p in find_images(folder)) == sorted(
        ["good.png", "edge.png", "dot.png", "thin.png", "anim.gif", "huge.png", "link.png"]
    )
    csv = tmp_path / "out.csv"
    assert cli.main(["predict", str(folder), "--model", str(run_dir / "model.keras"), "--csv", str(csv)]) == 2
    table = pd.read_csv(csv, keep_default_na=False).set_index("file")
    refused = {os.path.basename(file): why for file, why in table["refused"].items() if why}
    assert (
        refused["dot.png"] == f"too small to classify (1x1 pixels; expected at least {MIN_SIDE} on each side)"
    )
    assert refused["thin.png"].startswith(f"too small to classify (200x{MIN_SIDE - 1} pixels")
    assert refused["anim.gif"].startswith("not a supported image type (.gif; expected .png, .jpg")
    assert refused["link.png"] == "broken symlink"
    assert refused["huge.png"].startswith("too large to decode safely (400,000,000 pixels")
    assert set(refused) == {"dot.png", "thin.png", "anim.gif", "link.png", "huge.png"}
    for path in (good, edge):
        assert table.loc[str(path), "label"] in ("benign", "malignant")
    out, err = capsys.readouterr()
    assert "Traceback" not in err and len(out.splitlines()) == 3  # the rule, good.png, edge.png
    for name, why in refused.items():
        assert f"{folder / name}: refused, {why}" in err


def test_a_decompression_bomb_named_alone_is_refused_in_one_line(run_dir, tmp_path, capsys):
    bomb = tmp_path / "slide.png"
    bomb.write_bytes(bomb_png())
    assert cli.main(["predict", str(bomb), "--model", str(run_dir / "model.keras")]) == 2
    out, err = capsys.readouterr()
    assert f"bcnb: error: {bomb}: refused, too large to decode safely (400,000,000 pixels" in err
    assert out.splitlines()[0].startswith("threshold ") and len(out.splitlines()) == 1


# --------------------------------------------------------------------------- several paths
def test_several_paths_are_predicted_in_the_order_given(run_dir, tmp_path, capsys):
    """As a shell expands ``*.png``: files and folders, in their order, each file once."""
    first = save_image(tmp_path / "z.png", seed=1)
    folder = tmp_path / "more"
    inside = [save_image(folder / "a.png", seed=2), save_image(folder / "b.jpg", seed=3)]
    csv = tmp_path / "out.csv"
    command = ["predict", str(first), str(folder), str(inside[0]), "--model", str(run_dir / "model.keras")]
    assert cli.main([*command, "--csv", str(csv)]) == 0
    assert pd.read_csv(csv)["file"].tolist() == [str(first), *map(str, inside)]
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == [str(first), *map(str, inside)]


def test_paths_are_checked_before_tensorflow_starts(run_dir, tmp_path):
    """A missing path, among several or as --model, is one line and exit status 2, before
    anything has imported TensorFlow or Keras."""
    image = save_image(tmp_path / "a.png")
    model = str(run_dir / "model.keras")
    unsplit = run_like(run_dir, tmp_path / "unsplit")  # a run, but no split.csv for --examples
    missing = [str(image), str(tmp_path / "b.png"), str(tmp_path / "c")]
    expected = {  # each error message, and the arguments that must give it
        f"--model: {tmp_path / 'none.keras'} does not exist": [
            str(image),
            "--model",
            str(tmp_path / "none.keras"),
        ],
        f"{missing[1]}, {missing[2]}: no such file or folder": [*missing, "--model", model],
        f"expected a run's model file, e.g. {run_dir / 'model.keras'}": [str(image), "--model", str(run_dir)],
        f"{unsplit / 'split.csv'} not found": ["--examples", "--model", str(unsplit / "model.keras")],
    }
    program = (
        "import json, sys\n"
        "from bcnb import cli\n"
        "status = cli.main(json.loads(sys.argv[1]))\n"
        "loaded = sorted(m for m in ('keras', 'tensorflow') if m in sys.modules)\n"
        "print(json.dumps([status, loaded]))\n"
    )
    for message, argv in expected.items():
        command = [sys.executable, "-c", program, json.dumps(["predict", *argv])]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        assert json.loads(done.stdout) == [2, []], (message, done.stderr)
        assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("bcnb: error: "), message
        assert message in done.stderr


# --------------------------------------------------------------------------- what is printed
def test_the_output_states_the_rule_then_rows_that_read_one_way(run_dir, images, tmp_path, capsys):
    csv = tmp_path / "table.csv"
    cli.main(["predict", str(images), "--model", str(run_dir / "model.keras"), "--csv", str(csv)])
    out, err = capsys.readouterr()
    header, *rows = out.splitlines()
    assert header.startswith("threshold 0.500 on the calibrated probability of malignancy, the paper's 0.5")
    assert "temperature 2.00" in header
    assert "never for diagnosis" in err and "probability" not in err  # notes on stderr, not among rows
    table = pd.read_csv(csv, keep_default_na=False).set_index("file")
    row_form = re.compile(
        r"(\S+) +(BENIGN|MALIGNANT) +probability of malignancy ([\d.]+)% "
        r"\((below|at or above) the ([\d.]+)% threshold\)"
    )
    assert len(rows) == 2
    for row in rows:
        file, label, percent, side, bar = row_form.fullmatch(row).groups()
        assert label.lower() == table.loc[file, "label"]
        assert side == ("at or above" if label == "MALIGNANT" else "below")
        assert float(percent) == pytest.approx(100 * float(table.loc[file, "probability"]), abs=0.5)
        assert (float(percent) >= float(bar)) == (label == "MALIGNANT")


@pytest.mark.parametrize("threshold", [0.789, 0.5, 0.0042, 0.9958, 0.78855])
def test_a_row_never_reads_against_its_label(threshold):
    """Near the threshold the percentages get decimals: never "79% (below the 78.9% threshold)"."""
    probabilities = np.unique(
        np.round(np.r_[np.linspace(0, 1, 401), threshold + np.arange(-30, 31) / 1e4], 4)
    )
    probabilities = probabilities[(probabilities >= 0) & (probabilities <= 1)]
    table = pd.DataFrame(
        {
            "file": [f"{i}.png" for i in range(len(probabilities))],
            "probability": probabilities,
            "label": np.where(probabilities >= threshold, "malignant", "benign"),
            "refused": "",
        }
    )
    rows = describe_predictions(table, {"threshold": threshold, "temperature": 1.0})
    for row, probability in zip(rows, probabilities):
        label = "MALIGNANT" if probability >= threshold else "BENIGN"
        percent, side, bar = re.search(r"(\S+)% \((below|at or above) the ([\d.]+)% threshold", row).groups()
        read = 0.5 if percent == "<1" else 99.5 if percent == ">99" else float(percent)
        assert f"  {label} " in row and side == ("at or above" if label == "MALIGNANT" else "below"), row
        assert (read >= float(bar)) == (label == "MALIGNANT"), row
    if 0.01 <= threshold <= 0.99:  # whole percents where they read right, "<1%" as everywhere
        assert rows[0].endswith(f"probability of malignancy <1% (below the {100 * threshold:.1f}% threshold)")


def test_the_rule_is_named_as_it_was_chosen():
    rule = {"threshold": 0.7891, "temperature": 1.5}
    youden = describe_rule({**rule, "threshold_rule": "youden"})
    assert youden.startswith(
        "threshold 0.789 on the calibrated probability of malignancy, chosen on validation"
    )
    assert "Youden's J" in youden and youden.endswith("calibration temperature 1.50")
    screening = describe_rule({**rule, "threshold_rule": "sensitivity", "target_sensitivity": 0.95})
    assert "finds 95% of malignant images" in screening
    assert "the paper's 0.5" in describe_rule({**rule, "threshold": 0.5, "threshold_rule": "fixed"})


# --------------------------------------------------------------------------- examples to try
def split_table(tmp_path=None) -> pd.DataFrame:
    """Test images of 2 benign patients (3 and 2 images) and 3 malignant ones (3, 1, 1),
    listed benign patient first as split.csv lists them, and train images around them."""
    rows = []
    for patient, label, count, split in [
        ("B1", "benign", 3, "test"),
        ("B2", "benign", 2, "test"),
        ("M1", "malignant", 3, "test"),
        ("M2", "malignant", 1, "test"),
        ("M3", "malignant", 1, "test"),
        ("T1", "benign", 2, "train"),
        ("T2", "malignant", 2, "train"),
    ]:
        for index in range(count):
            name = f"{patient}_{index}.png"
            path = save_image(tmp_path / "data" / name, seed=len(rows)) if tmp_path else name
            rows.append({"path": str(path), "label": label, "patient_id": patient, "magnification": "40X"})
            rows[-1]["split"] = split
    return pd.DataFrame(rows)


def test_examples_take_turns_between_classes_and_patients():
    split = split_table()
    picked = [path.name for path in example_images(split, 4)]
    assert picked == ["B1_0.png", "M1_0.png", "B2_0.png", "M2_0.png"]
    shuffled = split.sample(frac=1, random_state=3)
    assert [path.name for path in example_images(shuffled, 4)] == picked  # the same every time
    everything = [path.name for path in example_images(split, 100)]
    assert len(everything) == 10 and not any(name.startswith("T") for name in everything)
    assert everything[4:6] == ["B1_1.png", "M3_0.png"]  # a new patient before a second image
    with pytest.raises(ValueError, match="no test images"):
        example_images(split[split["split"] == "train"])


def test_notebook_06_shows_both_classes_when_given_no_images(tmp_path, capsys):
    """The cell that picks 06's stand-ins, run on a split whose first test images are all
    one benign patient's."""
    from types import SimpleNamespace

    split_table(tmp_path).to_csv(tmp_path / "split.csv", index=False)
    notebook = json.loads(open(os.path.join(ROOT, "notebooks", "06_predict.ipynb")).read())
    (cell,) = [
        "".join(c["source"]) for c in notebook["cells"] if "if predict_images:" in "".join(c["source"])
    ]
    names = {"predict_images": "", "cfg": SimpleNamespace(run_dir=str(tmp_path)), "artifacts": artifacts}
    names.update(example_images=example_images, find_images=find_images, Path=Path)
    exec(cell, names)
    labels = (
        pd.read_csv(tmp_path / "split.csv").set_index("path").loc[list(map(str, names["paths"])), "label"]
    )
    assert len(labels) == 4 and set(labels) == {"benign", "malignant"}


def test_examples_on_the_command_line_are_the_runs_own_test_images(run_dir, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    split = split_table(tmp_path)
    split.to_csv(folder / "split.csv", index=False)
    model, csv = str(folder / "model.keras"), tmp_path / "out.csv"
    assert cli.main(["predict", "--model", model, "--examples", "--csv", str(csv)]) == 0
    shown = pd.read_csv(csv)["file"].tolist()
    assert shown == [str(path) for path in example_images(split)]
    assert set(split.set_index("path").loc[shown, "label"]) == {"benign", "malignant"}
    capsys.readouterr()
    assert cli.main(["predict", "--model", model]) == 2
    assert cli.main(["predict", str(shown[0]), "--model", model, "--examples"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert (
        err == ["bcnb: error: predict: expected image files or folders, or --examples (one of the two)"] * 2
    )


def test_outputs_that_cannot_be_written_are_one_line_before_any_prediction(run_dir, images, tmp_path, capsys):
    from conftest import remount_read_only, small_file_system

    model = str(run_dir / "model.keras")
    (tmp_path / "folder").mkdir()
    assert cli.main(["predict", str(images), "--model", model, "--csv", str(tmp_path / "folder")]) == 2
    assert "--csv: " in capsys.readouterr().err
    with small_file_system(tmp_path / "disk") as disk:
        remount_read_only(disk)
        for option, target in (("--csv", disk / "p.csv"), ("--cam-dir", disk / "cams")):
            assert cli.main(["predict", str(images), "--model", model, option, str(target)]) == 2
            out, err = capsys.readouterr()
            assert out == "" and err.strip().splitlines()[-1].startswith(
                f"bcnb: error: {option}: cannot write in {disk} (Read-only file system)"
            )
            assert len(err.strip().splitlines()) == 1
