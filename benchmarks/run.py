"""Run every benchmark row and write BENCHMARKS.md (atomically).

    python benchmarks/run.py [--runs 9] [--notes notes.md] [--out BENCHMARKS.md]

Each (allocator setting, thread count) runs in its own child process (``python -m torchcells.bench
--child``): glibc's defaults and page-fault-free thresholds, at 1 and 2 threads; the file records
the CPU (model, vendor, instruction sets), torch and each run's settings. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torchcells.bench import document, run_matrix
from torchcells.files import write_atomic


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "BENCHMARKS.md"))
    parser.add_argument("--notes", default="", help="a Markdown file of notes appended under the tables")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run: checks the rows, not speed")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs should be at least 1, got {args.runs}")
    notes = Path(args.notes).read_text(encoding="utf-8") if args.notes else ""
    text = document(run_matrix(args.runs, quick=args.quick), notes)
    write_atomic(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
