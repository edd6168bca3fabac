"""Many runs of one protocol, and what a paper would print about them.

``bcnb reproduce --folds K`` runs notebooks 01-04 once per patient-level fold (``fold-1`` ...
``fold-K``, each a complete run folder testing on its own fold); ``--repeats R`` once per
random patient-level split, seeds ``seed`` .. ``seed + R - 1`` (``repeat-1`` ...). With
``--per-magnification`` each fold also gets one model per magnification, as BreakHis papers
train them (Spanhol et al., IEEE TBME 63(7):1455-1462, 2016): a head trained on that
magnification's rows of the fold's cached features, on the fold's own patients
(``fold-1/magnifications/40X``: :mod:`bcnb.batch.magnifications`), beside the fold's model of all.

Then ``summary.md``, ``summary.json`` and ``summary.png`` give each run's metrics, the folds'
predictions pooled (every image tested once) with a patient-bootstrap interval, and the mean
and standard deviation over the runs with the corrected resampled t interval
(:mod:`bcnb.evaluate.crossval`), at the paper's threshold of 0.5 and at each run's own
validation-chosen threshold; with ``--per-magnification`` also the table such papers print.

The runs share one feature extraction: the cache holds every image's features in the table's
order, and a run only selects rows, so the first run's cache is linked into the others (its
key is checked there: see :func:`bcnb.train.features.cached_features`). A protocol that is
interrupted goes on with ``--resume``: finished runs are kept, an unfinished one carries on
(a fold whose notebooks ran trains only its unfinished models of one magnification).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bcnb.batch.magnifications import magnification_folder
from bcnb.config import Config
from bcnb.evaluate import crossval
from bcnb.evaluate.crossval import METRICS
from bcnb.evaluate.scores import PAPER, format_figure
from bcnb.report import caveats
from bcnb.run.artifacts import SUMMARY, load_metrics, load_predictions
from bcnb.run.files import write_json_atomic, write_text_atomic

FOLD_NOTEBOOKS = ("01_data.ipynb", "02_model.ipynb", "03_train.ipynb", "04_evaluate.ipynb")
WHERE = {
    "at_0.5": "at the paper's threshold of 0.5",
    "at_chosen_threshold": "at each run's threshold chosen on its validation split",
}


def protocol_runs(cfg: Config, folds: int = 0, repeats: int = 0) -> dict[str, Config]:
    """The runs of a protocol, by folder name: each fold's (a fold file is one fold) or each repeat's."""
    if repeats:
        return {f"repeat-{r}": cfg.replace(seed=cfg.seed + r - 1) for r in range(1, repeats + 1)}
    if not folds:
        return {"fold-1": cfg}
    return {f"fold-{k}": cfg.replace(folds=folds, fold=k) for k in range(1, folds + 1)}


@dataclass(frozen=True)
class Protocol:
    """K patient-level folds (or one fold file, ``split_file``) or R random splits; with
    ``magnifications`` one model per magnification per fold too."""

    cfg: Config
    folds: int = 0
    repeats: int = 0
    magnifications: tuple[str, ...] = ()

    @property
    def runs(self) -> dict[str, Config]:
        return protocol_runs(self.cfg, self.folds, self.repeats)

    @property
    def ratio(self) -> float:
        """n_test / n_train of one run, for the corrected resampled t."""
        return crossval.test_to_train(self.folds, self.cfg.test_fraction)

    @property
    def not_pooled(self) -> str:
        """Why the runs' predictions cannot be pooled ("" where they can: K folds)."""
        if self.folds:
            return ""
        if self.repeats:
            return (
                "random splits test some patients in several runs and others in none: their "
                "predictions are not one test set of the dataset, so only the spread over the runs applies"
            )
        return "one fold file tests only its own test part"

    @property
    def command(self) -> str:
        what = f"--folds {self.folds}" if self.folds else f"--repeats {self.repeats}" if self.repeats else ""
        return " ".join(
            ["bcnb reproduce", what, "--per-magnification" if self.magnifications else ""]
        ).strip()

    def describe(self) -> str:
        text = self._split()
        if self.magnifications:
            text += (
                f"; one model per magnification ({', '.join(self.magnifications)}) and one on all of "
                "them, on the same patient folds"
            )
        return text

    def _split(self) -> str:
        cfg = self.cfg
        if self.folds:
            return (
                f"{self.folds}-fold cross-validation by patient (stratified by class, and by tumour type "
                f"within class where known; every patient tested once; seed {cfg.seed}), validation "
                "carved by patient from each fold's training part"
            )
        if self.repeats:
            train = 1 - cfg.val_fraction - cfg.test_fraction
            return (
                f"{self.repeats} random patient-level splits ({train:.0%} / {cfg.val_fraction:.0%} / "
                f"{cfg.test_fraction:.0%}, seeds {cfg.seed} to {cfg.seed + self.repeats - 1})"
            )
        name = Path(cfg.split_file).name
        return f"the fold file {name} (one split), validation carved from its training part"


