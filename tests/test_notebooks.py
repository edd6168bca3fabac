"""The notebooks: their parameters, their stored outputs, and a full headless run."""

import ast
import json
import os
import subprocess
import sys

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import cell_with, code_cells, lesson, signal_tree

from bcnb import Config
from bcnb.batch.notebooks import NOTEBOOKS, NOTEBOOKS_DIR, STAGE_OF_NOTEBOOK
from bcnb.config import STAGES
from bcnb.run.record import record_all


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_cell_holds_its_own_stage_at_config_defaults(name):
    """Each lesson's knobs are those of its step (plus run_dir, and interactive where it
    shows widgets); the rest reach it through the run's record."""
    cells = code_cells(lesson(name))
    first = cells[1]  # after the Colab setup cell (tests/test_colab.py)
    assert first.metadata.get("tags") == ["parameters"] and cells[0].metadata.get("tags") == ["colab-setup"]
    values = {}
    for statement in ast.parse(first.source).body:
        assert isinstance(statement, ast.Assign), "the parameters cell holds assignments only"
        values[statement.targets[0].id] = ast.literal_eval(statement.value)  # flat literals only
    assert set(values) - {"interactive", "run_dir"} == set(STAGES[STAGE_OF_NOTEBOOK[name]])
    assert "run_dir" in values
    defaults = Config().to_dict()
    assert values == {key: defaults[key] for key in values}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_notebook_is_lean(name):
    """Only the small, deterministic outputs that nbval checks are committed."""
    cells = code_cells(lesson(name))
    checked = [cell for cell in cells if "# NBVAL_CHECK_OUTPUT" in cell.source]
    # nbval skips 05 (five backbones at 224x224, minutes); the small run checks its outputs
    assert bool(checked) == (name != "05_compare_backbones.ipynb"), "nbval compares these outputs"
    for cell in cells:
        if cell not in checked:
            assert cell.outputs == [], cell.source[:60]
        for output in cell.outputs:
            assert output.output_type == "stream" and len(output.text) < 2000


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_cells_are_short_and_explained(name):
    cells = lesson(name).cells
    code = [
        cell
        for cell in cells
        if cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", [])
    ]
    assert all(len(cell.source.splitlines()) <= 15 for cell in code)
    prose = sum(len(cell.source.split()) for cell in cells if cell.cell_type == "markdown")
    assert prose > 250, "the notebooks are lessons: prose explains each step"


def test_notebook_02_writes_the_papers_head_as_the_paper_does():
    """The paper's Dense line, word for word, as the first branch; the tumour-type head only
    as the marked variant beside it."""
    source = cell_with("02_model.ipynb", "keras.Model(inputs, outputs")
    (branch,) = [node for node in ast.parse(source).body if isinstance(node, ast.If)]
    assert ast.unparse(branch.test) == "cfg.task == 'binary'"
    paper = 'outputs = keras.layers.Dense(1, activation="sigmoid", name="classifier", dtype="float32")(x)'
    variant = 'outputs = keras.layers.Dense(8, activation="softmax", name="classifier", dtype="float32")(x)'
    lines = [line.strip() for line in source.splitlines()]
    above = {line: lines[lines.index(line) - 1] for line in (paper, variant)}  # the branch's line
    assert above[paper].startswith('if cfg.task == "binary":  # the paper')
    assert above[variant].startswith("else:  # VARIANT")


PAPERS_CALLS = [("03_train.ipynb", "compile"), ("03_train.ipynb", "fit"), ("04_evaluate.ipynb", "evaluate")]


