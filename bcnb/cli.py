"""The ``bcnb`` command line (also ``python -m bcnb``).

Bad input ends with one line on stderr naming the parameter or path and what was
expected, and exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from bcnb.batch.sweep import MAX_CELLS
from bcnb.config import Config, parse_override, read_parameters
from bcnb.report.caveats import DISCLAIMER
from bcnb.run.nativelog import native_stderr

EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1
SCHEDULER_EXPECTED = "local:N worker processes or a scheduler's address, tcp://host:port"
DASK_RUNS = (
    f"hand each run (fold, repeat, cell) to a Dask cluster: {SCHEDULER_EXPECTED} "
    "(the workers must see --out, the data and the notebooks by the same paths)"
)
CHUNK_DEFAULT = 256  # bcnb extract --dask: images per task (cluster.CHUNK_ROWS, without importing it)


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line too (``bcnb: error: ...``, status 2)."""

    def error(self, message: str):
        sys.exit(_fail(f"{message} (see {self.prog} --help)", EXIT_BAD_INPUT))


def scheduler(value: str) -> str:
    """--dask's value. A blank one (``--dask "$SCHEDULER"`` with the variable unset) is refused:
    read as "no cluster" it would run everything here, unasked."""
    if not value.strip():
        raise argparse.ArgumentTypeError(f"expected {SCHEDULER_EXPECTED}, got {value!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="bcnb",
        description="Breast cancer histopathology notebooks: the paper's ResNet50V2 transfer model, "
        f"taught and reproduced. {DISCLAIMER}",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    run = _command(commands, "reproduce", "run the notebooks headless into a run folder")
    run.add_argument("--out", required=True, type=Path, help="the run folder to create or replace")
    run.add_argument("--config", type=Path, help="YAML file of parameter: value pairs")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter (repeatable); wins over --config",
    )
    run.add_argument("--notebooks", type=Path, help="folder holding the notebooks (default: the project's)")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run into --out")
    folds = "K-fold cross-validation by patient: OUT/fold-1 ... OUT/fold-K and OUT/summary.md"
    run.add_argument("--folds", type=int, default=0, metavar="K", help=folds)
    repeats = "R random patient-level splits, seeds seed .. seed+R-1, and OUT/summary.md"
    run.add_argument("--repeats", type=int, default=0, metavar="R", help=repeats)
    run.add_argument(
        "--per-magnification",
        action="store_true",
        help="with --folds K (or --set split_file=...): also one model per magnification per fold, "
        "a head on the fold's cached features (OUT/fold-k/magnifications/), and the per-magnification table",
    )
    run.add_argument("--dask", type=scheduler, metavar="SCHEDULER", help=DASK_RUNS)
    run.add_argument(
        "--only",
        action="append",
        metavar="NOTEBOOK",
        help="run this notebook again (e.g. 04; repeatable) in place on the finished run "
        "--out, with the parameters it was made with",
    )
    run.add_argument(
        "--compare",
        action="store_true",
        help="also run 05: every backbone of compare_backbones on the same split",
    )
    run.add_argument(
        "--stop-after", metavar="NOTEBOOK", help="stop, unfinished, after this notebook (e.g. 02)"
    )
    sweep = _command(commands, "sweep", "the pipeline for every combination of --grid values, one table")
    sweep.add_argument("--out", required=True, type=Path, help="the folder of the sweep's run folders")
    sweep.add_argument(
        "--grid",
        required=True,
        action="append",
        metavar="KEY=V1,V2",
        help="a parameter and its values (repeatable: every combination runs)",
    )
    sweep.add_argument("--folds", type=int, default=0, metavar="K", help="a K-fold cross-validation per cell")
    sweep.add_argument("--dask", type=scheduler, metavar="SCHEDULER", help=DASK_RUNS)
    sweep.add_argument(
        "--max-cells",
        type=int,
        default=MAX_CELLS,
        metavar="N",
        help=f"run a grid of up to N cells (default {MAX_CELLS}: a larger grid must be meant)",
    )
    sweep.add_argument("--config", type=Path, help="YAML file of parameter: value pairs")
    sweep.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter for every cell (repeatable)",
    )
    extract = _command(
        commands, "extract", "compute a run's feature cache, one shard or on a Dask cluster (run 01-02 first)"
    )
    extract.add_argument(
        "--out", required=True, type=Path, help="the run (finished, or stopped with --stop-after)"
    )
    where = extract.add_mutually_exclusive_group(required=True)
    where.add_argument("--shard", metavar="I/N", help="this process' share, e.g. 0/4")
    where.add_argument(
        "--dask",
        type=scheduler,
        metavar="SCHEDULER",
        help=f"all of it on a Dask cluster: {SCHEDULER_EXPECTED}",
    )
    extract.add_argument(
        "--chunk", type=int, metavar="ROWS", help=f"with --dask: images per task ({CHUNK_DEFAULT})"
    )
    predict = _command(commands, "predict", "calibrated malignancy of new images with a finished run's model")
    predict.add_argument(
        "images", type=Path, nargs="*", metavar="IMAGE_OR_FOLDER", help="image files and folders of them"
    )
    predict.add_argument("--model", required=True, type=Path, help="a run's model.keras")
    predict.add_argument(
        "--examples",
        action="store_true",
        help="instead of images: a few of the run's own test images, both classes (from RUN/split.csv)",
    )
    predict.add_argument("--cam-dir", type=Path, help="write a Grad-CAM overlay per image here")
    predict.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    _command(commands, "config", "print every parameter with its default, as YAML")
    fetch = _command(commands, "download", "fetch, check and unpack a real data set (breakhis, idc)")
    fetch.add_argument("name", choices=("breakhis", "idc"), help="the data set: breakhis or idc")
    fetch.add_argument("--to", required=True, type=Path, help="the folder to unpack into")
    fetch.add_argument("--url", default="", help="a mirror's address for the archive")
    fetch.add_argument("--archive", default="", type=str, help="an archive already on disk")
    weights = _command(commands, "weights", "the ImageNet weights files: fetch, import, status")
    actions = weights.add_subparsers(dest="action", required=True, parser_class=_OneLineParser)
    get = _command(actions, "fetch", "download into Keras' cache (md5 checked)")
    get.add_argument("--backbone", default="resnet50v2", help="a backbone, or all")
    get.add_argument("--img-size", type=int, default=224, help="the input size the weights are for (224)")
    bring = _command(actions, "import", "check a downloaded weights file and put it in Keras' cache")
    bring.add_argument("file", type=Path, help="the .h5 file, named as Keras names it")
    _command(actions, "status", "each backbone's weights file: present and verified, or not")
    bench = _command(commands, "bench", "measure speed and memory of the fast path (minutes)")
    bench.add_argument("--img-size", type=int, default=224, help="the model's input size in pixels (224)")
    bench.add_argument("--batch-size", type=int, default=64, help="images per batch (64)")
    bench.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    return parser


