"""Statistics on few patients: intervals that say when they cannot be estimated, and a threshold
that says when validation could not choose it (issue 22, items 1-3, 4's fold line and 7)."""

import re

import numpy as np
import pandas as pd
import pytest

from bcnb import Config
from bcnb.evaluate import decision, headline, intervals, scores, stats
from bcnb.evaluate.intervals import Interval, format_interval
from bcnb.predict import describe_rule
from bcnb.report import caveats
from bcnb.report.model_card import render_model_card
from bcnb.report.run_report import render_report
from bcnb.train.fit import training_summary

CFG = Config(bootstrap_samples=400)
DATASET = {"source": "/d", "layout": "breakhis", "notes": [], "patient_level": True, "n_bad_files": 0}
TRAINING = training_summary(
    pd.DataFrame({"epoch": [1, 2, 3], "val_loss": [0.5, 0.3, 0.4], "phase": "head"}), Config(), 1.0
)
WEIGHTS = {"used": "imagenet", "pretrained": True, "source": "/root/.keras/models/x.h5"}
# A zero-width interval as any output would print it: "0.917-0.917", "1.0000-1.0000".
ZERO_WIDTH = re.compile(r"(?<![\d.])(\d\.\d{3,4})-\1(?![\d])")


def _table(benign: int, malignant: int, images_each: int = 3, prefix: str = "p") -> pd.DataFrame:
    """Patients of each class with a few 40X images each, named as BreakHis names them."""
    rows = [
        {"path": f"/d/{prefix}{label}{p}-{i}.png", "label": label, "patient_id": f"{prefix}{label}{p}"}
        for label, count in (("benign", benign), ("malignant", malignant))
        for p in range(count)
        for i in range(images_each)
    ]
    return pd.DataFrame(rows).assign(magnification="40X")


def _probabilities(table: pd.DataFrame, seed: int, right: float = 0.75) -> np.ndarray:
    """A model right about ``right`` of the images, with probabilities away from 0.5."""
    rng = np.random.default_rng(seed)
    malignant = (table["label"] == "malignant").to_numpy()
    said = np.where(rng.random(len(table)) < right, malignant, ~malignant)
    return np.where(said, rng.uniform(0.6, 0.95, len(table)), rng.uniform(0.05, 0.4, len(table)))


def _outputs(val, p_val, test, p_test, config=None):
    """report.md and model_card.md of a run with these splits and probabilities."""
    config = {**Config().to_dict(), "dataset": "/d/BreaKHis_v1", **(config or {})}
    rule = decision.decide(CFG, val, p_val)
    measured = decision.measure_decision(CFG, rule, val, p_val, test, p_test)
    results = {
        "accuracy": scores.compute_metrics(test["label"] == "malignant", p_test)["accuracy"],
        "loss": 0.4,
    }
    metrics = headline.summarize_test_results(test, p_test, results, WEIGHTS, "/d", n_boot=400)
    metrics["decision"] = measured
    split = pd.concat([val.assign(split="val"), test.assign(split="test")], ignore_index=True)
    calibrated, predicted = decision.apply_decision(rule, p_test)
    predictions = test.assign(predicted=predicted)
    report = render_report(config, DATASET, split, TRAINING, metrics)
    card = render_model_card(config, DATASET, split, TRAINING, metrics, predictions)
    return rule, metrics, report, card


# --------------------------------------------------------------------------- the interval
def test_the_formatter_says_bounds_resamples_or_why_not():
    assert format_interval(Interval(0.7134, 0.9721, 2000, 2000)) == "0.713-0.972"
    assert format_interval(Interval(0.7, 0.9, 1950, 2000)) == "0.700-0.900 (1950 of 2000 resamples)"
    not_estimable = Interval(None, None, 2000, 2000, "n benign patients = 2")
    assert format_interval(not_estimable) == "not estimable (n benign patients = 2)"
    assert format_interval(not_estimable.to_json()) == "not estimable (n benign patients = 2)"  # from JSON
    assert Interval.from_json(not_estimable.to_json()) == not_estimable
    assert not_estimable.to_json()["estimable"] is False and not_estimable.to_json()["low"] is None
    assert format_interval([0.783, 0.914]) == "0.783-0.914"  # plain bounds: the Wilson interval
    assert format_interval(None) == "n/a"


