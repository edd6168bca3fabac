"""How long the patient bootstrap takes: 2,000 resamples, as notebook 04 draws them.

    .venv/bin/python benchmarks/bootstrap.py

Prints the seconds for 100 patients of 5 images and for BreakHis' size (a test fold of about
1,600 images from 16 patients), the median of five repeats each. A figure, not a test: a
shared CPU makes wall-clock limits in tests fail for no fault of the code.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from bcnb.evaluate.stats import bootstrap_by_patient


def seconds(n_patients: int, images_each: int, repeats: int = 5) -> float:
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(n_patients), images_each)
    y_true = (patients % 3 > 0).astype(int)
    y_prob = np.clip(0.3 * y_true + rng.uniform(0, 0.7, len(patients)), 0, 1)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        bootstrap_by_patient(y_true, y_prob, patients, n_boot=2000)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


if __name__ == "__main__":
    for n_patients, images_each in ((100, 5), (16, 100)):
        found = seconds(n_patients, images_each)
        print(f"{n_patients} patients x {images_each} images, 2000 resamples: {found:.3f} s")
