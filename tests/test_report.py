import pandas as pd

from bcnb import Config
from bcnb.evaluate import stats
from bcnb.evaluate.intervals import Interval
from bcnb.report.caveats import DISCLAIMER
from bcnb.report.run_report import render_report
from bcnb.train.fit import training_summary

CONFIG = {**Config().to_dict(), "dataset": "/data/BreaKHis_v1", "magnification": "40X"}
DATASET = {
    "source": "/data/BreaKHis_v1",
    "layout": "breakhis",
    "notes": ["layout: detected breakhis"],
    "patient_level": True,
    "n_images": 7909,
    "n_bad_files": 0,
}
HISTORY = pd.DataFrame(
    {"epoch": range(1, 32), "val_loss": [abs(e - 21) + 0.1 for e in range(1, 32)], "phase": "head"}
)
TRAINING = training_summary(HISTORY, Config(), seconds=12.3)
SPLIT = pd.DataFrame(
    {
        "path": [f"{i}.png" for i in range(8)],
        "label": ["benign", "malignant"] * 4,
        "patient_id": ["a", "b", "c", "d", "e", "f", "g", "h"],
        "split": ["train", "train", "train", "train", "val", "val", "test", "test"],
    }
)


def _metrics(**changes):
    metrics = {
        "test_accuracy": 0.95,
        "test_loss": 0.15,
        "test_95ci_by_patient": {
            name: Interval(0.713, 0.972, 2000, 2000).to_json() for name in stats.BOOTSTRAP_METRICS
        },
        "bootstrap_samples": 2000,
        "test_accuracy_95ci_images_independent": [0.9, 0.98],
        "balanced_accuracy": 0.94,
        "sensitivity": 0.97,
        "specificity": 0.91,
        "roc_auc": 0.98,
        "confusion_matrix": [[20, 2], [1, 37]],
        "threshold": 0.5,
        "majority_class": "malignant",
        "majority_class_accuracy": 0.63,
        "patient_recognition_rate": 0.9375,
        "n_test_images": 60,
        "n_test_patients": 16,
        "n_test_patients_by_class": {"benign": 6, "malignant": 10},
        "weights": "imagenet",
        "weights_pretrained": True,
        "weights_source": "/root/.keras/models/x.h5",
        "paper_test_accuracy": 0.9344,
        "paper_test_loss": 0.1723,
    }
    return {**metrics, **changes}


def test_pretrained_run_has_no_warning_and_states_the_method():
    report = render_report(CONFIG, DATASET, SPLIT, TRAINING, _metrics())
    assert "RANDOM" not in report and "weights used: ImageNet" in report
    assert "31 run of 100 requested (early stopping, patience 10); weights of epoch 21 kept" in report
    assert "always-malignant baseline accuracy (the majority class) | 0.6300" in report
    assert "| patient recognition rate (Spanhol et al. 2016) | 0.9375 | not reported |" in report
    assert "| accuracy | 0.9500 | 0.9344 | 0.713-0.972 |" in report
    assert "images as independent instead, accuracy's Wilson interval would be 0.900-0.980" in report
    assert DISCLAIMER in report and "not real tissue" not in report
    assert "A test accuracy on 16 test patients says nothing about use in a clinic" in report


def test_random_weights_and_synthetic_data_are_called_out():
    config = {**CONFIG, "dataset": "synthetic"}
    metrics = _metrics(
        weights="random", weights_pretrained=False, weights_source="ImageNet weights unavailable"
    )
    report = render_report(config, DATASET, SPLIT, TRAINING, metrics)
    assert report.count("RANDOM") >= 2 and "not transfer learning" in report
    assert "generated images, not real tissue" in report.split("## Dataset")[0]  # at the top


def test_undefined_metrics_read_n_a():
    report = render_report(CONFIG, DATASET, SPLIT, TRAINING, _metrics(roc_auc=None, specificity=None))
    assert "| ROC AUC | n/a |" in report


def test_split_counts_table():
    report = render_report(CONFIG, DATASET, SPLIT, TRAINING, _metrics())
    assert "| train | benign | 2 | 2 |" in report and "| test | malignant | 1 | 1 |" in report


def test_the_stratification_and_a_type_never_trained_on_are_reported():
    assert "split: by patient (no patient in two splits), stratified by class, seed 42" in render_report(
        CONFIG, DATASET, SPLIT, TRAINING, _metrics()
    )
    # both adenosis (A) patients landed outside training: the report says the model never saw the type
    typed = SPLIT.assign(subtype=["F", "DC", "F", "DC", "A", "LC", "A", "DC"])
    report = render_report(CONFIG, DATASET, typed, TRAINING, _metrics())
    assert "stratified by class and by tumour type within class, seed 42" in report
    assert "- WARNING: no adenosis patient in training (1 in validation, 1 in test): the model" in report
    assert (
        "no ductal carcinoma" not in report
        and "no lobular carcinoma patient in training (1 in validation)" in report
    )


def test_bad_files_image_level_split_and_magnifications_are_reported():
    dataset = {**DATASET, "n_bad_files": 3, "patient_level": False, "notes": ["no patient ids: ..."]}
    per_magnification = {
        "40X": {
            "n_images": 30,
            "accuracy": 0.9,
            "balanced_accuracy": 0.85,
            "roc_auc": None,
            "patient_recognition_rate": 0.875,
        }
    }
    report = render_report(CONFIG, dataset, SPLIT, TRAINING, _metrics(per_magnification=per_magnification))
    assert "3 bad file(s) left out" in report and "bad_images.csv" in report
    assert "split: BY IMAGE (no patient ids)" in report and "- no patient ids: ..." in report
    assert "| 40X | 30 | 0.9000 | 0.8500 | n/a | 0.8750 |" in report


def test_training_is_reported_as_training_recorded_it():
    """The model and training section comes from training.json, not from parameters a
    later notebook might hold."""
    training = training_summary(HISTORY, Config(learning_rate=0.03, batch_size=8, fine_tune_layers=4), 5.0)
    report = render_report(CONFIG, DATASET, SPLIT, training, _metrics())
    assert "Adam, learning rate 0.03, batch size 8" in report
    assert "fine-tuning (beyond the paper): top 4 layers" in report


def test_a_benign_majority_is_named():
    report = render_report(
        CONFIG, DATASET, SPLIT, TRAINING, _metrics(majority_class="benign", majority_class_accuracy=0.72)
    )
    assert "always-benign baseline accuracy (the majority class) | 0.7200" in report
    assert "always answers benign, the larger class of this test split, would score 0.720" in report
