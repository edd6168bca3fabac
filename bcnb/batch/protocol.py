"""Many runs of one protocol, and what a paper would print about them.

``bcnb reproduce --folds K`` runs notebooks 01-04 once per patient-level fold (``fold-1`` ...
``fold-K``, each a complete run folder testing on its own fold); ``--repeats R`` once per
random patient-level split, seeds ``seed`` .. ``seed + R - 1`` (``repeat-1`` ...). Then
``summary.md``, ``summary.json`` and ``summary.png`` give each run's metrics and their mean,
standard deviation and 95% interval, at the paper's threshold of 0.5 and at each run's own
validation-chosen threshold.

The folds share one feature extraction: the cache holds every image's features in the table's
order, and a fold only selects rows, so the first fold's cache is linked into the others (its
key is checked there, so a fold whose model differs computes its own). A protocol that is
interrupted goes on with ``--resume``: finished runs are kept, an unfinished one carries on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from bcnb.config import Config
from bcnb.evaluate.scores import PAPER, format_figure
from bcnb.report import caveats
from bcnb.run.artifacts import SUMMARY, load_metrics
from bcnb.run.files import write_json_atomic, write_text_atomic

FOLD_NOTEBOOKS = ("01_data.ipynb", "02_model.ipynb", "03_train.ipynb", "04_evaluate.ipynb")
METRICS = (
    "accuracy",
    "balanced_accuracy",
    "roc_auc",
    "sensitivity",
    "specificity",
    "patient_recognition_rate",
)


def protocol_runs(cfg: Config, folds: int = 0, repeats: int = 0) -> dict[str, Config]:
    """The runs of a protocol, by folder name."""
    if folds:
        return {f"fold-{k}": cfg.replace(folds=folds, fold=k) for k in range(1, folds + 1)}
    return {f"repeat-{r}": cfg.replace(seed=cfg.seed + r - 1) for r in range(1, repeats + 1)}


def describe(cfg: Config, folds: int, repeats: int) -> str:
    if folds:
        return (
            f"{folds}-fold cross-validation by patient (stratified by class, every patient tested "
            f"once; seed {cfg.seed}), validation carved by patient from each fold's training part"
        )
    return (
        f"{repeats} random patient-level splits ({1 - cfg.val_fraction - cfg.test_fraction:.0%} / "
        f"{cfg.val_fraction:.0%} / {cfg.test_fraction:.0%}, seeds {cfg.seed} to {cfg.seed + repeats - 1})"
    )


def run_protocol(
    cfg: Config,
    out: str | Path,
    folds: int = 0,
    repeats: int = 0,
    notebooks_dir: str | Path | None = None,
    progress: Callable[[str], None] = lambda message: None,
    progress_bar: bool = False,
    resume: bool = False,
) -> Path:
    """Run every fold or repeat into ``out`` (replaced only when all are done), then summarise.

    With ``resume`` the interrupted protocol goes on: finished runs are kept and an unfinished
    one carries on, once every run in it is known to have been made with its parameters.
    """
    from bcnb.batch.notebooks import NOTEBOOKS_DIR
    from bcnb.batch.reproduce import Job, build, headless

    runs = protocol_runs(headless(cfg), folds, repeats)
    what = "bcnb reproduce " + (f"--folds {folds}" if folds else f"--repeats {repeats}")

    def finish(staging: Path) -> None:
        write_summary(staging, summarize(staging, list(runs), describe(cfg, folds, repeats)))

    job = Job("protocol", runs, list(FOLD_NOTEBOOKS), what, finish=finish)
    return build(job, out, Path(notebooks_dir or NOTEBOOKS_DIR), progress, progress_bar, resume)


# --------------------------------------------------------------------------- the summary
def run_metrics(folder: Path) -> dict:
    """One run's figures at the paper's 0.5 and at its validation-chosen threshold."""
    metrics = load_metrics(folder)
    at_half = {name: metrics["test_accuracy" if name == "accuracy" else name] for name in METRICS}
    decided = metrics["decision"]
    return {
        "run": folder.name,
        "test_images": metrics["n_test_images"],
        "test_patients": metrics["n_test_patients"],
        "at_0.5": at_half,
        "threshold": decided["threshold"],
        "at_chosen_threshold": {name: decided["image_level"][name] for name in METRICS},
        "weights": metrics["weights"],
        "weights_pretrained": metrics["weights_pretrained"],
        "dataset": metrics["dataset"],
    }


def spread(values: list[float | None]) -> dict:
    """Mean, standard deviation (n - 1) and the 95% t-interval of the mean over runs."""
    from scipy import stats as scipy_stats

    defined = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(defined) == 0:
        return {"mean": None, "sd": None, "ci95": [None, None], "runs": 0}
    mean = float(defined.mean())
    if len(defined) < 2:
        return {"mean": mean, "sd": None, "ci95": [None, None], "runs": 1}
    sd = float(defined.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.975, len(defined) - 1)) * sd / math.sqrt(len(defined))
    # Every metric here is a proportion: an interval reaching past 0 or 1 is cut there.
    return {
        "mean": mean,
        "sd": sd,
        "ci95": [max(0.0, mean - half), min(1.0, mean + half)],
        "runs": len(defined),
    }


def summarize(staging: Path, names: list[str], protocol: str) -> dict:
    runs = [run_metrics(staging / name) for name in names]
    return {
        "protocol": protocol,
        "runs": runs,
        "summary": {
            where: {name: spread([run[where][name] for run in runs]) for name in METRICS}
            for where in ("at_0.5", "at_chosen_threshold")
        },
        "paper_test_accuracy": PAPER["test_accuracy"],
        "weights": sorted({run["weights"] for run in runs}),
        "weights_pretrained": all(run["weights_pretrained"] for run in runs),
        "dataset": runs[0]["dataset"],
    }


def write_summary(folder: Path, summary: dict) -> None:
    from bcnb.report.figures import plot_runs, save_image

    write_json_atomic(folder / f"{SUMMARY}.json", summary)
    save_image(plot_runs(summary), folder / f"{SUMMARY}.png")
    write_text_atomic(folder / f"{SUMMARY}.md", render_summary(summary))


def render_summary(summary: dict) -> str:
    lines = ["# bcnb cross-run summary", f"> {caveats.DISCLAIMER}"]
    lines += caveats.markdown_lines(caveats.Provenance.from_summary(summary))
    lines += [f"Protocol: {summary['protocol']}.", "## Each run", _runs_table(summary["runs"])]
    for where, title in (
        ("at_0.5", "at the paper's threshold of 0.5"),
        ("at_chosen_threshold", "at each run's threshold chosen on its validation split"),
    ):
        lines += [f"## Over the runs, {title}", _spread_table(summary["summary"][where])]
    lines += ["## Reading it", "\n".join(_READING).format(paper=summary["paper_test_accuracy"])]
    return "\n\n".join(lines) + "\n"


_READING = [
    "- The paper reports one test accuracy, {paper}, on one split it does not "
    "describe; set it beside the distribution above, not beside one run.",
    "- The 95% interval is Student's t over the runs' figures. The runs share most of their "
    "training patients, so they are not independent and the spread understates the uncertainty "
    "(Bengio & Grandvalet, JMLR 2004: no unbiased estimator of the variance of K-fold "
    "cross-validation exists).",
    "- The patient recognition rate (Spanhol et al. 2016) averages, over test patients, the share "
    "of each patient's images called right.",
    "- Each run's folder holds its executed notebooks, metrics.json and report.md; summary.png draws "
    "one point per run.",
]


def _runs_table(runs: list[dict]) -> str:
    from bcnb.report.run_report import markdown_table

    rows = [_run_row(run) for run in runs]
    return markdown_table(pd.DataFrame(rows))


def _run_row(run: dict) -> dict:
    return {
        "run": run["run"],
        "test images": run["test_images"],
        "patients": run["test_patients"],
        **{name: format_figure(run["at_0.5"][name]) for name in METRICS},
        "threshold": f"{run['threshold']:.3f}",
        "accuracy at it": format_figure(run["at_chosen_threshold"]["accuracy"]),
    }


def _spread_table(spread: dict) -> str:
    from bcnb.report.run_report import markdown_table

    rows = [
        {
            "metric": name,
            "mean": format_figure(figures["mean"]),
            "sd": format_figure(figures["sd"]),
            "95% interval": "-" if figures["ci95"][0] is None else "{:.3f}-{:.3f}".format(*figures["ci95"]),
            "runs": figures["runs"],
        }
        for name, figures in spread.items()
    ]
    return markdown_table(pd.DataFrame(rows))
