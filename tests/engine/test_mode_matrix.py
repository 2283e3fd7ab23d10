"""The mode matrix: every engine path, in every mode users train and deploy with, equals the
reference loop within the mode's stated tolerance -- or refuses with a clear error.

Rows are (cell, path) pairs a path serves; columns are modes. The README's table "Every path, every
mode" is this file in words. Tolerances, by mode:

* fp32: 1e-5 absolute (float32 round-off over a few steps); fp64, double backward, threads, changed
  values: 1e-12 absolute / 1e-10 relative (the same arithmetic up to summation order);
* ``.bfloat16()`` modules and autocast bf16: the path's error against a float64 run of the same weights
  is at most twice the loop's own error in that mode plus 2e-2 (bf16 keeps 8 bits; two correct
  programs differ by their rounding), and the output dtype is the loop's. One exception, by design:
  the torch path under autocast is torch's kernel as torch.nn runs it (``nn.LSTM``'s bf16 output and
  state), so there it equals torch.nn under the same autocast.
"""

from __future__ import annotations

import copy
import threading
from typing import Callable

import pytest
import torch
from torch import nn

import pytorch2_modes
import torchcells as tc
from fixture_cells import TwoWidthCell, UserLSTMCell

T, I, H = 5, 3, 4
pytestmark = pytest.mark.usefixtures("onnx_table_once")  # the onnx column: torch.onnx lists its table once
TIGHT = dict(atol=1e-12, rtol=1e-10)

CELLS: dict[str, Callable[[], nn.Module]] = {
    "LSTMCell": lambda: tc.LSTMCell(I, H), "GRUCell": lambda: tc.GRUCell(I, H),
    "ElmanCell": lambda: tc.ElmanCell(I, H), "UserLSTMCell": lambda: UserLSTMCell(I, H),
    "TwoWidthCell": lambda: TwoWidthCell(I, H), "MinGRUCell": lambda: tc.MinGRUCell(I, H),
    "Zoneout(LSTMCell)": lambda: tc.Zoneout(tc.LSTMCell(I, H), 0.3).eval(),
}
ROWS = ([(c, p) for c in CELLS for p in ("loop", "fused-native", "fused-python", "export")]
        + [("MinGRUCell", "scan")] + [(c, "torch") for c in ("LSTMCell", "GRUCell", "ElmanCell")])


def _layer(cell: nn.Module, path: str, monkeypatch) -> tc.Recurrent:
    if path == "fused-python":
        monkeypatch.setenv("TORCHCELLS_NATIVE", "0")
    return tc.Recurrent(cell, engine=path.split("-")[0])


def _run(layer, x, *, create_graph=False):
    """Output, final state leaves and the gradients of x and the parameters for a fixed loss."""
    x = x.detach().requires_grad_()
    out, final = layer(x)
    leaves = list(final) if isinstance(final, tuple) else [final]
    loss = out.float().square().sum() + sum(f.float().square().sum() for f in leaves)
    params = [p for p in layer.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [x, *params], create_graph=create_graph)
    return out, leaves, list(grads)


def _assert_equal_runs(got, want, **tol):
    for g, w in zip([got[0], *got[1], *got[2]], [want[0], *want[1], *want[2]]):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, **tol)


def fp32(cell, path, monkeypatch):
    x = torch.randn(T, 2, I)
    _assert_equal_runs(_run(_layer(cell, path, monkeypatch), x), _run(tc.Recurrent(cell, engine="loop"), x),
                       atol=1e-5, rtol=1e-4)


def fp64(cell, path, monkeypatch):
    cell = cell.double()
    x = torch.randn(T, 2, I, dtype=torch.float64)
    _assert_equal_runs(_run(_layer(cell, path, monkeypatch), x), _run(tc.Recurrent(cell, engine="loop"), x), **TIGHT)


def _as_accurate_as_the_loop(got, loop, ref):
    """Each tensor's error against the float64 reference is within twice the loop's plus 2e-2."""
    for g, w, r in zip([got[0], *got[1], *got[2]], [loop[0], *loop[1], *loop[2]], [ref[0], *ref[1], *ref[2]]):
        assert g.dtype == w.dtype, (g.dtype, w.dtype)
        g, w, r = g.detach(), w.detach(), r.detach()
        scale = float(r.abs().max()) or 1.0
        err_got, err_loop = float((g.double() - r).abs().max()) / scale, float((w.double() - r).abs().max()) / scale
        assert err_got <= 2 * err_loop + 2e-2, (err_got, err_loop)


def bfloat16_module(cell, path, monkeypatch):
    low = copy.deepcopy(cell).bfloat16()
    x = torch.randn(T, 2, I).bfloat16()
    ref = _run(tc.Recurrent(copy.deepcopy(low).double(), engine="loop"), x.double())
    _as_accurate_as_the_loop(_run(_layer(low, path, monkeypatch), x), _run(tc.Recurrent(low, engine="loop"), x), ref)