# What `bcnb COMMAND --help` says first, beyond the one line of `bcnb --help`.
DESCRIPTIONS = {
    "reproduce": "Runs notebooks 01-04 and 06 (05 too with --compare) headless with papermill into "
    "--out: the run's record (config.yaml), split, model, metrics, report.md, model_card.md and the "
    "executed notebooks. --out is replaced only when it is a run folder bcnb made, and only once "
    "every notebook has succeeded. --resume goes on with an interrupted run, --only runs notebooks "
    "of a finished run again, --folds and --repeats run a protocol of several runs and summarise it "
    "(--per-magnification: one model per magnification too, as BreakHis papers report).",
    "sweep": "Runs the pipeline once per combination of the --grid values (or a --folds protocol per "
    "combination), each in its own folder inside --out, then writes sweep.md and sweep.csv. Run "
    "again, it keeps the finished cells and goes on with the others.",
    "extract": "Computes the feature cache of a run stopped after notebook 02 (bcnb reproduce "
    "--stop-after 02), as one of N shard processes or on a Dask cluster; bcnb reproduce --resume "
    "then trains on it.",
    "predict": "Gives the calibrated probability of malignancy of each image and the call of the "
    f"run's decision rule (chosen on validation). {DISCLAIMER}",
    "config": "Prints every parameter with its default, as YAML: a starting point for --config.",
    "download": "Downloads (resuming an interrupted download), checks against the published counts "
    "and unpacks BreakHis, or unpacks the IDC archive you downloaded (--archive).",
    "weights": "The ImageNet weights files Keras loads: fetch them into Keras' cache, import a "
    "copy from elsewhere (a classroom without internet), or see which are there.",
    "bench": "Measures images per second and memory of feature extraction and training on this "
    "machine (several minutes).",
}


