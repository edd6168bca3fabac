"""Sweeps: the grid, one run folder per cell, going on after an interruption, one table."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from bcnb import Config
from bcnb.batch import sweep


def test_grid_values_are_typed_like_set():
    grid = sweep.parse_grid(["magnification=40X, 400X", "learning_rate=0.01,0.1", "augment=true"])
    assert grid == {"magnification": ["40X", "400X"], "learning_rate": [0.01, 0.1], "augment": [True]}
    assert list(sweep.cells(Config(), grid)) == [
        "augment=True,learning_rate=0.01,magnification=40X",
        "augment=True,learning_rate=0.01,magnification=400X",
        "augment=True,learning_rate=0.1,magnification=40X",
        "augment=True,learning_rate=0.1,magnification=400X",
    ]


@pytest.mark.parametrize(
    "grid,message",
    [
        (["epoch=1,2"], "unknown parameter 'epoch'"),
        (["magnification=40X,50X"], "--grid: magnification: expected one of all, 40X"),
        (["learning_rate=0.1,fast"], "learning_rate: expected a number"),
        (["backbone="], "expected key=value1,value2"),
        (["seed=1", "seed=2"], "seed is given twice"),
    ],
)
def test_a_bad_grid_is_refused_before_any_cell_runs(grid, message):
    with pytest.raises(ValueError, match=message):
        sweep.cells(Config(), sweep.parse_grid(grid))


def _fake_run(folder, cfg, accuracy):
    """What a finished run leaves that the sweep reads: its record, metrics and history."""
    from bcnb.batch.reproduce import headless
    from bcnb.run.folder import start_folder
    from bcnb.run.record import record_all

    record_all(start_folder(folder, "run"), headless(cfg))
    metrics = {
        "test_accuracy": accuracy,
        "balanced_accuracy": 0.5,
        "roc_auc": 0.7,
        "patient_recognition_rate": 0.6,
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    pd.DataFrame({"epoch": [1, 2], "val_loss": [0.9, 0.4]}).to_csv(folder / "history.csv", index=False)
    (folder / "report.md").write_text("finished\n")


def test_a_sweep_cut_short_goes_on_with_the_cells_it_had_not_finished(tmp_path):
    ran = []

    def run_cell(cfg, folder):
        if len(ran) == 1 and not (tmp_path / "again").exists():
            raise KeyboardInterrupt  # killed during the second cell
        ran.append(cfg.seed)
        _fake_run(folder, cfg, accuracy=cfg.seed / 10)

    grid = {"seed": [1, 2, 3]}
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(Config(), tmp_path / "out", grid, run_cell=run_cell)
    assert ran == [1] and not (tmp_path / "out" / "sweep.md").exists()
    (tmp_path / "again").touch()
    sweep.run_sweep(Config(), tmp_path / "out", grid, run_cell=run_cell)
    assert ran == [1, 2, 3]  # the finished cell kept, the others run
    table = pd.read_csv(tmp_path / "out" / "sweep.csv")
    assert table["seed"].tolist() == [1, 2, 3] and table["test accuracy"].tolist() == [0.1, 0.2, 0.3]
    assert table["val loss"].tolist() == [0.4] * 3
    assert "Choose between cells by the validation loss" in (tmp_path / "out" / "sweep.md").read_text()
    with pytest.raises(ValueError, match="was made with learning_rate=0.001 \\(not 0.5\\).*another --out"):
        sweep.run_sweep(Config(learning_rate=0.5), tmp_path / "out", grid, run_cell=run_cell)


def _sweep(out, *args):
    command = [sys.executable, "-m", "bcnb", "sweep", "--out", str(out), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def test_the_command_line_refuses_a_bad_grid_in_one_line(tmp_path):
    result = _sweep(tmp_path / "s", "--grid", "backbone=vgg19,lenet")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "bcnb: error: --grid: backbone: expected one of resnet50v2, vgg19, densenet121, efficientnetb0, "
        "mobilenetv2, got 'lenet'"
    ]
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_a_real_sweep_writes_one_run_folder_per_cell_and_the_table(tmp_path):
    tiny = [
        "synthetic_patients=12",
        "synthetic_images_per_patient=1",
        "img_size=32",
        "batch_size=8",
        "epochs=3",
        "weights=none",
        "bootstrap_samples=200",
    ]
    sets = [arg for value in tiny for arg in ("--set", value)]
    result = _sweep(tmp_path / "s", "--grid", "magnification=40X", *sets)
    assert result.returncode == 0, result.stderr[-3000:]
    cell = tmp_path / "s" / "magnification=40X"
    metrics = json.loads((cell / "metrics.json").read_text())
    assert set(pd.read_csv(cell / "split.csv")["magnification"]) == {"40X"}
    table = pd.read_csv(tmp_path / "s" / "sweep.csv")
    assert table["magnification"].tolist() == ["40X"]
    assert table["test accuracy"].iloc[0] == pytest.approx(metrics["test_accuracy"], abs=5e-4)


@pytest.mark.parametrize(
    "grid,message",
    [
        (["epochs=,,"], "--grid 'epochs=,,': expected key=value1,value2"),
        (["=1,2"], "--grid '=1,2': expected key=value1,value2"),
        (["interactive=true,false"], "--grid: interactive changes how a run is shown"),
        (["run_dir=a,b"], "--grid: run_dir changes how a run is shown"),
        (["predict_images=a,b"], "--grid: predict_images changes how a run is shown"),
    ],
)
def test_a_grid_without_values_or_over_a_parameter_that_defines_no_run_is_refused(grid, message):
    with pytest.raises(ValueError, match=message):
        sweep.parse_grid(grid)


def test_a_grid_of_more_than_the_limit_asks_for_max_cells():
    grid = {"seed": list(range(15)), "epochs": list(range(1, 15))}  # 210 cells
    with pytest.raises(ValueError, match=r"210 cells \(14 x 15\), over 200: .*add --max-cells 210"):
        sweep.cells(Config(), grid)
    assert len(sweep.cells(Config(), grid, max_cells=210)) == 210


@pytest.mark.parametrize("value", ["../../x.png", "/etc/passwd", "a/../../b", "..", "x" * 400, "é ü*?"])
def test_cell_folders_are_safe_names_inside_out_whatever_the_value(tmp_path, value):
    names = sweep.cells(Config(stain_normalization="reinhard"), {"stain_target": [value, "plain.png"]})
    for name in names:
        assert "/" not in name and name not in (".", "..") and len(name.encode()) < 255
        assert (tmp_path / name).resolve().parent == tmp_path.resolve()
    assert len(set(names)) == 2  # a changed name keeps a hash of the real value: no collisions


def test_a_sweep_cell_of_another_kind_is_never_reused(tmp_path):
    """A cell made without --folds is not a K-fold cell, and the reverse."""

    def run_cell(cfg, folder):
        from bcnb.run.folder import start_folder

        _fake_run(start_folder(folder, "run"), cfg, accuracy=0.5)

    grid = {"seed": [1]}
    sweep.run_sweep(Config(), tmp_path / "out", grid, run_cell=run_cell)
    with pytest.raises(ValueError, match="seed=1 is a bcnb single run folder, not a cross-validation"):
        sweep.run_sweep(Config(), tmp_path / "out", grid, folds=2, run_cell=run_cell)


def test_a_sweep_never_writes_into_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine\n")
    with pytest.raises(ValueError, match="--out: .*mine holds files bcnb did not make"):
        sweep.run_sweep(Config(), tmp_path / "mine", {"seed": [1]}, run_cell=lambda cfg, folder: None)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_a_cut_short_cell_of_other_parameters_is_named_without_a_resume_sweep_does_not_have(tmp_path):
    from bcnb.batch.reproduce import headless
    from bcnb.run.folder import start_folder
    from bcnb.run.record import record_all

    out = start_folder(tmp_path / "out", "sweep")
    staging = start_folder(out / ".seed=1.partial", "run")  # a cell cut short, made with lr 0.5
    record_all(staging, headless(Config(seed=1, learning_rate=0.5)))
    with pytest.raises(ValueError) as refused:
        sweep.run_sweep(Config(), out, {"seed": [1]}, run_cell=lambda cfg, folder: None)
    message = str(refused.value)
    assert "learning_rate=0.5 (not 0.001)" in message and "another --out" in message
    assert "--resume" not in message
