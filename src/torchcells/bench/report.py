"""The benchmark's report: the goals of issue 14 first (met or missed, by how much), then every row
of every run (allocator setting × thread count), as Markdown.

A goal row's measured value takes each side at its best over the allocator settings, at one thread
count: ``min(ours) / min(theirs)`` (``min(theirs) / min(ours)`` for a speed-up, ``min(ours)`` for a
first call). The allocator is the user's choice, so neither side is judged by a setting that
slows it; the detailed tables show each setting's own ratio beside the ratio to theirs at its best.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .rows import Row


@dataclass(frozen=True)
class Goal:
    key: str
    what: str
    shape: str
    goal: str
    kind: str  # "ratio": ours / theirs ≤ limit; "speedup": theirs / ours ≥ limit; "seconds": ours ≤ limit
    limit: float


GOALS = (
    Goal("lstm-b32", "plain user LSTM cell / nn.LSTM", "32, 100, 64, 256", "≤ 1.1×", "ratio", 1.1),
    Goal("lstm-b8", "plain user LSTM cell / nn.LSTM", "8, 200, 32, 128", "≤ 1.4×", "ratio", 1.4),
    Goal("lstm-b64", "plain user LSTM cell / nn.LSTM", "64, 50, 256, 512", "≤ 1.05×", "ratio", 1.05),
    Goal("gru", "torchcells.GRU / nn.GRU", "32, 100, 64, 256", "≤ 0.6×", "ratio", 0.6),
    Goal("scan-mingru", "MinGRU: parallel scan vs its loop", "16, 2048, 64, 256", "≥ 20×", "speedup", 20.0),
    Goal("scan-minlstm", "MinLSTM: parallel scan vs its loop", "16, 2048, 64, 256", "≥ 20×", "speedup", 20.0),
    Goal("stream-layer", "streaming step: `Recurrent(cell)(x[None], state)` / calling the cell, no grad",
         "1, 1, 64, 256", "≤ 2×", "ratio", 2.0),
    Goal("stream-step", "streaming step: `Recurrent(cell).step(x, state)` / calling the cell, no grad",
         "1, 1, 64, 256", "≤ 2×", "ratio", 2.0),
    Goal("dropin-lstm", "torchcells.LSTM / nn.LSTM at T=1, no grad", "1, 1, 64, 256", "≤ 1.3×", "ratio", 1.3),
    Goal("dropin-gru", "torchcells.GRU / nn.GRU at T=1, no grad", "1, 1, 64, 256", "≤ 1.3×", "ratio", 1.3),
    Goal("dropin-rnn", "torchcells.RNN / nn.RNN at T=1, no grad", "1, 1, 64, 256", "≤ 1.3×", "ratio", 1.3),
    Goal("first-call", "first call in a fresh process (set-up + run)", "32, 1000, 64, 256", "≤ 1 s", "seconds", 1.0),
    Goal("memory", "peak memory added by forward+backward / nn.LSTM's", "32, 100, 64, 256", "≤ 1.0×", "ratio", 1.0),
)
GOAL_TEXT = {g.key: g.goal for g in GOALS}


@dataclass
class Run:
    """One process of the benchmark: one allocator setting at one thread count."""

    allocator: str
    threads: int
    settings: dict[str, str]
    rows: list[Row]
    skipped: dict[str, str] = field(default_factory=dict)  # goal key -> why it has no row here


@dataclass
class Matrix:
    machine: dict[str, str]
    runs: list[Run]
    quick: bool = False

    @property
    def threads(self) -> list[int]:
        return sorted({run.threads for run in self.runs})


def measured(goal: Goal, runs: list[Run], allocator: Optional[str] = None) -> Optional[float]:
    """The goal's value over ``runs`` (one thread count), each side at its best; with ``allocator``, ours
    under that setting against theirs at its best. None where no run has the row."""
    rows = [r for run in runs for r in run.rows if r.goal == goal.key]
    mine = [r for run in runs for r in run.rows if r.goal == goal.key and allocator in (None, run.allocator)]
    if not mine:
        return None
    ours, theirs = min(r.ms_ours for r in mine), min(r.ms_theirs for r in rows)
    if goal.kind == "speedup":
        return theirs / ours
    if goal.kind == "seconds":
        return ours / 1e3
    return ours / theirs


def verdict(goal: Goal, value: float) -> str:
    """"meets", or "misses by ..." (percent up to 2×, a factor beyond)."""
    factor = goal.limit / value if goal.kind == "speedup" else value / goal.limit
    if factor <= 1:
        return "meets"
    return f"misses by {(factor - 1) * 100:.0f} %" if factor < 2 else f"misses by {factor:.1f}×"


def _value(goal: Goal, value: float) -> str:
    if goal.kind == "speedup":
        return f"{value:.1f}× faster"
    return f"{value:.2f} s" if goal.kind == "seconds" else f"{value:.2f}×"


def goals_table(matrix: Matrix) -> str:
    threads = matrix.threads
    lines = ["| goal row | B, T, I, H | goal | " + " | ".join(_threads(t) for t in threads) + " |",
             "|---|---|---|" + "---|" * len(threads)]
    for goal in GOALS:
        shape = _shape(matrix, goal)
        cells = []
        for t in threads:
            runs = [run for run in matrix.runs if run.threads == t]
            value = measured(goal, runs)
            if value is None:
                why = next((run.skipped[goal.key] for run in runs if goal.key in run.skipped), "no row in this run")
                cells.append(f"not measured ({why})")
            else:
                cells.append(f"{_value(goal, value)}: {verdict(goal, value)}")
        lines.append(f"| {goal.what} | {shape} | {goal.goal} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def settings_table(matrix: Matrix) -> str:
    """Each goal row with ours under each allocator setting, against theirs at its best."""
    columns = [(t, a) for t in matrix.threads for a in dict.fromkeys(run.allocator for run in matrix.runs)]
    lines = ["| goal row | B, T, I, H | goal | " + " | ".join(f"{_threads(t)}, {a}" for t, a in columns) + " |",
             "|---|---|---|" + "---:|" * len(columns)]
    for goal in GOALS:
        cells = []
        for t, a in columns:
            value = measured(goal, [run for run in matrix.runs if run.threads == t], a)
            cells.append("—" if value is None else _value(goal, value))
        lines.append(f"| {goal.what} | {_shape(matrix, goal)} | {goal.goal} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _shape(matrix: Matrix, goal: Goal) -> str:
    shapes = [r.shape for run in matrix.runs for r in run.rows if r.goal == goal.key]
    return ", ".join(map(str, shapes[0])) if shapes else goal.shape


def _threads(t: int) -> str:
    return f"{t} thread" + ("s" if t != 1 else "")


def _amount(value: float, unit: str) -> str:
    return f"{value:.1f} µs" if unit == "µs" else f"{value:.2f}" + (f" {unit}" if unit != "ms" else "")


def _ratio(row: Row, theirs: float) -> str:
    if row.kind == "speedup":
        return f"{theirs / row.ms_ours:.1f}× faster"
    return f"{row.ms_ours / theirs:.2f}×"


def _faults(row: Row) -> str:
    if row.faults_ours is None or row.faults_theirs is None:
        return "—"
    return f"{row.faults_ours:.0f} / {row.faults_theirs:.0f}"


def run_table(run: Run, best_theirs: dict[tuple, float]) -> str:
    """One run's rows; ``best_theirs``: each row's lowest ``theirs`` over the runs at this thread count."""
    lines = ["| what | B, T, I, H | ours | theirs | ours ms | theirs ms | ratio | ratio to theirs at its best "
             "| page faults a call, ours / theirs | target |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in run.rows:
        own, best = _ratio(r, r.ms_theirs), _ratio(r, best_theirs.get(r.ident, r.ms_theirs))
        if r.kind == "first-call":
            own, best = f"{r.ms_ours / 1e3:.2f} s ({r.note})", "—"
        elif r.note:
            own += f" ({r.note})"
        target = GOAL_TEXT.get(r.goal, r.target)
        lines.append(f"| {r.name} | {', '.join(map(str, r.shape))} | {r.ours} | {r.theirs} | "
                     f"{_amount(r.ms_ours, r.unit)} | {_amount(r.ms_theirs, r.unit)} | {own} | {best} | "
                     f"{_faults(r)} | {target} |")
    return "\n".join(lines) + "\n"


def to_markdown(matrix: Matrix) -> str:
    """The goals table, the machine, then one table per run (grouped by thread count)."""
    parts = ["### Goals (issue 14): each side at its best over the allocator settings\n\n", goals_table(matrix),
             "\n### The goal rows under each allocator setting: ours under it, against theirs at its best\n\n",
             settings_table(matrix), "\n" + "\n".join(f"- {k}: {v}" for k, v in matrix.machine.items()) + "\n"]
    if matrix.quick:
        parts.append("- **--quick**: tiny sizes, one timed run, runs in parallel: the structure, not the speed\n")
    for t in matrix.threads:
        runs = [run for run in matrix.runs if run.threads == t]
        best: dict[tuple, float] = {}
        for run in runs:
            for r in run.rows:
                best[r.ident] = min(best.get(r.ident, r.ms_theirs), r.ms_theirs)
        for run in runs:
            settings = "; ".join(f"{k}: {v}" for k, v in run.settings.items())
            parts.append(f"\n### {_threads(t)}, {run.allocator}\n\n- {settings}\n\n" + run_table(run, best))
    return "".join(parts)


HEADER = """# Benchmarks

