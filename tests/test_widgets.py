"""The course's widgets: what a student's changes do, and their static twins."""

import base64
import datetime
import io
import re

import ipywidgets
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from bcnb import widgets
from bcnb.data.augment import Augmentation
from bcnb.predict import Predictor


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def _find(box, kind, description=None):
    """The first control of ``kind`` (and description) inside nested boxes."""
    for child in box.children:
        if isinstance(child, kind) and description in (None, getattr(child, "description", None)):
            return child
        if isinstance(child, ipywidgets.Box):
            found = _find(child, kind, description)
            if found is not None:
                return found
    return None


@pytest.fixture(scope="module")
def table(tiny_split):
    return tiny_split


def test_dataset_browser_shows_the_chosen_patients_images(table):
    box = widgets.dataset_browser(table)
    classes, patients = _find(box, ipywidgets.Dropdown, "class"), _find(box, ipywidgets.Dropdown, "patient")
    picture, caption = _find(box, ipywidgets.Image), _find(box, ipywidgets.Label)
    malignant = set(table.loc[table["label"] == "malignant", "patient_id"].astype(str))
    assert set(patients.options) == malignant  # only the chosen class's patients
    first = picture.value
    classes.value = "benign"
    assert set(patients.options) == set(table.loc[table["label"] == "benign", "patient_id"].astype(str))
    assert picture.value != first and caption.value.startswith(f"benign, patient {patients.value}")
    magnifications = _find(box, ipywidgets.Dropdown, "magnification")
    own = table[table["patient_id"].astype(str) == patients.value]
    assert set(magnifications.options) == set(own["magnification"])  # only what the patient has
    assert caption.value.endswith(magnifications.value)
    before = picture.value
    magnifications.value = magnifications.options[-1]
    assert picture.value != before and caption.value.endswith(magnifications.options[-1])


def test_dataset_browser_static_twin_is_a_figure(table):
    fig = widgets.dataset_browser(table, interactive=False)
    assert isinstance(fig, Figure) and all(ax.get_title().startswith("malignant") for ax in fig.axes)


def test_augmentation_sliders_change_the_augmented_half_only():
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3)).astype("float32")
    box = widgets.augmentation_preview(image, Augmentation())
    picture = _find(box, ipywidgets.Image)
    both = _pixels(picture.value)
    np.testing.assert_array_equal(both[:, :16], image.astype("uint8"))  # left: the original
    _find(box, ipywidgets.Checkbox, "flip left-right").value = True
    flipped = _pixels(picture.value)
    np.testing.assert_array_equal(flipped[:, 16:], image[:, ::-1].astype("uint8"))
    _find(box, ipywidgets.FloatSlider, "brightness").value = 0.2
    assert _pixels(picture.value)[:, 16:].mean() > flipped[:, 16:].mean()
    assert isinstance(widgets.augmentation_preview(image, Augmentation(), interactive=False), Figure)


def test_threshold_table_counts_and_rates():
    y_true = np.array([1, 1, 1, 0, 0])
    probability = np.array([0.9, 0.6, 0.3, 0.7, 0.1])
    table = widgets.threshold_table(y_true, probability, 0.5).iloc[:, 0]
    assert table["true malignant called malignant"] == "2" and table["true benign called malignant"] == "1"
    assert table["sensitivity"] == "66.7%" and table["specificity"] == "50.0%"
    assert (
        table["PPV (malignant when called so)"] == "66.7%" and table["NPV (benign when called so)"] == "50.0%"
    )


def test_threshold_slider_redraws_the_table():
    y_true, probability = np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.6, 0.1])
    box = widgets.threshold_explorer(y_true, probability, 0.5)
    slider, html = _find(box, ipywidgets.FloatSlider), _find(box, ipywidgets.HTML)
    assert "50.0%" in html.value  # sensitivity 1 of 2 at 0.5
    slider.value = 0.3
    assert "100.0%" in html.value and "threshold 0.30" in html.value
    static = widgets.threshold_explorer(y_true, probability, 0.3, interactive=False)
    assert list(static.columns) == ["threshold 0.50", "threshold 0.30"]


