"""Run every benchmark row once and write BENCHMARKS.md (atomically).

    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824 \\
        .venv/bin/python benchmarks/run.py [--runs 9]

The allocator settings apply to both sides alike; without them glibc returns large
blocks to the OS after every call and both sides pay page faults (the file records
which settings were in force).
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from torchcells.bench import run_all, to_markdown
from torchcells.files import write_atomic

HEADER = """# Benchmarks

Forward + backward (loss = sum of outputs), float32, CPU, contenders interleaved in one
run after a warm-up call each; medians of the timed runs; ratio = ours / theirs (lower is
better for torchcells). Produced by `benchmarks/run.py` (or `torchcells bench`); never
asserted by the test suite.
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "BENCHMARKS.md"))
    parser.add_argument("--notes", default="", help="a paragraph of notes appended under the table")
    args = parser.parse_args()
    env, rows = run_all(args.runs)
    text = HEADER + f"\n## Run of {datetime.date.today().isoformat()}\n\n" + to_markdown(env, rows)
    if args.notes:
        text += "\n" + Path(args.notes).read_text(encoding="utf-8")
    write_atomic(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
