"""The command line: bad input ends in one line and exit status 2, and harms nothing."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bcnb.cli import main


def run_bcnb(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "bcnb", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.fixture
def existing_run(tmp_path):
    """A run folder from an earlier run, which a failed run must leave exactly as it was."""
    from bcnb import Config
    from bcnb.run.folder import start_folder
    from bcnb.run.record import record_all

    out = tmp_path / "runs" / "demo"
    record_all(start_folder(out, "run"), Config())
    (out / "figures").mkdir(parents=True)
    (out / "metrics.json").write_text('{"test_accuracy": 0.9}\n')
    (out / "figures" / "roc_curve.png").write_bytes(b"\x89PNG old")
    return out


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_class_folder(root):
    from bcnb.data.synthetic import SyntheticSpec, write_synthetic_dataset

    write_synthetic_dataset(SyntheticSpec(patients=6, images_per_patient=1), root)
    return root / "BreaKHis_v1" / "histology_slides" / "breast" / "malignant"


def _config_file(root, text):
    path = root / "bad.yaml"
    path.write_text(text)
    return path


MANIFEST_WITHOUT_IMAGES = "path,label,patient_id\nx.png,benign,p\n"

# (arguments builder, message the one line must contain)
BAD_INPUTS = {
    "missing dataset": (lambda t: ["--set", f"dataset={t / 'absent'}"], "dataset: .*absent does not exist"),
    "empty folder": (lambda t: ["--set", f"dataset={_mkdir(t / 'empty')}"], "dataset: .*empty is empty"),
    "one class only": (
        lambda t: ["--set", f"dataset={_one_class_folder(t / 'one')}"],
        "has only malignant images",
    ),
    "unknown layout value": (
        lambda t: ["--set", "layout=tree"],
        "layout: expected one of auto, breakhis, idc, folders, csv",
    ),
    "layout not recognised": (
        lambda t: ["--set", f"dataset={_file(t / 'pics' / 'x.png')}"],
        "cannot tell the layout of .*pics",
    ),
    "unknown parameter": (lambda t: ["--set", "epoch=3"], "unknown parameter 'epoch'"),
    "bad value": (lambda t: ["--set", "epochs=0"], "epochs: expected an integer >= 1, got 0"),
    "value of wrong type": (lambda t: ["--set", "learning_rate=fast"], "learning_rate: expected a number"),
    "malformed --set": (lambda t: ["--set", "epochs"], "--set 'epochs': expected key=value"),
    "unknown key in --config": (
        lambda t: ["--config", _config_file(t, "epochz: 2\n")],
        "bad.yaml: unknown parameter",
    ),
    "missing --config": (lambda t: ["--config", t / "absent.yaml"], "absent.yaml: cannot read config file"),
    "missing weights file": (
        lambda t: ["--set", f"weights={t / 'w.h5'}"],
        "weights: file .*w.h5 does not exist",
    ),
    "unknown stain normaliser": (
        lambda t: ["--set", "stain_normalization=vahadane"],
        "stain_normalization: expected one of none, reinhard, macenko",
    ),
    "stain target not an image": (
        lambda t: [
            "--set",
            "stain_normalization=reinhard",
            "--set",
            f"stain_target={_file(t / 'p' / 't.txt')}",
        ],
        "stain_target: .*t.txt is not a readable image",
    ),
    "no tumour types for task=subtype": (
        lambda t: ["--set", "task=subtype", "--set", f"dataset={_manifest_without_types(t / 'untyped')}"],
        "task=subtype: .*m.csv has no tumour type for every image",
    ),
    "missing manifest image": (
        lambda t: ["--set", f"dataset={_file(t / 'm.csv', MANIFEST_WITHOUT_IMAGES)}"],
        "dataset: 1 bad file\\(s\\) in .*m.csv .*x.png: missing file",
    ),
}


def _manifest_without_types(folder):
    """A usable manifest of six distinct images, two classes, no subtype column."""
    from PIL import Image

    folder.mkdir(parents=True)
    rows = ["path,label,patient_id"]
    for i in range(6):
        Image.new("RGB", (40, 40), (200, 100 + 20 * i, 180)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,{'benign' if i % 2 else 'malignant'},p{i}")
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    return folder / "m.csv"


def _mkdir(path):
    path.mkdir(parents=True)
    return path


def _file(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path.parent if path.suffix == ".png" else path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_leaves_the_run_folder(case, tmp_path, existing_run):
    build_args, message = BAD_INPUTS[case]
    before = _snapshot(existing_run)
    result = run_bcnb("reproduce", "--out", existing_run, *build_args(tmp_path))
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("bcnb: error:")]
    assert len(lines) == 1, result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert _snapshot(existing_run) == before
    assert not (existing_run.parent / ".demo.partial").exists()


def test_stderr_holds_nothing_but_the_error_line(tmp_path):
    result = run_bcnb("reproduce", "--out", tmp_path / "run", "--set", "layout=tree")
    assert result.stderr.splitlines() == [
        "bcnb: error: layout: expected one of auto, breakhis, idc, folders, csv, got 'tree'"
    ]
    assert result.stdout == ""


def test_imagenet_required_but_unavailable_names_the_file(tmp_path, monkeypatch, capsys):
    """allow_random_weights=false and no weights: stop before any notebook runs."""
    import keras

    def no_network(*args, **kwargs):
        raise Exception("URL fetch failure: no network in this test")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    out = tmp_path / "run"
    status = main(
        [
            "reproduce",
            "--out",
            str(out),
            "--set",
            "allow_random_weights=false",
            "--set",
            "synthetic_patients=6",
            "--set",
            "synthetic_images_per_patient=1",
        ]
    )
    assert status == 2 and not out.exists()
    err = capsys.readouterr().err
    expected = tmp_path / "keras" / "models" / "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert f"put it at {expected}" in err and "allow_random_weights=true" in err


def test_config_command_prints_every_default(capsys):
    import yaml

    from bcnb import Config

    assert main(["config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == Config().to_dict()


def test_console_script_and_module_are_the_same_program():
    script = Path(sys.executable).parent / "bcnb"
    if not script.exists():
        pytest.skip("the bcnb console script is installed only by `pip install -e .`")
    result = subprocess.run(
        [str(script), "reproduce", "--out", "x", "--set", "seed=-1"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "seed: expected an integer >= 0" in result.stderr


@pytest.mark.parametrize("shard", ["2/2", "a/2", "1", "-1/2"])
def test_extract_rejects_a_bad_shard(shard, tmp_path):
    result = run_bcnb("extract", "--out", tmp_path, f"--shard={shard}")
    assert result.returncode == 2 and result.stderr.startswith("bcnb: error: --shard")


@pytest.mark.parametrize("args", [[], ["reproduce"], ["reproduce", "--out"], ["fly"]])
def test_usage_errors_are_one_line(args):
    result = run_bcnb(*args)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("bcnb: error: ")


def test_extract_needs_a_prepared_run_folder(tmp_path):
    result = run_bcnb("extract", "--out", tmp_path, "--shard", "0/2")
    assert result.returncode == 2 and f"--out: {tmp_path} is not a run folder" in result.stderr


# --------------------------------------------------------------------------- destinations
def _sweep_folder(path):
    from bcnb.run.folder import start_folder

    start_folder(path, "sweep")
    (path / "sweep.md").write_text("# a finished sweep\n")
    return path


@pytest.mark.parametrize(
    "make,command,message",
    [
        (lambda p: _file(p / "notes.txt", "mine") and p, ["reproduce"], "holds files bcnb did not make"),
        (lambda p: _file(p, "a file of mine"), ["reproduce"], "is a file, not a folder"),
        (_sweep_folder, ["reproduce"], "is a bcnb sweep folder; bcnb only replaces a single run"),
        (_sweep_folder, ["reproduce", "--folds", "2"], "is a bcnb sweep folder"),
        (lambda p: _file(p / "notes.txt", "mine") and p, ["sweep", "--grid", "seed=1"], "did not make"),
    ],
)
def test_a_destination_bcnb_did_not_make_or_of_another_kind_is_never_replaced(
    tmp_path, make, command, message
):
    out = make(tmp_path / "out")
    before = _snapshot(tmp_path)
    result = run_bcnb(*command[:1], "--out", out, *command[1:])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"bcnb: error: --out: {out} " in line and message in line
    assert _snapshot(tmp_path) == before


def test_a_single_run_does_not_replace_a_protocol(tmp_path, existing_run):
    result = run_bcnb("reproduce", "--out", existing_run, "--folds", "2")
    assert (
        result.returncode == 2
        and "is a bcnb single run folder; bcnb only replaces a cross-validation" in (result.stderr)
    )


def _run_folder(parent, name="run"):
    from bcnb import Config
    from bcnb.run.folder import start_folder
    from bcnb.run.record import record_all

    folder = parent / name
    record_all(start_folder(folder, "run"), Config(synthetic_patients=12))
    return folder


@pytest.mark.parametrize(
    "command",
    [
        ["reproduce", "--out", "{parent}/new"],
        ["reproduce", "--out", "{parent}/new", "--folds", "2"],
        ["reproduce", "--out", "{parent}/run", "--only", "04"],
        ["reproduce", "--out", "{parent}/run", "--resume"],
        ["sweep", "--out", "{parent}/sweep", "--grid", "seed=1,2"],
        ["sweep", "--out", "{parent}/run_sweep", "--grid", "seed=1,2"],
        ["extract", "--out", "{parent}/run", "--shard", "0/2"],
    ],
)
def test_a_read_only_destination_is_one_line_and_nothing_changes(tmp_path, command):
    from conftest import remount_read_only, small_file_system

    from bcnb.run.folder import start_folder

    with small_file_system(tmp_path / "disk") as disk:
        parent = disk / "runs"
        parent.mkdir()
        _run_folder(parent)
        start_folder(parent / "run_sweep", "sweep")
        remount_read_only(disk)
        before = _snapshot(disk)
        result = run_bcnb(*[part.format(parent=parent) for part in command])
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert re.match(
            r"bcnb: error: --out: cannot write in .*runs(/run|/run_sweep)? \(Read-only file system\)", line
        )
        assert _snapshot(disk) == before


def test_a_config_file_that_is_not_utf8_is_named(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("dataset: donn\xe9es\n".encode("latin-1"))
    result = run_bcnb("reproduce", "--out", tmp_path / "run", "--config", config)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"bcnb: error: {config}: not UTF-8 text (expected a YAML file of parameter: value pairs)"
    ]


def test_a_run_whose_record_was_replaced_by_hand_is_named(tmp_path):
    run = _run_folder(tmp_path)
    (run / "config.yaml").write_bytes("seed: 7\ndataset: donn\xe9es\n".encode("latin-1"))
    result = run_bcnb("reproduce", "--out", run, "--only", "04")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert f"{run / 'config.yaml'} was changed after bcnb wrote it" in line


@pytest.mark.parametrize(
    "args,message",
    [
        (["--folds", "3", "--repeats", "-1"], "--repeats: expected at least 1, got -1"),
        (["--folds", "-2"], "--folds: expected at least 2, got -2"),
    ],
)
def test_protocol_counts_name_the_option_at_fault(tmp_path, args, message):
    result = run_bcnb("reproduce", "--out", tmp_path / "cv", *args)
    assert result.returncode == 2 and result.stderr.strip() == f"bcnb: error: {message}"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--grid", "epochs=,,"], "--grid 'epochs=,,': expected key=value1,value2"),
        (["--grid", "=1,2"], "--grid '=1,2': expected key=value1,value2"),
        (["--grid", "interactive=true,false"], "--grid: interactive changes how a run is shown"),
        (["--grid", "seed=1,2", "--max-cells", "1"], "--grid: 2 cells (2), over 1"),
        (["--grid", "seed=1", "--folds", "-1"], "--folds: expected at least 2, got -1"),
    ],
)
def test_sweep_arguments_name_the_option_at_fault(tmp_path, args, message):
    result = run_bcnb("sweep", "--out", tmp_path / "s", *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"bcnb: error: {message}")
    assert not (tmp_path / "s").exists()


def test_chunk_goes_with_dask_only(tmp_path):
    result = run_bcnb("extract", "--out", _run_folder(tmp_path), "--shard", "0/2", "--chunk", "8")
    assert result.returncode == 2 and result.stderr.startswith(
        "bcnb: error: --chunk: the images per Dask task"
    )


@pytest.mark.parametrize(
    "command", [["reproduce", "--folds", "2"], ["sweep", "--grid", "seed=1,2"], ["extract"]]
)
def test_a_blank_scheduler_is_refused_not_read_as_no_cluster(tmp_path, command):
    # ``--dask "$SCHEDULER"`` with the variable unset: running it all here instead is not what was asked.
    result = run_bcnb(*command[:1], "--out", tmp_path / "out", *command[1:], "--dask", "")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("bcnb: error: argument --dask: expected local:N") and "got ''" in line
    assert list(tmp_path.iterdir()) == []


TINY_SETS = [
    "--set",
    "synthetic_patients=12",
    "--set",
    "synthetic_images_per_patient=1",
    "--set",
    "img_size=32",
]


def test_a_protocol_resumed_with_other_parameters_names_the_fold_and_the_values(tmp_path):
    """Every finished fold's record is checked, not the first one only."""
    from bcnb import Config
    from bcnb.batch.reproduce import headless
    from bcnb.run.folder import start_folder
    from bcnb.run.record import record_all

    base = headless(Config(synthetic_patients=12, synthetic_images_per_patient=1, img_size=32))
    staging = start_folder(tmp_path / ".cv.partial", "protocol")
    record_all(staging / "fold-1", base.replace(folds=2, fold=1))
    (staging / "fold-1" / "report.md").write_text("finished\n")
    record_all(staging / "fold-2", base.replace(folds=2, fold=2, seed=7))
    before = _snapshot(tmp_path)
    result = run_bcnb("reproduce", "--out", tmp_path / "cv", "--folds", "2", "--resume", *TINY_SETS)
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("bcnb: error")]
    assert "fold-2 was made with seed=7 (not 42)" in line and "run without --resume" in line
    assert _snapshot(tmp_path) == before
    result = run_bcnb("reproduce", "--out", tmp_path / "cv", "--folds", "3", "--resume", *TINY_SETS)
    assert "fold-1 was made with folds=2 (not 3)" in result.stderr and result.returncode == 2


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {inner}", deeper) for inner, deeper in _subparsers(sub))


def test_every_command_has_a_description_and_every_argument_a_help():
    from bcnb.cli import build_parser

    commands = dict(_subparsers(build_parser()))
    assert {"reproduce", "sweep", "extract", "predict", "download", "weights import", "bench"} <= set(
        commands
    )
    for name, parser in commands.items():
        assert parser.description and len(parser.description) > 20, name
        for action in parser._actions:
            if action.dest not in ("help", "command", "action"):
                assert action.help, (
                    f"bcnb {name}: {'/'.join(action.option_strings) or action.dest} has no help"
                )
