"""Benchmarks: torchcells against torch.nn, measured in one run as ratios of medians.

Each row times its contenders forward + backward (loss = sum of outputs), float32,
interleaved (A, B, A, B, ...) after one warm-up call each, and reports medians and
the ratio ours / theirs (lower is better for ours). Run with ``torchcells bench``
or ``python benchmarks/run.py`` (which also writes BENCHMARKS.md). Not a test:
nothing here asserts a time.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from .cell import Cell
from .cells import LSTMState
from .layers import GRU, Recurrent


class UserLSTMCell(Cell):
    """An LSTM cell as a user would write it: two nn.Linear and the equations."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.ih = nn.Linear(input_size, 4 * hidden_size)
        self.hh = nn.Linear(hidden_size, 4 * hidden_size)

    def init_state(self, batch_size, *, device=None, dtype=None):
        zeros = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return LSTMState(zeros, zeros)

    def forward(self, x, state):
        h, c = state
        i, f, g, o = (self.ih(x) + self.hh(h)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, LSTMState(h, c)


@dataclass
class Row:
    name: str
    shape: tuple[int, int, int, int]  # B, T, I, H
    ours: str
    theirs: str
    ms_ours: float
    ms_theirs: float
    target: str = ""
    runs: int = 0
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ms_ours / self.ms_theirs


def _fwd_bwd(module: Callable[..., Any], x: Tensor) -> Callable[[], None]:
    def step() -> None:
        out = module(x)[0]
        out.sum().backward()
    return step


def _interleaved(contenders: list[Callable[[], None]], runs: int) -> list[list[float]]:
    for fn in contenders:  # warm-up (first-call costs are measured separately)
        fn()
    times: list[list[float]] = [[] for _ in contenders]
    for r in range(runs):
        order = list(range(len(contenders)))
        if r % 2:
            order.reverse()
        for i in order:
            start = time.perf_counter()
            contenders[i]()
            times[i].append(time.perf_counter() - start)
    return times


def _pair(name: str, shape, ours_label: str, ours: nn.Module, theirs_label: str, theirs: nn.Module,
          runs: int, target: str) -> Row:
    b, t, i, _ = shape
    torch.manual_seed(0)
    x = torch.randn(t, b, i, requires_grad=True)
    times = _interleaved([_fwd_bwd(ours, x), _fwd_bwd(theirs, x)], runs)
    return Row(name, shape, ours_label, theirs_label, statistics.median(times[0]) * 1e3,
               statistics.median(times[1]) * 1e3, target, runs)


def lstm_rows(runs: int, shapes: Optional[list] = None) -> list[Row]:
    rows = []
    targets = {(32, 100, 64, 256): "≤ 1.6× (final ≤ 1.25×)", (8, 200, 32, 128): "≤ 2.5× (final ≤ 1.6×)",
               (64, 50, 256, 512): "≤ 1.2× (final ≤ 1.1×)"}
    for shape in shapes or list(targets):
        b, t, i, h = shape
        torch.manual_seed(0)
        ours = Recurrent(UserLSTMCell(i, h))
        rows.append(_pair("user LSTM cell in Recurrent vs nn.LSTM", shape, "Recurrent(UserLSTMCell)", ours,
                          "nn.LSTM", nn.LSTM(i, h), runs, targets.get(shape, "")))
        rows.append(_pair("same cell, fused with its loop in Python vs nn.LSTM", shape,
                          "Recurrent(UserLSTMCell), TORCHCELLS_NATIVE=0", _PythonLoop(ours), "nn.LSTM",
                          nn.LSTM(i, h), runs, "(context)"))
        loop = Recurrent(ours.cell, engine="loop")
        rows.append(_pair("same cell, reference loop vs nn.LSTM", shape, "Recurrent(UserLSTMCell, engine='loop')",
                          loop, "nn.LSTM", nn.LSTM(i, h), runs, "(context)"))
    return rows


class _PythonLoop(nn.Module):
    """A layer run with the native runtime switched off (the fused path's Python-driven loop)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor):
        before = os.environ.get("TORCHCELLS_NATIVE")
        os.environ["TORCHCELLS_NATIVE"] = "0"
        try:
            return self.layer(x)
        finally:
            if before is None:
                del os.environ["TORCHCELLS_NATIVE"]
            else:
                os.environ["TORCHCELLS_NATIVE"] = before


def gru_rows(runs: int) -> list[Row]:
    shape = (32, 100, 64, 256)
    b, t, i, h = shape
    torch.manual_seed(0)
    from .cells import GRUCell
    ours = GRU(i, h)
    return [_pair("torchcells.GRU vs nn.GRU", shape, "torchcells.GRU", ours, "nn.GRU", nn.GRU(i, h), runs,
                  "≤ 0.75× (final ≤ 0.6×)"),
            _pair("GRUCell on torch's kernel vs nn.GRU", shape, "Recurrent(GRUCell, engine='torch')",
                  Recurrent(GRUCell(i, h), engine="torch"), "nn.GRU", nn.GRU(i, h), runs, "(context)")]


def scan_rows(runs: int) -> list[Row]:
    from .cells.minimal import MinGRUCell
    shape = (16, 2048, 64, 256)
    b, t, i, h = shape
    torch.manual_seed(0)
    cell = MinGRUCell(i, h)
    x = torch.randn(t, b, i, requires_grad=True)
    scan = Recurrent(cell, engine="scan")
    loop = Recurrent(cell, engine="loop")
    times = _interleaved([_fwd_bwd(scan, x), _fwd_bwd(loop, x)], max(3, runs // 3))
    return [Row("MinGRUCell layer: parallel scan vs its sequential loop", shape, "engine='scan'", "engine='loop'",
                statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3,
                "≥ 10× faster (final ≥ 20×)", max(3, runs // 3))]


def _under_autocast(module: nn.Module, x: Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(x)[0]
        out.float().sum().backward()
    return step


def autocast_rows(runs: int, shape: tuple[int, int, int, int] = (32, 100, 64, 256)) -> list[Row]:
    """Both sides under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (products in bf16)."""
    b, t, i, h = shape
    rows = []
    torch.manual_seed(0)
    x = torch.randn(t, b, i, requires_grad=True)
    for name, ours_label, ours, theirs_label, theirs in (
            ("user LSTM cell vs nn.LSTM, both under autocast bf16", "Recurrent(UserLSTMCell)",
             Recurrent(UserLSTMCell(i, h)), "nn.LSTM", nn.LSTM(i, h)),
            ("torchcells.GRU vs nn.GRU, both under autocast bf16", "torchcells.GRU", GRU(i, h), "nn.GRU",
             nn.GRU(i, h))):
        times = _interleaved([_under_autocast(ours, x), _under_autocast(theirs, x)], runs)
        rows.append(Row(name, shape, ours_label, theirs_label, statistics.median(times[0]) * 1e3,
                        statistics.median(times[1]) * 1e3, "(context)", runs))
    return rows


def new_batch_rows(runs: int, shape: tuple[int, int, int, int] = (32, 100, 64, 256)) -> list[Row]:
    """Every timed call at a batch size neither side has seen (B + 1, B + 2, ...): what a new batch
    size costs once the model is warm at B (a re-trace per batch size would show here)."""
    b, t, i, h = shape
    torch.manual_seed(0)
    ours, theirs = Recurrent(UserLSTMCell(i, h)), nn.LSTM(i, h)
    ours(torch.randn(t, b, i))[0].sum().backward()  # warm at B
    sizes = {id(ours): iter(range(b + 1, b + runs + 2)), id(theirs): iter(range(b + 1, b + runs + 2))}

    def call(module: nn.Module) -> Callable[[], None]:
        def step() -> None:
            x = torch.randn(t, next(sizes[id(module)]), i, requires_grad=True)
            module(x)[0].sum().backward()
        return step

    times = _interleaved([call(ours), call(theirs)], runs)
    return [Row("user LSTM cell vs nn.LSTM, each call at a new batch size", shape, "Recurrent(UserLSTMCell)",
                "nn.LSTM", statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3,
                "as the warm row (no re-trace)", runs, note=f"B = {b + 1}, {b + 2}, ... (B column: the warm size)")]


def compile_rows(runs: int, shape: tuple[int, int, int, int] = (32, 100, 64, 256),
                 backend: str = "inductor") -> list[Row]:
    """``torch.compile(Recurrent(UserLSTMCell), fullgraph=True, dynamic=True)`` against its eager self
    and against nn.LSTM (eager: dynamo does not take nn.LSTM whole in fullgraph). The compile itself
    is in the warm-up call, not timed."""
    b, t, i, h = shape
    torch.manual_seed(0)
    x = torch.randn(t, b, i, requires_grad=True)
    eager = Recurrent(UserLSTMCell(i, h))
    compiled = torch.compile(eager, fullgraph=True, dynamic=True, backend=backend)
    theirs = nn.LSTM(i, h)
    times = _interleaved([_fwd_bwd(compiled, x), _fwd_bwd(eager, x), _fwd_bwd(theirs, x)], runs)
    ms = [statistics.median(ts) * 1e3 for ts in times]
    label = f"torch.compile(Recurrent(UserLSTMCell), fullgraph, {backend})"
    return [Row("compiled user LSTM cell vs its eager run", shape, label, "Recurrent(UserLSTMCell), eager", ms[0], ms[1],
                "(context)", runs),
            Row("compiled user LSTM cell vs nn.LSTM", shape, label, "nn.LSTM", ms[0], ms[2], "(context)", runs)]


def onnx_rows(runs: int, shape: tuple[int, int, int, int] = (32, 100, 64, 256)) -> list[Row]:
    """Forward only, in onnxruntime: the user cell's ONNX file (``torchcells.export_onnx``, a ``Scan``
    over time) against nn.LSTM's own ONNX export (an ONNX ``LSTM`` node). No rows without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    import tempfile
    from pathlib import Path

    from .export import export_onnx

    b, t, i, h = shape
    torch.manual_seed(0)
    x = torch.randn(t, b, i)
    sessions = []
    with tempfile.TemporaryDirectory() as folder:
        ours = export_onnx(Recurrent(UserLSTMCell(i, h)), x, Path(folder) / "ours.onnx")
        theirs = Path(folder) / "theirs.onnx"
        torch.onnx.export(nn.LSTM(i, h), (x,), str(theirs), dynamo=False, input_names=["input"],
                          dynamic_axes={"input": {0: "T", 1: "B"}})
        for path in (ours, theirs):
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            sessions.append(ort.InferenceSession(str(path), options))
    feed = {"input": x.numpy()}
    times = _interleaved([lambda s=s: s.run(None, feed) for s in sessions], runs)  # type: ignore[misc]
    return [Row("user LSTM cell vs nn.LSTM, both exported to ONNX, onnxruntime forward", shape,
                "export_onnx(Recurrent(UserLSTMCell))", "nn.LSTM (ONNX LSTM node)",
                statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3, "(context)", runs)]