def _command(commands, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand with its one line for the list and its description for its own --help."""
    description = DESCRIPTIONS.get(name, summary[0].upper() + summary[1:] + ".")
    return commands.add_parser(name, help=summary, description=description)


def given_parameters(args: argparse.Namespace) -> dict:
    """The parameters the command line sets: those the --config file names, then each --set."""
    given = {}
    if args.config:
        named = read_parameters(args.config)  # one line naming the file if it cannot be used
        from_file = Config(**named)  # each value checked (and normalised, e.g. 40 -> 40X)
        given = {name: getattr(from_file, name) for name in named}
    return {**given, **dict(parse_override(text) for text in args.overrides)}


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults, then the --config file, then each --set."""
    return Config(**given_parameters(args))


# jsonschema (imported by papermill through nbformat) imports rfc3987_syntax where it is
# installed, and that module builds some 38 Lark parsers as it is imported: about 1 s of every
# command that runs notebooks, to check the "iri" string format that no notebook schema uses
# (python-jsonschema/jsonschema#1428). Absent for this process, jsonschema skips that format.
def main(argv: list[str] | None = None) -> int:
    sys.modules.setdefault("rfc3987_syntax", None)  # None: importing it raises ImportError
    args = build_parser().parse_args(argv)
    # TensorFlow's C++ start-up lines never reach the terminal, whichever command starts it.
    with native_stderr():
        try:
            return _COMMANDS[args.command](args)
        except OSError as error:  # a file a command could not read or write: say which, once
            return _fail(_os_error_line(error), EXIT_BAD_INPUT)


def _os_error_line(error: OSError) -> str:
    where = error.filename or ""
    return f"{where}: {error.strerror}" if where and error.strerror else str(error)


def _config(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(Config().to_dict(), sort_keys=False), end="")
    return 0


def parse_shard(text: str) -> tuple[int, int]:
    """ "I/N" -> (I, N) with 0 <= I < N."""
    shard, _, shards = text.partition("/")
    if not (shard.isdigit() and shards.isdigit() and int(shard) < int(shards)):
        raise ValueError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return int(shard), int(shards)


def _extract(args: argparse.Namespace) -> int:
    """Every argument and the run folder are checked before TensorFlow starts."""
    try:
        shard, shards = parse_shard(args.shard) if args.shard else (0, 1)
        if args.chunk is not None and not args.dask:
            raise ValueError("--chunk: the images per Dask task, for --dask only (a shard is one task)")
        if args.dask and (args.chunk or CHUNK_DEFAULT) < 1:
            raise ValueError(f"--chunk: expected at least 1 image per task, got {args.chunk}")
        folder, cfg = _extraction_run(args.out)
    except (ValueError, FileNotFoundError) as error:
        return _fail(str(error), EXIT_BAD_INPUT)
    if args.dask:
        return _extract_on_cluster(args, folder, cfg)
    from bcnb.train import features

    model, split = _extraction_inputs(folder)
    path = features.extract_shard(cfg, model, split, shard, shards)
    _say(f"shard {shard}/{shards}: {path}")
    return 0


def _extraction_run(out: Path) -> tuple[Path, Config]:
    """The run (finished, or stopped with --stop-after) whose features are asked for."""
    from bcnb.run.folder import check_writable, folder_kind
    from bcnb.run.record import load_run_config
    from bcnb.run.staging import run_folder

    folder = run_folder(out)
    if folder_kind(folder) != "run":
        raise FileNotFoundError(
            f"--out: {out} is not a run folder (make one with bcnb reproduce --stop-after 02)"
        )
    check_writable(folder, "--out")
    return folder, load_run_config(folder)


def _extraction_inputs(folder: Path):
    from bcnb.model import transfer
    from bcnb.run import artifacts

    return transfer.load_model(folder / artifacts.INITIAL_MODEL_FILE), artifacts.load_split(folder)


def _extract_on_cluster(args: argparse.Namespace, folder: Path, cfg: Config) -> int:
    from bcnb.run.lock import RunLock
    from bcnb.train.cluster import connect, extract_on_cluster

    try:  # one writer of the run folder, as for bcnb reproduce; the scheduler before TensorFlow
        with RunLock(args.out, "bcnb extract --dask"), connect(args.dask) as client:
            model, split = _extraction_inputs(folder)
            _say(f"Dask dashboard: {client.dashboard_link}")
            path = extract_on_cluster(cfg, model, split, client, args.chunk or CHUNK_DEFAULT, _say)
    except (ValueError, FileNotFoundError) as error:  # busy, no scheduler, a bad image: nothing written
        return _fail(str(error), EXIT_BAD_INPUT)
    _say(f"features of {len(split)} images: {path} (bcnb reproduce --out {args.out} --resume trains on them)")
    return 0


def _predict(args: argparse.Namespace) -> int:
    """Print the decision rule, then one line per image; refused files are named on stderr
    (exit status 2). Every path is checked before TensorFlow starts."""
    try:
        from bcnb.predict import (
            Predictor,
            describe_predictions,
            describe_rule,
            find_images,
            predict_files,
            read_run,
            run_examples,
        )

        if bool(args.images) == args.examples:
            raise ValueError("predict: expected image files or folders, or --examples (one of the two)")
        paths = find_images(args.images) if args.images else []
        read_run(args.model)  # --model checked before Keras starts, as the images are
        paths = paths or run_examples(args.model)
        _check_outputs({"--csv": args.csv, "--cam-dir": args.cam_dir})
        predictor = Predictor.from_run(args.model)
    except (ValueError, FileNotFoundError) as error:
        return _fail(str(error), EXIT_BAD_INPUT)
    for note in predictor.notes():  # before the rows: what the answers can mean
        _say(note)
    table = predict_files(predictor, paths, args.cam_dir)
    for row in table[table["refused"] != ""].itertuples():
        _fail(f"{row.file}: refused, {row.refused}", EXIT_BAD_INPUT)
    print(describe_rule(predictor.rule))
    for line in describe_predictions(table, predictor.rule):
        print(line)
    if args.csv:
        from bcnb.run.files import write_text_atomic

        write_text_atomic(args.csv, table.to_csv(index=False))
    return EXIT_BAD_INPUT if (table["refused"] != "").any() else 0


def _check_outputs(outputs: dict[str, Path | None]) -> None:
    """Files and folders a command will write, checked before its work starts (one line)."""
    from bcnb.run.folder import check_writable

    for option, path in outputs.items():
        if path is None:
            continue
        if option == "--csv" and path.is_dir():
            raise ValueError(
                f"--csv: {path} is a folder; expected a file name, e.g. {path / 'predictions.csv'}"
            )
        check_writable(path if path.is_dir() else path.parent, option)


def _bench(args: argparse.Namespace) -> int:
    from bcnb.bench import render, run_all
    from bcnb.run.files import write_text_atomic

    if args.img_size < 32 or args.batch_size < 1:
        return _fail("--img-size: expected at least 32, --batch-size at least 1", EXIT_BAD_INPUT)
    text = render(run_all(args.img_size, args.batch_size, progress=_say), args.img_size, args.batch_size)
    print(text, end="")
    if args.out:
        write_text_atomic(args.out, "# bcnb bench\n\n" + text)
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from bcnb.batch.notebooks import NOTEBOOKS_DIR, NotebookFailed
    from bcnb.batch.reproduce import reproduce, rerun

    started = time.perf_counter()
    notebooks = args.notebooks or NOTEBOOKS_DIR
    live = sys.stderr.isatty()  # papermill's cell-by-cell bar in a terminal; none in a log file
    try:
        if args.folds or args.repeats or args.per_magnification:
            return _reproduce_protocol(args, notebooks, live, started)
        if args.dask:
            raise ValueError(
                "--dask: hands out the runs of --folds, --repeats or a sweep; one run's notebooks run "
                "in turn (its feature extraction goes on a cluster with bcnb extract --dask)"
            )
        if args.only:
            if args.resume or args.stop_after or args.compare:
                raise ValueError(
                    "--only: runs notebooks of a finished run; it goes without --resume, "
                    "--stop-after and --compare"
                )
            out = rerun(args.out, args.only, given_parameters(args), notebooks, _say, live)
        else:
            cfg = config_from_args(args)
            out = reproduce(cfg, args.out, notebooks, _say, live, args.resume, args.stop_after, args.compare)
    except NotebookFailed as error:
        return _fail(str(error), EXIT_RUN_FAILED)
    except (ValueError, FileNotFoundError) as error:  # bad parameters, paths or weights
        return _fail(str(error), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        return _fail("interrupted; the previous run folder, if any, is unchanged", 130)
    if args.stop_after:
        _say(f"stopped after {args.stop_after} as asked: {out}; continue with --resume")
        return 0
    _say(f"done in {time.perf_counter() - started:.0f} s: {out} (see report.md)")
    return 0


def _download(args: argparse.Namespace) -> int:
    from bcnb.data.download import SOURCES, download, patients_note

    try:
        folder = download(SOURCES[args.name], args.to, args.url, args.archive, _say, sys.stderr.isatty())
    except (ValueError, FileNotFoundError) as error:
        return _fail(str(error), EXIT_BAD_INPUT)
    # The record lies beside the unpacked folder, in --to as download() resolved it (~ expanded).
    contents = json.loads((folder.parent / "download.json").read_text())["found"]
    _say(
        f"{folder}: {contents['images']} images checked against the published figures; "
        f"{patients_note(contents, SOURCES[args.name].published)}"
    )
    return 0


def _weights(args: argparse.Namespace) -> int:
    from bcnb.run.nativelog import import_tensorflow_quietly

    import_tensorflow_quietly()
    from bcnb.model import weights
    from bcnb.model.backbones import BACKBONES

    try:
        if args.action == "status":
            for row in weights.status():
                print(f"{row['backbone']}\t{row['status']}\t{row['file']}")
            return 0
        if args.action == "import":
            _say(f"imported: {weights.import_weights(args.file)}")
            return 0
        names = list(BACKBONES) if args.backbone == "all" else [args.backbone.lower()]
        for name in names:
            _say(f"{name}: {weights.fetch_weights(name, args.img_size)}")
    except (ValueError, FileNotFoundError) as error:
        return _fail(str(error), EXIT_BAD_INPUT)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from bcnb.batch.notebooks import NotebookFailed
    from bcnb.batch.sweep import parse_grid, run_sweep

    started = time.perf_counter()
    try:
        if args.folds == 1 or args.folds < 0:
            raise ValueError(f"--folds: expected at least 2, got {args.folds}")
        if args.max_cells < 1:
            raise ValueError(f"--max-cells: expected at least 1, got {args.max_cells}")
        grid = parse_grid(args.grid)
        cfg = config_from_args(args)
        with dask_runner(args.dask) as runner:
            out = run_sweep(cfg, args.out, grid, args.folds, _say, max_cells=args.max_cells, runner=runner)
    except NotebookFailed as error:
        return _fail(f"{error}; run the same command again to go on", EXIT_RUN_FAILED)
    except (ValueError, FileNotFoundError) as error:
        return _fail(str(error), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        return _fail("interrupted; finished cells are kept: run the same command again to go on", 130)
    _say(f"done in {time.perf_counter() - started:.0f} s: {out} (see sweep.md)")
    return 0


def _reproduce_protocol(args: argparse.Namespace, notebooks: Path, live: bool, started: float) -> int:
    """--folds K or --repeats R: every run, then the summary (errors are the caller's)."""
    from bcnb.batch.protocol import run_protocol

    if args.folds == 1 or args.folds < 0:
        raise ValueError(f"--folds: expected at least 2, got {args.folds}")
    if args.repeats < 0:
        raise ValueError(f"--repeats: expected at least 1, got {args.repeats}")
    if args.folds and args.repeats:
        raise ValueError("--folds and --repeats: expected one of them, not both")
    if args.only or args.stop_after or args.compare:
        raise ValueError("--folds/--repeats: they go without --only, --stop-after and --compare")
    cfg = config_from_args(args)
    if args.per_magnification and (args.repeats or not (args.folds or cfg.split_file)):
        raise ValueError(
            "--per-magnification: trains on patient folds; expected --folds K, or --set split_file=FILE "
            "(one of BreakHis' official folds), without --repeats"
        )
    if args.per_magnification and not args.dask:
        from bcnb.batch.magnifications import one_thread_for_heads

        one_thread_for_heads()  # this process trains the heads, and nothing larger (its kernel does)
    with dask_runner(args.dask) as runner:
        out = run_protocol(
            cfg,
            args.out,
            args.folds,
            args.repeats,
            notebooks,
            _say,
            live,
            args.resume,
            args.per_magnification,
            runner,
        )
    _say(f"done in {time.perf_counter() - started:.0f} s: {out} (see summary.md)")
    return 0


@contextmanager
def dask_runner(address: str | None):
    """None without --dask; else a runner on the cluster at ``address``, reached (or refused, in one
    line) before anything runs, and let go when the command ends."""
    if not address:
        yield None
        return
    from bcnb.batch.on_dask import runner_on
    from bcnb.train.cluster import connect

    with connect(address) as client:
        _say(f"Dask: {len(client.scheduler_info()['workers'])} worker(s) at {client.scheduler.address}")
        yield runner_on(client)


def _say(message: str) -> None:
    # One write per line: a sweep's cells report from several threads at once.
    sys.stderr.write(f"bcnb: {message}\n")
    sys.stderr.flush()


def _fail(message: str, status: int) -> int:
    # One line, whatever the message held.
    print(f"bcnb: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    return status


_COMMANDS = {
    "reproduce": _reproduce,
    "sweep": _sweep,
    "extract": _extract,
    "predict": _predict,
    "config": _config,
    "download": _download,
    "weights": _weights,
    "bench": _bench,
}


if __name__ == "__main__":
    sys.exit(main())
