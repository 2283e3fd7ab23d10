"""The parallel scan ``engine.scan.scan_linear`` equals the reference loop ``engine.unroll``.

For every scannable cell: outputs, final states, every-step states and gradients (input,
initial state -- negative too -- and parameters), forwards and in reverse, with unsorted
lengths including 0 and full length, garbage in padded steps, ``T = 0``, ``B = 0``,
``T = 1``; chunking and CPU blocking forced small so every branch runs on tiny sizes;
extreme decays; a long float32 sequence; gradcheck; and the cells inside ``Recurrent``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import pytest
import torch
from torch import Tensor

import torchcells as tc
from torchcells import Cell, GRUCell, LSTMCell, MinGRUCell, MinLSTMCell
from torchcells.cell import declares
from torchcells.engine import scan as scan_module
from torchcells.engine import unroll
from torchcells.engine.native import available as native_available, notice as native_notice
from torchcells.engine.scan import scan_linear
from scan_harness import engine_results, scan_gradchecks

DT = torch.float64
TOL = {"atol": 1e-10, "rtol": 1e-10}
T, B, I, H = 7, 5, 3, 4
LENGTHS = torch.tensor([4, 0, 7, 1, 6])  # unsorted, with 0 and the full length

CELLS = [pytest.param(MinGRUCell, id="mingru"), pytest.param(MinLSTMCell, id="minlstm")]
REVERSE = pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
LENGTH_CASES = pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
# (CHUNK, steps per CPU block, native): as shipped, the recurrence in the native runtime; the same
# in the pure-Python chunked scan (no runtime); chunks of 2 steps there (a padded last chunk, a
# doubling scan over 4 chunks); and CPU blocks of 3 steps, so the state is carried from block to
# block.
SPLITS = pytest.mark.parametrize("splits", [None, (None, None, False), (2, None, False), (4, 3, True)],
                                 ids=["native", "python", "chunks2", "blocks3"])


@pytest.fixture
def split(monkeypatch):
    def apply(splits, batch_times_hidden=B * H):
        chunk, block_steps, native = (None, None, True) if splits is None else splits
        use_native(monkeypatch, native)
        if chunk is not None:
            monkeypatch.setattr(scan_module, "CHUNK", chunk)
        if block_steps is not None:
            monkeypatch.setattr(scan_module, "CPU_BLOCK", block_steps * batch_times_hidden)
            monkeypatch.setattr(scan_module, "CPU_BLOCK_MIN_STEPS", 1)
    return apply


def use_native(monkeypatch, native: bool) -> None:
    """The recurrence in the native runtime (skipped where it is not built) or in pure Python."""
    if native and not native_available():
        pytest.skip(f"native runtime not built here: {native_notice()}")
    if not native:
        monkeypatch.setenv("TORCHCELLS_NATIVE", "0")


NATIVE = pytest.mark.parametrize("native", [True, False], ids=["native", "python"])


def make(cls, seed: int = 0, dtype=DT, i: int = I, h: int = H):
    torch.manual_seed(seed)
    return cls(i, h, dtype=dtype)


def run_both(cell, x, h0, **kw):
    """Outputs, final state, states and gradients of (x, h0, parameters) from both engines."""
    results = []
    for engine in (scan_linear, unroll):
        out, final, states, *grads = engine_results(engine, cell, x, h0, **kw)
        results.append((out, final, states, grads))
    return results


def assert_same(got, want, tol=TOL):
    (out, final, states, grads), (out_r, final_r, states_r, grads_r) = got, want
    torch.testing.assert_close(out, out_r, **tol)
    torch.testing.assert_close(final, final_r, **tol)
    if states_r is None:
        assert states is None
    else:
        torch.testing.assert_close(states, states_r, **tol)
    for k, (g, g_r) in enumerate(zip(grads, grads_r)):
        torch.testing.assert_close(g, g_r, **tol, msg=lambda m: f"gradient {k}: {m}")


# --------------------------------------------------------------------------------------
def test_scan_coefficients_are_declared_by_the_minimal_cells_only():
    assert declares(MinGRUCell(2, 3), "scan_coefficients") and declares(MinLSTMCell(2, 3), "scan_coefficients")
    assert not declares(GRUCell(2, 3), "scan_coefficients") and not declares(LSTMCell(2, 3), "scan_coefficients")
    with pytest.raises(TypeError, match="GRUCell has no scan_coefficients"):
        scan_linear(GRUCell(2, 3), torch.randn(4, 1, 2), torch.zeros(1, 3))


@pytest.mark.parametrize("cls", CELLS)
@REVERSE
@LENGTH_CASES
@SPLITS
@pytest.mark.parametrize("all_states", [False, True], ids=["final", "all"])
def test_scan_equals_the_loop(cls, reverse, lengths, splits, all_states, split):
    split(splits)
    cell = make(cls)
    x = torch.randn(T, B, I, dtype=DT) * 2
    h0 = torch.randn(B, H, dtype=DT) * 3  # negative entries too: the h0 term is linear
    calls = []
    coefficients = cell.scan_coefficients
    # (set on the instance, this wrapper also makes the fused pass of engine/gated_scan.py decline:
    # this test is the plain scan's; tests/engine/test_gated_scan.py is the fused pass's)
    cell.scan_coefficients = lambda x: calls.append(x.shape[0]) or coefficients(x)
    got, want = run_both(cell, x, h0, lengths=lengths, reverse=reverse, all_states=all_states)
    assert calls == ([3, 3, 1] if splits == (4, 3, True) else [T])  # one call per block of time
    assert_same(got, want)
    out, final, states, _ = got
    if lengths is not None:
        for b, L in enumerate(LENGTHS.tolist()):
            assert not out[L:, b].any()
            if all_states:
                assert not states[L:, b].any()
        torch.testing.assert_close(final[1], h0[1], rtol=0, atol=0)  # length 0 keeps its state
    if all_states:
        assert states is not out  # separate tensors, like the loop's


@pytest.mark.parametrize("cls", CELLS)
@REVERSE
@SPLITS
def test_garbage_in_padded_steps_changes_nothing(cls, reverse, splits, split):
    split(splits)
    cell = make(cls)
    x = torch.randn(T, B, I, dtype=DT)
    h0 = torch.randn(B, H, dtype=DT)
    dirty = x.clone()
    for b, L in enumerate(LENGTHS.tolist()):
        dirty[L:, b] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=DT)[: I]
    clean, _ = run_both(cell, x, h0, lengths=LENGTHS, reverse=reverse, all_states=True)
    messy, _ = run_both(cell, dirty, h0, lengths=LENGTHS, reverse=reverse, all_states=True)
    for part in (0, 1, 2):
        torch.testing.assert_close(messy[part], clean[part], rtol=0, atol=0)
    for g_messy, g_clean in zip(messy[3], clean[3]):
        assert torch.isfinite(g_messy).all()
        torch.testing.assert_close(g_messy, g_clean, **TOL)
    for b, L in enumerate(LENGTHS.tolist()):
        assert not messy[3][0][L:, b].any()  # no gradient reaches a padded input


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("all_states", [False, True], ids=["final", "all"])
def test_zero_steps(cls, all_states):
    cell = make(cls)
    h0 = torch.randn(3, H, dtype=DT)
    for lengths in (None, torch.zeros(3, dtype=torch.int64)):
        out, final, states = scan_linear(cell, torch.randn(0, 3, I, dtype=DT), h0, lengths=lengths,
                                         all_states=all_states)
        ref = unroll(cell, torch.randn(0, 3, I, dtype=DT), h0, all_states=all_states)
        assert out.shape == ref[0].shape == (0, 3, H) and out.dtype == DT
        assert final is h0
        assert (states is None) == (not all_states)
        if all_states:
            assert states.shape == ref[2].shape == (0, 3, H)


@pytest.mark.parametrize("cls", CELLS)
@REVERSE
def test_empty_batch_and_one_step(cls, reverse):
    cell = make(cls)
    out, final, states = scan_linear(cell, torch.randn(T, 0, I, dtype=DT), torch.zeros(0, H, dtype=DT),
                                     reverse=reverse, all_states=True)
    assert out.shape == states.shape == (T, 0, H) and final.shape == (0, H)
    x, h0 = torch.randn(1, B, I, dtype=DT), torch.randn(B, H, dtype=DT)
    got, want = run_both(cell, x, h0, lengths=torch.tensor([1, 0, 1, 1, 0]), reverse=reverse, all_states=True)
    assert_same(got, want)
    got, want = run_both(cell, x, h0, reverse=reverse)
    assert_same(got, want)


class DecayCell(Cell):
    """A scannable test cell with any coefficients: ``log a = 𝑠·x[:H]``, ``log b = x[H:]`` (no weights)."""

    def __init__(self, hidden_size: int, scale: float) -> None:
        super().__init__(2 * hidden_size, hidden_size)
        self.scale = scale

    def scan_coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_a, log_b = x.chunk(2, -1)
        return log_a * self.scale, log_b

    def forward(self, x, h):
        log_a, log_b = self.scan_coefficients(x)
        h = log_a.exp() * h + log_b.exp()
        return h, h


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0, 1e3], ids=["mild", "strong", "steep", "vanishing"])
@REVERSE
@NATIVE
def test_extreme_decays(dtype, scale, reverse, native, monkeypatch):
    """Per-step |log a| from 0.1 to 1000 (a = e^-1000 underflows), growing states too (log a > 0)."""
    use_native(monkeypatch, native)
    cell = DecayCell(H, scale)
    torch.manual_seed(1)
    x = torch.randn(40, B, 2 * H, dtype=dtype)
    x[..., :H] = -x[..., :H].abs()  # decaying ...
    x[:, 0, :H] = x[:, 0, :H].abs() * 0.01 / scale  # ... except one sequence that slowly grows
    h0 = torch.randn(B, H, dtype=dtype)
    got, want = run_both(cell, x, h0, lengths=torch.tensor([40, 17, 0, 39, 3]), reverse=reverse)
    tol = TOL if dtype == DT else {"atol": 1e-5, "rtol": 1e-4}
    for part in got[:2] + tuple(got[3][:2]):
        assert torch.isfinite(part).all()
    assert_same(got, want, tol)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread for a while: for the reference loops of long sequences of tiny tensors.
    Their results are bitwise those of two threads; the time is not -- each of their ~8,000
    operations (log_sigmoid among them) opens a parallel region, and on a two-core machine with one
    core busy every region waits for the second thread (about 20 s a loop, against 0.2 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("cls", CELLS)
@NATIVE
def test_long_float32_sequence_stays_accurate(cls, native, monkeypatch):
    """T = 2048 in float32 against the loop in float32 and in float64."""
    use_native(monkeypatch, native)
    cell = make(cls, dtype=torch.float32, i=2, h=3)
    torch.manual_seed(2)
    x = torch.randn(2048, 2, 2) * 3
    h0 = torch.randn(2, 3)
    lengths = torch.tensor([2048, 1500])
    out, final, _ = scan_linear(cell, x, h0, lengths=lengths, reverse=True)
    with one_thread():  # the references: 2 x 2048 steps of ops on 2 x 3 tensors
        out_loop, final_loop, _ = unroll(cell, x, h0, lengths=lengths, reverse=True)
        exact = unroll(cell.double(), x.double(), h0.double(), lengths=lengths, reverse=True)
    torch.testing.assert_close(out, out_loop, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(final, final_loop, atol=1e-5, rtol=1e-4)
    # no drift along the sequence: as close to float64 as the float32 loop is
    err_scan = (out.double() - exact[0]).abs().max()
    err_loop = (out_loop.double() - exact[0]).abs().max()
    assert err_scan < max(4 * err_loop, 1e-5), (float(err_scan), float(err_loop))


@pytest.mark.parametrize("cls", CELLS)
@REVERSE
@pytest.mark.parametrize("splits", [None, (2, 2, False)], ids=["native", "python-chunks-blocks"])
def test_gradcheck(cls, reverse, splits, split):
    split(splits, batch_times_hidden=2 * 2)
    scan_gradchecks(make(cls, i=2, h=2), reverse=reverse)


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_cells_in_recurrent(cls, reverse):
    cell = make(cls)
    layer = tc.Recurrent(cell, batch_first=True, reverse=reverse)
    x = torch.randn(B, T, I, dtype=DT)
    h0 = torch.randn(B, H, dtype=DT)
    out, final, states = layer(x, h0, lengths=LENGTHS.tolist(), all_states=True)
    want = scan_linear(cell, x.transpose(0, 1), h0, lengths=LENGTHS, reverse=reverse, all_states=True)
    loop = unroll(cell, x.transpose(0, 1), h0, lengths=LENGTHS, reverse=reverse, all_states=True)
    for got, w, ref in zip((out.transpose(0, 1), final, states.transpose(0, 1)), want, loop):
        torch.testing.assert_close(got, w, **TOL)
        torch.testing.assert_close(got, ref, **TOL)


@pytest.mark.parametrize("backwards", [False, True], ids=["fwd", "bwd"])
def test_native_recurrence_equals_the_python_scan_at_any_thread_count(backwards, monkeypatch):
    """The runtime's ``linear_scan_forward/backward`` against the chunked scan and its autograd, over
    more lanes than one task holds (so two threads split them): equal, and bitwise the same at 1 and 2 threads."""
    use_native(monkeypatch, True)
    from torchcells.engine.native import library
    lib = library()
    torch.manual_seed(3)
    steps, lanes = 6, 1100
    log_a, u = -torch.rand(steps, lanes, dtype=DT) * 2, torch.randn(steps, lanes, dtype=DT)
    h0, grad_h, grad_last = torch.randn(lanes, dtype=DT), torch.randn(steps, lanes, dtype=DT), torch.randn(lanes, dtype=DT)
    leaves = [t.clone().requires_grad_() for t in (log_a, u, h0)]
    h = scan_module._scan_values(leaves[0].detach(), u, h0, backwards)
    monkeypatch.setenv("TORCHCELLS_NATIVE", "0")
    h_py, last_py = scan_module._LinearScan.apply(*leaves, backwards)
    torch.autograd.backward([h_py, last_py], [grad_h, grad_last])
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append((lib.linear_scan_forward(log_a, u, h0, backwards),
                            *lib.linear_scan_backward(log_a, h0, h, grad_h, grad_last, backwards)))
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results):
        assert torch.equal(one, two)
    h_native, g, grad_log_a, grad_h0 = results[0]
    torch.testing.assert_close(h_native, h_py.detach(), **TOL)
    for got, leaf in zip((grad_log_a, g, grad_h0), leaves):
        torch.testing.assert_close(got, leaf.grad, **TOL)