def run_protocol(
    cfg: Config,
    out: str | Path,
    folds: int = 0,
    repeats: int = 0,
    notebooks_dir: str | Path | None = None,
    progress: Callable[[str], None] = lambda message: None,
    progress_bar: bool = False,
    resume: bool = False,
    per_magnification: bool = False,
    runner=None,
) -> Path:
    """Run every fold or repeat into ``out`` (replaced only when all are done), then summarise.

    With ``resume`` the interrupted protocol goes on: finished runs are kept and an unfinished
    one carries on, once every run in it is known to have been made with its parameters.
    ``runner`` carries out the runs (:func:`bcnb.batch.reproduce.run_here` by default;
    :func:`bcnb.batch.on_dask.runner_on` hands them to a Dask cluster).
    """
    from bcnb.batch.notebooks import NOTEBOOKS_DIR
    from bcnb.batch.reproduce import Job, build, headless, run_here

    magnifications = tuple(magnifications_to_train(cfg)) if per_magnification else ()
    protocol = Protocol(headless(cfg), folds, repeats, magnifications)

    def finish(staging: Path) -> None:
        write_summary(staging, summarize(staging, protocol))

    job = Job(
        "protocol",
        protocol.runs,
        list(FOLD_NOTEBOOKS),
        protocol.command,
        finish=finish,
        magnifications=magnifications,
    )
    notebooks_dir = Path(notebooks_dir or NOTEBOOKS_DIR)
    return build(job, out, notebooks_dir, progress, progress_bar, resume, runner=runner or run_here)


# What the models of one magnification, heads on cached features, can be trained as: the head
# alone on each image's one view (no fine-tuning of the base, no test-time augmentation).
PER_MAGNIFICATION_NEEDS = (("feature_cache", True), ("fine_tune_layers", 0), ("tta", False))


def magnifications_to_train(cfg: Config) -> list[str]:
    """The magnifications ``--per-magnification`` trains a model on: the dataset's; refused
    where it has fewer than two, where ``magnification`` already chooses one, or where the
    fold's model is more than a head on cached features (then so would theirs have to be)."""
    from bcnb.data.loading import magnifications_of

    if cfg.magnification != "all":
        raise ValueError(
            f"--per-magnification: trains one model per magnification and one on all of them; "
            f"expected magnification=all, got {cfg.magnification}"
        )
    for name, expected in PER_MAGNIFICATION_NEEDS:
        if getattr(cfg, name) != expected:
            raise ValueError(
                f"--per-magnification: trains each magnification's head on the folds' cached features; "
                f"expected {name}={str(expected).lower()}, got {str(getattr(cfg, name)).lower()}"
            )
    found = [name for name in magnifications_of(cfg) if name != "unknown"]
    if len(found) < 2:
        raise ValueError(
            f"--per-magnification: the dataset has {len(found) or 'no'} magnification(s) "
            f"({', '.join(found) or 'none in its names or manifest'}); expected BreakHis' 40X-400X"
        )
    return found


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


def spread(values: list[float | None], ratio: float) -> dict:
    """Mean, sd and corrected resampled t interval over the runs (:func:`crossval.spread`)."""
    return crossval.spread(values, ratio)