def test_two_benign_patients_give_no_specificity_interval():
    table = _table(benign=2, malignant=6)
    found = stats.bootstrap_by_patient(
        table["label"] == "malignant", _probabilities(table, 0), table["patient_id"], n_boot=400
    )
    assert format_interval(found["specificity"]) == "not estimable (n benign patients = 2)"
    for name in ("accuracy", "balanced_accuracy", "roc_auc", "patient_recognition_rate"):  # need both
        assert found[name].reason == "n benign patients = 2", name
    assert found["sensitivity"].estimable  # 6 malignant patients: enough for their own metric
    assert found["sensitivity"].resamples_used == found["sensitivity"].resamples == 400


def test_a_zero_width_interval_is_not_estimable():
    """Every benign patient wholly right: every resample's specificity is 1, which is no
    interval (0 errors in n still allow an error rate up to about 3/n)."""
    table = _table(benign=6, malignant=6)
    p = np.where(table["label"] == "malignant", 0.9, 0.1)
    p[table["patient_id"] == "pmalignant0"] = 0.2  # one malignant patient missed: sensitivity varies
    found = stats.bootstrap_by_patient(table["label"] == "malignant", p, table["patient_id"], n_boot=400)
    assert format_interval(found["specificity"]) == "not estimable (all 400 resamples give 1.000)"
    assert found["sensitivity"].estimable and found["sensitivity"].low < found["sensitivity"].high


def test_too_few_resamples_defining_a_metric_make_it_not_estimable():
    values = np.r_[np.linspace(0.6, 0.9, 170), [np.nan] * 30]  # 85% define it
    found = intervals.from_resamples(values, {"benign": 5, "malignant": 8}, intervals.BOTH)
    assert format_interval(found) == "not estimable (only 170 of 200 resamples define it)"
    kept = intervals.from_resamples(values[:-15], {"benign": 5, "malignant": 8}, intervals.BOTH)
    assert kept.estimable and format_interval(kept).endswith("(170 of 185 resamples)")


def test_a_per_patient_auc_on_one_pair_says_so():
    val, test = _table(3, 3, prefix="v"), _table(1, 1, prefix="t")
    rule = decision.decide(CFG, val, _probabilities(val, 1, right=1.0))
    measured = decision.measure_decision(
        CFG, rule, val, _probabilities(val, 1, 1.0), test, _probabilities(test, 2)
    )
    table = decision.summary_table(measured)
    assert table.loc["roc_auc", "per patient"].endswith("(on 1 benign-malignant patient pair only)")
    shown = table["95% CI (patients resampled)"]
    assert shown["roc_auc"] == "not estimable (n benign patients = 1, n malignant patients = 1)"
    assert shown["sensitivity"] == "not estimable (n malignant patients = 1)"


# --------------------------------------------------------------------------- the threshold
def test_youden_j_of_zero_keeps_one_half_and_says_why(tmp_path):
    val, test = _table(3, 3, prefix="v"), _table(6, 6, prefix="t")
    backwards = 1 - _probabilities(val, 3, right=1.0)  # every benign image above every malignant one
    rule, _, report, card = _outputs(val, backwards, test, _probabilities(test, 4))
    assert rule["threshold"] == 0.5 and rule["threshold_rule_applied"] is False
    assert rule["threshold_reason"].startswith("Youden's J is 0 on validation")
    decision.save_decision(rule, tmp_path)
    saved = pd.read_json(tmp_path / "decision.json", typ="series")
    assert saved["threshold_rule_applied"] == False and saved["threshold_reason"] == rule["threshold_reason"]  # noqa: E712
    said = "the paper's 0.5, because validation could not choose (Youden's J is 0 on validation"
    assert said in report and said in card and "maximising" not in report + card
    assert describe_rule(rule).startswith(
        "threshold 0.500 on the calibrated probability of malignancy, " + said
    )


@pytest.mark.parametrize(
    "benign,malignant,reason",
    [
        (0, 4, "validation holds malignant images only"),
        (1, 4, "validation has 1 benign and 4 malignant patient(s); choosing needs at least 2 of each"),
    ],
)
def test_validation_too_small_keeps_one_half(benign, malignant, reason):
    val = _table(benign, malignant)
    rule = decision.decide(CFG, val, _probabilities(val, 5, right=1.0))
    assert (rule["threshold"], rule["threshold_rule_applied"], rule["threshold_reason"]) == (
        0.5,
        False,
        reason,
    )


def test_a_threshold_calling_every_validation_image_one_class_is_no_choice():
    # The one malignant image below every benign one: 100% sensitivity calls everything malignant.
    y_val, p_val = [0, 0, 0, 1, 1, 1], [0.3, 0.4, 0.5, 0.1, 0.8, 0.9]
    threshold, reason = stats.threshold_choice(y_val, p_val, "sensitivity", target_sensitivity=1.0)
    assert (threshold, reason) == (0.5, "its threshold 0.100 would call every validation image malignant")
    assert stats.threshold_choice(y_val, p_val, "youden") == (0.8, "")  # a real choice is kept


