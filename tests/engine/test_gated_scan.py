"""The scan's fused native pass (``engine.gated_scan``) equals the reference loop, and declines what it cannot serve.

For the minimal cells (which declare ``scan_gates()``): outputs, final states, every-step states
and gradients of the input, the initial state (negative too), the weight and the bias, in float64
at tight tolerances, forwards and in reverse, with unsorted lengths (0 and full among them), time
cut into blocks of a few steps (the state and the backward's carry passed from block to block),
without a bias; second derivatives; float32 pre-activations far past where σ underflows; the
same results at 1 and 2 threads. Where the pass cannot serve a call (autocast, mixed dtypes, a
subclass that changes ``scan_coefficients`` only, no native runtime) the plain scan runs, still
equal to the loop.
"""

from __future__ import annotations

import pytest
import torch

import torchcells as tc
from torchcells import MinGRUCell, MinLSTMCell
from torchcells.cell import ScanGateForm, declares
from torchcells.engine import gated_scan as gated_module
from torchcells.engine import unroll
from torchcells.engine.native import available as native_available, library, notice as native_notice
from torchcells.engine.scan import scan_linear
from scan_harness import engine_results, scan_gradchecks

DT = torch.float64
TOL = {"atol": 1e-12, "rtol": 1e-11}
T, B, I, H = 9, 5, 3, 4
LENGTHS = torch.tensor([4, 0, 9, 1, 7])  # unsorted, with 0 and the full length
CELLS = [pytest.param(MinGRUCell, id="mingru"), pytest.param(MinLSTMCell, id="minlstm")]

pytestmark = pytest.mark.skipif(not native_available(), reason=f"native runtime not built: {native_notice()}")


@pytest.fixture
def fused(monkeypatch):
    """Counts the calls the fused pass serves; ``fused.block(n)`` cuts time into blocks of ``n`` steps."""
    class Counter:
        calls = 0

        def block(self, steps: int, lanes: int = B * H) -> None:
            monkeypatch.setattr(gated_module, "BLOCK", steps * lanes)

    counter = Counter()
    apply = gated_module._GatedScan.apply

    def counted(*args):
        counter.calls += 1
        return apply(*args)
    monkeypatch.setattr(gated_module._GatedScan, "apply", counted)
    return counter


def make(cls, *, dtype=DT, i=I, h=H, bias=True, seed=0):
    torch.manual_seed(seed)
    return cls(i, h, bias=bias, dtype=dtype)


def assert_same(got, want, tol=TOL):
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        if w is None:
            assert g is None, k
        else:
            torch.testing.assert_close(g, w, **tol, msg=lambda m: f"result {k}: {m}")


def test_the_minimal_cells_declare_their_gating():
    for cell, kind in ((MinGRUCell(2, 3), "min_gru"), (MinLSTMCell(2, 3), "min_lstm")):
        assert declares(cell, "scan_gates")
        form = cell.scan_gates()
        assert form.kind == kind and form.weight is cell.weight_ih and form.bias is cell.bias_ih
    assert not declares(tc.GRUCell(2, 3), "scan_gates")
    with pytest.raises(ValueError, match="kind should be one of"):
        ScanGateForm("min_rnn", torch.zeros(2, 1), None, lambda k: (k, k))


def test_the_gatings_equal_the_runtimes():
    assert {g.name: g.value for g in gated_module.ScanGates} == library().enums()["ScanGates"]
    assert set(ScanGateForm.KINDS) == {g.name.lower() for g in gated_module.ScanGates}


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("block", [None, 2], ids=["one-block", "blocks2"])
@pytest.mark.parametrize("all_states", [False, True], ids=["final", "all"])
def test_fused_scan_equals_the_loop(cls, reverse, lengths, block, all_states, fused):
    if block is not None:
        fused.block(block)
    cell = make(cls)
    x = torch.randn(T, B, I, dtype=DT) * 2
    h0 = torch.randn(B, H, dtype=DT) * 3  # negative entries too
    kw = dict(lengths=lengths, reverse=reverse, all_states=all_states)
    got = engine_results(scan_linear, cell, x, h0, **kw)
    assert fused.calls == 1
    assert_same(got, engine_results(unroll, cell, x, h0, **kw))
    if lengths is not None:
        torch.testing.assert_close(got[1][1], h0[1], rtol=0, atol=0)  # length 0 keeps its state


@pytest.mark.parametrize("cls", CELLS)
def test_without_bias_and_with_garbage_in_padded_steps(cls, fused):
    fused.block(3)
    cell = make(cls, bias=False)
    x = torch.randn(T, B, I, dtype=DT)
    h0 = torch.randn(B, H, dtype=DT)
    dirty = x.clone()
    for b, n in enumerate(LENGTHS.tolist()):
        dirty[n:, b] = float("nan")
    got = engine_results(scan_linear, cell, dirty, h0, lengths=LENGTHS, reverse=True)
    assert fused.calls == 1
    got[3] = got[3].nan_to_num(0.0)  # x's gradient at padded steps: zero where x was NaN
    assert_same(got, engine_results(unroll, cell, x, h0, lengths=LENGTHS, reverse=True))