Forward + backward (loss = sum of outputs), float32, CPU, unless a row says otherwise; the
contenders of a row interleaved in one process after a warm-up call each; medians of the timed
runs; ratio = ours / theirs (lower is better for torchcells). Never asserted by the test suite.

Every row is measured under two allocator settings -- glibc malloc's defaults, and thresholds that
keep freed memory mapped (`MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184`: no
page faults from re-mapping large buffers every call) -- at 1 and 2 threads, each combination in
its own process. The goals table takes each side at its best over the allocator settings; the
tables below it give each run's own ratio and the ratio to theirs at its best, with the minor page
faults a call of each side takes. We know of no pip package that ships tcmalloc or jemalloc; to
compare one, run the benchmark under `LD_PRELOAD=/path/to/libtcmalloc.so` (every run then uses it, and says so).

How to run it: on an idle machine (other processes on the same cores slow two-thread runs many
times over), from the repository root, with torchcells installed (`pip install -e .`):

    python benchmarks/run.py              # every run (about 5 minutes on 2 cores), writes BENCHMARKS.md
    python benchmarks/run.py --notes notes.md   # the same, with a file of notes appended
    torchcells bench [--runs 9] [--out FILE]    # the same tables, printed (and written to FILE)
    torchcells bench --quick                    # tiny sizes, one run: checks that every row runs, not speed
"""


def document(matrix: Matrix, notes: str = "", date: Optional[str] = None) -> str:
    """The whole BENCHMARKS.md: header, the run's tables, then ``notes``."""
    import datetime

    day = date or datetime.date.today().isoformat()
    text = HEADER + f"\n## Run of {day}\n\n" + to_markdown(matrix)
    return text + ("\n" + notes if notes else "")
