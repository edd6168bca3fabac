"""The ``bcnb`` command line (also ``python -m bcnb``).

Bad input ends with one line on stderr naming the parameter or path and what was
expected, and exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from bcnb.config import CONFIG_FILE, Config, parse_override

EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line too (``bcnb: error: ...``, status 2)."""

    def error(self, message: str):
        sys.exit(_fail(f"{message} (see {self.prog} --help)", EXIT_BAD_INPUT))


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="bcnb", description="Breast cancer histopathology notebooks.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    run = commands.add_parser("reproduce", help="run the notebooks headless into a run folder")
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
    sweep = commands.add_parser(
        "sweep", help="the pipeline for every combination of --grid values, one table"
    )
    sweep.add_argument("--out", required=True, type=Path, help="the folder of the sweep's run folders")
    sweep.add_argument(
        "--grid",
        required=True,
        action="append",
        metavar="KEY=V1,V2",
        help="a parameter and its values (repeatable: every combination runs)",
    )
    sweep.add_argument("--folds", type=int, default=0, metavar="K", help="a K-fold cross-validation per cell")
    sweep.add_argument("--config", type=Path, help="YAML file of parameter: value pairs")
    sweep.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter for every cell (repeatable)",
    )
    extract = commands.add_parser(
        "extract", help="compute a run's feature cache, one shard or on a Dask cluster (run 01-02 first)"
    )
    extract.add_argument(
        "--out", required=True, type=Path, help="the run (finished, or stopped with --stop-after)"
    )
    where = extract.add_mutually_exclusive_group(required=True)
    where.add_argument("--shard", metavar="I/N", help="this process' share, e.g. 0/4")
    where.add_argument(
        "--dask",
        metavar="SCHEDULER",
        help="all of it on a Dask cluster: local:N worker processes or tcp://host:port",
    )
    extract.add_argument("--chunk", type=int, default=256, metavar="ROWS", help="images per Dask task (256)")
    predict = commands.add_parser(
        "predict", help="calibrated malignancy of new images with a finished run's model"
    )
    predict.add_argument("images", type=Path, metavar="IMAGE_OR_FOLDER")
    predict.add_argument("--model", required=True, type=Path, help="a run's model.keras")
    predict.add_argument("--cam-dir", type=Path, help="write a Grad-CAM overlay per image here")
    predict.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    commands.add_parser("config", help="print every parameter with its default, as YAML")
    fetch = commands.add_parser("download", help="fetch, check and unpack a real data set (breakhis, idc)")
    fetch.add_argument("name", choices=("breakhis", "idc"))
    fetch.add_argument("--to", required=True, type=Path, help="the folder to unpack into")
    fetch.add_argument("--url", default="", help="a mirror's address for the archive")
    fetch.add_argument("--archive", default="", type=str, help="an archive already on disk")
    weights = commands.add_parser("weights", help="the ImageNet weights files: fetch, import, status")
    actions = weights.add_subparsers(dest="action", required=True, parser_class=_OneLineParser)
    get = actions.add_parser("fetch", help="download into Keras' cache (md5 checked)")
    get.add_argument("--backbone", default="resnet50v2", help="a backbone, or all")
    get.add_argument("--img-size", type=int, default=224)
    bring = actions.add_parser("import", help="check a downloaded weights file and put it in Keras' cache")
    bring.add_argument("file", type=Path)
    actions.add_parser("status", help="each backbone's weights file: present and verified, or not")
    bench = commands.add_parser("bench", help="measure speed and memory of the fast path (minutes)")
    bench.add_argument("--img-size", type=int, default=224)
    bench.add_argument("--batch-size", type=int, default=64)
    bench.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    return parser


