"""Every benchmark row under every allocator setting at 1 and 2 threads, one process per combination.

The C library reads its allocator settings (``MALLOC_*``) when a process starts, and torch's thread
pools are sized early, so the parent starts one child per (allocator, threads) --
``python -m torchcells.bench --child ...`` -- which measures its rows (contenders interleaved, as in
one run) and writes them as JSON; the parent merges the runs into one :class:`~.report.Matrix`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import torch

from .context import autocast_rows, compile_rows, new_batch_rows, onnx_rows
from .fresh import FIRST_CALL_SIZE, MEMORY_SHAPES, first_call_rows, memory_rows
from .machine import ALLOCATORS, Allocator, machine, settings
from .report import Matrix, Run
from .rows import (GRU_SHAPE, LSTM_SHAPES, SCAN_SHAPE, STEP_SHAPE, Row, Shape, dropin_rows, gru_rows, lstm_rows,
                   scan_rows, streaming_rows)

THREADS = (1, 2)
_SRC = str(Path(__file__).resolve().parents[2])  # the folder holding this torchcells, first on the child's path


def tiny(shape: Shape) -> Shape:
    """``--quick`` sizes: the row's shape scaled down (distinct per row, T=1 kept)."""
    b, t, i, h = shape
    return max(1, b // 16), max(min(t, 2), t // 100), max(2, i // 16), max(2, h // 32)


@dataclasses.dataclass(frozen=True)
class Plan:
    """One child: an allocator setting, the thread counts it runs (one after another, in-process), and
    what it measures besides the timed goal rows (the fresh-process rows at its first thread count)."""

    allocator: Allocator
    threads: tuple[int, ...]
    first_call: bool
    memory: bool
    context: bool


def plan(quick: bool, threads: Sequence[int] = THREADS, allocators: Sequence[Allocator] = ALLOCATORS) -> list[Plan]:
    """One child per (allocator, threads); with ``quick`` one per allocator, running every thread count.
    Memory is measured with glibc's defaults only (its probe clears ``MALLOC_*``: live memory, not
    what an allocator keeps); the context rows under the last setting only; with ``quick`` the
    fresh-process rows in the first run only."""
    if quick:
        return [Plan(a, tuple(threads), first_call=n == 0, memory=n == 0, context=False)
                for n, a in enumerate(allocators)]
    return [Plan(a, (t,), first_call=True, memory=n == 0, context=n == len(allocators) - 1)
            for n, a in enumerate(allocators) for t in threads]


def measure(runs: int, p: Plan, quick: bool) -> tuple[list[Row], dict[str, str]]:
    """The rows of one run (``p`` at one thread count), and why any goal row is missing from them."""
    size = tiny if quick else (lambda s: s)
    runs, calls = (1, 3) if quick else (runs, 200)
    rows = lstm_rows(runs, {k: size(s) for k, s in LSTM_SHAPES.items()})
    rows += gru_rows(runs, size(GRU_SHAPE)) + scan_rows(runs, size(SCAN_SHAPE))
    rows += streaming_rows(runs, size(STEP_SHAPE), calls) + dropin_rows(runs, size(STEP_SHAPE), calls)
    skipped = {}
    if not any(r.goal == "stream-step" for r in rows):
        skipped["stream-step"] = "this Recurrent has no step()"
    if p.first_call:
        steps = {1000: "first-call", 100: ""} if p.context else {1000: "first-call"}
        rows += first_call_rows({5: "first-call"} if quick else steps, (2, 4, 8) if quick else FIRST_CALL_SIZE)
    else:
        skipped["first-call"] = "--quick: in the first run only"
    if p.memory:
        rows += memory_rows({"memory": tiny(MEMORY_SHAPES["memory"])} if quick else MEMORY_SHAPES)
    else:
        skipped["memory"] = "--quick: in the first run only" if quick else "glibc defaults only"
    if p.context:
        rows += autocast_rows(runs) + new_batch_rows(runs) + compile_rows(runs) + onnx_rows(runs)
    return rows, skipped


def child(argv: Sequence[str]) -> int:
    """``python -m torchcells.bench --child ...``: one child's runs, written as JSON to ``--json``."""
    parser = argparse.ArgumentParser(prog="python -m torchcells.bench --child")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--allocator", required=True, help="the setting's name (the parent set its environment)")
    parser.add_argument("--threads", required=True, help="thread counts, comma-separated")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--json", required=True)
    for flag in ("--quick", "--first-call", "--memory", "--context"):
        parser.add_argument(flag, action="store_true")
    args = parser.parse_args(argv)
    allocator = Allocator(args.allocator)
    record: dict = {"machine": machine(), "runs": []}
    for n, t in enumerate(int(v) for v in args.threads.split(",")):
        torch.set_num_threads(t)
        os.environ["OMP_NUM_THREADS"] = str(t)  # for the fresh processes this run starts
        p = Plan(allocator, (t,), args.first_call and n == 0, args.memory and n == 0, args.context)
        rows, skipped = measure(args.runs, p, args.quick)
        record["runs"].append({"threads": t, "settings": settings(), "skipped": skipped,
                               "rows": [dataclasses.asdict(r) for r in rows]})
    Path(args.json).write_text(json.dumps(record), encoding="utf-8")
    return 0


def _env(p: Plan) -> dict[str, str]:
    """The child's environment: this one's, less any allocator settings, plus the plan's; threads
    fixed for the child and the fresh processes it starts; this torchcells first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(p.allocator.env)
    env["OMP_NUM_THREADS"] = str(p.threads[0])
    env["PYTHONPATH"] = os.pathsep.join([_SRC, *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _command(p: Plan, runs: int, quick: bool, out: str) -> list[str]:
    flags = [f for f, on in (("--quick", quick), ("--first-call", p.first_call), ("--memory", p.memory),
                             ("--context", p.context)) if on]
    return [sys.executable, "-m", "torchcells.bench", "--child", "--allocator", p.allocator.name,
            "--threads", ",".join(map(str, p.threads)), "--runs", str(runs), "--json", out, *flags]


def _read(p: Plan, out: str, done: subprocess.CompletedProcess) -> tuple[dict[str, str], list[Run]]:
    if done.returncode:
        raise RuntimeError(f"torchcells bench: the run of {p.allocator.name} at {p.threads} thread(s) failed "
                           f"(exit {done.returncode}):\n{done.stderr[-3000:]}")
    record = json.loads(Path(out).read_text(encoding="utf-8"))
    return record["machine"], [
        Run(p.allocator.name, run["threads"], run["settings"],
            [Row(**{**r, "shape": tuple(r["shape"])}) for r in run["rows"]], run["skipped"]) for run in record["runs"]]


def run_matrix(runs: int = 9, *, quick: bool = False, threads: Sequence[int] = THREADS,
               allocators: Sequence[Allocator] = ALLOCATORS, progress: bool = True) -> Matrix:
    """Run every (allocator, threads) child -- one after another, or all at once with ``quick``
    (whose times mean nothing) -- and merge their rows."""
    if runs < 1:
        raise ValueError(f"torchcells bench: runs should be at least 1, got {runs}")
    # the native runtime's one-time build (where it is not built yet) happens here, untimed, not
    # inside a child's first-call row
    from ..engine.native import library

    library()
    plans = plan(quick, threads, allocators)
    with tempfile.TemporaryDirectory(prefix="torchcells-bench-") as folder:
        outs = [str(Path(folder) / f"run{n}.json") for n in range(len(plans))]
        results = []
        if quick:
            started = [subprocess.Popen(_command(p, runs, quick, out), env=_env(p), stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True) for p, out in zip(plans, outs)]
            for p, out, proc in zip(plans, outs, started):
                stdout, stderr = proc.communicate()
                results.append(_read(p, out, subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)))
        else:
            for n, (p, out) in enumerate(zip(plans, outs)):
                if progress:
                    print(f"torchcells bench: run {n + 1}/{len(plans)}: {p.threads[0]} thread(s), {p.allocator.name}",
                          file=sys.stderr, flush=True)
                done = subprocess.run(_command(p, runs, quick, out), env=_env(p), capture_output=True, text=True)
                results.append(_read(p, out, done))
    merged = sorted((run for _, child_runs in results for run in child_runs), key=lambda run: run.threads)
    return Matrix(results[0][0], merged, quick=quick)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m torchcells.bench [--runs N] [--quick] [--out FILE]`` (the parent), or ``--child ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--child" in argv:
        return child(argv)
    from .report import document
    from ..files import write_atomic

    parser = argparse.ArgumentParser(prog="python -m torchcells.bench")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    text = document(run_matrix(args.runs, quick=args.quick))
    if args.out:
        write_atomic(args.out, text)
    print(text)
    return 0
