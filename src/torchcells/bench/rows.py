"""The timed rows: the goal rows of issue 14 (LSTM, GRU, scan, streaming, drop-ins at T=1) and their context rows.

Each row times its two contenders interleaved (A, B, B, A, ...) after one warm-up call each and
keeps the median of each; forward + backward (loss = sum of outputs) in float32 unless the row
says otherwise. Alongside the times it counts the minor page faults each contender's calls take
(``getrusage``): what the allocator setting changes. Nothing here asserts a time.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..cell import Cell
from ..cells import LSTMState
from ..layers import GRU, LSTM, RNN, Recurrent

Shape = tuple[int, int, int, int]  # B, T, I, H
Shapes = Union[Mapping[str, Shape], Sequence[Shape]]

LSTM_SHAPES: dict[str, Shape] = {"lstm-b32": (32, 100, 64, 256), "lstm-b8": (8, 200, 32, 128),
                                 "lstm-b64": (64, 50, 256, 512)}
GRU_SHAPE: Shape = (32, 100, 64, 256)
SCAN_SHAPE: Shape = (16, 2048, 64, 256)
STEP_SHAPE: Shape = (1, 1, 64, 256)


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
    """One measured row. ``ours``/``theirs`` values are in ``unit``; ``kind`` says how to read them:
    ``"time"`` (ratio ours / theirs, lower is better for ours), ``"speedup"`` (theirs / ours, higher is
    better), ``"first-call"`` (ours = the first call, theirs = the second), ``"memory"`` (MiB)."""

    name: str
    shape: tuple[int, ...]  # B, T, I, H
    ours: str
    theirs: str
    ms_ours: float
    ms_theirs: float
    target: str = ""
    runs: int = 0
    note: str = ""
    goal: str = ""  # the key of the goal this row measures (report.GOALS); "" for a context row
    kind: str = "time"
    unit: str = "ms"
    faults_ours: Optional[float] = None  # minor page faults per timed call
    faults_theirs: Optional[float] = None

    @property
    def ratio(self) -> float:
        return self.ms_ours / self.ms_theirs

    @property
    def ident(self) -> tuple:
        """What names this row across runs (allocator settings, thread counts)."""
        return (self.goal or self.name, tuple(self.shape), self.ours, self.theirs)


def _faults() -> Optional[int]:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@dataclass
class Timing:
    seconds: list[list[float]]  # per contender, per timed run
    faults: list[Optional[float]]  # per contender: mean minor page faults per timed run

    def ms(self, i: int, scale: float = 1e3) -> float:
        return statistics.median(self.seconds[i]) * scale


def interleaved(contenders: list[Callable[[], Any]], runs: int) -> Timing:
    """Time each contender ``runs`` times, alternating the order each round, after one warm-up call each."""
    for fn in contenders:  # warm-up (first-call costs are measured separately)
        fn()
    times: list[list[float]] = [[] for _ in contenders]
    faults: list[list[int]] = [[] for _ in contenders]
    for r in range(runs):
        order = list(range(len(contenders)))
        if r % 2:
            order.reverse()
        for i in order:
            f0 = _faults()
            start = time.perf_counter()
            contenders[i]()
            times[i].append(time.perf_counter() - start)
            f1 = _faults()
            if f0 is not None and f1 is not None:
                faults[i].append(f1 - f0)
    return Timing(times, [statistics.fmean(f) if f else None for f in faults])


def _fwd_bwd(module: Callable[..., Any], x: Tensor) -> Callable[[], None]:
    def step() -> None:
        out = module(x)[0]
        out.sum().backward()
    return step


def _row(name: str, shape, ours: str, theirs: str, timing: Timing, runs: int, **fields: Any) -> Row:
    scale = 1e6 if fields.get("unit") == "µs" else 1e3
    return Row(name, tuple(shape), ours, theirs, timing.ms(0, scale), timing.ms(1, scale), runs=runs,
               faults_ours=timing.faults[0], faults_theirs=timing.faults[1], **fields)


def _pair(name: str, shape, ours_label: str, ours: nn.Module, theirs_label: str, theirs: nn.Module,
          runs: int, target: str = "", goal: str = "") -> Row:
    b, t, i, _ = shape
    torch.manual_seed(0)
    x = torch.randn(t, b, i, requires_grad=True)
    timing = interleaved([_fwd_bwd(ours, x), _fwd_bwd(theirs, x)], runs)
    return _row(name, shape, ours_label, theirs_label, timing, runs, target=target, goal=goal)


def _keyed(shapes: Shapes) -> list[tuple[str, Shape]]:
    return list(shapes.items()) if isinstance(shapes, Mapping) else [("", s) for s in shapes]


def lstm_rows(runs: int, shapes: Optional[Shapes] = None) -> list[Row]:
    """The user LSTM cell in ``Recurrent`` against nn.LSTM (a goal row per shape), and two context rows:
    the same derived step driven from Python (native runtime off), and the reference loop."""
    rows = []
    for goal, shape in _keyed(LSTM_SHAPES if shapes is None else shapes):
        b, t, i, h = shape
        torch.manual_seed(0)
        ours = Recurrent(UserLSTMCell(i, h))
        rows.append(_pair("user LSTM cell in Recurrent vs nn.LSTM", shape, "Recurrent(UserLSTMCell)", ours,
                          "nn.LSTM", nn.LSTM(i, h), runs, goal=goal))
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


def gru_rows(runs: int, shape: Shape = GRU_SHAPE) -> list[Row]:
    b, t, i, h = shape
    torch.manual_seed(0)
    from ..cells import GRUCell
    return [_pair("torchcells.GRU vs nn.GRU", shape, "torchcells.GRU", GRU(i, h), "nn.GRU", nn.GRU(i, h), runs,
                  goal="gru"),
            _pair("GRUCell on torch's kernel vs nn.GRU", shape, "Recurrent(GRUCell, engine='torch')",
                  Recurrent(GRUCell(i, h), engine="torch"), "nn.GRU", nn.GRU(i, h), runs, "(context)")]


def scan_rows(runs: int, shape: Shape = SCAN_SHAPE) -> list[Row]:
    """MinGRU and MinLSTM layers: the parallel scan against the same cell's sequential loop (its
    loop at T=2048 takes seconds, so a third of the runs, at least 3)."""
    from ..cells.minimal import MinGRUCell, MinLSTMCell
    b, t, i, h = shape
    runs = max(1 if runs == 1 else 3, runs // 3)
    rows = []
    for goal, cls in (("scan-mingru", MinGRUCell), ("scan-minlstm", MinLSTMCell)):
        torch.manual_seed(0)
        cell = cls(i, h)
        x = torch.randn(t, b, i, requires_grad=True)
        timing = interleaved([_fwd_bwd(Recurrent(cell, engine="scan"), x), _fwd_bwd(Recurrent(cell, engine="loop"), x)],
                             runs)
        rows.append(_row(f"{cls.__name__} layer: parallel scan vs its sequential loop", shape, "engine='scan'",
                         "engine='loop'", timing, runs, goal=goal, kind="speedup"))
    return rows


def _calls(n: int, fn: Callable[[], None]) -> Callable[[], None]:
    def many() -> None:
        with torch.no_grad():
            for _ in range(n):
                fn()
    return many


def streaming_rows(runs: int, shape: Shape = STEP_SHAPE, calls: int = 200) -> list[Row]:
    """One step at a time (T=1, B=1, no grad; the state carried from call to call, as a reinforcement
    learning or real-time loop does), µs per step: ``layer(x[None], state)`` -- and ``layer.step(x,
    state)`` where ``Recurrent`` has one -- against calling the cell itself."""
    b, _, i, h = shape
    torch.manual_seed(0)
    cell = UserLSTMCell(i, h)
    layer = Recurrent(cell)
    x = torch.randn(b, i)
    carried: dict[str, Any] = {name: cell.init_state(b) for name in ("cell", "layer", "step")}

    def direct() -> None:
        carried["cell"] = cell(x, carried["cell"])[1]

    def through_layer() -> None:
        carried["layer"] = layer(x[None], carried["layer"])[1]

    contenders = [("Recurrent(UserLSTMCell)(x[None], state)", through_layer, "stream-layer")]
    step = getattr(layer, "step", None)
    if callable(step):
        def through_step() -> None:
            carried["step"] = step(x, carried["step"])[1]
        contenders.append(("Recurrent(UserLSTMCell).step(x, state)", through_step, "stream-step"))
    rows = []
    for label, fn, goal in contenders:
        timing = interleaved([_calls(calls, fn), _calls(calls, direct)], runs)
        timing.seconds = [[s / calls for s in ts] for ts in timing.seconds]
        timing.faults = [None if f is None else f / calls for f in timing.faults]
        rows.append(_row("streaming step (T=1, B=1, no grad) vs calling the cell", shape, label, "UserLSTMCell(x, state)",
                         timing, runs, goal=goal, unit="µs", note=f"{calls} steps a timed run"))
    return rows


def dropin_rows(runs: int, shape: Shape = STEP_SHAPE, calls: int = 200) -> list[Row]:
    """torchcells.LSTM/GRU/RNN against torch.nn's at T=1, B=1, no grad, ``hx`` carried: µs per call."""
    b, t, i, h = shape
    rows = []
    for goal, ours_cls, theirs_cls in (("dropin-lstm", LSTM, nn.LSTM), ("dropin-gru", GRU, nn.GRU),
                                       ("dropin-rnn", RNN, nn.RNN)):
        torch.manual_seed(0)
        ours, theirs = ours_cls(i, h), theirs_cls(i, h)
        x = torch.randn(t, b, i)
        carried: dict[int, Any] = {id(ours): None, id(theirs): None}

        def call(module: nn.Module) -> Callable[[], None]:
            def one() -> None:
                carried[id(module)] = module(x, carried[id(module)])[1]
            return one

        timing = interleaved([_calls(calls, call(ours)), _calls(calls, call(theirs))], runs)
        timing.seconds = [[s / calls for s in ts] for ts in timing.seconds]
        timing.faults = [None if f is None else f / calls for f in timing.faults]
        rows.append(_row(f"torchcells.{ours_cls.__name__} vs nn.{theirs_cls.__name__} at T=1 (B=1, no grad)", shape,
                         f"torchcells.{ours_cls.__name__}", f"nn.{theirs_cls.__name__}", timing, runs, goal=goal,
                         unit="µs", note=f"{calls} calls a timed run"))
    return rows