def first_call_rows(steps: tuple[int, ...] = (100, 1000)) -> list[Row]:
    """The very first call in a fresh process: set-up (tracing and deriving the step's forward
    and backward, including make_fx's one-time import of torch._inductor/_dynamo) plus the run
    itself (whose first run also pays the allocator's first touch of its memory). Importing
    torch itself is not counted: every torch user pays it."""
    import subprocess
    import sys
    rows = []
    for t in steps:
        code = (
            "import time\n"
            "s = time.perf_counter()\n"
            "import torch\n"
            "from torchcells.bench import UserLSTMCell\n"
            "from torchcells import Recurrent\n"
            "from torchcells.engine.fused import fused_program\n"
            f"x = torch.randn({t}, 32, 64, requires_grad=True)\n"
            "layer = Recurrent(UserLSTMCell(64, 256))\n"
            "imports = time.perf_counter() - s\n"
            "s = time.perf_counter(); fused_program(layer.cell, x[0], layer.cell.init_state(32), masked=False)\n"
            "trace = time.perf_counter() - s\n"
            "s = time.perf_counter(); layer(x)[0].sum().backward(); first = time.perf_counter() - s\n"
            "s = time.perf_counter(); layer(x)[0].sum().backward(); second = time.perf_counter() - s\n"
            "print(imports, trace, first, second)\n")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        imports, trace, first, second = (float(v) for v in done.stdout.split())
        rows.append(Row("first call, fresh process (set-up + run)", (32, t, 64, 256),
                        "first call", "second call", (trace + first) * 1e3, second * 1e3,
                        "first call ≤ 3 s, flat in T", 1,
                        note=f"set-up (trace + derive) {trace:.2f} s; importing torch and "
                             f"torchcells, {imports:.2f} s, not counted"))
    return rows


