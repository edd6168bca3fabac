"""The run folder's record (written once) and its lock (one writer at a time)."""

import hashlib
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from bcnb.config import STAGES, Config
from bcnb.run import lock
from bcnb.run.folder import DestinationRefused, RecordTampered, check_destination, read_marker, start_folder
from bcnb.run.lock import HELD_BY_PARENT, RunFolderBusy, RunLock, lock_path, stray_kernels
from bcnb.run.record import (
    RecordMismatch,
    check_runs_made_with,
    load_run_config,
    open_run,
    read_record,
    record_all,
    record_parameters,
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


def test_a_hand_edited_record_is_refused_wherever_it_is_read(tmp_path):
    """The record is tamper-evident: its digest, kept from the first write, no longer matches."""
    from bcnb.report.run_report import write_report

    record_all(tmp_path, Config(seed=42))
    path = tmp_path / "config.yaml"
    path.write_text(path.read_text().replace("seed: 42", "seed: 7"))
    for read in (read_record, load_run_config, write_report):
        with pytest.raises(RecordTampered, match=r"config.yaml was changed after bcnb wrote it"):
            read(tmp_path)
    with pytest.raises(RecordTampered):
        open_run(_cell("evaluate", tmp_path), "evaluate")
    with pytest.raises(RecordTampered):  # nor can a notebook record more on top of it
        record_parameters(tmp_path, Config(seed=7), (), ["evaluate"])


def test_a_record_without_its_digest_or_a_removed_record_is_refused(tmp_path):
    (tmp_path / "config.yaml").write_text("epochs: 3\n")  # written by hand: no digest
    with pytest.raises(RecordTampered, match="no digest of it in .bcnb.json"):
        read_record(tmp_path)
    record_all(tmp_path / "made", Config())
    (tmp_path / "made" / "config.yaml").unlink()
    with pytest.raises(RecordTampered, match="has been removed"):
        read_record(tmp_path / "made")


def test_a_kill_between_the_record_and_its_digest_leaves_a_pair_that_checks(tmp_path, monkeypatch):
    """The digest accepts the new record before it is written and keeps only it after."""
    import bcnb.run.record as runfolder

    record_parameters(tmp_path, Config(), (), ["data"])
    writes = []
    real = runfolder.write_text_atomic

    def killed_after_the_record(path, text):
        real(path, text)
        writes.append(path)
        raise KeyboardInterrupt  # the digest's last write never happens

    monkeypatch.setattr(runfolder, "write_text_atomic", killed_after_the_record)
    with pytest.raises(KeyboardInterrupt):
        record_parameters(tmp_path, Config(img_size=64), (), ["model"])
    monkeypatch.setattr(runfolder, "write_text_atomic", real)
    assert writes and read_record(tmp_path)["img_size"] == 64


@pytest.mark.parametrize("first", [True, False], ids=["first record", "a later one"])
def test_a_kill_before_the_record_is_written_leaves_the_one_before(tmp_path, monkeypatch, first):
    """Killed after the marker accepts the new digest but before config.yaml is replaced: the
    folder reads as it was (no record yet, or the old one) and its run can go on."""
    import bcnb.run.record as runfolder

    if not first:
        record_parameters(tmp_path, Config(), (), ["data"])
    before = read_record(tmp_path) if not first else {}

    def killed_before_the_record(path, text):
        raise KeyboardInterrupt

    monkeypatch.setattr(runfolder, "write_text_atomic", killed_before_the_record)
    with pytest.raises(KeyboardInterrupt):
        record_parameters(tmp_path, Config(img_size=64), (), ["data", "model"])
    monkeypatch.undo()
    assert read_record(tmp_path) == before
    record_parameters(tmp_path, Config(img_size=64), (), ["data", "model"])
    assert read_record(tmp_path)["img_size"] == 64  # a model parameter: new in both cases
    assert read_marker(tmp_path)["record_sha256"] == [
        hashlib.sha256((tmp_path / "config.yaml").read_bytes()).hexdigest()
    ]


def test_the_record_round_trips_through_load_run_config(tmp_path):
    cfg = Config(epochs=3, dataset="data/x.csv", run_dir=str(tmp_path))
    record_all(tmp_path, cfg)
    assert load_run_config(tmp_path) == cfg


# --------------------------------------------------------------------------- the destination
def _user_folder(path):
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("my own work\n")
    return path


def _bcnb_folder(path, kind):
    start_folder(path, kind)
    if kind == "run":
        record_all(path, Config())
    return path


@pytest.mark.parametrize(
    "make,kind,allowed",
    [
        (lambda p: p, "run", True),  # nothing there yet
        (lambda p: p.mkdir() or p, "run", True),  # an empty folder
        (lambda p: _bcnb_folder(p, "run"), "run", True),  # a run replaces a run
        (lambda p: _bcnb_folder(p, "protocol"), "protocol", True),
        (lambda p: _bcnb_folder(p, "sweep"), "sweep", True),  # a sweep goes on in its folder
        (lambda p: _user_folder(p), "run", False),
        (lambda p: _user_folder(p), "sweep", False),
        (lambda p: p.write_text("a file") and p, "run", False),
        (lambda p: _bcnb_folder(p, "sweep"), "run", False),
        (lambda p: _bcnb_folder(p, "run"), "protocol", False),
        (lambda p: _bcnb_folder(p, "protocol"), "run", False),
        (lambda p: _bcnb_folder(p, "run"), "sweep", False),
    ],
)
def test_only_a_folder_bcnb_made_of_the_same_kind_may_be_replaced(tmp_path, make, kind, allowed):
    out = make(tmp_path / "out")
    before = _snapshot(tmp_path)
    if allowed:
        check_destination(out, kind)
    else:
        with pytest.raises(DestinationRefused, match=f"--out: {out} .*choose another folder"):
            check_destination(out, kind)
    assert _snapshot(tmp_path) == before


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_notebook_01_does_not_start_a_run_among_someone_s_files(tmp_path):
    folder = _user_folder(tmp_path / "mine")
    with pytest.raises(DestinationRefused, match="holds files bcnb did not make"):
        open_run(_cell("data", folder), "data")
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]


