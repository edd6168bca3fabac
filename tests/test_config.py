from dataclasses import fields

import pytest

from bcnb.config import PRESENTATION, STAGES, Config, defines_the_run, field_names, parse_override

# One bad value per field, with a word the error message must contain.
BAD_VALUES = {
    "task": ("grade", "task: expected one of binary, subtype"),
    "dataset": ("", "dataset"),
    "layout": ("tree", "layout: expected one of auto, breakhis, idc, folders, csv"),
    "positive_class": ("", "positive_class"),
    "patient_pattern": ("case-(", "patient_pattern: not a valid regular expression"),
    "patient_id_from": ("patient", "patient_id_from: expected one of slide_number, folder"),
    "folds": (1, "folds: expected 0 \\(one split\\) or at least 2, got 1"),
    "fold": (2, "fold: expected 0 without folds, got 2"),
    "split_file": (5, "split_file: expected str"),
    "on_bad_image": ("ignore", "on_bad_image: expected one of error, skip"),
    "class_weight": ("auto", "class_weight: expected one of none, balanced"),
    "magnification": ("50X", "magnification: expected one of"),
    "max_images": (-1, "max_images"),
    "val_fraction": (0.0, "val_fraction"),
    "test_fraction": (0.9, "test_fraction"),
    "synthetic_patients": (3, "synthetic_patients"),
    "synthetic_images_per_patient": (0, "synthetic_images_per_patient"),
    "synthetic_difficulty": (1.5, "synthetic_difficulty"),
    "img_size": (16, "img_size"),
    "resize": ("stretch", "resize: expected one of squash, center_crop"),
    "tiles_per_image": (-1, "tiles_per_image"),
    "stain_normalization": ("vahadane", "stain_normalization: expected one of none, reinhard, macenko"),
    "stain_target": ("target.png", "stain_target: a normalisation target; expected stain_normalization"),
    "weights": (" ", "weights"),
    "allow_random_weights": ("yes", "allow_random_weights: expected bool"),
    "dropout": (1.0, "dropout"),
    "precision": ("float16", "precision: expected one of float32, mixed_bfloat16"),
    "feature_cache": (1, "feature_cache: expected bool"),
    "batch_size": (0, "batch_size"),
    "epochs": (0, "epochs"),
    "learning_rate": (0.0, "learning_rate"),
    "patience": (0, "patience"),
    "strategy": ("multi_worker", "strategy: expected one of auto, mirrored"),
    "seed": (-3, "seed"),
    "run_dir": ("", "run_dir"),
    "backbone": ("resnet18", "backbone: expected one of resnet50v2, vgg19"),
    "augment": ("no", "augment: expected bool"),
    "augment_brightness": (0.8, "augment_brightness: expected a number between 0.0 and 0.5"),
    "augment_contrast": (-0.1, "augment_contrast"),
    "augment_stain": (0.6, "augment_stain"),
    "fine_tune_layers": (-2, "fine_tune_layers"),
    "fine_tune_epochs": (0, "fine_tune_epochs"),
    "fine_tune_learning_rate": (0.0, "fine_tune_learning_rate"),
    "tensorboard": ("yes", "tensorboard: expected bool"),
    "threshold_rule": ("median", "threshold_rule: expected one of fixed, youden, sensitivity"),
    "target_sensitivity": (0.2, "target_sensitivity"),
    "bootstrap_samples": (10, "bootstrap_samples: expected an integer >= 100"),
    "tta": ("8", "tta: expected bool"),
    "compare_backbones": ("vgg19,lenet", "compare_backbones: expected one of .* got 'lenet'"),
    "predict_images": (3, "predict_images: expected str"),
    "interactive": ("true", "interactive: expected bool"),
}


def test_every_field_has_a_bad_value_case():
    assert set(BAD_VALUES) == set(field_names())


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_bad_value_names_the_field(name):
    value, message = BAD_VALUES[name]
    with pytest.raises(ValueError, match=message):
        Config(**{name: value})


