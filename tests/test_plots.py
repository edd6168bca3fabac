"""The saved figures: sharp enough to read, legends off the data, caveats in the picture."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.transforms import Bbox
from PIL import Image

from bcnb.batch.protocol import METRICS
from bcnb.report import figures
from bcnb.run import artifacts

MIN_DPI = 150  # the floor: 110 dpi made a 407-pixel confusion matrix


def _drawn(fig):
    """``fig`` laid out and drawn as when saved, so that window extents are final."""
    FigureCanvasAgg(fig).draw()
    return fig


def _legends(fig):
    return [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]


def _assert_legends_beside_the_axes(fig):
    """Every legend lies inside the figure and outside every axes, so no bar, point or curve
    can sit under it, whatever the data."""
    fig = _drawn(fig)
    legends = _legends(fig)
    assert legends, "the figure has a legend"
    whole = fig.bbox
    for legend in legends:
        box = legend.get_window_extent()
        assert whole.x0 <= box.x0 and box.x1 <= whole.x1 and whole.y0 <= box.y0 and box.y1 <= whole.y1
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent()), ax.get_title()


def _history(epochs=40, fine_tune=5):
    rng = np.random.default_rng(0)
    falling = np.linspace(0.7, 0.2, epochs)
    return pd.DataFrame(
        {
            "epoch": np.arange(1, epochs + 1),
            "loss": falling,
            "val_loss": falling + 0.1 + rng.normal(0, 0.02, epochs),
            "accuracy": 1 - falling,
            "val_accuracy": 0.9 - falling,
            "phase": ["head"] * (epochs - fine_tune) + ["fine_tune"] * fine_tune,
        }
    )


def _images_table(n=300):
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "label": rng.choice(["benign", "malignant"], n),
            "magnification": rng.choice(["40X", "100X", "200X", "400X"], n),
        }
    )


def _summary(weights_pretrained, dataset, runs=5):
    rng = np.random.default_rng(2)
    return {
        "protocol": "5-fold cross-validation by patient (seed 42)",
        "runs": [
            {
                "run": f"fold{i}",
                "at_0.5": {name: float(rng.uniform(0.5, 1)) for name in METRICS},
                "at_chosen_threshold": {name: float(rng.uniform(0.5, 1)) for name in METRICS},
            }
            for i in range(runs)
        ],
        "paper_test_accuracy": 0.9344,
        "weights_pretrained": weights_pretrained,
        "dataset": dataset,
    }


@pytest.mark.parametrize("save", ["save_figure", "save_image"])
def test_saved_figures_are_at_least_150_dpi(save, tmp_path):
    """Both ways of saving (run folder figures, and summary.png) write 150 dpi or more: the
    PNG says so, and its pixels per inch of figure agree."""
    fig = figures.plot_confusion_matrix([[10, 3], [2, 30]])
    if save == "save_figure":
        path = figures.save_figure(fig, tmp_path, "confusion_matrix")
        assert path == tmp_path / artifacts.FIGURES_DIR / "confusion_matrix.png"
    else:
        path = figures.save_image(fig, tmp_path / "summary.png")
    with Image.open(path) as png:
        assert min(png.info["dpi"]) >= MIN_DPI - 0.5  # PNG stores dots per metre: rounding
        width_inches, height_inches = fig.get_size_inches()
        # bbox_inches="tight" trims a few margins, never a tenth of the figure
        assert png.width >= 0.9 * MIN_DPI * width_inches and png.height >= 0.9 * MIN_DPI * height_inches


def test_class_counts_legend_covers_no_bar():
    _assert_legends_beside_the_axes(figures.plot_class_counts(_images_table()))


@pytest.mark.parametrize("fine_tune", [0, 5])
def test_learning_curves_legend_covers_no_curve(fine_tune):
    _assert_legends_beside_the_axes(figures.plot_history(_history(fine_tune=fine_tune)))


def test_runs_summary_legend_covers_no_run():
    _assert_legends_beside_the_axes(figures.plot_runs(_summary(True, "breakhis")))


def _figure_texts(fig):
    return [text for text in fig.findobj(lambda artist: hasattr(artist, "get_text")) if text.get_text()]


@pytest.mark.parametrize(
    ("pretrained", "dataset", "said"),
    [
        (False, "synthetic", ["RANDOM weights", "generated images", "cannot be compared with the paper's"]),
        (False, "breakhis", ["RANDOM weights", "cannot be compared with the paper's"]),
        (True, "synthetic", ["generated images", "cannot be compared with the paper's"]),
    ],
)
def test_runs_summary_says_in_the_figure_when_it_is_not_the_papers_setting(pretrained, dataset, said):
    """summary.png travels without summary.md: beside "paper: 0.9344", random weights or
    generated images are said in the picture, above the axes where it cannot hide a point."""
    fig = _drawn(figures.plot_runs(_summary(pretrained, dataset)))
    (caveat,) = [t for t in _figure_texts(fig) if "compared with the paper" in t.get_text()]
    assert all(words in caveat.get_text() for words in said)
    if pretrained:
        assert "RANDOM" not in caveat.get_text()
    box = caveat.get_window_extent()
    assert Bbox.intersection(box, fig.bbox).width == pytest.approx(box.width)  # not cut off
    assert all(not box.overlaps(ax.get_window_extent()) for ax in fig.axes)


def test_runs_summary_of_pretrained_real_runs_has_no_caveat_and_labels_its_axis():
    fig = _drawn(figures.plot_runs(_summary(True, "breakhis")))
    assert not [t for t in _figure_texts(fig) if "compared" in t.get_text() or "RANDOM" in t.get_text()]
    (ax,) = fig.axes
    assert ax.get_ylabel()  # what the points measure
    assert any(t.get_text() == "paper: 0.9344" for t in ax.get_legend().get_texts())