def given_parameters(args: argparse.Namespace) -> dict:
    """The parameters the command line sets: those the --config file names, then each --set."""
    given = {}
    if args.config:
        from_file = Config.from_file(args.config)  # checks the file and each value
        given = {name: getattr(from_file, name) for name in yaml.safe_load(args.config.read_text()) or {}}
    return {**given, **dict(parse_override(text) for text in args.overrides)}


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults, then the --config file, then each --set."""
    return Config(**given_parameters(args))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config":
        print(yaml.safe_dump(Config().to_dict(), sort_keys=False), end="")
        return 0
    if args.command == "bench":
        return _bench(args)
    if args.command == "extract":
        return _extract(args)
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "download":
        return _download(args)
    if args.command == "weights":
        return _weights(args)
    if args.command == "predict":
        return _predict(args)
    return _reproduce(args)


def parse_shard(text: str) -> tuple[int, int]:
    """ "I/N" -> (I, N) with 0 <= I < N."""
    shard, _, shards = text.partition("/")
    if not (shard.isdigit() and shards.isdigit() and int(shard) < int(shards)):
        raise ValueError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return int(shard), int(shards)


def _extract(args: argparse.Namespace) -> int:
    try:
        shard, shards = parse_shard(args.shard) if args.shard else (0, 1)
        if args.chunk < 1:
            raise ValueError(f"--chunk: expected at least 1 image per task, got {args.chunk}")
        from bcnb.reproduce import run_folder

        folder = run_folder(args.out)
        cfg = Config.from_file(folder / CONFIG_FILE, run_dir=str(folder))
        from bcnb import datasets, features
        from bcnb import model as bcnb_model

        split = datasets.load_split(folder)
        model = bcnb_model.load_model(folder / bcnb_model.INITIAL_MODEL_FILE)
    except (ValueError, FileNotFoundError) as error:
        return _fail(str(error), EXIT_BAD_INPUT)
    if args.dask:
        return _extract_on_cluster(args, cfg, model, split)
    path = features.extract_shard(cfg, model, split, shard, shards)
    _say(f"shard {shard}/{shards}: {path}")
    return 0


def _extract_on_cluster(args: argparse.Namespace, cfg: Config, model, split) -> int:
    from bcnb.cluster import connect, extract_on_cluster
    from bcnb.runfolder import RunLock

    try:  # one writer of the run folder, as for bcnb reproduce
        with RunLock(args.out, "bcnb extract --dask"), connect(args.dask) as client:
            _say(f"Dask dashboard: {client.dashboard_link}")
            path = extract_on_cluster(cfg, model, split, client, args.chunk, _say)
    except ValueError as error:  # a busy folder, no scheduler, an unreadable image: nothing written
        return _fail(str(error), EXIT_BAD_INPUT)
    _say(f"features of {len(split)} images: {path} (bcnb reproduce --out {args.out} --resume trains on them)")
    return 0


def _predict(args: argparse.Namespace) -> int:
    """Print one line per image; refused files are named on stderr (exit status 2)."""
    try:
        from bcnb.predict import Predictor, find_images, predict_files

        paths = find_images(args.images)
        predictor = Predictor.from_run(args.model)
    except (ValueError, FileNotFoundError) as error:
        return _fail(str(error), EXIT_BAD_INPUT)
    for note in predictor.notes():  # before the rows: what the answers can mean
        _say(note)
    table = predict_files(predictor, paths, args.cam_dir)
    for row in table.itertuples():
        if row.refused:
            _fail(f"{row.file}: refused, {row.refused}", EXIT_BAD_INPUT)
        else:
            print(f"{row.file}\t{row.label}\tmalignant {row.malignant}")
    if args.csv:
        from bcnb.files import write_text_atomic

        write_text_atomic(args.csv, table.to_csv(index=False))
    return EXIT_BAD_INPUT if (table["refused"] != "").any() else 0


def _bench(args: argparse.Namespace) -> int:
    from bcnb.bench import render, run_all
    from bcnb.files import write_text_atomic

    if args.img_size < 32 or args.batch_size < 1:
        return _fail("--img-size: expected at least 32, --batch-size at least 1", EXIT_BAD_INPUT)
    text = render(run_all(args.img_size, args.batch_size, progress=_say), args.img_size, args.batch_size)
    print(text, end="")
    if args.out:
        write_text_atomic(args.out, "# bcnb bench\n\n" + text)
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from bcnb.reproduce import NOTEBOOKS_DIR, NotebookFailed, reproduce, rerun

    started = time.perf_counter()
    notebooks = args.notebooks or NOTEBOOKS_DIR
    live = sys.stderr.isatty()  # papermill's cell-by-cell bar in a terminal; none in a log file
    try:
        if args.folds or args.repeats:
            return _reproduce_protocol(args, notebooks, live, started)
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
    from bcnb.download import SOURCES, download, patients_note

    try:
        folder = download(SOURCES[args.name], args.to, args.url, args.archive, _say, sys.stderr.isatty())
    except (ValueError, FileNotFoundError) as error:
        return _fail(str(error), EXIT_BAD_INPUT)
    found = json.loads((args.to / "download.json").read_text())["found"]
    _say(
        f"{folder}: {found['images']} images checked against the published figures; "
        f"{patients_note(found, SOURCES[args.name].published)}"
    )
    return 0


def _weights(args: argparse.Namespace) -> int:
    from bcnb.distribute import import_tensorflow_quietly

    import_tensorflow_quietly()
    from bcnb import weights
    from bcnb.backbones import BACKBONES

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
    from bcnb.reproduce import NotebookFailed
    from bcnb.sweep import parse_grid, run_sweep

    started = time.perf_counter()
    try:
        if args.folds == 1 or args.folds < 0:
            raise ValueError("--folds: expected at least 2")
        out = run_sweep(config_from_args(args), args.out, parse_grid(args.grid), args.folds, _say)
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
    from bcnb.crossval import run_protocol

    if args.folds and args.repeats:
        raise ValueError("--folds and --repeats: expected one of them, not both")
    if args.folds == 1 or args.folds < 0 or args.repeats < 0:
        raise ValueError("--folds: expected at least 2 (--repeats: at least 1)")
    if args.only or args.stop_after or args.compare:
        raise ValueError("--folds/--repeats: they go without --only, --stop-after and --compare")
    cfg = config_from_args(args)
    out = run_protocol(cfg, args.out, args.folds, args.repeats, notebooks, _say, live, args.resume)
    _say(f"done in {time.perf_counter() - started:.0f} s: {out} (see summary.md)")
    return 0


def _say(message: str) -> None:
    print(f"bcnb: {message}", file=sys.stderr, flush=True)


def _fail(message: str, status: int) -> int:
    # One line, whatever the message held.
    print(f"bcnb: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
