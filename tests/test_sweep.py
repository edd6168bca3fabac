"""Sweeps: the grid, one run folder per cell, going on after an interruption, one table."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from bcnb import Config, sweep


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
    from bcnb.reproduce import headless
    from bcnb.runfolder import record_all

    record_all(folder, headless(cfg))
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
