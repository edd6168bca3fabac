import pandas as pd
import pytest

from bcnb import Config
from bcnb.evaluate.intervals import Interval
from bcnb.report.caveats import DISCLAIMER
from bcnb.report.model_card import render_model_card, subtype_errors
from bcnb.train.fit import training_summary

CONFIG = {**Config().to_dict(), "dataset": "/data/BreaKHis_v1"}
DATASET = {"source": "/data/BreaKHis_v1", "layout": "breakhis", "notes": [], "patient_level": True}
TRAINING = training_summary(
    pd.DataFrame({"epoch": [1, 2, 3], "val_loss": [0.5, 0.3, 0.4], "phase": "head"}), Config(), 1.0
)
# Test predictions of four BreakHis images: two adenosis (one wrong), two ductal carcinoma.
PREDICTIONS = pd.DataFrame(
    {
        "path": ["/d/SOB_B_A-14-22549AB-40-001.png", "/d/SOB_B_A-14-22549AB-100-001.png",
                 "/d/SOB_M_DC-14-2523-40-001.png", "/d/SOB_M_DC-14-5695-40-001.png"],
        "label": ["benign", "benign", "malignant", "malignant"],
        "patient_id": ["14-22549AB", "14-22549AB", "14-2523", "14-5695"],
        "predicted": ["benign", "malignant", "malignant", "malignant"],
    }
)  # fmt: skip
SPLIT = PREDICTIONS.assign(split="test")


def _metrics(**changes):
    decision = {
        "threshold": 0.61,
        "threshold_rule": "youden",
        "chosen_on": "validation split (10 images, 4 patients)",
        "temperature": 1.37,
        "image_level": {"accuracy": 0.75, "balanced_accuracy": 0.75, "sensitivity": 1.0, "specificity": 0.5,
                        "roc_auc": 0.875},
        "image_level_95ci_by_patient": {name: Interval(low, high, 2000, 2000).to_json() for name, (low, high)
                                        in {"accuracy": (0.5, 1.0), "balanced_accuracy": (0.5, 1.0),
                                            "sensitivity": (0.9, 1.0), "specificity": (0.0, 1.0),
                                            "roc_auc": (0.6, 1.0)}.items()},
        "patient_level": {"accuracy": 1.0, "balanced_accuracy": 1.0, "n_patients": 3},
        "calibration": {"test_brier_before": 0.2, "test_brier_after": 0.15, "test_ece_before": 0.12,
                        "test_ece_after": 0.05},
    }  # fmt: skip
    metrics = {
        "test_accuracy": 0.75,
        "test_loss": 0.41,
        "test_95ci_by_patient": {"accuracy": Interval(0.25, 1.0, 2000, 2000).to_json()},
        "test_accuracy_95ci_images_independent": [0.3, 0.95],
        "majority_class": "benign",
        "majority_class_accuracy": 0.5,
        "n_test_images": 4,
        "n_test_patients": 3,
        "weights": "imagenet",
        "weights_pretrained": True,
        "weights_source": "/root/.keras/models/x.h5",
        "paper_test_accuracy": 0.9344,
        "per_magnification": {"40X": {"n_images": 3, "accuracy": 1.0, "balanced_accuracy": 1.0}},
        "decision": decision,
    }
    return {**metrics, **changes}


def _card(**changes) -> str:
    return render_model_card(CONFIG, DATASET, SPLIT, TRAINING, _metrics(**changes), PREDICTIONS)


def test_the_card_carries_the_runs_figures_with_their_intervals():
    card = _card()
    assert "| specificity | 0.5000 | 0.000-1.000 |" in card and "| roc auc | 0.8750 | 0.600-1.000 |" in card
    assert "at the threshold 0.610, a threshold maximising sensitivity + specificity (Youden's J)" in card
    assert "T = 1.3700" in card and "Brier score 0.2000 before, 0.1500 after" in card
    assert "| 40X | 3 | 1.0000 | 1.0000 |" in card
    assert "weights of epoch 2 kept" in card and "Weights of the base: ImageNet." in card
    assert "Not for: diagnosis" in card and DISCLAIMER in card and "RANDOM" not in card


def test_tumour_types_are_read_from_breakhis_names():
    table = subtype_errors(PREDICTIONS).set_index("tumour type")
    assert table.loc["adenosis"].tolist() == [2, 1, "0.5000"]
    assert table.loc["ductal carcinoma"].tolist() == [2, 2, "1.0000"]
    assert "| adenosis | 2 | 1 | 0.5000 |" in _card()


def test_other_names_have_no_tumour_types_and_the_card_says_so():
    renamed = PREDICTIONS.assign(path=[f"/d/{i}.png" for i in range(4)])
    assert subtype_errors(renamed).empty
    card = render_model_card(CONFIG, DATASET, SPLIT, TRAINING, _metrics(), renamed)
    assert "Tumour types: not known for this data set" in card


@pytest.mark.parametrize("dataset", ["synthetic", "/data/BreaKHis_v1"])
def test_random_weights_and_generated_data_are_said_at_the_top(dataset):
    config = {**CONFIG, "dataset": dataset}
    metrics = _metrics(weights="random", weights_pretrained=False, weights_source="no file")
    card = render_model_card(config, DATASET, SPLIT, TRAINING, metrics, PREDICTIONS)
    top = card.split("## Model")[0]
    assert "RANDOM weights, not ImageNet weights (no file)" in top
    # the title names no transfer that did not happen; a pretrained run's does
    assert top.startswith("# Model card: ResNet50V2 model on a random base (no ImageNet transfer)")
    assert _card().startswith("# Model card: ResNet50V2 transfer model (benign vs malignant)")
    assert ("generated images" in card) == (dataset == "synthetic")


def test_without_a_decision_step_the_card_still_reports_the_papers_measurement():
    card = _card(decision=None)
    # this run's figure, measured the paper's way: never worded as the paper's own figure
    assert "This run, measured as the paper measures (`model.evaluate`, threshold 0.5)" in card
    assert "paper's own measurement" not in card
    assert "accuracy 0.7500 (95% interval resampling test patients: 0.250-1.000; counting images" in card
    assert "as independent: 0.300-0.950)" in card and "Not measured" in card