def test_a_folder_to_resume_must_hold_only_what_is_asked_with_its_parameters(tmp_path):
    """Every run already in a protocol folder is checked, not the first one only."""
    folds = {f"fold-{k}": Config(folds=3, fold=k, seed=42) for k in (1, 2, 3)}
    start_folder(tmp_path / "cv", "protocol")
    record_all(tmp_path / "cv" / "fold-1", folds["fold-1"])
    record_all(tmp_path / "cv" / "fold-2", folds["fold-2"].replace(seed=7))
    with pytest.raises(RecordMismatch, match=r"fold-2 was made with seed=7 \(not 42\); go elsewhere"):
        check_runs_made_with(tmp_path / "cv", "protocol", folds, "go elsewhere")
    five = {f"fold-{k}": Config(folds=5, fold=k, seed=42) for k in (1, 2, 3, 4, 5)}
    with pytest.raises(RecordMismatch, match=r"fold-1 was made with folds=3 \(not 5\)"):
        check_runs_made_with(tmp_path / "cv", "protocol", five, "go elsewhere")
    two = {name: cfg.replace(folds=2) for name, cfg in list(folds.items())[:1]}
    with pytest.raises(RecordMismatch, match="holds fold-2, which this request does not make"):
        check_runs_made_with(tmp_path / "cv", "protocol", two, "go elsewhere")
    with pytest.raises(
        RecordMismatch, match="is a bcnb cross-validation or repeats folder, not a single run"
    ):
        check_runs_made_with(tmp_path / "cv", "run", {"": Config()}, "go elsewhere")


