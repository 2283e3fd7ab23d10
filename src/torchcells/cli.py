"""Command line: ``torchcells demo|train|compare|explain|zoo|bench`` (also ``python -m torchcells``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import __version__


def _demo(args: argparse.Namespace) -> int:
    """``torchcells train digits`` with a short summary: held-out accuracy and where the cells are."""
    import torch

    from .anatomy import explain
    from .tasks.base import TaskError
    from .tasks.training import resolve_config, train

    zoo_name = {"gru": "gru", "lstm": "lstm", "rnn": "elman"}[args.cell]
    try:
        _set_threads("demo", args.threads)
        config = resolve_config("digits", zoo_name, hidden=args.hidden, epochs=args.epochs, lr=args.lr,
                                seed=args.seed)
        print(f"torchcells {__version__} demo: handwritten digits (scikit-learn, 8x8), each image read "
              f"row by row as 8 steps of 8 pixels.")
        result = train(config, progress=not args.no_progress, plot=False)
    except TaskError as e:
        return _fail("demo", e)
    images = len(result.held_out)
    print(f"\nheld-out accuracy: {result.metric:.4f} on {images} test images "
          f"({len(result.history)} epochs, {result.seconds:.1f} s, {torch.get_num_threads()} threads)")
    print("\nWhere the cells are in this model:")
    anatomy = explain(result.model, result.task.example(result.held_out)[0])
    print(anatomy.account(sequence="image", examples=images))
    if args.html:
        path = anatomy.save_html(args.html)
        print(f"\nThe model's anatomy (diagrams, tables, glossary): {path} -- open it in a browser")
    return 0


def _shape_arg(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"--input-shape should be positive integers separated by commas, like 5,1,10; got {text!r}")
    return shape


def _output_paths(html: str, svg: str) -> None:
    """``--html`` a file path, ``--svg`` a folder path, each writable: ValueError in one line otherwise."""
    import os

    for option, path, folder in (("--html", html, False), ("--svg", svg, True)):
        if not path:
            continue
        p = Path(path)
        if not folder and p.is_dir():
            raise ValueError(f"{option} {path} is a folder; it should be the path of the page to write")
        if folder and p.exists() and not p.is_dir():
            raise ValueError(f"{option} {path} is a file; it should be the folder to write the diagrams in")
        here = p if folder else p.parent
        while not here.exists() and here != here.parent:
            here = here.parent
        if not here.is_dir() or not os.access(here, os.W_OK | os.X_OK):
            raise ValueError(f"{option} {path}: cannot write in {here}")


def _explain(args: argparse.Namespace) -> int:
    import json

    from .anatomy import explain
    from .cli_spec import build

    try:
        _output_paths(args.html, args.svg)
        shape = _shape_arg(args.input_shape) if args.input_shape else None
        model, example = build(args.spec, seq_len=args.seq_len, batch=args.batch, input_shape=shape)
        anatomy = explain(model, example)
    except ValueError as e:
        print(f"torchcells explain: {e}", file=sys.stderr)
        return 2
    print(json.dumps(anatomy.to_dict(), indent=1) if args.json else anatomy.to_text())
    try:
        _write_explained(anatomy, args.html, args.svg)
    except OSError as e:
        print(f"torchcells explain: cannot write {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0


def _write_explained(anatomy, html: str, svg: str) -> None:
    from .files import write_atomic

    if html:
        print(f"wrote {anatomy.save_html(html)}", file=sys.stderr)
    for kind in anatomy.svg_kinds() if svg else ():
        try:
            path = write_atomic(Path(svg) / f"{kind}.svg", anatomy.to_svg(kind))
        except ValueError as e:
            print(f"torchcells explain: no {kind}.svg: {e}", file=sys.stderr)
            continue
        print(f"wrote {path}", file=sys.stderr)


def _bench(args: argparse.Namespace) -> int:
    """Every benchmark row at 1 and 2 threads under each allocator setting, one child process per pair."""
    from .bench import document, run_matrix
    from .files import write_atomic

    if args.runs < 1:
        return _fail("bench", ValueError(f"--runs should be at least 1, got {args.runs}"))
    try:
        text = document(run_matrix(args.runs, quick=args.quick))
    except RuntimeError as e:
        return _fail("bench", e)
    if args.out:
        write_atomic(args.out, text)
    print(text)
    return 0


def _zoo(args: argparse.Namespace) -> int:
    from .cells.registry import ZOO, describe_zoo

    print(describe_zoo(ZOO.values(), kind=args.kind))
    return 0


def _set_threads(command: str, threads: Optional[int]) -> None:
    """``torch.set_num_threads(threads)`` after checking it (``None``: torch's choice)."""
    import os

    import torch

    from .tasks.base import TaskError

    most = os.cpu_count() or 1
    if threads is None:
        return
    if not 1 <= threads <= most:
        raise TaskError(f"--threads should be from 1 to {most} (this machine's CPUs), got {threads}")
    torch.set_num_threads(threads)


def _fail(command: str, error: Exception) -> int:
    """One line on stderr (from rank 0 only, under torchrun) and exit status 2."""
    import os

    if os.environ.get("RANK", "0") == "0":
        print(f"torchcells {command}: error: {error}", file=sys.stderr)
    return 2


def _train_config(args: argparse.Namespace, cell: str):
    from .tasks.training import resolve_config

    return resolve_config(args.task, cell, hidden=args.hidden, layers=args.layers, epochs=args.epochs, lr=args.lr,
                          batch_size=args.batch_size, bidirectional=args.bidirectional or None, seed=args.seed,
                          limit=args.limit)


def _train(args: argparse.Namespace) -> int:
    from .tasks.base import TaskError
    from .tasks.report import summary
    from .tasks.training import train

    try:
        _set_threads("train", args.threads)
        config = _train_config(args, args.cell)
        result = train(config, out=args.out, resume=args.resume, progress=not args.no_progress)
    except TaskError as e:
        return _fail("train", e)
    except KeyboardInterrupt:
        return _interrupted("train", args.out)
    if result.rank == 0:
        print(summary(result))
    return 0


def _interrupted(command: str, out: Optional[Path]) -> int:
    """Ctrl-C: say what was kept (exit status 130, as a shell gives)."""
    from .tasks.checkpoint import CHECKPOINT

    if out is None:
        kept = "nothing was saved (no --out)"
    elif command == "train" and (Path(out) / CHECKPOINT).is_file():
        kept = f"{out} keeps the last finished epoch: add --resume to continue"
    elif command == "compare" and any(Path(out).glob(f"*/{CHECKPOINT}")):
        kept = f"the cells' folders in {out} keep their last finished epochs (torchcells train --resume continues one)"
    else:
        kept = "no epoch had finished, so nothing was saved"
    _fail(command, Exception(f"interrupted; {kept}"))
    return 130


def _compare(args: argparse.Namespace) -> int:
    from .tasks.base import TaskError
    from .tasks.compare import compare
    from .tasks.report import compare_table

    try:
        _set_threads("compare", args.threads)
        cells = [c.strip() for c in args.cells.split(",") if c.strip()]
        config = _train_config(args, cells[0] if cells else "")
        results, written = compare(config, cells, out=args.out, progress=not args.no_progress)
    except TaskError as e:
        return _fail("compare", e)
    except KeyboardInterrupt:
        return _interrupted("compare", args.out)
    if results and results[0].rank == 0:
        print(compare_table(results))
        if written:
            print("written: " + ", ".join(str(p) for p in written))
    return 0


OUT_RULE = ("--out DIR is refused if it holds files torchcells did not write: it writes only into a new or empty "
            "folder or one of its own runs (nothing but checkpoint.safetensors, training.png, training.svg and a "
            "config.json marked \"format\": \"torchcells-checkpoint-1\"; for compare, compare.png, compare.svg "
            "and one such folder per cell), or with --resume into a folder holding its checkpoint. One run at a "
            "time per folder: a run holds DIR/.torchcells.lock (its PID and host); a lock whose process has died is "
            "taken over.")


def _add_training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", metavar="TASK", help="digits, sunspots, vowels or charlm")
    p.add_argument("--hidden", type=int, help="hidden units per layer (default: the task's)")
    p.add_argument("--layers", type=int, help="recurrent layers (default 1)")
    p.add_argument("--bidirectional", action="store_true", help="each layer also reads backwards")
    p.add_argument("--epochs", type=int, help="epochs in all (default: the task's)")
    p.add_argument("--lr", type=float, help="Adam's learning rate (default: the task's)")
    p.add_argument("--batch-size", type=int, help="the global batch (default: the task's)")
    p.add_argument("--seed", type=int, help="seed for weights, data order and masks (default 0)")
    p.add_argument("--limit", type=int, help="use at most this many training and held-out examples")
    p.add_argument("--out", type=Path, help="folder for the checkpoint, config.json and plots")
    p.add_argument("--threads", type=int, help="torch threads, 1 to the number of CPUs (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line (and where to read the usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="torchcells", description="Write a cell, get a layer.")
    parser.add_argument("--version", action="version", version=f"torchcells {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="train a recurrent layer on handwritten digits and show its cells")
    demo.add_argument("--cell", choices=["gru", "lstm", "rnn"], default="gru")
    demo.add_argument("--hidden", type=int, default=64, help="hidden units (default 64)")
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--lr", type=float, default=5e-3)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, help="torch threads, 1 to the number of CPUs (default: torch's choice)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.add_argument("--html", default="out/demo-anatomy.html",
                      help="where to write the model's anatomy page (default out/demo-anatomy.html; '' for none)")
    demo.set_defaults(run=_demo)
    explain = sub.add_parser("explain", help="show where the cells are in a model: table, diagrams, HTML page",
                             description="SPEC: lstm|gru|rnn[:input=N,hidden=N,layers=N,proj=N,bidirectional,"
                             "batch_first,nobias,relu,torchcells], mlp[:input=N,hidden=N/N,output=N], "
                             "cnn[:channels=N,size=N,filters=N,kernel=N,classes=N], or package.module:factory")
    explain.add_argument("spec", metavar="SPEC", help="e.g. lstm:input=10,hidden=20,layers=2,bidirectional")
    explain.add_argument("--seq-len", type=int, default=5,
                         help="time steps of a built-in SPEC's example input (default 5)")
    explain.add_argument("--batch", type=int, default=1,
                         help="batch size of a built-in SPEC's example input (default 1; counts are per example)")
    explain.add_argument("--input-shape", default="", help="example input shape for a factory that returns "
                         "only a module, e.g. 5,1,10")
    explain.add_argument("--html", default="", help="write the anatomy page here")
    explain.add_argument("--svg", default="", metavar="DIR", help="write cell.svg, unrolled.svg, model.svg here")
    explain.add_argument("--json", action="store_true", help="print the anatomy as JSON instead of a table")
    explain.set_defaults(run=_explain)
    bench = sub.add_parser("bench", help="measure torchcells against torch.nn: every goal row, both allocator "
                                         "settings, 1 and 2 threads (ratios of medians)")
    bench.add_argument("--runs", type=int, default=9, help="timed runs per contender (default 9)")
    bench.add_argument("--quick", action="store_true",
                       help="tiny sizes, one timed run, the runs in parallel: checks every row runs, not speed")
    bench.add_argument("--out", help="also write the Markdown to this file (atomically)")
    bench.set_defaults(run=_bench)
    zoo = sub.add_parser("zoo", help="list every cell and wrapper: description, state, parameter count")
    zoo.add_argument("--kind", choices=["recurrent", "feed-forward", "wrapper"], help="only this kind")
    zoo.set_defaults(run=_zoo)
    train = sub.add_parser("train", help="train a zoo cell on a real task: progress, checkpoints, resume, plots",
                           epilog=OUT_RULE)
    _add_training_options(train)
    train.add_argument("--cell", required=True, help="a recurrent cell of the zoo (torchcells zoo)")
    train.add_argument("--resume", action="store_true", help="continue the checkpoint in --out exactly")
    train.set_defaults(run=_train)
    compare = sub.add_parser("compare", help="train several cells on one task with the same budget", epilog=OUT_RULE)
    _add_training_options(compare)
    compare.add_argument("--cells", required=True, help="comma-separated zoo cells, e.g. lstm,gru,mingru")
    compare.set_defaults(run=_compare)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    return args.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
