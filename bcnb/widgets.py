"""Interactive widgets for the course in JupyterLab, each with a static twin.

With ``interactive=True`` each function returns an ipywidgets box: controls whose changes
redraw what they show. Headless runs (papermill, ``bcnb reproduce``, which sets the
``interactive`` parameter to false) have no front end to draw widgets, and an executed
notebook would only hold their text form ("HBox(children=...)"); there the same function
returns a figure or a table for the parameters' values instead.
"""

from __future__ import annotations

import io
import math
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from PIL import Image

from bcnb.data.augment import Augmentation, apply_augmentation, augmentation_examples
from bcnb.data.images import read_rgb
from bcnb.data.loading import magnification_order
from bcnb.data.tasks import CLASSES
from bcnb.evaluate.scores import compute_metrics, format_figure, ratio


def png_bytes(pixels: np.ndarray, width: int = 0) -> bytes:
    """An RGB array as PNG bytes for an ipywidgets.Image, shrunk to ``width`` if given."""
    image = Image.fromarray(np.asarray(pixels).astype("uint8"))
    if width and image.width > width:
        image = image.resize((width, round(image.height * width / image.width)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- dataset browser
def matching_images(table: pd.DataFrame, label: str, patient: str = "", magnification: str = ""):
    """The images of one class, narrowed to a patient and a magnification when given."""
    rows = table[table["label"] == label]
    if patient:
        rows = rows[rows["patient_id"].astype(str) == str(patient)]
    if magnification:
        rows = rows[rows["magnification"] == magnification]
    return rows


def dataset_browser(table: pd.DataFrame, interactive: bool = True, label: str = CLASSES[1]):
    """Pick a class, a patient and a magnification; see that patient's images.

    Static: up to four images of the class's first patient, with their labels.
    """
    if not interactive:
        from bcnb.report.figures import plot_overlays

        rows = matching_images(table, label)
        rows = matching_images(table, label, rows["patient_id"].iloc[0]).head(4)
        titles = [f"{r.label}, patient {r.patient_id}, {r.magnification}" for r in rows.itertuples()]
        return plot_overlays([read_rgb(path) for path in rows["path"]], titles)
    import ipywidgets as widgets

    classes = widgets.Dropdown(options=list(CLASSES), value=label, description="class")
    patients = widgets.Dropdown(description="patient")
    magnifications = widgets.Dropdown(description="magnification")
    index = widgets.IntSlider(min=0, max=0, description="image")
    picture, caption = widgets.Image(format="png"), widgets.Label()
    caption.add_class("bcnb-caption")  # a handle for the browser test

    def show(_=None):
        rows = matching_images(table, classes.value, patients.value or "", magnifications.value or "")
        index.max = max(0, len(rows) - 1)
        row = rows.iloc[min(index.value, index.max)]
        picture.value = png_bytes(read_rgb(row["path"]), width=460)
        caption.value = f"{row['label']}, patient {row['patient_id']}, {row['magnification']}"

    def choose(dropdown, options):
        # New options keep the choice when it is still there, else take the first.
        dropdown.options = options
        if dropdown.value not in options:
            dropdown.value = options[0]

    def on_class(_=None):  # a class's patients: every choice offered has images
        choose(patients, sorted(matching_images(table, classes.value)["patient_id"].astype(str).unique()))
        on_patient()

    def on_patient(_=None):  # a patient's magnifications
        rows = matching_images(table, classes.value, patients.value or "")
        choose(magnifications, magnification_order(rows["magnification"]))
        show()

    classes.observe(on_class, names="value")
    patients.observe(on_patient, names="value")
    for control in (magnifications, index):
        control.observe(show, names="value")
    on_class()
    return widgets.VBox([widgets.HBox([classes, patients, magnifications]), index, picture, caption])


# --------------------------------------------------------------------------- augmentation
def augmentation_preview(image: np.ndarray, augmentation: Augmentation, interactive: bool = True, seed=0):
    """One training image and an augmented version of it, the augmentation set by sliders.

    Static: four random augmentations of the strength the parameters give.
    """
    if not interactive:
        from bcnb.report.figures import plot_augmentations

        return plot_augmentations(image, augmentation_examples(image, augmentation, n=4, seed=seed))
    import ipywidgets as widgets

    def factor(name):  # a multiplier around 1
        return widgets.FloatSlider(value=1.0, min=0.6, max=1.4, step=0.05, description=name)

    controls = {
        "flip_left_right": widgets.Checkbox(description="flip left-right"),
        "flip_up_down": widgets.Checkbox(description="flip up-down"),
        "quarter_turns": widgets.IntSlider(min=0, max=3, description="quarter turns"),
        "brightness_delta": widgets.FloatSlider(min=-0.3, max=0.3, step=0.02, description="brightness"),
        "contrast_factor": factor("contrast"),
        "haematoxylin": factor("haematoxylin"),
        "eosin": factor("eosin"),
    }
    picture = widgets.Image(format="png")

    def show(_=None):
        values = {name: control.value for name, control in controls.items()}
        alpha = (values.pop("haematoxylin"), values.pop("eosin"), 1.0)
        changed = np.asarray(apply_augmentation(image, stain_alpha=alpha, **values))
        picture.value = png_bytes(np.concatenate([image, changed], axis=1), width=640)

    for control in controls.values():
        control.observe(show, names="value")
    show()
    note = widgets.Label("left: the original; right: augmented")
    return widgets.HBox([widgets.VBox(list(controls.values())), widgets.VBox([picture, note])])


# --------------------------------------------------------------------------- threshold
def threshold_table(y_true: np.ndarray, probability: np.ndarray, threshold: float) -> pd.DataFrame:
    """Confusion counts and the rates a clinician asks about, at one threshold."""
    metrics = compute_metrics(y_true, probability, threshold)
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    rates = {
        "sensitivity": metrics["sensitivity"],
        "specificity": metrics["specificity"],
        "PPV (malignant when called so)": metrics["precision"],
        "NPV (benign when called so)": ratio(tn, tn + fn),
    }
    counts = {"true malignant called malignant": tp, "true malignant called benign": fn,
              "true benign called malignant": fp, "true benign called benign": tn}  # fmt: skip
    rows = {
        **{k: f"{v}" for k, v in counts.items()},
        **{k: format_figure(v, 1, True) for k, v in rates.items()},
    }
    return pd.Series(rows, name=f"threshold {threshold:.2f}").to_frame()


def threshold_explorer(y_true, probability, threshold: float, interactive: bool = True):
    """Move the decision threshold; watch the errors trade against each other.

    Static: the table at the chosen threshold beside the paper's 0.5.
    """
    if not interactive:
        return pd.concat([threshold_table(y_true, probability, t) for t in (0.5, threshold)], axis=1)
    import ipywidgets as widgets

    slider = widgets.FloatSlider(
        value=threshold, min=0.0, max=1.0, step=0.01, description="threshold", continuous_update=True
    )
    table = widgets.HTML()

    def show(_=None):
        table.value = threshold_table(y_true, probability, slider.value).to_html()

    slider.observe(show, names="value")
    show()
    return widgets.VBox([slider, table])


# --------------------------------------------------------------------------- try an image
def try_an_image(predictor, paths: list[Path] = (), interactive: bool = True):
    """Upload an image: its calibrated probability of malignancy and Grad-CAM overlay.

    Static: the same for ``paths``.
    """
    from bcnb.predict import describe_predictions, predict_files

    if not interactive:
        table = predict_files(predictor, list(paths))
        return table[["file", "label", "malignant", "refused"]].rename(
            columns={"label": "call", "malignant": "probability of malignancy"}
        )
    import ipywidgets as widgets

    upload = widgets.FileUpload(accept="image/*", multiple=False, description="image")
    picture, verdict = widgets.Image(format="png"), widgets.HTML("Choose an image file.")
    folder = Path(tempfile.mkdtemp(prefix="bcnb-upload-"))

    def predict(_=None):
        if not upload.value:
            return
        item = upload.value[0]
        path = folder / Path(item["name"]).name
        path.write_bytes(bytes(item["content"]))
        row = predict_files(predictor, [path], cam_dir=folder).iloc[0]
        if row["refused"]:
            verdict.value = f"<b>{path.name}</b>: refused, {row['refused']}"
            return
        # The words bcnb predict prints: the call, then the probability beside the threshold.
        (line,) = describe_predictions(row.to_frame().T.assign(file=path.name), predictor.rule)
        verdict.value = f"<b>{line}</b>"
        picture.value = Path(row["grad_cam"]).read_bytes()

    upload.observe(predict, names="value")
    return widgets.VBox([upload, verdict, picture])


# --------------------------------------------------------------------------- training progress
def training_progress(epochs: int, interactive: bool = True, title: str = ""):
    """A callback for ``fit(..., verbose=0)`` that shows its progress.

    In JupyterLab a live bar over the epochs with the current epoch, batch and the last
    epoch's metrics. Static (papermill, log files): a few lines (:class:`EpochHighlights`),
    with none of the carriage returns that Keras' own progress bar floods a log with
    (keras-team/keras#13716).
    """
    if not interactive:
        return EpochHighlights(epochs, print, title)
    return LiveProgress(epochs, title)


class EpochHighlights(keras.callbacks.Callback):
    """Headless progress in about ``lines`` lines: the first epoch, every Nth, the last one run
    and, when ``fit`` ended before ``epochs``, that it stopped early.

    One line per epoch made an executed notebook 100 lines long at the defaults, burying the
    figures; these few keep what a reader looks for: the start, the trend and where it ended.
    """

    def __init__(self, epochs: int, say=print, title: str = "", lines: int = 10):
        super().__init__()
        self.epochs, self.say, self.title = epochs, say, title
        self.every = max(1, math.ceil(epochs / lines))
        self.last, self.held = None, None

    def on_train_begin(self, logs=None):
        self.last, self.held = None, None

    def on_epoch_end(self, epoch, logs=None):
        from bcnb.train.fit import metrics_line

        line = f"{self.title}epoch {epoch + 1}/{self.epochs}: {metrics_line(logs)}"
        # The first epoch of this fit (a resumed one starts past epoch 1), every Nth, the last.
        shown = self.last is None or (epoch + 1) % self.every == 0 or epoch + 1 == self.epochs
        self.last = epoch
        if shown:
            self.say(line)
        self.held = None if shown else line  # printed at the end if it turns out to be the last

    def on_train_end(self, logs=None):
        if self.held:
            self.say(self.held)
        if self.last is not None and self.last + 1 < self.epochs:
            self.say(f"{self.title}stopped early after epoch {self.last + 1} of {self.epochs}")


class LiveProgress(keras.callbacks.Callback):
    """A bar over the epochs and a line of text, redrawn as ``fit`` runs (JupyterLab)."""

    REDRAW_SECONDS = 0.25  # between two redraws within an epoch: widget messages cost time

    def __init__(self, epochs: int, title: str = ""):
        super().__init__()
        import ipywidgets as widgets

        self.epochs, self.title = epochs, title
        self.bar = widgets.IntProgress(min=0, max=epochs, description=title or "epochs")
        self.text = widgets.Label("starting")
        self.view = widgets.HBox([self.bar, self.text])
        self.last_epoch, self.epoch, self._drawn = "", 0, 0.0

    def on_train_begin(self, logs=None):
        from IPython.display import display

        display(self.view)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.bar.value = epoch, epoch

    def on_train_batch_end(self, batch, logs=None):
        if time.monotonic() - self._drawn > self.REDRAW_SECONDS:
            steps = self.params.get("steps") or "?"
            self.text.value = (
                f"epoch {self.epoch + 1}/{self.epochs}, batch {batch + 1}/{steps} {self.last_epoch}"
            )
            self._drawn = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        from bcnb.train.fit import metrics_line

        self.last_epoch = f"| epoch {epoch + 1}: {metrics_line(logs)}"
        self.bar.value = epoch + 1
        self.text.value = self.last_epoch[2:]
