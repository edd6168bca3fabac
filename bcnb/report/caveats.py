"""Every caveat bcnb's outputs carry, written once, from what a run really used.

A run's :class:`Provenance` (the weights its base got, its data, its test split) gives its
caveats; the functions below set the same caveats in each form an output needs: a loud banner
for the notebooks, bold Markdown lines for report.md, model_card.md and summary.md, bullets for
their limits, one short line each for ``bcnb predict``'s stderr and one line for a figure.

Imports nothing heavy (no TensorFlow, no pandas): ``bcnb predict`` says its caveats before
Keras starts, and the reports import this module without TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bcnb.config import CONFIG_FILE

DISCLAIMER = "bcnb is for teaching and research, never for diagnosis."
SYNTHETIC = "synthetic"  # the built-in dataset's name in a run's config
BUILT_IN = "bcnb's built-in generated images"  # what the built-in dataset is, in words
RANDOM = "RANDOM"  # a table's weights column for a base that was not pretrained
NOT_THE_PAPERS = "cannot be compared with the paper's"
RULE = "!" * 78  # the banner's edges: loud in a notebook's plain-text output


@dataclass(frozen=True)
class Provenance:
    """What a run's caveats depend on: the weights its base really got, its data, its test."""

    pretrained: bool | None  # None: not recorded (a model without weights.json)
    weights_source: str = ""  # the file loaded, or why the weights are random ("" if unknown)
    weights_used: str = ""  # "imagenet", "file" or "random", as weights.json says
    dataset: str | None = None  # "synthetic" or a path; None: not recorded
    n_test_patients: int | None = None  # set where a sentence is about the test split's size

    @classmethod
    def from_records(cls, config: Mapping, metrics: Mapping) -> Provenance:
        """A finished run's, from its config.yaml and metrics.json."""
        return cls(
            metrics["weights_pretrained"],
            metrics["weights_source"],
            metrics["weights"],
            config["dataset"],
            metrics["n_test_patients"],
        )

    @classmethod
    def from_summary(cls, summary: Mapping) -> Provenance:
        """A cross-run summary's: any run on random weights makes them all incomparable."""
        return cls(summary["weights_pretrained"], dataset=summary["dataset"])

    @classmethod
    def from_weights(cls, weights, dataset: str | None) -> Provenance:
        """From a :class:`~bcnb.model.transfer.WeightsInfo` (None: not recorded) and the dataset."""
        if weights is None:
            return cls(None, dataset=dataset)
        return cls(weights.pretrained, weights.source, weights.used, dataset)


@dataclass(frozen=True)
class Caveat:
    """One caveat: its sentence, the words a figure has room for, and what to do about it."""

    text: str  # one sentence, lower case first and without its full stop: each form sets it
    tag: str  # a few words for a figure's subtitle
    remedy: str = ""  # said only where there is room: the notebook banner


def list_caveats(provenance: Provenance) -> list[Caveat]:
    """The caveats of a run, the weights' first; none for a pretrained run on real data."""
    candidates = [_weights_caveat(provenance), _data_caveat(provenance)]
    return [caveat for caveat in candidates if caveat]


def _weights_caveat(provenance: Provenance) -> Caveat | None:
    if provenance.pretrained is None:
        from bcnb.run.artifacts import WEIGHTS_FILE  # pandas: only when a model lacks the file

        return Caveat(
            f"no {WEIGHTS_FILE} beside the model: whether its base was pretrained is unknown",
            "weights unknown",
        )
    if provenance.pretrained:
        return None
    reason = f" ({provenance.weights_source})" if provenance.weights_source else ""
    return Caveat(
        f"the base had RANDOM weights, not ImageNet weights{reason}: this is not transfer learning, "
        f"and its numbers {NOT_THE_PAPERS}",
        "RANDOM weights (not ImageNet)",
        "See data_instructions.md to install the ImageNet weights file.",
    )


def _data_caveat(provenance: Provenance) -> Caveat | None:
    if provenance.dataset is None:
        return Caveat(
            f"no {CONFIG_FILE} beside the model: what it was trained on is unknown", "training data unknown"
        )
    if provenance.dataset != SYNTHETIC:
        return None
    return Caveat(
        f"trained and tested on {BUILT_IN}, not real tissue: it shows the pipeline works, not pathology",
        "generated images (not tissue)",
    )