@pytest.mark.parametrize(("name", "method"), PAPERS_CALLS)
def test_the_papers_compile_fit_and_evaluate_are_called_on_a_model(name, method):
    """A student finds the paper's model.compile, model.fit and model.evaluate: each call names
    a model (the head on cached features stands in for it, the prose says how)."""
    calls = [
        node.func.value.id
        for cell in code_cells(lesson(name))
        for node in ast.walk(ast.parse(cell.source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == method
        if isinstance(node.func.value, ast.Name)
    ]
    assert calls and all("model" in receiver for receiver in calls), calls
    first = next(cell.source for cell in code_cells(lesson(name)) if f".{method}(" in cell.source)
    assert f"the paper's model.{method}" in first  # said where the call is


def test_course_cross_validation_runs_the_demo_config():
    """docs/course.md's folds exercise: without --config, offline, the head of a random base
    at the default learning rate calls everything malignant, so the folds would measure
    only class balance. The config it names has random weights on purpose and a larger rate."""
    import re
    import shlex

    from bcnb.batch.notebooks import ROOT_DIR

    course = (ROOT_DIR / "docs" / "course.md").read_text()
    commands = [shlex.split(found) for found in re.findall(r"`(bcnb reproduce [^`]*--folds[^`]*)`", course)]
    assert commands
    for command in commands:
        assert "--config" in command, command
        cfg = Config.from_file(ROOT_DIR / command[command.index("--config") + 1])
        assert cfg.weights == "none" and cfg.learning_rate > Config().learning_rate


# --------------------------------------------------------------------------- a real run
SMALL = {
    "synthetic_patients": 12,
    "synthetic_images_per_patient": 1,
    "img_size": 32,
    "batch_size": 8,
    "epochs": 30,  # patience as long: enough epochs for a test to kill the run while it trains
    "patience": 30,
    "weights": "none",
    "learning_rate": 0.03,
    # Beyond the paper, so that the run covers them too: augmentation and fine-tuning.
    "augment": True,
    "fine_tune_layers": 10,
    "fine_tune_epochs": 2,
    "compare_backbones": "resnet50v2,mobilenetv2",
}


RESULT_FILES = (
    "config.yaml", "split.csv", "model.keras", "history.csv", "training.json", "metrics.json",
    "report.md", "model_card.md", "predictions.csv", "weights.json", "figures/roc_curve.png",
    "figures/confusion_matrix.png", "figures/learning_curves.png", "figures/montage.png",
    "figures/reliability.png", "figures/grad_cam.png", "decision.json", "compare/backbones.csv",
    "compare/paired.csv", "compare/mobilenetv2/model.keras",
)  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """`bcnb reproduce` on a small built-in dataset: all four notebooks through papermill."""
    out = tmp_path_factory.mktemp("runs") / "small"
    sets = [arg for key, value in SMALL.items() for arg in ("--set", f"{key}={value}")]
    result = subprocess.run(
        [sys.executable, "-m", "bcnb", "reproduce", "--out", str(out), "--compare", *sets],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.mark.slow
def test_reproduce_leaves_every_result_in_the_run_folder(run):
    out, result = run
    for name in RESULT_FILES:
        assert (out / name).is_file(), name
    assert set(NOTEBOOKS) <= {p.name for p in (out / "notebooks").iterdir()}
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no staging left
    for number, name in enumerate(NOTEBOOKS, start=1):
        assert f"[{number}/6] {name}" in result.stderr  # progress, notebook by notebook


@pytest.mark.slow
def test_config_records_the_parameters_used(run):
    out, _ = run
    saved = yaml.safe_load((out / "config.yaml").read_text())
    # Headless, so the notebooks drew static figures instead of widgets.
    assert Config(**saved, run_dir=str(out)) == Config(**SMALL, run_dir=str(out), interactive=False)


@pytest.mark.slow
def test_metrics_agree_with_the_predictions_and_split(run):
    out, _ = run
    metrics = json.loads((out / "metrics.json").read_text())
    split = pd.read_csv(out / "split.csv", dtype={"patient_id": str})
    test = split[split["split"] == "test"]
    predictions = pd.read_csv(out / "predictions.csv")
    assert metrics["n_test_images"] == len(test) == len(predictions)
    assert metrics["n_test_patients"] == test["patient_id"].nunique()
    at_half = np.where(predictions["malignant_probability"] >= 0.5, "malignant", "benign")
    correct = (predictions["label"] == at_half).mean()
    assert metrics["test_accuracy"] == pytest.approx(correct, abs=1e-6)  # Keras' evaluate = our count
    decided = metrics["decision"]  # at the threshold chosen on validation, on calibrated probabilities
    assert (
        (predictions["calibrated_probability"] >= decided["threshold"])
        .eq(predictions["predicted"] == "malignant")
        .all()
    )
    assert decided["image_level"]["accuracy"] == pytest.approx(
        (predictions["label"] == predictions["predicted"]).mean()
    )
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    assert tn + fp == (test["label"] == "benign").sum() and fn + tp == (test["label"] == "malignant").sum()
    assert metrics["balanced_accuracy"] == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2)
    assert 0 <= metrics["roc_auc"] <= 1 and metrics["test_loss"] > 0
    assert metrics["paper_test_accuracy"] == 0.9344
    assert metrics["weights"] == "random" and metrics["weights_pretrained"] is False


@pytest.mark.slow
def test_split_is_by_patient(run):
    split = pd.read_csv(run[0] / "split.csv", dtype={"patient_id": str})
    # the built-in data has BreakHis names: each image's tumour type travels with it
    assert list(split.columns) == ["path", "label", "patient_id", "magnification", "subtype", "split"]
    assert split.groupby("patient_id")["split"].nunique().max() == 1
    assert split.groupby("patient_id")["subtype"].nunique().max() == 1  # one type per patient


@pytest.mark.slow
def test_report_tells_what_was_run_and_what_it_means(run):
    out, _ = run
    report = (out / "report.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert "never for diagnosis" in report
    assert "RANDOM weights" in report and "not transfer learning" in report
    assert f"{metrics['test_accuracy']:.4f}" in report and "0.9344" in report
    assert "| test | malignant |" in report  # images and patients per split and class
    assert f"On {metrics['n_test_images']} test images from {metrics['n_test_patients']} patients" in report
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    assert f"| benign | {tn} | {fp} |" in report and f"| malignant | {fn} | {tp} |" in report


@pytest.mark.slow
def test_notebook_02_warns_loudly_about_random_weights(run):
    executed = nbformat.read(run[0] / "notebooks" / "02_model.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in code_cells(executed) for o in c.outputs)
    assert "WARNING: the base had RANDOM weights" in text


def _snapshot(folder):
    """Every file of a folder with its bytes' hash and modification time."""
    import hashlib

    files = [path for path in sorted(folder.rglob("*")) if path.is_file()]
    return {path: (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns) for path in files}


@pytest.mark.slow
def test_a_notebook_reruns_alone_on_the_run_folder(run, tmp_path):
    """Notebooks talk only through the run folder: 04 alone gives the same metrics, and a
    parameter that only changes presentation (interactive) leaves the record as it was."""
    import papermill

    out, _ = run
    before = json.loads((out / "metrics.json").read_text())
    record = (out / "config.yaml").read_bytes()
    papermill.execute_notebook(
        str(NOTEBOOKS_DIR / "04_evaluate.ipynb"),
        str(tmp_path / "04.ipynb"),
        parameters={"run_dir": str(out), "interactive": True},
        progress_bar=False,
    )
    after = json.loads((out / "metrics.json").read_text())
    assert after["confusion_matrix"] == before["confusion_matrix"]
    assert after["test_loss"] == pytest.approx(before["test_loss"], rel=1e-5)
    assert (out / "config.yaml").read_bytes() == record


@pytest.mark.slow
def test_a_notebook_with_another_run_parameter_is_refused_and_changes_nothing(run, tmp_path):
    import papermill
    from papermill.exceptions import PapermillExecutionError

    out, _ = run
    before = _snapshot(out)
    command = ["reproduce", "--out", str(out), "--only", "04", "--set", "learning_rate=0.5"]
    result = subprocess.run([sys.executable, "-m", "bcnb", *command], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "learning_rate=0.03 (not 0.5)" in line and "--out NEW" in line
    parameters = {"run_dir": str(out), "learning_rate": 0.5}  # as papermill or JupyterLab would set it
    with pytest.raises(PapermillExecutionError, match="RecordMismatch") as refused:
        papermill.execute_notebook(
            str(NOTEBOOKS_DIR / "04_evaluate.ipynb"), str(tmp_path / "04.ipynb"), parameters=parameters
        )
    assert "learning_rate=0.03 (not 0.5)" in str(refused.value)
    assert _snapshot(out) == before


@pytest.mark.slow
def test_only_reruns_a_notebook_in_place_with_the_runs_parameters(run, tmp_path):
    """bcnb reproduce --only 06: new images predicted by the finished run, the executed
    notebook replaced, the record untouched."""
    out, _ = run
    images = tmp_path / "new"
    images.mkdir()
    for i, path in enumerate(pd.read_csv(out / "predictions.csv")["path"].head(2)):
        (images / f"new{i}.png").write_bytes(open(path, "rb").read())
    record = (out / "config.yaml").read_bytes()
    command = ["reproduce", "--out", str(out), "--only", "06", "--set", f"predict_images={images}"]
    result = subprocess.run([sys.executable, "-m", "bcnb", *command], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    executed = nbformat.read(out / "notebooks" / "06_predict.ipynb", as_version=4)
    shown = "".join(str(o) for c in code_cells(executed) for o in c.outputs)
    assert "new0.png" in shown and "new1.png" in shown
    assert (out / "config.yaml").read_bytes() == record
    assert not list((out / "notebooks").glob(".*running*"))


@pytest.mark.slow
def test_a_failing_notebook_leaves_the_earlier_run_untouched(tmp_path):
    """A notebook that raises: exit 1 with one line, the old run folder intact, the failed
    run kept beside it for inspection."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for name in NOTEBOOKS:
        notebook = lesson(name)
        if name == "02_model.ipynb":
            notebook.cells.insert(4, nbformat.v4.new_code_cell('raise RuntimeError("boom")'))
        nbformat.write(notebook, notebooks / name)
    from bcnb.run.folder import start_folder

    out = tmp_path / "runs" / "demo"
    record_all(start_folder(out, "run"), Config())
    (out / "report.md").write_text("the earlier run\n")
    before = _snapshot(out)
    sets = [arg for key, value in SMALL.items() for arg in ("--set", f"{key}={value}")]
    result = subprocess.run(
        [sys.executable, "-m", "bcnb", "reproduce", "--out", str(out), "--notebooks", str(notebooks), *sets],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("bcnb: error:")]
    assert len(errors) == 1 and "02_model.ipynb failed" in errors[0] and "RuntimeError: boom" in errors[0]
    assert "Traceback" not in result.stderr
    assert _snapshot(out) == before
    staging = out.parent / ".demo.partial"
    assert (staging / "split.csv").is_file()  # 01 ran; its work is kept
    assert "boom" in (staging / "notebooks" / "02_model.ipynb").read_text()  # the failed notebook, to read
    assert f"executed notebook kept in {staging / 'notebooks' / '02_model.ipynb'}" in errors[0]


def _reproduce(out, *extra):
    sets = [arg for key, value in SMALL.items() for arg in ("--set", f"{key}={value}")]
    return [sys.executable, "-m", "bcnb", "reproduce", "--out", str(out), *sets, *extra]


def _checkpoint_epoch(staging):
    import numpy as np

    path = staging / "checkpoint" / "training.npz"
    try:
        with np.load(path) as stored:
            return json.loads(str(stored["meta"]))["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def test_resume_needs_an_interrupted_run(tmp_path):
    result = subprocess.run(_reproduce(tmp_path / "run", "--resume"), capture_output=True, text=True)
    assert result.returncode == 2 and "--resume: no interrupted run to resume" in result.stderr


def test_resume_refuses_other_parameters(tmp_path):
    staging = tmp_path / ".run.partial"
    staging.mkdir()
    record_all(staging, Config(**SMALL))
    result = subprocess.run(
        _reproduce(tmp_path / "run", "--resume", "--set", "seed=3"), capture_output=True, text=True
    )
    assert result.returncode == 2 and "seed=42 (not 3); run without --resume" in result.stderr


@pytest.mark.slow
def test_sharded_extraction_and_a_killed_training_end_like_an_uninterrupted_run(run, tmp_path):
    """reproduce --stop-after 02, two `bcnb extract` shards, then --resume, killed while it
    trains (a second writer is refused meanwhile), then --resume again: the same run as one
    uninterrupted `bcnb reproduce` (the `run` fixture, same parameters)."""
    import signal
    import time

    whole, out, staging = run[0], tmp_path / "resumed", tmp_path / ".resumed.partial"
    first = subprocess.run(_reproduce(out, "--stop-after", "02"), capture_output=True, text=True, timeout=900)
    assert first.returncode == 0 and "continue with --resume" in first.stderr, first.stderr[-2000:]
    for shard in ("0/2", "1/2"):
        extract = [sys.executable, "-m", "bcnb", "extract", "--out", str(out), "--shard", shard]
        subprocess.run(extract, check=True, capture_output=True, timeout=900)
    assert len(list((staging / "features" / "shards").glob("all.*-of-2.npy"))) == 2

    victim = subprocess.Popen(_reproduce(out, "--resume"), stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while _checkpoint_epoch(staging) < 3 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    signal_tree(victim.pid, signal.SIGSTOP)  # frozen mid-training, kernel too, holding the run folder
    second = subprocess.run(_reproduce(out, "--set", "seed=2"), capture_output=True, text=True)
    assert second.returncode == 2
    assert f"{out} is being written by bcnb reproduce (process {victim.pid}" in second.stderr
    signal_tree(victim.pid, signal.SIGKILL)  # the run and its kernel; the lock goes with them
    victim.wait()
    assert 3 <= _checkpoint_epoch(staging) < SMALL["epochs"], "the run was not killed during training"
    assert not out.exists()

    resumed = subprocess.run(_reproduce(out, "--resume"), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (out / "split.csv").read_text() == (whole / "split.csv").read_text()
    # Shards batch the images differently, so features may differ in their last bits.
    history, expected = (pd.read_csv(folder / "history.csv") for folder in (out, whole))
    assert history["phase"].tolist() == expected["phase"].tolist()
    np.testing.assert_allclose(history["val_loss"], expected["val_loss"], rtol=1e-3)
    before, after = (json.loads((folder / "metrics.json").read_text()) for folder in (whole, out))
    assert after["confusion_matrix"] == before["confusion_matrix"]
    assert after["test_loss"] == pytest.approx(before["test_loss"], rel=1e-3)


# --------------------------------------------------------------------------- beyond the paper
@pytest.mark.slow
def test_fine_tuning_ran_after_the_head(run):
    out, _ = run
    history = pd.read_csv(out / "history.csv")
    assert history["phase"].tolist() == ["head"] * (len(history) - 2) + ["fine_tune"] * 2
    training = json.loads((out / "training.json").read_text())
    assert training["fine_tune_epochs_run"] == 2 and training["augment"] is True
    assert training["fine_tuned_layers"] and not any("bn" in name for name in training["fine_tuned_layers"])
    assert "fine-tuning (beyond the paper): top 10 layers" in (out / "report.md").read_text()


@pytest.mark.slow
def test_report_states_the_decision_rule_and_patient_intervals(run):
    out, _ = run
    report = (out / "report.md").read_text()
    decided = json.loads((out / "decision.json").read_text())
    assert decided["threshold_rule"] == "youden" and decided["chosen_on"].startswith("validation split")
    assert f"images called malignant from {decided['threshold']:.3f} on" in report
    assert "never on test" in report and "95% CI (patients resampled)" in report


@pytest.mark.slow
def test_the_decision_names_the_model_it_was_fitted_on(run):
    from bcnb.evaluate.decision import FITTED_ON, weights_fingerprint
    from bcnb.model.transfer import load_model
    from bcnb.predict import Predictor

    out, _ = run
    fitted_on = json.loads((out / "decision.json").read_text())[FITTED_ON]
    assert fitted_on == weights_fingerprint(load_model(out / "model.keras"))
    with pytest.raises(ValueError, match="model_initial.keras is not the model"):
        Predictor.from_run(out / "model_initial.keras")  # untrained: the rule says nothing of it


@pytest.mark.slow
def test_model_card_figures_are_metrics_json(run):
    out, _ = run
    card = (out / "model_card.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    decided, intervals = (
        metrics["decision"]["image_level"],
        metrics["decision"]["image_level_95ci_by_patient"],
    )
    from bcnb.evaluate.intervals import format_interval

    for name in ("accuracy", "balanced_accuracy", "sensitivity", "specificity"):
        shown = format_interval(intervals[name])
        assert f"| {name.replace('_', ' ')} | {decided[name]:.4f} | {shown} |" in card
    assert f"accuracy {metrics['test_accuracy']:.4f} (95% interval resampling test patients" in card
    for name, found in metrics["per_magnification"].items():
        assert f"| {name} | {found['n_images']} | {found['accuracy']:.4f} |" in card
    # the synthetic names are BreakHis-like: tumour types, one row each, all test images
    by_type = card.split("By tumour type")[1].split("##")[0]
    rows = [
        line.split(" | ") for line in by_type.splitlines() if line.startswith("| ") and "images" not in line
    ]
    assert rows and sum(int(row[1]) for row in rows) == metrics["n_test_images"]
    assert "RANDOM weights" in card.split("## Model")[0]


@pytest.mark.slow
def test_backbone_comparison_on_the_same_split(run):
    out, _ = run
    table = pd.read_csv(out / "compare" / "backbones.csv", index_col="backbone")
    assert table.index.tolist() == ["resnet50v2", "mobilenetv2"]
    assert table.loc["mobilenetv2", "parameters (M)"] < table.loc["resnet50v2", "parameters (M)"]
    assert (table["weights"] == "RANDOM").all()  # said in the table, as no ImageNet file is here
    executed = nbformat.read(out / "notebooks" / "05_compare_backbones.ipynb", as_version=4)
    shown = "".join(o.get("text", "") for c in code_cells(executed) for o in c.outputs)
    assert "ResNet50V2: preprocessing by scale_to_minus_one_one" in shown
    assert "MobileNetV2: preprocessing by scale_to_minus_one_one" in shown
    paired = pd.read_csv(out / "compare" / "paired.csv", index_col="backbone")
    assert paired.index.tolist() == ["mobilenetv2"] and 0 <= paired.loc["mobilenetv2", "McNemar p"] <= 1
    split = pd.read_csv(out / "split.csv")
    for name in ("resnet50v2", "mobilenetv2"):  # every backbone trained on the main run's split
        assert (pd.read_csv(out / "compare" / name / "history.csv")["epoch"] >= 1).all()
        assert len(np.load(out / "compare" / name / "features" / "all.npy", mmap_mode="r")) == len(split)
    # The run's own base is the run's model, not trained twice: the same file and decision.
    assert (out / "compare" / "resnet50v2" / "model.keras").samefile(out / "model.keras")
    assert "resnet50v2: trained by notebook 03 (the run's own model)" in shown
    assert "mobilenetv2: trained by this notebook" in shown
    assert "retracing" not in shown  # each base traced as in a notebook of its own, no TF warning
    chosen = json.loads((out / "metrics.json").read_text())["decision"]["image_level"]["accuracy"]
    assert table.loc["resnet50v2", "test accuracy"].startswith(f"{chosen:.3f} (")


@pytest.mark.slow
def test_bcnb_predict_on_the_run(run, tmp_path):
    """The command line predicts like notebook 04 on test images and refuses a bad file."""
    out, _ = run
    predictions = pd.read_csv(out / "predictions.csv").head(3)
    folder = tmp_path / "new"
    folder.mkdir()
    for i, path in enumerate(predictions["path"]):
        (folder / f"{i}.png").write_bytes(open(path, "rb").read())
    (folder / "broken.png").write_bytes(b"not an image")
    command = [
        sys.executable,
        "-m",
        "bcnb",
        "predict",
        str(folder),
        "--model",
        str(out / "model.keras"),
        "--csv",
        str(tmp_path / "p.csv"),
        "--cam-dir",
        str(tmp_path / "cams"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2  # one file refused
    assert "broken.png: refused, not an image" in result.stderr and "Traceback" not in result.stderr
    table = pd.read_csv(tmp_path / "p.csv", keep_default_na=False).set_index("file")
    for i, row in predictions.reset_index().iterrows():
        got = table.loc[str(folder / f"{i}.png")]
        assert got["label"] == row["predicted"]
        assert float(got["probability"]) == pytest.approx(row["calibrated_probability"], abs=1e-3)
    assert len(list((tmp_path / "cams").glob("*_gradcam.png"))) == 3
    # Before the rows: where the model comes from, when that limits what it can say.
    notes = result.stderr.split(str(folder))[0]
    assert "RANDOM weights" in notes and "generated images, not real tissue" in notes
    assert "never for diagnosis" in notes and f"model card: {out / 'model_card.md'}" in notes
    assert set(table["weights"]) == {"random"} and set(table["trained_on"]) == {"synthetic"}


@pytest.mark.slow
def test_notebook_06_shows_where_the_model_comes_from(run):
    executed = nbformat.read(run[0] / "notebooks" / "06_predict.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in code_cells(executed) for o in c.outputs)
    assert "WARNING: the base had RANDOM weights" in text  # as 02 and 04 show it
    assert "generated images, not real tissue" in text and "never for diagnosis" in text


@pytest.mark.slow
def test_executed_notebooks_show_figures_and_no_widget_text(run):
    """Headless, figures are images and the widgets' static twins stand in for them."""
    for name in ("01_data.ipynb", "03_train.ipynb", "04_evaluate.ipynb", "06_predict.ipynb"):
        executed = nbformat.read(run[0] / "notebooks" / name, as_version=4)
        shown = [o.get("data", {}) for c in code_cells(executed) for o in c.outputs]
        assert any("image/png" in data for data in shown), name
        for data in shown:
            assert "application/vnd.jupyter.widget-view+json" not in data, name  # a widget, undrawn
            if data.get("text/plain", "").startswith("<Figure size"):
                assert "image/png" in data, name  # a figure shown only as its text form
    for name in NOTEBOOKS:  # no red lines a student can do nothing about (TensorFlow's start-up)
        executed = nbformat.read(run[0] / "notebooks" / name, as_version=4)
        streams = [o for c in code_cells(executed) for o in c.outputs if o.get("name") == "stderr"]
        assert not streams, (name, [o.text[:200] for o in streams])


# --------------------------------------------------------------------------- a finished run, again
@pytest.mark.slow
def test_executed_notebooks_name_the_run_folder_not_its_staging(run):
    out, _ = run
    for path in sorted((out / "notebooks").glob("*.ipynb")):
        text = path.read_text()
        assert ".partial" not in text and ".rerun" not in text, path.name
        injected = [
            c
            for c in nbformat.reads(text, as_version=4).cells
            if "injected-parameters" in c.metadata.get("tags", [])
        ]
        assert 'run_dir = ".."' in injected[0].source, path.name  # RUN/notebooks/.. is RUN


@pytest.mark.slow
def test_every_executed_notebook_of_a_finished_run_runs_again_in_place(run, tmp_path):
    """As a student opening RUN/notebooks/04_evaluate.ipynb in JupyterLab would: the notebook's
    own folder as working folder, its injected parameters as they are."""
    import shutil

    import papermill

    from bcnb.batch.notebooks import run_kernel

    copy = tmp_path / "moved" / "small"  # the run moved elsewhere: nothing names the old place
    shutil.copytree(run[0], copy, symlinks=True)
    before = json.loads((copy / "metrics.json").read_text())
    # One kernel, each notebook starting as in its own (tests/test_run_kernel.py): TensorFlow
    # is imported once instead of six times.
    with run_kernel() as kernel:
        for path in sorted((copy / "notebooks").glob("*.ipynb")):
            kernel.next_notebook()
            papermill.execute_notebook(
                str(path), str(path), cwd=str(path.parent), progress_bar=False, km=kernel.manager
            )
    after = json.loads((copy / "metrics.json").read_text())
    assert after["n_test_images"] == before["n_test_images"]
    assert (copy / "config.yaml").read_bytes() == (run[0] / "config.yaml").read_bytes()


@pytest.mark.slow
def test_a_finished_run_holds_no_empty_leftovers_and_its_files_follow_the_umask(run):
    out, _ = run
    empty = [
        p
        for p in out.rglob("*")
        if (p.is_dir() and not any(p.iterdir())) or (p.is_file() and p.stat().st_size == 0)
    ]
    assert empty == []  # no empty checkpoint/ and no empty kernels.log
    mask = os.umask(0o022)
    os.umask(mask)
    for path in [
        out / "config.yaml",
        out / "metrics.json",
        out / "model.keras",
        out / "figures" / "roc_curve.png",
    ]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path  # as a plain open() would make it


@pytest.mark.slow
def test_no_command_shows_tensorflow_s_cpp_lines(run):
    _, result = run
    assert [line for line in result.stderr.splitlines() if not line.startswith("bcnb: ")] == []


@pytest.mark.slow
def test_a_full_disk_during_only_is_one_line_and_changes_nothing(run, tmp_path):
    """--only 04 on a disk with room for the run but not for 04's new files."""
    import shutil

    from conftest import small_file_system

    files = [p for p in run[0].rglob("*") if p.is_file() and "compare" not in p.parts]
    page = 4096  # tmpfs gives each file whole pages: the copy needs its sizes rounded up
    room = sum(-(-p.stat().st_size // page) * page for p in files) + 96 * 1024
    with small_file_system(tmp_path / "disk", size=str(room)) as disk:
        out = disk / "small"
        shutil.copytree(run[0], out, ignore=shutil.ignore_patterns("compare"))
        before = _snapshot(out)
        command = [sys.executable, "-m", "bcnb", "reproduce", "--out", str(out), "--only", "04"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 2, result.stderr[-2000:]
        (line,) = [line for line in result.stderr.splitlines() if line.startswith("bcnb: error:")]
        assert "No space left on device" in line and "Traceback" not in result.stderr
        assert _snapshot(out) == before
        assert sorted(p.name for p in disk.iterdir()) == ["small"]  # no .small.rerun, no lock left


def test_synthetic_images_per_patient_says_it_counts_per_magnification():
    """It gives each patient that many images at each of the four magnifications."""
    line = next(
        line
        for line in cell_with("01_data.ipynb", "synthetic_images_per_patient =").splitlines()
        if "synthetic_images_per_patient" in line
    )
    assert "magnification" in line
    readme = (NOTEBOOKS_DIR.parent / "README.md").read_text()
    assert "`synthetic_images_per_patient` (per magnification" in readme


def test_notebook_03_compiles_with_the_papers_loss_written_out():
    source = cell_with("03_train.ipynb", "model_to_fit.compile(")
    assert 'if cfg.task == "binary":  # the paper' in source
    assert 'keras.losses.BinaryCrossentropy(), keras.metrics.BinaryAccuracy(name="accuracy")' in source