def _upload(name: str, content: bytes) -> tuple:
    return (
        {
            "name": name,
            "type": "image/png",
            "size": len(content),
            "content": memoryview(content),
            "last_modified": datetime.datetime.now(datetime.UTC),
        },
    )


def test_try_an_image_predicts_an_upload_and_refuses_a_bad_one(run_dir):
    predictor = Predictor.from_run(run_dir / "model.keras")
    box = widgets.try_an_image(predictor)
    upload, verdict, picture = (
        _find(box, kind) for kind in (ipywidgets.FileUpload, ipywidgets.HTML, ipywidgets.Image)
    )
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
        buffer, "PNG"
    )
    upload.value = _upload("slide.png", buffer.getvalue())
    # the words of bcnb predict: a call that cannot be read against its probability
    assert re.search(
        r"slide.png  (BENIGN|MALIGNANT) +probability of malignancy \S+% \((below|at or above) the",
        verdict.value,
    )
    assert _pixels(picture.value).shape == (32, 32, 3)  # the Grad-CAM overlay at the model's size
    upload.value = _upload("broken.png", b"not an image")
    assert "refused" in verdict.value and "broken.png" in verdict.value


def test_figures_display_as_images_in_a_notebook_kernel():
    """Figures made without pyplot still render in notebooks (once, as PNG), not as text."""
    from IPython.core.interactiveshell import InteractiveShell

    from bcnb.report import figures

    shell = InteractiveShell.instance()
    try:
        figures.show_figures_inline()
        fig = Figure()
        fig.subplots().plot([0, 1], [1, 0])
        png = shell.display_formatter.format(fig)[0]["image/png"]
        raw = base64.b64decode(png) if isinstance(png, str) else png  # IPython may send base64
        assert raw.startswith(b"\x89PNG")
    finally:
        InteractiveShell.clear_instance()


def _train(progress, epochs=3, stop_after=None):
    """A tiny model fitted for ``epochs`` with ``progress`` as its callback, ended by the
    model's own stop flag after epoch ``stop_after`` if given (as EarlyStopping ends it)."""
    import keras

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == stop_after:
                self.model.stop_training = True

    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(inputs))
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(0).normal(size=(12, 2)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")
    model.fit(x, y, batch_size=12, epochs=epochs, verbose=0, callbacks=[Stop(), progress])


def _epochs_printed(lines):
    return [int(line.split("/")[0].removeprefix("epoch ")) for line in lines if line.startswith("epoch ")]


def test_training_progress_headless_prints_every_epoch_of_a_short_fit(capsys):
    _train(widgets.training_progress(3, interactive=False))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("loss" in line and "accuracy" in line and "\r" not in line for line in lines)


def test_training_progress_headless_prints_a_handful_of_a_long_fit(capsys):
    """100 epochs (notebook 03's default) give about ten lines, not a hundred: the first, the
    last and evenly spaced ones between, each with its loss."""
    _train(widgets.training_progress(100, interactive=False), epochs=100)
    lines = capsys.readouterr().out.splitlines()
    printed = _epochs_printed(lines)
    assert len(lines) == len(printed) <= 12 and printed[0] == 1 and printed[-1] == 100
    assert printed == sorted(printed) and max(np.diff(printed)) <= 10  # no long silent stretch
    assert all("loss" in line and "accuracy" in line for line in lines)


def test_training_progress_headless_shows_where_fit_stopped(capsys):
    _train(widgets.training_progress(100, interactive=False), epochs=100, stop_after=37)
    lines = capsys.readouterr().out.splitlines()
    assert _epochs_printed(lines)[-1] == 37 and "loss" in lines[-2]  # the last epoch run, then:
    assert lines[-1] == "stopped early after epoch 37 of 100"
    assert len(lines) <= 7


def test_training_progress_in_jupyterlab_is_a_live_bar(capsys):
    progress = widgets.training_progress(3, interactive=True)
    _train(progress)
    assert isinstance(progress.bar, ipywidgets.IntProgress) and progress.bar.value == progress.bar.max == 3
    assert progress.text.value.startswith("epoch 3: ") and "loss" in progress.text.value
    assert "epoch 1/3" not in capsys.readouterr().out  # the bar, not printed lines