# --------------------------------------------------------------------------- the forms
def banner(provenance: Provenance) -> str:
    """The loud notebook form: every caveat between rules of "!"; "" when there is none."""
    caveats = list_caveats(provenance)
    if not caveats:
        return ""
    lines = [line for caveat in caveats for line in (f"WARNING: {_sentence(caveat)}", caveat.remedy) if line]
    return "\n".join([RULE, *lines, RULE])


def notice(provenance: Provenance, *more: str) -> str:
    """What a notebook prints about its run: the weights if pretrained, the banner, ``more``
    lines (e.g. where the model card is), then the disclaimer."""
    weights = describe_weights(provenance) if provenance.pretrained else ""
    return "\n".join(line for line in (weights, banner(provenance), *more, DISCLAIMER) if line)


def markdown_lines(provenance: Provenance) -> list[str]:
    """The Markdown form, a bold line each, for the top of report.md, model_card.md, summary.md."""
    return [f"**WARNING: {_sentence(caveat)}**" for caveat in list_caveats(provenance)]


def bullets(provenance: Provenance) -> list[str]:
    """The caveats as a Markdown list's items, for a limits section, then the disclaimer."""
    return [f"- {_sentence(caveat, capital=True)}" for caveat in list_caveats(provenance)] + [
        f"- {closing(provenance)}"
    ]


def closing(provenance: Provenance) -> str:
    """The disclaimer, with what a test accuracy cannot say where the test's size is known."""
    patients = provenance.n_test_patients
    if patients is None:
        return DISCLAIMER
    return f"{DISCLAIMER} A test accuracy on {patients} test patients says nothing about use in a clinic."


def fold_note(config: Mapping) -> str:
    """A fold's report and card say which fold they are and what to report instead ("" if none)."""
    folds = config.get("folds") or 0
    if not folds:
        return ""
    # One fold tests on a K-th of the patients: its figure is one draw of K, and the protocol's
    # summary (bcnb.batch.protocol) sets all K side by side with their spread.
    return (
        f"**Fold {config['fold']} of {folds} of a cross-validation by patient: what to report is the "
        "protocol's summary.md in the folder above (every fold's figures, their mean and spread), "
        "not one fold's.**"
    )


def short_lines(provenance: Provenance) -> list[str]:
    """One line per caveat, for a terminal (``bcnb predict`` prints them on stderr)."""
    return [f"WARNING: {caveat.text}" for caveat in list_caveats(provenance)]


def subtitle(provenance: Provenance) -> str:
    """All the caveats in one line, for a figure that travels without its report ("" if none)."""
    tags = [caveat.tag for caveat in list_caveats(provenance)]
    return f"{', '.join(tags)}: {NOT_THE_PAPERS}" if tags else ""


def _sentence(caveat: Caveat, capital: bool = False) -> str:
    text = caveat.text[0].upper() + caveat.text[1:] if capital else caveat.text
    return f"{text}."


# --------------------------------------------------------------------------- the weights in words
def describe_weights(provenance: Provenance) -> str:
    """The base's weights in one line: where pretrained ones came from, or the caveat."""
    if provenance.weights_used == "imagenet" and provenance.pretrained:
        return f"ImageNet weights ({provenance.weights_source})"
    if provenance.pretrained:
        return f"weights file {provenance.weights_source}"
    return f"WARNING: {_weights_caveat(provenance).text}"


def model_kind(provenance: Provenance) -> str:
    """What a model card's title calls the model: a transfer model only where the base was pretrained."""
    if provenance.pretrained is None:
        return "model (whether its base was pretrained is unknown)"
    return "transfer model" if provenance.pretrained else "model on a random base (no ImageNet transfer)"


def label_weights(provenance: Provenance) -> str:
    """The base's weights as a report's line names them: ImageNet, the file, or RANDOM."""
    if provenance.pretrained is None:
        return "unknown"
    if not provenance.pretrained:
        return f"{RANDOM} (not pretrained)"
    return "ImageNet" if provenance.weights_used == "imagenet" else f"file {provenance.weights_source}"


def learning_rate_note(provenance: Provenance, learning_rate: float) -> str:
    """What a random base means for this run's learning rate ("" unless the base is random)."""
    if provenance.pretrained is not False:
        return ""
    why = "The base has random weights: their features are tiny, so the head learns slowly"
    if learning_rate < 0.01:
        return f"{why} at this run's learning_rate={learning_rate} (configs/demo.yaml uses 0.03)."
    return f"{why} at 0.001; this run trains it at learning_rate={learning_rate}."