@pytest.mark.parametrize("cls", CELLS)
def test_in_recurrent_with_only_some_gradients(cls, fused):
    """Inside a layer; the input without a gradient, then frozen weights (only h0's gradient)."""
    cell = make(cls)
    layer = tc.Recurrent(cell, engine="scan")
    x = torch.randn(T, B, I, dtype=DT)
    h0 = torch.randn(B, H, dtype=DT, requires_grad=True)
    out, final = layer(x, h0)
    (out.sum() + final.sum()).backward()
    want_h0, want_w = h0.grad.clone(), cell.weight_ih.grad.clone()
    assert fused.calls == 1
    h0.grad = None
    cell.zero_grad()
    out_l, final_l = tc.Recurrent(cell, engine="loop")(x, h0)
    (out_l.sum() + final_l.sum()).backward()
    torch.testing.assert_close(out, out_l, **TOL)
    torch.testing.assert_close(want_h0, h0.grad, **TOL)
    torch.testing.assert_close(want_w, cell.weight_ih.grad, **TOL)
    cell.requires_grad_(False)
    h0.grad = None
    out, final = layer(x, h0)
    (out.sum() + final.sum()).backward()
    torch.testing.assert_close(want_h0, h0.grad, **TOL)


@pytest.mark.parametrize("cls", CELLS)
def test_batch_first_reads_strided_inputs_and_gradients(cls, fused):
    """Batch-first: x and the outputs' gradient reach the pass transposed (rows at strides), time in blocks."""
    fused.block(2)
    cell = make(cls)
    x = torch.randn(B, T, I, dtype=DT)
    w = torch.randn(B, T, H, dtype=DT)
    results = []
    for engine in ("scan", "loop"):
        xx = x.clone().requires_grad_()
        cell.zero_grad()
        out, final = tc.Recurrent(cell, engine=engine, batch_first=True)(xx)
        ((out * w).sum() + final.sum()).backward()
        results.append([out, final, xx.grad] + [p.grad.clone() for p in cell.parameters()])
    assert fused.calls == 1
    assert_same(*results)


@pytest.mark.parametrize("cls", CELLS)
def test_second_derivatives(cls, fused):
    fused.block(2, lanes=2 * 2)
    scan_gradchecks(make(cls, i=2, h=2), reverse=True)
    assert fused.calls > 0


@pytest.mark.parametrize("cls", CELLS)
def test_float32_far_past_underflow(cls, fused):
    """Pre-activations from −200 to 60 (both of minLSTM's gates underflow at −90 and below): finite
    values and gradients, as close to the float64 loop as the float32 loop is."""
    cell = make(cls, dtype=torch.float32, i=1, h=3)
    with torch.no_grad():
        cell.weight_ih.copy_(torch.linspace(0.5, 1.5, cell.weight_ih.numel()).reshape(cell.weight_ih.shape))
        cell.bias_ih.zero_()
    steps = torch.tensor([-120.0, -95.0, -200.0, 3.0, -150.0, 60.0, -90.0, 0.0, -1.0, 40.0])
    x = steps.reshape(-1, 1, 1).expand(-1, 2, 1).contiguous()
    h0 = torch.tensor([[0.5, -0.25, 2.0], [-1.0, 0.0, 0.75]])
    got = engine_results(scan_linear, cell, x, h0)
    assert fused.calls == 1
    for part in got:
        if part is not None:
            assert torch.isfinite(part).all()
    loop = engine_results(unroll, cell, x, h0)
    exact = engine_results(unroll, cell.double(), x.double(), h0.double())  # (the cell itself, now in float64)
    for g, lp, e in zip(got, loop, exact):
        if e is None:
            continue
        err, err_loop = (g.double() - e).abs().max(), (lp.double() - e).abs().max()
        assert err <= max(4 * err_loop, 1e-5 * (1 + e.abs().max())), (float(err), float(err_loop))


@pytest.mark.parametrize("cls", CELLS)
def test_the_same_at_one_and_two_threads(cls, fused):
    """More lanes than one task holds (B·H = 1200), so two threads split them."""
    cell = make(cls, dtype=torch.float32, i=8, h=300)
    x = torch.randn(12, 4, 8)
    h0 = torch.randn(4, 300)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(engine_results(scan_linear, cell, x, h0))
    finally:
        torch.set_num_threads(threads)
    assert fused.calls == 2
    assert_same(results[1], results[0], {"atol": 1e-6, "rtol": 1e-5})


class ChangedCoefficients(MinGRUCell):
    """Its own scan_coefficients (the same numbers, another definition): the fused pass must not run it
    with the gating it inherits."""

    def scan_coefficients(self, x):
        return super().scan_coefficients(x)


@pytest.mark.parametrize("case", ["autocast", "bfloat16-module", "subclass", "no-native"])
def test_declines_what_it_cannot_serve(case, fused, monkeypatch):
    """The plain scan runs (the products in bfloat16, the scan in float32, as before), equal to the loop."""
    cell = ChangedCoefficients(I, H) if case == "subclass" else make(MinGRUCell, dtype=torch.float32)
    dtype = torch.bfloat16 if case == "bfloat16-module" else torch.float32
    cell.to(dtype)
    x, h0 = torch.randn(T, B, I, dtype=dtype), torch.randn(B, H, dtype=dtype)
    if case == "no-native":
        monkeypatch.setenv("TORCHCELLS_NATIVE", "0")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):
        out, final, _ = scan_linear(cell, x, h0, lengths=LENGTHS)
        out_l, final_l, _ = unroll(cell, x, h0, lengths=LENGTHS)
    assert fused.calls == 0
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 and case != "autocast" else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(out, out_l, **tol)
    torch.testing.assert_close(final, final_l, **tol)