# --------------------------------------------------------------------------- the lock
HOLD = textwrap.dedent(
    """
    import sys, time
    from bcnb.run.lock import RunLock
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


def _kernel(folder: Path, seconds: float, parent: str = "gone") -> int:
    """A process that looks like a Jupyter kernel working in ``folder`` for ``seconds``: its
    command line names ipykernel_launcher, and JPY_PARENT_PID names the process that started
    it, as jupyter_client does; its last act writes last.txt there. ``parent``: "gone" (a shell
    that ends at once, as a killed driver), "lives" (a shell that waits on it: JupyterLab, a
    running Dask worker) or "this process". Returns its pid."""
    folder.mkdir(parents=True, exist_ok=True)
    sleeper = (
        "import os, time; open('kernel.pid', 'w').write(str(os.getpid())); "
        f"time.sleep({seconds}); open('last.txt', 'w').write('its last write')"
    )
    kernel = shlex.join([sys.executable, "-c", sleeper, "ipykernel_launcher"])
    if parent == "this process":
        subprocess.Popen(
            shlex.split(kernel), cwd=folder, env={**os.environ, "JPY_PARENT_PID": str(os.getpid())}
        )
    elif parent == "gone":
        subprocess.run(["sh", "-c", f"JPY_PARENT_PID=$$ {kernel} &"], cwd=folder, check=True)
    else:  # the outer shell ends at once, the inner one waits on the kernel
        inner = shlex.quote(f"JPY_PARENT_PID=$$ {kernel} & wait")
        subprocess.run(["sh", "-c", f"sh -c {inner} &"], cwd=folder, check=True)
    pid_file, deadline = folder / "kernel.pid", time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    pid = int(pid_file.read_text())
    pid_file.unlink()
    return pid


def test_a_writer_waits_for_the_kernel_a_killed_writer_left(tmp_path):
    """A driver killed outright lets go of the lock while its kernel works on for a moment."""
    notebooks = tmp_path / ".run.partial" / "fold-1" / "notebooks"
    kernel = _kernel(notebooks, seconds=1.5)
    assert stray_kernels(tmp_path / "run") == [kernel]
    with RunLock(tmp_path / "run", "the resumed run"):
        # The lock is taken only once the kernel is done writing. (Not "once its pid is gone": an
        # exiting process, which runs no code of its own any more, is listed for a moment still.)
        assert (notebooks / "last.txt").read_text() == "its last write"


def test_a_kernel_left_that_does_not_end_keeps_the_next_writer_out(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "STRAY_KERNEL_WAIT_S", 0.2)
    kernel = _kernel(tmp_path / "run" / "notebooks", seconds=60)
    try:
        with pytest.raises(RunFolderBusy, match=f"a Jupyter kernel of an earlier run \\(process {kernel}\\)"):
            RunLock(tmp_path / "run", "bcnb reproduce").acquire()
        assert not lock_path(tmp_path / "run").exists()  # let go again: nothing held, nothing left
        RunLock(tmp_path / "run", "a notebook", shared=True).acquire().release()  # notebooks share
    finally:
        os.kill(kernel, signal.SIGKILL)


def test_kernels_whose_parent_lives_and_other_folders_kernels_do_not_count(tmp_path):
    """JupyterLab showing an executed notebook of the run, a Dask worker keeping its kernel for
    its next run, this process' own kernel: none writes unless a notebook runs."""
    living = _kernel(tmp_path / "run" / "notebooks", seconds=60, parent="lives")
    ours = _kernel(tmp_path / ".run.partial" / "notebooks", seconds=60, parent="this process")
    elsewhere = _kernel(tmp_path / "run-2" / "notebooks", seconds=60)
    try:
        assert sorted(lock.kernels_working_in(tmp_path / "run")) == sorted([living, ours])
        assert stray_kernels(tmp_path / "run") == [] and stray_kernels(tmp_path / "run-2") == [elsewhere]
        RunLock(tmp_path / "run", "bcnb reproduce").acquire().release()
    finally:
        for pid in (living, ours, elsewhere):
            os.kill(pid, signal.SIGKILL)


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