_MEMORY_PROBE = """
import os, sys, torch, torch.nn as nn
import torch._inductor.config  # make_fx's one-time import, on both sides, so neither pays for it below
from torchcells import Recurrent
from torchcells.bench import UserLSTMCell
b, t, i, h = (int(v) for v in sys.argv[2:6])
torch.manual_seed(0)
module = Recurrent(UserLSTMCell(i, h)) if sys.argv[1] == "ours" else nn.LSTM(i, h)
module(torch.randn(2, b, i, requires_grad=True))[0].sum().backward()  # warm-up (tracing) at T=2
x = torch.randn(t, b, i, requires_grad=True)
def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current resident size
before = status("VmRSS")
module(x)[0].sum().backward()
print(max(status("VmHWM") - before, 0))
"""


def memory_rows(shapes: Optional[list] = None) -> list[Row]:
    """Peak resident memory added by one forward+backward, each side in a fresh process with
    glibc's default allocator (large blocks are returned to the OS when freed, so the
    high-water mark is the peak of live memory). The peak is read from /proc (VmHWM, reset
    just before the call): ``ru_maxrss`` would carry the parent's size over the exec."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    rows = []
    for shape in shapes or [(32, 100, 64, 256), (64, 50, 256, 512)]:
        peaks = []
        for side in ("ours", "theirs"):
            done = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, side, *map(str, shape)],
                                  capture_output=True, text=True, check=True, env=env)
            peaks.append(int(done.stdout.split()[-1]) / 2**20)
        rows.append(Row("peak memory added by forward+backward", shape, "Recurrent(UserLSTMCell)",
                        "nn.LSTM", peaks[0], peaks[1], "≤ 1.2×", 1))
    return rows


def _native_status() -> str:
    from .engine.native import library, notice
    lib = library()
    if lib is None:
        return notice() or "unavailable"
    return (f"built ({torch.backends.cpu.get_cpu_capability()}, {lib.vector_width()} float lanes per vector); "
            f"its build is set-up, cached by torch.utils.cpp_extension")


def environment() -> dict[str, str]:
    env = {
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.processor() or 'cpu'}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "native runtime": _native_status(),
        "allocator": ", ".join(f"{k}={os.environ[k]}" for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
                               if k in os.environ) or "glibc malloc defaults",
    }
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
        if model:
            env["machine"] = f"{model}, {os.cpu_count()} logical CPUs"
    except OSError:
        pass
    return env


def run_all(runs: int = 9, *, quick: bool = False) -> tuple[dict[str, str], list[Row]]:
    torch.set_num_threads(torch.get_num_threads())
    rows: list[Row] = []
    if quick:
        rows += lstm_rows(runs, [(32, 100, 64, 256)])
        rows += gru_rows(runs)
        return environment(), rows
    rows += lstm_rows(runs)
    rows += gru_rows(runs)
    rows += scan_rows(runs)
    rows += autocast_rows(runs)
    rows += new_batch_rows(runs)
    rows += compile_rows(runs)
    rows += onnx_rows(runs)
    rows += first_call_rows()
    rows += memory_rows()
    return environment(), rows


def to_markdown(env: dict[str, str], rows: list[Row]) -> str:
    lines = ["| what | B, T, I, H | ours | theirs | ours ms | theirs ms | ratio | target |",
             "|---|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        ratio = f"{r.ratio:.2f}×" if "scan" not in r.name else f"{1 / r.ratio:.1f}× faster"
        if r.name.startswith("first call"):
            ratio = f"{r.ms_ours / 1e3:.2f} s ({r.note})"
        unit = " MiB" if "memory" in r.name else ""
        lines.append(f"| {r.name} | {', '.join(map(str, r.shape))} | {r.ours} | {r.theirs} | {r.ms_ours:.2f}{unit} | "
                     f"{r.ms_theirs:.2f}{unit} | {ratio} | {r.target} |")
    head = "\n".join(f"- {k}: {v}" for k, v in env.items())
    return head + "\n\n" + "\n".join(lines) + "\n"