@pytest.mark.parametrize("name,value", [("epochs", 2.5), ("img_size", True), ("learning_rate", "0.1")])
def test_wrong_type_is_rejected(name, value):
    with pytest.raises(ValueError, match=f"{name}: expected"):
        Config(**{name: value})


def test_fractions_must_leave_training_data():
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction"):
        Config(val_fraction=0.4, test_fraction=0.4)


def test_defaults_are_valid_and_integers_become_floats():
    cfg = Config(learning_rate=1)
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        Config().epochs = 3


def test_every_parameter_belongs_to_one_stage_or_only_changes_presentation():
    staged = [name for names in STAGES.values() for name in names]
    assert len(staged) == len(set(staged))
    assert set(staged) | set(PRESENTATION) == set(field_names())
    assert not defines_the_run("interactive") and defines_the_run("seed")


@pytest.mark.parametrize("written", ["VGG19", "ResNet50V2", " densenet121 ", "EfficientNetB0", "MobileNetV2"])
def test_backbones_may_be_named_as_papers_write_them(written):
    cfg = Config(backbone=written, compare_backbones=f"{written}, VGG19")
    assert cfg.backbone == written.strip().lower()
    assert cfg.backbones_to_compare() == [written.strip().lower(), "vgg19"]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("epochs=5", ("epochs", 5)),
        ("learning_rate=3e-4", ("learning_rate", 3e-4)),
        ("feature_cache=false", ("feature_cache", False)),
        ("allow_random_weights=Yes", ("allow_random_weights", True)),
        ("dataset=data/a=b.csv", ("dataset", "data/a=b.csv")),
    ],
)
def test_parse_override_types_values(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize(
    "text,message",
    [
        ("epochs", "expected key=value"),
        ("epoch=5", "unknown parameter 'epoch'"),
        ("epochs=five", "epochs: expected an integer"),
        ("dropout=half", "dropout: expected a number"),
        ("feature_cache=maybe", "feature_cache: expected true or false"),
    ],
)
def test_parse_override_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_override(text)


def test_from_file_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 4\nseed: 1\n")
    cfg = Config.from_file(path, seed=9)
    assert (cfg.epochs, cfg.seed) == (4, 9)


@pytest.mark.parametrize(
    "content,message",
    [
        ("epochz: 4\n", "unknown parameter 'epochz'"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("epochs: [\n", "not valid YAML"),
        ("epochs: -4\n", "epochs: expected an integer >= 1"),
    ],
)
def test_from_file_errors_name_the_problem(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        Config.from_file(path)


def test_from_file_missing(tmp_path):
    with pytest.raises(ValueError, match="cannot read config file"):
        Config.from_file(tmp_path / "absent.yaml")


def test_field_types_are_flat_literals():
    assert {f.type for f in fields(Config)} <= {"str", "int", "float", "bool"}


def test_patient_pattern_needs_a_group():
    with pytest.raises(ValueError, match="patient_pattern: expected a regular expression with a group"):
        Config(patient_pattern=r"case-\d+")


@pytest.mark.parametrize(
    "values,message",
    [
        ({"folds": 5, "fold": 0}, "fold: expected the test fold, 1 to 5, got 0"),
        ({"folds": 5, "fold": 6}, "fold: expected the test fold, 1 to 5, got 6"),
        ({"folds": 3, "fold": 1, "split_file": "dsfold1.txt"}, "split_file: a fold file gives the split"),
    ],
)
def test_folds_and_fold_files_must_agree(values, message):
    with pytest.raises(ValueError, match=message):
        Config(**values)
    assert Config(folds=5, fold=5).fold == 5


def test_magnification_may_be_given_without_the_x():
    assert Config(magnification="40").magnification == "40X"
    with pytest.raises(ValueError, match="magnification: expected one of all, 40X"):
        Config(magnification="50")