def test_a_rule_that_could_choose_is_applied_and_named():
    val, test = _table(4, 4, prefix="v"), _table(6, 6, prefix="t")
    rule, _, report, card = _outputs(val, _probabilities(val, 6, right=0.9), test, _probabilities(test, 7))
    assert rule["threshold_rule_applied"] is True and rule["threshold_reason"] == ""
    assert "a threshold maximising sensitivity + specificity (Youden's J) on the validation split" in report
    assert "could not choose" not in report + card + describe_rule(rule)


# --------------------------------------------------------------------------- the outputs
def test_metrics_at_one_half_carry_patient_intervals_and_name_the_image_level_one():
    test = _table(2, 6)
    metrics = headline.summarize_test_results(test, _probabilities(test, 8), {"accuracy": 0.7, "loss": 0.4},
                                            WEIGHTS, "/d", n_boot=400)  # fmt: skip
    assert "test_accuracy_95ci" not in metrics and len(metrics["test_accuracy_95ci_images_independent"]) == 2
    assert metrics["test_95ci_by_patient"]["specificity"]["reason"] == "n benign patients = 2"
    assert metrics["test_95ci_by_patient"]["sensitivity"]["estimable"] is True
    assert metrics["n_test_patients_by_class"] == {"benign": 2, "malignant": 6}
    shown = headline.interval_table(metrics)["95% interval (test patients resampled)"]
    assert shown["specificity"] == "not estimable (n benign patients = 2)" and shown["precision"] == "-"


def test_the_report_and_card_say_not_estimable_with_the_reason_and_count_patients():
    val, test = _table(4, 4, prefix="v"), _table(2, 6, prefix="t")
    _, _, report, card = _outputs(val, _probabilities(val, 9, 0.9), test, _probabilities(test, 10))
    assert "| specificity (benign recall) |" in report and "not estimable (n benign patients = 2)" in report
    assert "On 24 test images from 8 patients (2 benign, 6 malignant)" in report
    assert "resample the 8 test patients 400 times" in report
    assert "Counting the 24 images as independent instead, accuracy's Wilson interval would be" in report
    assert "are noise" not in report and "few dozen" not in report
    assert "A test accuracy on 8 test patients says nothing about use in a clinic" in report
    assert "8 test patients: too few for some 95% intervals" in card and "intervals are wide" not in card


def test_a_folds_report_and_card_name_the_fold_and_the_summary():
    val, test = _table(4, 4, prefix="v"), _table(5, 5, prefix="t")
    folded = {"folds": 5, "fold": 2}
    _, _, report, card = _outputs(val, _probabilities(val, 11), test, _probabilities(test, 12), folded)
    for text in (report, card):
        assert "Fold 2 of 5 of a cross-validation by patient" in text
        assert "protocol's summary.md in the folder above" in text
    assert caveats.fold_note(Config().to_dict()) == ""


# --------------------------------------------------------------------------- the real sample
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("right", [0.0, 0.5, 1.0])
def test_the_real_breakhis_sample_shows_no_interval_or_threshold_it_cannot_support(
    breakhis_sample, seed, right
):
    """The 16 real images, split as a run splits them (a few patients per split), with models
    from always wrong to always right: no zero-width interval, and a threshold that is no
    choice said to be none."""
    from bcnb.data import splitting

    manifest = pd.read_csv(breakhis_sample / "manifest.csv", dtype={"patient_id": str})
    table = manifest.assign(path=[str(breakhis_sample / path) for path in manifest["path"]])
    cfg = Config()
    split = splitting.split_by_patient(table, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    val, test = (split[split["split"] == part].reset_index(drop=True) for part in ("val", "test"))
    rule, metrics, report, card = _outputs(
        val, _probabilities(val, seed, right), test, _probabilities(test, seed, right)
    )
    for text in (report, card):
        assert not ZERO_WIDTH.search(text), ZERO_WIDTH.search(text).group(0)
        assert (
            "not estimable (n benign patients = " in text or "not estimable (n malignant patients = " in text
        )
    p_val = decision.apply_decision(rule, _probabilities(val, seed, right))[0]
    called = p_val >= rule["threshold"]
    if rule["threshold_rule_applied"]:
        assert called.any() and not called.all()  # a chosen threshold calls both classes on validation
    else:
        said = f"the paper's 0.5, because validation could not choose ({rule['threshold_reason']})"
        assert said in report and said in card and "maximising" not in report + card
