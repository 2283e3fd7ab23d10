"""Context rows (no goal of their own): autocast, a new batch size every call, torch.compile, ONNX."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..layers import GRU, Recurrent
from .rows import GRU_SHAPE, Row, Shape, UserLSTMCell, _fwd_bwd, _row, interleaved


def _under_autocast(module: nn.Module, x: Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(x)[0]
        out.float().sum().backward()
    return step


def autocast_rows(runs: int, shape: Shape = GRU_SHAPE) -> list[Row]:
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
        timing = interleaved([_under_autocast(ours, x), _under_autocast(theirs, x)], runs)
        rows.append(_row(name, shape, ours_label, theirs_label, timing, runs, target="(context)"))
    return rows


def new_batch_rows(runs: int, shape: Shape = GRU_SHAPE) -> list[Row]:
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

    timing = interleaved([call(ours), call(theirs)], runs)
    return [_row("user LSTM cell vs nn.LSTM, each call at a new batch size", shape, "Recurrent(UserLSTMCell)",
                 "nn.LSTM", timing, runs, target="as the warm row (no re-trace)",
                 note=f"B = {b + 1}, {b + 2}, ... (B column: the warm size)")]


def compile_rows(runs: int, shape: Shape = GRU_SHAPE, backend: str = "inductor") -> list[Row]:
    """``torch.compile(Recurrent(UserLSTMCell), fullgraph=True, dynamic=True)`` against its eager self
    and against nn.LSTM (eager: dynamo does not take nn.LSTM whole in fullgraph). The compile itself
    is in the warm-up call, not timed."""
    b, t, i, h = shape
    torch.manual_seed(0)
    x = torch.randn(t, b, i, requires_grad=True)
    eager = Recurrent(UserLSTMCell(i, h))
    compiled = torch.compile(eager, fullgraph=True, dynamic=True, backend=backend)
    theirs = nn.LSTM(i, h)
    timing = interleaved([_fwd_bwd(compiled, x), _fwd_bwd(eager, x), _fwd_bwd(theirs, x)], runs)
    label = f"torch.compile(Recurrent(UserLSTMCell), fullgraph, {backend})"
    versus_nn = type(timing)([timing.seconds[0], timing.seconds[2]], [timing.faults[0], timing.faults[2]])
    return [_row("compiled user LSTM cell vs its eager run", shape, label, "Recurrent(UserLSTMCell), eager", timing,
                 runs, target="(context)"),
            _row("compiled user LSTM cell vs nn.LSTM", shape, label, "nn.LSTM", versus_nn, runs, target="(context)")]


def onnx_rows(runs: int, shape: Shape = GRU_SHAPE) -> list[Row]:
    """Forward only, in onnxruntime: the user cell's ONNX file (``torchcells.export_onnx``, a ``Scan``
    over time) against nn.LSTM's own ONNX export (an ONNX ``LSTM`` node). No rows without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    import tempfile
    from pathlib import Path

    from ..export import export_onnx

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
    timing = interleaved([lambda s=s: s.run(None, feed) for s in sessions], runs)  # type: ignore[misc]
    return [_row("user LSTM cell vs nn.LSTM, both exported to ONNX, onnxruntime forward", shape,
                 "export_onnx(Recurrent(UserLSTMCell))", "nn.LSTM (ONNX LSTM node)", timing, runs, target="(context)")]