def autocast_bf16(cell, path, monkeypatch):
    x = torch.randn(T, 2, I)
    if path == "torch":  # torch's kernel, as torch.nn runs it under autocast (LSTM: bf16 output and state)
        return _as_torch_nn_under_autocast(cell, x)
    ref = _run(tc.Recurrent(copy.deepcopy(cell).double(), engine="loop"), x.double())
    layer, loop = _layer(cell, path, monkeypatch), tc.Recurrent(cell, engine="loop")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = _run(layer, x), _run(loop, x)
    _as_accurate_as_the_loop(got, want, ref)


TORCH_NN = {"LSTMCell": nn.LSTM, "GRUCell": nn.GRU, "ElmanCell": nn.RNN}


def _as_torch_nn_under_autocast(cell, x):
    theirs = TORCH_NN[type(cell).__name__](I, H)
    theirs.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _run(tc.Recurrent(cell, engine="torch"), x)
        out, final = theirs(x.detach().requires_grad_())
    want_final = list(final) if isinstance(final, tuple) else [final]
    assert got[0].dtype == out.dtype
    torch.testing.assert_close(got[0], out, atol=1e-6, rtol=1e-6)
    for g, w in zip(got[1], want_final):
        torch.testing.assert_close(g, w[0], atol=1e-6, rtol=1e-6)


def double_backward(cell, path, monkeypatch):
    cell = cell.double()
    x = torch.randn(T, 2, I, dtype=torch.float64)

    def penalty(layer):
        _, _, (gx, *_) = _run(layer, x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), list(cell.parameters()), allow_unused=True)

    for g, w in zip(penalty(_layer(cell, path, monkeypatch)), penalty(tc.Recurrent(cell, engine="loop"))):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, **TIGHT)


def four_threads_first_call(cell, path, monkeypatch):
    cell = cell.double()
    layer = _layer(cell, path, monkeypatch)
    before = {n: p.detach().clone() for n, p in cell.named_parameters()}
    xs = [torch.randn(T, b, I, dtype=torch.float64) for b in (5, 5, 6, 6)]  # shapes no other test used
    results: list = [None] * 4
    errors: list = []

    def work(i):
        try:
            results[i] = layer(xs[i])[0].detach()
        except Exception as e:  # a thread's exception would otherwise be lost
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    loop = tc.Recurrent(cell, engine="loop")
    for out, x in zip(results, xs):
        torch.testing.assert_close(out, loop(x)[0], **TIGHT)
    for n, p in cell.named_parameters():
        assert type(p) is nn.Parameter and torch.equal(p.detach(), before[n]), n


class _Gained(tc.Cell):
    """The row's cell, its output scaled by a private attribute and by a module global: values a
    trace bakes in."""

    def __init__(self, cell: nn.Module) -> None:
        super().__init__(cell.input_size, cell.hidden_size)
        self.inner = cell
        self._gain = 1.0

    def init_state(self, batch_size, *, device=None, dtype=None):
        return self.inner.init_state(batch_size, device=device, dtype=dtype)

    def forward(self, x, state):
        y, new = self.inner(x, state)
        return y * self._gain * GLOBAL_GAIN, new


GLOBAL_GAIN = 1.0


def _after_a_change(cell, path, monkeypatch, change: Callable[[_Gained], None]):
    if path in ("scan", "torch"):
        pytest.skip("the scan and torch paths read no Python values of a cell: only its declared form")
    gained = _Gained(cell.double())
    layer = _layer(gained, path, monkeypatch)
    x = torch.randn(T, 2, I, dtype=torch.float64)
    layer(x)  # the first call traces with the old value
    change(gained)
    _assert_equal_runs(_run(layer, x), _run(tc.Recurrent(gained, engine="loop"), x), **TIGHT)


def changed_private_attribute(cell, path, monkeypatch):
    def change(gained):
        gained._gain = 3.0
    _after_a_change(cell, path, monkeypatch, change)


def changed_global(cell, path, monkeypatch):
    monkeypatch.setattr(__import__(__name__), "GLOBAL_GAIN", 1.0)

    def change(gained):
        globals()["GLOBAL_GAIN"] = 2.5
    _after_a_change(cell, path, monkeypatch, change)


def _pytorch2(column: Callable[[tc.Recurrent, tc.Recurrent], None]):
    """A column of ``pytorch2_modes`` as a mode of this matrix."""
    def mode(cell, path, monkeypatch):
        column(*pytorch2_modes.copies(_layer(cell, path, monkeypatch)))
    mode.__name__ = column.__name__
    return mode


MODES = [fp32, fp64, bfloat16_module, autocast_bf16, double_backward, four_threads_first_call,
         changed_private_attribute, changed_global,
         *(_pytorch2(c) for c in (pytorch2_modes.compiled, pytorch2_modes.exported, pytorch2_modes.onnx,
                                  pytorch2_modes.func_grad, pytorch2_modes.func_vmap))]


@pytest.mark.parametrize("mode", MODES, ids=[m.__name__ for m in MODES])
@pytest.mark.parametrize("cell_name, path", ROWS, ids=[f"{c}-{p}" for c, p in ROWS])
def test_every_path_equals_the_loop_in_every_mode(cell_name, path, mode, monkeypatch):
    torch.manual_seed(0)
    mode(CELLS[cell_name](), path, monkeypatch)