def summarize(staging: Path, protocol: Protocol) -> dict:
    """Everything summary.json holds: each run, the pooled figures, the spread over the runs."""
    names = list(protocol.runs)
    runs = [run_metrics(staging / name) for name in names]
    cfg = protocol.cfg
    if protocol.not_pooled:
        pooled = crossval.not_pooled(protocol.not_pooled)
    else:
        predictions = [load_predictions(staging / name) for name in names]
        pooled = crossval.pooled_out_of_fold(predictions, cfg.bootstrap_samples, cfg.seed)
    summary = {
        "protocol": protocol.describe(),
        "runs": runs,
        "pooled": pooled,
        "summary": {
            where: {name: spread([run[where][name] for run in runs], protocol.ratio) for name in METRICS}
            for where in WHERE
        },
        "test_to_train": protocol.ratio,
        "paper_test_accuracy": PAPER["test_accuracy"],
        "weights": sorted({run["weights"] for run in runs}),
        "weights_pretrained": all(run["weights_pretrained"] for run in runs),
        "dataset": runs[0]["dataset"],
    }
    if protocol.magnifications:
        summary["per_magnification"] = by_magnification(staging, protocol)
    return summary


# --------------------------------------------------------------------------- per magnification
MODELS = {"separate": "one model per magnification", "mixed": "one model for all magnifications"}
TABLE_METRICS = {"accuracy": "Image-level accuracy", "patient_recognition_rate": "Patient recognition rate"}


def by_magnification(staging: Path, protocol: Protocol) -> dict:
    """The table BreakHis papers print: image-level accuracy and patient recognition rate at 0.5
    for each magnification (and all of them), mean and sd over the folds, of the models trained
    on one magnification and of the model trained on all of them."""
    per_fold = {"separate": [], "mixed": []}
    own_runs = {}
    for fold in protocol.runs:
        own = {m: load_predictions(magnification_folder(staging / fold, m)) for m in protocol.magnifications}
        own_runs.update({f"{fold}-{m}": at_half(table) for m, table in own.items()})
        own["all"] = pd.concat(
            own.values(), ignore_index=True
        )  # each image called by its magnification's model
        everything = load_predictions(staging / fold)
        seen = {m: everything[everything["magnification"] == m] for m in protocol.magnifications}
        per_fold["separate"].append({column: at_half(table) for column, table in own.items()})
        per_fold["mixed"].append({**{m: at_half(t) for m, t in seen.items()}, "all": at_half(everything)})
    columns = [*protocol.magnifications, "all"]
    return {
        "threshold": 0.5,
        "columns": columns,
        "rows": {
            model: {
                column: {
                    name: spread([fold[column][name] for fold in rows], protocol.ratio)
                    for name in TABLE_METRICS
                }
                for column in columns
            }
            for model, rows in per_fold.items()
        },
        "runs": own_runs,  # each fold's model of one magnification, as fold-1-40X
    }


def at_half(predictions: pd.DataFrame) -> dict[str, float]:
    """Image-level accuracy and patient recognition rate of some test predictions at 0.5."""
    from bcnb.evaluate.scores import patient_recognition_rate

    y_true = (predictions["label"] == "malignant").to_numpy(dtype=int)
    y_prob = predictions["malignant_probability"].to_numpy(dtype=float)
    return {
        "accuracy": float(np.mean((y_prob >= 0.5) == y_true)),
        "patient_recognition_rate": patient_recognition_rate(
            y_true, y_prob, predictions["patient_id"].to_numpy()
        ),
    }


# --------------------------------------------------------------------------- summary.md
def write_summary(folder: Path, summary: dict) -> None:
    from bcnb.report.figures import plot_runs, save_image

    write_json_atomic(folder / f"{SUMMARY}.json", summary)
    save_image(plot_runs(summary), folder / f"{SUMMARY}.png")
    write_text_atomic(folder / f"{SUMMARY}.md", render_summary(summary))


def render_summary(summary: dict) -> str:
    lines = ["# bcnb cross-run summary", f"> {caveats.DISCLAIMER}"]
    lines += caveats.markdown_lines(caveats.Provenance.from_summary(summary))
    lines += [f"Protocol: {summary['protocol']}.", "## Each run", _runs_table(summary["runs"])]
    lines += _pooled_section(summary["pooled"])
    for where, title in WHERE.items():
        lines += [f"## Over the runs, {title}", _spread_table(summary["summary"][where])]
    if summary.get("per_magnification"):
        lines += _magnification_section(summary["per_magnification"])
    reading = "\n".join(_READING).format(paper=summary["paper_test_accuracy"], ratio=summary["test_to_train"])
    return "\n\n".join([*lines, "## Reading it", reading]) + "\n"


