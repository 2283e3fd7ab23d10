"""Command line: ``torchcells demo`` (also ``python -m torchcells demo``)."""

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
