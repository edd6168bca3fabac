"""A 95% interval from resampling test patients, or why the data cannot give one.

Every output (metrics.json, decision.json, report.md, model_card.md, notebook 04, the backbone
comparison) keeps such an interval as an :class:`Interval` (in JSON, its :meth:`~Interval.to_json`)
and prints it with :func:`format_interval`, so an interval reads the same everywhere, and one
that the data cannot support says "not estimable" and why, never a pair of bounds.

An interval is not estimable when

- fewer than ``MIN_PATIENTS_PER_CLASS`` (5) test patients hold the class a metric depends on
  (``NEEDS``: sensitivity needs malignant patients, specificity benign ones, the rest both). The
  percentile bootstrap (Efron & Tibshirani, An Introduction to the Bootstrap, 1993, ch. 13)
  reads the bounds off the 2.5% tails of the resampled values, and needs those tails to be many
  different resamples. With n patients of a class, a resample of them is one of C(2n-1, n)
  (3 for n = 2, 35 for n = 4, 126 for n = 5), and is one patient drawn n times with chance
  n^(1-n): 50% for n = 2, 11% for 3, 1.6% for 4, 0.16% for 5. Below 5 that share is a large
  part of the 2.5% tail, so a bound is one patient's own score ("1.000-1.000" on two benign
  patients both called right), not the uncertainty of the figure. 5 is the smallest n where it
  is a small part (a sixteenth); the number is a convention, the reasoning is not;
- fewer than ``MIN_DEFINED_SHARE`` (90%) of the resamples define the metric (a resample without
  a benign patient has no specificity). The rest are then a sample conditioned on what the data
  did not fix, no longer the bootstrap distribution; a tenth is where bcnb stops trusting them;
- the interval has zero width: every resample gave the same value (say, each benign patient
  wholly right). That says the figure sits at its bound, not that it is certain: a proportion of
  0 of n still has a 95% upper bound of about 3/n (Hanley & Lippman-Hand, JAMA 1983, "If
  nothing goes wrong, is everything all right?").

Imports numpy only: the reports and notebook 04 print intervals without scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

MIN_PATIENTS_PER_CLASS = 5
MIN_DEFINED_SHARE = 0.9
BOTH = ("benign", "malignant")  # bcnb.data.tasks.CLASSES, without importing pandas
# The classes whose test patients each metric's resamples depend on.
NEEDS = {
    "accuracy": BOTH,
    "balanced_accuracy": BOTH,
    "sensitivity": ("malignant",),
    "specificity": ("benign",),
    "roc_auc": BOTH,
    "patient_recognition_rate": BOTH,
}
# When an interval is not estimable, in the reports' words, after "an interval reads "not estimable"".
NOT_ESTIMABLE_WHEN = (
    f"below {MIN_PATIENTS_PER_CLASS} test patients of each class its metric depends on (sensitivity: "
    "malignant, specificity: benign, the others both; with fewer, a bound is one patient's own "
    f"score), when under {MIN_DEFINED_SHARE:.0%} of the resamples define the metric, or when every "
    "resample gives the same value"
)


@dataclass(frozen=True)
class Interval:
    """A 95% patient-bootstrap interval: its bounds and how many resamples counted, or why none."""

    low: float | None  # None where not estimable
    high: float | None
    resamples_used: int  # the resamples that define the metric
    resamples: int  # all that were drawn
    reason: str = ""  # why it is not estimable; "" when it is

    @property
    def estimable(self) -> bool:
        return not self.reason

    def to_json(self) -> dict:
        """The interval as metrics.json and decision.json keep it."""
        return {
            "low": self.low,
            "high": self.high,
            "estimable": self.estimable,
            "reason": self.reason,
            "resamples_used": self.resamples_used,
            "resamples": self.resamples,
        }

    @classmethod
    def from_json(cls, value: Mapping) -> Interval:
        """The interval that :meth:`to_json` wrote."""
        bounds, counts = (value.get("low"), value.get("high")), (value["resamples_used"], value["resamples"])
        return cls(*bounds, *counts, value.get("reason") or "")


def format_interval(value: Interval | Mapping | Sequence | None) -> str:
    """The one way bcnb prints an interval: "0.713-0.972", or "not estimable (reason)"."""
    # Also "0.713-0.972 (1950 of 2000 resamples)" where some resamples left the metric undefined.
    # It takes an Interval, its JSON, or two plain bounds (the Wilson interval: no resampling).
    if value is None:
        return "n/a"
    if isinstance(value, Mapping):
        value = Interval.from_json(value)
    if not isinstance(value, Interval):
        value = Interval(*value, resamples_used=0, resamples=0)
    if not value.estimable:
        return f"not estimable ({value.reason})"
    if value.low is None or value.high is None or math.isnan(value.low) or math.isnan(value.high):
        return "n/a"
    text = f"{value.low:.3f}-{value.high:.3f}"
    if value.resamples_used < value.resamples:
        text += f" ({value.resamples_used} of {value.resamples} resamples)"
    return text


def from_resamples(values: np.ndarray, patients: Mapping[str, int], needs: Sequence[str]) -> Interval:
    """The central 95% of a metric's resamples (NaN: undefined there), judged by the rules above."""
    # patients: how many test patients hold images of each class; needs: the classes the metric needs
    defined = values[~np.isnan(values)]
    used, drawn = int(defined.size), int(values.size)
    low, high = (float(bound) for bound in np.percentile(defined, [2.5, 97.5])) if used else (math.nan,) * 2
    reason = _why_not(patients, needs, used, drawn, low, high)
    return Interval(None if reason else low, None if reason else high, used, drawn, reason)


def _why_not(patients: Mapping[str, int], needs, used: int, drawn: int, low: float, high: float) -> str:
    """Why the interval is not estimable ("" if it is): the first rule it breaks."""
    short = [
        f"n {name} patients = {patients[name]}" for name in needs if patients[name] < MIN_PATIENTS_PER_CLASS
    ]
    if short:
        return ", ".join(short)
    if used < MIN_DEFINED_SHARE * drawn:
        return f"only {used} of {drawn} resamples define it"
    if high <= low:
        return f"all {used} resamples give {low:.3f}"
    return ""


def per_patient_auc_note(n_benign: int, n_malignant: int) -> str:
    """What a per-patient ROC AUC rests on, where that is few patients ("" otherwise)."""
    if min(n_benign, n_malignant) >= MIN_PATIENTS_PER_CLASS:
        return ""
    pairs = n_benign * n_malignant
    return f"on {pairs} benign-malignant patient pair{'s' if pairs != 1 else ''} only"