_READING = [
    "- The paper reports one test accuracy, {paper}, on one split it does not "
    "describe; set it beside the figures above, not beside one run.",
    "- **Pooled out of fold**: the folds' test predictions together, every image scored once by "
    "the fold's model that did not train on its patient; the 95% interval resamples patients "
    "(percentile bootstrap, Efron & Tibshirani, An Introduction to the Bootstrap, 1993), since a "
    "patient's images are not independent. Pooling sets K models' probabilities on one scale they "
    "do not quite share, so a pooled ROC AUC can sit below the folds' mean (Forman & Scholz, "
    "SIGKDD Explorations 12(1):49-57, 2010). At each run's threshold the calls are each fold's own; "
    "the ROC AUC there ranks the calibrated probabilities.",
    "- **Over the runs**: mean and standard deviation of the runs' figures; the 95% interval is the "
    "corrected resampled t of Nadeau & Bengio (Machine Learning 52:239-281, 2003): the runs share "
    "most of their training patients, so Student's t over them is too narrow; the variance of the "
    "mean is taken as sd^2 (1/J + n_test/n_train), here n_test/n_train = {ratio:.3f} (1/(K-1) for K "
    "folds, Bouckaert & Frank, PAKDD 2004), with J-1 degrees of freedom. No unbiased estimator of "
    "that variance exists (Bengio & Grandvalet, JMLR 5:1089-1105, 2004): it is a heuristic that errs less.",
    '- An interval is never cut at 0 or 1: one marked "past 1" (or 0) is the t interval as computed, '
    "whose symmetric shape does not fit a proportion near its bound; read it as reaching the bound.",
    "- The patient recognition rate (Spanhol et al., IEEE TBME 2016) averages, over test patients, the share "
    "of each patient's images called right.",
    "- Each run's folder holds its executed notebooks, metrics.json, predictions.csv and report.md "
    "(with --per-magnification also magnifications/, a head per magnification with its history and "
    "predictions); summary.png draws one point per run, the mean with its interval and the pooled figure.",
]


def _pooled_section(pooled: dict) -> list[str]:
    from bcnb.evaluate.intervals import format_interval
    from bcnb.report.run_report import markdown_table

    title = "## Pooled out of fold: every image tested once"
    if not pooled["applies"]:
        return [title, f"Not applicable: {pooled['why']}."]
    rows = [
        {
            "metric": name,
            "at 0.5": format_figure(pooled["at_0.5"][name]["value"]),
            "95% interval at 0.5": format_interval(pooled["at_0.5"][name]["interval"]),
            "at each run's threshold": format_figure(pooled["at_chosen_threshold"][name]["value"]),
            "95% interval at it": format_interval(pooled["at_chosen_threshold"][name]["interval"]),
        }
        for name in METRICS
    ]
    note = (
        f"{pooled['images']} test images of {pooled['patients']} patients, each tested once; intervals: "
        f"{pooled['method']} ({pooled['bootstrap_samples']} resamples)."
    )
    return [title, note, markdown_table(pd.DataFrame(rows))]


def _magnification_section(table: dict) -> list[str]:
    from bcnb.report.run_report import markdown_table

    lines = [
        "## Per magnification",
        "As BreakHis papers print it (Spanhol et al., IEEE TBME 63(7):1455-1462, 2016): mean +- sd over "
        "the folds at 0.5, every model on the same patient folds. A model of one magnification is the "
        "paper's head trained on that magnification's images alone, on the fold's cached features "
        "(fold-k/magnifications/). In the column *all*, the models of one magnification each call their "
        "own magnification's images; the model for all magnifications is scored on each magnification's "
        "test images too. The corrected t interval of every cell is in summary.json.",
    ]
    for metric, title in TABLE_METRICS.items():
        rows = [
            {
                "model": MODELS[model],
                **{column: _mean_sd(cells[column][metric]) for column in table["columns"]},
            }
            for model, cells in table["rows"].items()
        ]
        lines += [f"### {title}", markdown_table(pd.DataFrame(rows))]
    return lines


def _mean_sd(figures: dict) -> str:
    if figures["mean"] is None:
        return "n/a"
    return format_figure(figures["mean"], 3) + ("" if figures["sd"] is None else f" +- {figures['sd']:.3f}")


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
            "95% interval (corrected t)": crossval.format_t_interval(figures["interval"]),
            "runs": figures["runs"],
        }
        for name, figures in spread.items()
    ]
    return markdown_table(pd.DataFrame(rows))
