"""The lessons' own code run in this process (no kernel start): notebook 02 builds the model of
``build_model``, 03 trains as ``train_model`` does, and every backbone runs through 02-06.

Apart from tests/test_notebooks.py, whose tests read one headless run: these need none, so
they can run on another process meanwhile.
"""

import json

import keras
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import cell_with, code_cells, lesson

from bcnb import Config


def _run_here(name, **parameters):
    """Run a notebook's code cells in this process, with ``parameters`` injected after its
    parameters cell as papermill would: the notebooks' own code, without a kernel start."""
    import matplotlib.pyplot as plt

    namespace = {}
    for cell in code_cells(lesson(name)):
        exec(compile(cell.source, name, "exec"), namespace)
        if "parameters" in cell.metadata.get("tags", []):
            namespace.update(parameters)
    plt.close("all")
    return namespace


@pytest.fixture(scope="module")
def data_stage(tmp_path_factory):
    """Notebook 01 on a small built-in dataset: the run folder every backbone starts from."""
    folder = tmp_path_factory.mktemp("backbones") / "data"
    _run_here(
        "01_data.ipynb",
        run_dir=str(folder),
        interactive=False,
        synthetic_patients=12,
        synthetic_images_per_patient=1,
    )
    return folder


def _layers(model, configs: bool = True):
    """Each layer's type, name, configuration (nested bases included) and parameter count."""
    return [
        (type(layer).__name__, layer.name, *([layer.get_config()] if configs else []), layer.count_params())
        for layer in model.layers
    ]


@pytest.fixture(scope="module")
def model_stage(data_stage, tmp_path_factory):
    """Notebook 02 (32x32, random weights) on a copy of the data stage: its namespace and folder."""
    import shutil

    folder = tmp_path_factory.mktemp("lesson") / "run"
    shutil.copytree(data_stage, folder)
    keras.backend.clear_session()  # Keras numbers unnamed layers by what the process built before
    return _run_here("02_model.ipynb", run_dir=str(folder), img_size=32, weights="none"), folder


def _assert_is_what_build_model_builds(model, cfg) -> None:
    """The model a lesson wrote out is bcnb.model.transfer.build_model's (used by 05, predict and
    the command line) for the same configuration, layer for layer, down to the weights."""
    from bcnb.model import transfer
    from bcnb.run.seeds import seed_everything

    keras.backend.clear_session()  # as the lesson's notebook started
    seed_everything(cfg.seed)
    built = transfer.build_model(cfg.img_size, None, cfg.dropout, cfg.precision, cfg.backbone)
    assert built.name == f"bcnb_{cfg.backbone}" and _layers(model) == _layers(built)
    assert [weight.path.split("/")[0] for weight in built.trainable_weights] == ["classifier"] * 2
    assert transfer.count_parameters(model) == transfer.count_parameters(built)
    _assert_same_weights(model, built)


def _assert_same_weights(model, other) -> None:
    assert len(model.weights) == len(other.weights)
    for ours, theirs in zip(model.weights, other.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


@pytest.mark.slow
def test_notebook_02_builds_the_model_of_build_model(model_stage):
    shown, _ = model_stage
    _assert_is_what_build_model_builds(shown["model"], shown["cfg"])


@pytest.mark.slow
def test_notebook_02_tumour_type_variant_is_the_head_of_build_model(model_stage):
    """The variant branch, run with task="subtype" on the lesson's own base, gives the head
    bcnb.model.transfer.build_model gives for that task."""
    from bcnb.model import transfer

    shown, _ = model_stage
    cfg = shown["cfg"].replace(task="subtype")
    namespace = {**shown, "cfg": cfg}
    exec(cell_with("02_model.ipynb", "keras.Model(inputs, outputs"), namespace)
    built = transfer.build_model(cfg.img_size, None, cfg.dropout, cfg.precision, cfg.backbone, cfg.task)
    head = ["pool", "dropout", "classifier"]
    ours = [layer for layer in _layers(namespace["model"]) if layer[1] in head]
    assert ours == [layer for layer in _layers(built) if layer[1] in head]
    assert namespace["model"].output.shape == built.output.shape == (None, 8)


@pytest.mark.slow
def test_notebook_03_trains_like_train_model(model_stage, tmp_path):
    """The compile and fit the lesson writes out give what bcnb.train.fit.train_model gives."""
    import shutil

    from bcnb.model import transfer
    from bcnb.run import artifacts
    from bcnb.run.seeds import seed_everything
    from bcnb.train import fit

    _, prepared = model_stage
    lesson, library = tmp_path / "lesson", tmp_path / "library"
    shutil.copytree(prepared, lesson)
    shutil.copytree(prepared, library)
    shown = _run_here("03_train.ipynb", run_dir=str(lesson), interactive=False, epochs=6, learning_rate=0.03)
    cfg = Config.from_file(lesson / "config.yaml", run_dir=str(library))
    seed_everything(cfg.seed)
    model = transfer.load_model(library / artifacts.INITIAL_MODEL_FILE)
    history = fit.train_model(cfg, model, artifacts.load_split(library))
    pd.testing.assert_frame_equal(pd.read_csv(lesson / "history.csv"), history, check_dtype=False)
    np.testing.assert_array_equal(
        shown["model"].get_layer("classifier").kernel.numpy(), model.get_layer("classifier").kernel.numpy()
    )
    assert len(history) == 6 and not (lesson / "checkpoint" / "training.npz").exists()


@pytest.mark.slow
@pytest.mark.parametrize("written", ["VGG19", "densenet121", "EfficientNetB0", "mobilenetv2"])  # and the run
def test_every_backbone_runs_through_notebooks_02_to_06(data_stage, written, tmp_path):
    import shutil

    from bcnb.model import transfer
    from bcnb.model.backbones import get_backbone

    folder = tmp_path / "run"
    shutil.copytree(data_stage, folder)
    keras.backend.clear_session()  # Keras numbers unnamed layers by what the process built before
    written_out = _run_here(
        "02_model.ipynb", run_dir=str(folder), backbone=written, img_size=32, weights="none"
    )
    _assert_is_what_build_model_builds(written_out["model"], written_out["cfg"])
    saved = transfer.load_model(folder / "model_initial.keras")  # in safe mode, as 03 loads it
    assert _layers(saved, configs=False) == _layers(written_out["model"], configs=False)
    _assert_same_weights(saved, written_out["model"])
    _run_here("03_train.ipynb", run_dir=str(folder), interactive=False, epochs=2, batch_size=8)
    _run_here("04_evaluate.ipynb", run_dir=str(folder), interactive=False, bootstrap_samples=100)
    shown = _run_here("06_predict.ipynb", run_dir=str(folder), interactive=False)
    name = written.lower()
    assert yaml.safe_load((folder / "config.yaml").read_text())["backbone"] == name
    assert f"- model: {get_backbone(name).title} (frozen" in (folder / "report.md").read_text()
    assert json.loads((folder / "metrics.json").read_text())["n_test_images"] > 0
    assert len(shown["table"]) == 4 and len(list((folder / "predictions").glob("*_gradcam.png"))) == 4
