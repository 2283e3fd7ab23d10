"""Command line: ``torchcells demo`` (also ``python -m torchcells demo``), ``train``, ``compare``."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import __version__


def _demo(args: argparse.Namespace) -> int:
    import torch

    from .anatomy import census, describe_census
    from .tasks.digits import train_digits

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torchcells {__version__} demo: handwritten digits (scikit-learn, 8x8), each image read "
          f"row by row as 8 steps of 8 pixels.")
    result = train_digits(cell=args.cell, hidden=args.hidden, epochs=args.epochs, lr=args.lr,
                          seed=args.seed, progress=not args.no_progress)
    print(f"\nheld-out accuracy: {result.accuracy:.4f} on {result.test_size} test images "
          f"({args.epochs} epochs, {result.seconds:.1f} s, {torch.get_num_threads()} threads)")
    print("\nWhere the cells are in this model:")
    print(describe_census(census(result.model, steps=8), samples=result.test_size, sequence="image"))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import run_all, to_markdown

    env, rows = run_all(args.runs, quick=args.quick)
    print(to_markdown(env, rows))
    return 0


def _zoo(args: argparse.Namespace) -> int:
    from .cells.registry import ZOO, describe_zoo

    print(describe_zoo(ZOO.values(), kind=args.kind))
    return 0


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
    import torch

    from .tasks.base import TaskError
    from .tasks.report import summary
    from .tasks.training import train

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = _train_config(args, args.cell)
        result = train(config, out=args.out, resume=args.resume, progress=not args.no_progress)
    except TaskError as e:
        return _fail("train", e)
    except KeyboardInterrupt:
        kept = f"; {args.out} keeps the last finished epoch: add --resume to continue" if args.out else ""
        _fail("train", Exception(f"interrupted{kept}"))
        return 130
    if result.rank == 0:
        print(summary(result))
    return 0


def _compare(args: argparse.Namespace) -> int:
    import torch

    from .tasks.base import TaskError
    from .tasks.compare import compare
    from .tasks.report import compare_table

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cells = [c.strip() for c in args.cells.split(",") if c.strip()]
        config = _train_config(args, cells[0] if cells else "")
        results, written = compare(config, cells, out=args.out, progress=not args.no_progress)
    except TaskError as e:
        return _fail("compare", e)
    if results and results[0].rank == 0:
        print(compare_table(results))
        if written:
            print("written: " + ", ".join(str(p) for p in written))
    return 0


def _add_training_options(p: argparse.ArgumentParser) -> None:
    from pathlib import Path

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
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchcells", description="Write a cell, get a layer.")
    parser.add_argument("--version", action="version", version=f"torchcells {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="train a recurrent layer on handwritten digits and show its cells")
    demo.add_argument("--cell", choices=["gru", "lstm", "rnn"], default="gru")
    demo.add_argument("--hidden", type=int, default=64, help="hidden units (default 64)")
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--lr", type=float, default=5e-3)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(run=_demo)
    bench = sub.add_parser("bench", help="measure torchcells against torch.nn (ratios of medians, one run)")
    bench.add_argument("--runs", type=int, default=9, help="timed runs per contender (default 9)")
    bench.add_argument("--quick", action="store_true", help="only the first LSTM row and the GRU row")
    bench.set_defaults(run=_bench)
    zoo = sub.add_parser("zoo", help="list every cell and wrapper: description, state, parameter count")
    zoo.add_argument("--kind", choices=["recurrent", "feed-forward", "wrapper"], help="only this kind")
    zoo.set_defaults(run=_zoo)
    train = sub.add_parser("train", help="train a zoo cell on a real task: progress, checkpoints, resume, plots")
    _add_training_options(train)
    train.add_argument("--cell", required=True, help="a recurrent cell of the zoo (torchcells zoo)")
    train.add_argument("--resume", action="store_true", help="continue the checkpoint in --out exactly")
    train.set_defaults(run=_train)
    compare = sub.add_parser("compare", help="train several cells on one task with the same budget")
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
