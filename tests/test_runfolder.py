"""The run folder's record (written once) and its lock (one writer at a time)."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import yaml

from bcnb.config import STAGES, Config
from bcnb.runfolder import (
    HELD_BY_PARENT,
    RecordMismatch,
    RunFolderBusy,
    RunLock,
    lock_path,
    open_run,
    read_record,
    record_all,
)


def _cell(stage, run_dir, **values):
    """A notebook's namespace: its parameters cell at Config's defaults, then ``values``."""
    defaults = Config().to_dict()
    return {**{name: defaults[name] for name in STAGES[stage]}, "run_dir": str(run_dir), **values}


# --------------------------------------------------------------------------- the record
def test_each_stage_records_its_own_parameters_once(tmp_path):
    open_run(_cell("data", tmp_path, synthetic_patients=12), "data")
    assert set(read_record(tmp_path)) == {*STAGES["data"], "interactive"}
    cfg = open_run(_cell("model", tmp_path, img_size=32), "model")
    assert (cfg.synthetic_patients, cfg.img_size) == (12, 32)  # the rest from the record
    assert set(read_record(tmp_path)) == {*STAGES["data"], *STAGES["model"], "interactive"}
    before = (tmp_path / "config.yaml").read_bytes()
    assert open_run(_cell("model", tmp_path, img_size=32), "model").img_size == 32  # again: the same
    assert (tmp_path / "config.yaml").read_bytes() == before


def test_another_value_is_refused_naming_it_and_nothing_changes(tmp_path):
    record_all(tmp_path, Config(learning_rate=0.03, backbone="vgg19"))
    before = (tmp_path / "config.yaml").read_bytes()
    with pytest.raises(RecordMismatch, match=r"learning_rate=0\.03 \(not 0\.001\).*new run folder"):
        open_run(_cell("evaluate", tmp_path, learning_rate=0.001), "evaluate")  # as papermill injects
    with pytest.raises(RecordMismatch, match="backbone='vgg19' \\(not 'resnet50v2'\\)"):
        open_run(_cell("model", tmp_path), "model")
    assert (tmp_path / "config.yaml").read_bytes() == before


def test_presentation_parameters_may_differ(tmp_path):
    record_all(tmp_path, Config(interactive=False))
    cfg = open_run(_cell("predict", tmp_path, interactive=True, predict_images="new/"), "predict")
    assert cfg.interactive is True and cfg.predict_images == "new/"
    assert read_record(tmp_path)["interactive"] is False  # the record keeps how the run was made


def test_names_as_papers_write_them_match_the_record(tmp_path):
    record_all(tmp_path, Config(backbone="vgg19"))
    assert open_run(_cell("model", tmp_path, backbone="VGG19"), "model").backbone == "vgg19"


def test_a_later_notebook_needs_the_record_of_notebook_01(tmp_path):
    with pytest.raises(FileNotFoundError, match="run notebook 01_data first"):
        open_run(_cell("train", tmp_path / "new"), "train")


def test_a_bad_value_names_the_parameter_before_anything_is_recorded(tmp_path):
    with pytest.raises(ValueError, match="layout: expected one of"):
        open_run(_cell("data", tmp_path, layout="tree"), "data")
    assert not (tmp_path / "config.yaml").exists()


def test_record_round_trips_through_config(tmp_path):
    cfg = Config(epochs=3, dataset="data/x.csv", run_dir=str(tmp_path))
    saved = yaml.safe_load(record_all(tmp_path, cfg).read_text())
    assert "run_dir" not in saved  # the file lives in the run folder it describes
    assert Config.from_file(tmp_path / "config.yaml", run_dir=str(tmp_path)) == cfg


def test_a_damaged_record_is_named(tmp_path):
    (tmp_path / "config.yaml").write_text("epochz: 3\n")
    with pytest.raises(ValueError, match="config.yaml: expected parameter: value pairs"):
        read_record(tmp_path)


# --------------------------------------------------------------------------- the lock
HOLD = textwrap.dedent(
    """
    import sys, time
    from bcnb.runfolder import RunLock
    RunLock(sys.argv[1], "bcnb reproduce").acquire()
    print("held", flush=True)
    time.sleep(120)
    """
)


@pytest.fixture
def holder(tmp_path):
    """Another process holding the run folder tmp_path/run, as a running reproduce would."""
    folder = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield folder, process
    process.kill()
    process.wait()


def test_a_second_writer_is_refused_naming_the_folder_and_the_holder(holder):
    folder, process = holder
    for shared in (False, True):  # bcnb reproduce, or a notebook
        holder_named = f"{folder} is being written by bcnb reproduce \\(process {process.pid}"
        with pytest.raises(RunFolderBusy, match=holder_named):
            RunLock(folder, "test", shared=shared).acquire()
    with pytest.raises(RunFolderBusy):
        open_run(_cell("data", folder), "data")
    assert not folder.exists()  # nothing touched


def test_a_killed_holder_does_not_block(holder):
    folder, process = holder
    process.send_signal(signal.SIGKILL)
    process.wait()
    with RunLock(folder, "the next run"):
        assert "the next run" in lock_path(folder).read_text()
    assert not lock_path(folder).exists()  # an exclusive holder leaves nothing behind


def test_the_command_line_refuses_a_second_writer_at_once(holder):
    folder, process = holder
    result = subprocess.run(
        [sys.executable, "-m", "bcnb", "reproduce", "--out", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(folder) in lines[0] and f"process {process.pid}" in lines[0]
    assert not folder.exists() and not (folder.parent / f".{folder.name}.partial").exists()


def test_notebooks_share_the_folder_and_keep_reproduce_out(tmp_path):
    first = RunLock(tmp_path / "run", "notebook 01", shared=True).acquire()
    second = RunLock(tmp_path / "run", "notebook 02", shared=True).acquire()
    with pytest.raises(RunFolderBusy, match="notebook 01 .*notebook 02"):
        RunLock(tmp_path / "run", "bcnb reproduce").acquire()
    first.release()
    assert lock_path(tmp_path / "run").exists()  # notebook 02 still holds it
    second.release()
    assert not lock_path(tmp_path / "run").exists()  # the last one out removes the file
    with RunLock(tmp_path / "run", "bcnb reproduce"):
        pass


def test_kernels_of_a_reproduce_working_in_its_folder_do_not_lock_it(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    with RunLock(folder, "bcnb reproduce --only"):
        monkeypatch.setenv(HELD_BY_PARENT, str(folder.resolve()))
        assert open_run(_cell("data", folder), "data").run_dir == str(folder)
    assert os.environ[HELD_BY_PARENT] == str(folder.resolve())
