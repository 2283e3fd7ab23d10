"""minGRU and minLSTM (Feng et al. 2024) against their equations, written out here.

One row per cell: its gates and its step written independently from the paper. Every
row gets: the step equals the equations; ``scan_coefficients`` equals the logs of the
``a_t, b_t`` of ``h_t = a_t ⊙ h_{t−1} + b_t`` computed directly; the coefficients stay
finite (with finite gradients) at extreme pre-activations; parameter layout and
initialization; gradcheck; named errors for bad input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch import Tensor

import torchcells as tc
from torchcells.cells.minimal import g as library_g
from torchcells.cells.minimal import log_g

DT = torch.float64
TOL = {"atol": 1e-12, "rtol": 1e-10}
I, H, B = 3, 4, 5


# --------------------------------------------------------------------------------------
# The paper's equations, independent of the library. ``p`` maps parameter names to tensors.
# --------------------------------------------------------------------------------------
def paper_g(v: Tensor) -> Tensor:
    """g(v) = v + 1/2 for v >= 0, sigmoid(v) for v < 0."""
    out = torch.sigmoid(v)
    return torch.where(v >= 0, v + 0.5, out)


def pre(p: dict[str, Tensor], k: int, x: Tensor) -> Tensor:
    """Pre-activation of gate ``k``: rows ``k·H … (k+1)·H − 1`` of ``weight_ih`` (and ``bias_ih``)."""
    n = p["weight_ih"].shape[0] // p["gates"]
    out = x @ p["weight_ih"][k * n:(k + 1) * n].T
    return out + p["bias_ih"][k * n:(k + 1) * n] if p["bias_ih"] is not None else out


def mingru_a_b(p, x):
    z = torch.sigmoid(pre(p, 0, x))
    return 1 - z, z * paper_g(pre(p, 1, x))


def minlstm_a_b(p, x):
    f, i = torch.sigmoid(pre(p, 0, x)), torch.sigmoid(pre(p, 1, x))
    return f / (f + i), i / (f + i) * paper_g(pre(p, 2, x))


@dataclass(frozen=True)
class Spec:
    id: str
    make: Callable[..., tc.Cell]
    gates: tuple[str, ...]
    a_b: Callable  # (params, x) -> (a, b) with h_t = a ⊙ h_{t-1} + b

    def __str__(self) -> str:
        return self.id


SPECS = [Spec("mingru", tc.MinGRUCell, ("z", "h"), mingru_a_b),
         Spec("minlstm", tc.MinLSTMCell, ("f", "i", "h"), minlstm_a_b)]
spec_param = pytest.mark.parametrize("spec", SPECS, ids=str)


def params(cell) -> dict:
    return {"weight_ih": cell.weight_ih, "bias_ih": cell.bias_ih, "gates": len(cell.GATES)}


def new_cell(spec: Spec, *, bias: bool = True, dtype=DT, seed: int = 0, i: int = I, h: int = H):
    torch.manual_seed(seed)
    return spec.make(i, h, bias=bias, dtype=dtype)


# --------------------------------------------------------------------------------------
@spec_param
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_step_matches_equations(spec, bias):
    cell = new_cell(spec, bias=bias)
    x, h = torch.randn(B, I, dtype=DT), torch.randn(B, H, dtype=DT) * 3
    y, state = cell(x, h)
    a, b = spec.a_b(params(cell), x)
    torch.testing.assert_close(state, a * h + b, **TOL)
    assert y is state or torch.equal(y, state)  # y_t = h_t


@spec_param
def test_unbatched_step_and_missing_state(spec):
    cell = new_cell(spec)
    x = torch.randn(B, I, dtype=DT)
    y, _ = cell(x)
    torch.testing.assert_close(y, cell(x, torch.zeros(B, H, dtype=DT))[0], **TOL)
    y1, h1 = cell(x[2], torch.ones(H, dtype=DT))
    assert y1.shape == h1.shape == (H,)
    torch.testing.assert_close(y1, cell(x[2:3], torch.ones(1, H, dtype=DT))[0][0], **TOL)


@spec_param
def test_gates_read_only_the_input(spec):
    """a_t and b_t do not depend on h_{t-1}: the step is affine in h (what makes it scannable)."""
    cell = new_cell(spec)
    x = torch.randn(B, I, dtype=DT)
    h1, h2 = torch.randn(B, H, dtype=DT), torch.randn(B, H, dtype=DT)
    zero = cell(x, torch.zeros(B, H, dtype=DT))[1]
    for s in (0.5, -2.0, 7.0):
        mix = cell(x, h1 + s * h2)[1] - zero
        torch.testing.assert_close(mix, (cell(x, h1)[1] - zero) + s * (cell(x, h2)[1] - zero), **TOL)


@spec_param
@pytest.mark.parametrize("lead", [(B,), (6, B), (2, 3, B)], ids=["B", "TB", "T1T2B"])
def test_scan_coefficients_are_logs_of_a_and_b(spec, lead):
    cell = new_cell(spec)
    x = torch.randn(*lead, I, dtype=DT) * 2
    log_a, log_b = cell.scan_coefficients(x)
    a, b = spec.a_b(params(cell), x)
    assert log_a.shape == log_b.shape == lead + (H,)
    torch.testing.assert_close(log_a, torch.log(a), **TOL)
    torch.testing.assert_close(log_b, torch.log(b), **TOL)
    # and one step of the cell is a ⊙ h + b with them
    if len(lead) == 1:
        h = torch.randn(B, H, dtype=DT)
        torch.testing.assert_close(cell(x, h)[1], log_a.exp() * h + log_b.exp(), **TOL)


@spec_param
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_scan_coefficients_finite_with_finite_gradients_at_extremes(spec, dtype):
    """Saturated gates (pre-activations of ±1e4) give finite logs and gradients (no log(0), no NaN)."""
    cell = new_cell(spec, dtype=dtype, i=1, h=3)
    with torch.no_grad():
        cell.weight_ih.copy_(torch.linspace(-1, 1, cell.weight_ih.numel(), dtype=dtype).reshape(-1, 1))
    x = torch.tensor([[-1e4], [-50.0], [-1.0], [0.0], [1e-3], [1.0], [50.0], [1e4]], dtype=dtype).requires_grad_()
    log_a, log_b = cell.scan_coefficients(x)
    assert torch.isfinite(log_a).all() and torch.isfinite(log_b).all()
    assert (log_a <= 0).all()  # a = 1 - z, f' <= 1
    (log_a.sum() + log_b.sum()).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(cell.weight_ih.grad).all()
    assert torch.isfinite(cell.bias_ih.grad).all()
    # where 1 - σ(k) does not round to 0, they are the logs of the direct values ...
    a, b = spec.a_b(params(cell), x[2:6].detach().double() if dtype == DT else x[2:6].detach())
    tol = TOL if dtype == DT else {"atol": 1e-6, "rtol": 1e-5}
    torch.testing.assert_close(log_a[2:6], a.log(), **tol)
    torch.testing.assert_close(log_b[2:6], b.log(), **tol)
    # ... and everywhere, float32 agrees with float64 (which resolves e.g. log σ(−50) = −50)
    if dtype == torch.float32:
        wide = new_cell(spec, dtype=DT, i=1, h=3)
        with torch.no_grad():
            wide.weight_ih.copy_(cell.weight_ih)
            wide.bias_ih.copy_(cell.bias_ih)
        for got, want in zip((log_a, log_b), wide.scan_coefficients(x.detach().double())):
            torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_g_and_log_g():
    v = torch.cat([torch.linspace(-30, 30, 1201, dtype=DT), torch.tensor([0.0, -1e-9, 1e-9], dtype=DT)])
    torch.testing.assert_close(library_g(v), paper_g(v), **TOL)
    assert (library_g(v) > 0).all()
    torch.testing.assert_close(log_g(v), paper_g(v).log(), **TOL)
    # continuous at 0: both sides meet at 1/2
    assert abs(float(paper_g(torch.tensor(-1e-12, dtype=DT))) - 0.5) < 1e-12
    wide = torch.tensor([-1e6, -800.0, -100.0, -1.0, 0.0, 1.0, 100.0, 1e6], dtype=DT, requires_grad=True)
    out = log_g(wide)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:2].detach(), wide[:2].detach(), **TOL)  # log σ(v) ≈ v far left
    out.sum().backward()
    assert torch.isfinite(wide.grad).all()
    mid = torch.tensor([-3.0, -0.2, 0.3, 4.0], dtype=DT, requires_grad=True)
    (grad,) = torch.autograd.grad(log_g(mid).sum(), mid)
    (want,) = torch.autograd.grad(paper_g(mid).log().sum(), mid)
    torch.testing.assert_close(grad, want, **TOL)


@spec_param
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_parameter_layout_and_initialization(spec, bias):
    cell = new_cell(spec, bias=bias, dtype=torch.float32, i=3, h=16)
    G = len(spec.gates)
    assert cell.GATES == spec.gates
    names = dict(cell.named_parameters())
    assert list(names) == (["weight_ih", "bias_ih"] if bias else ["weight_ih"])
    assert cell.weight_ih.shape == (G * 16, 3)
    assert (cell.bias_ih is None) == (not bias)
    if bias:
        assert cell.bias_ih.shape == (G * 16,)
    rows = cell.gate_rows()
    assert list(rows) == list(spec.gates)
    assert [(r.start, r.stop) for r in rows.values()] == [(k * 16, (k + 1) * 16) for k in range(G)]
    bound = 1 / math.sqrt(16)
    for p in cell.parameters():
        assert p.abs().max() <= bound and p.abs().max() > bound / 2  # uniform in ±1/√H
    torch.manual_seed(3)
    first = spec.make(3, 16).weight_ih.detach().clone()
    torch.manual_seed(3)
    assert torch.equal(spec.make(3, 16).weight_ih, first)
    assert cell.init_state(2).shape == (2, 16) and not cell.init_state(2).any()
    assert cell.short_name() == f"{spec.make.__name__}(3→16)"
    assert repr(cell) == f"{spec.make.__name__}(3, 16{'' if bias else ', bias=False'})"


@spec_param
def test_gradcheck(spec):
    cell = new_cell(spec, i=2, h=3)
    x = torch.randn(2, 2, dtype=DT, requires_grad=True)
    h = torch.randn(2, 3, dtype=DT, requires_grad=True)

    def step(x, h, w, b):
        p = {"weight_ih": w, "bias_ih": b}
        return torch.func.functional_call(cell, p, (x, h))[1]
    assert torch.autograd.gradcheck(step, (x, h, cell.weight_ih, cell.bias_ih))


@spec_param
def test_bad_input_is_named(spec):
    cell = new_cell(spec)
    name = f"{spec.make.__name__}\\(3→4\\)"
    with pytest.raises(ValueError, match=f"{name}: input has 5 features per step, expected 3"):
        cell(torch.randn(B, 5, dtype=DT))
    with pytest.raises(ValueError, match=f"{name}: state should have shape \\(5, 4\\)"):
        cell(torch.randn(B, I, dtype=DT), torch.zeros(B, 3, dtype=DT))
    with pytest.raises(TypeError, match=f"{name}: state should be a tensor"):
        cell(torch.randn(B, I, dtype=DT), (torch.zeros(B, H, dtype=DT),))
    with pytest.raises(TypeError, match=f"{name}: state has dtype torch.float32"):
        cell(torch.randn(B, I, dtype=DT), torch.zeros(B, H))
    with pytest.raises(TypeError, match=f"{name}: input has dtype torch.int64"):
        cell(torch.ones(B, I, dtype=torch.int64))
    with pytest.raises(ValueError, match="hidden_size should be a positive int, got 0"):
        spec.make(3, 0)
    with pytest.raises(ValueError, match="input_size should be a positive int, got True"):
        spec.make(True, 4)


@spec_param
def test_exported_and_counted(spec):
    assert spec.make.__name__ in tc.__all__ and spec.make.__name__ in tc.cells.__all__
    (row,) = tc.explain(tc.Recurrent(new_cell(spec)), torch.randn(7, 1, I, dtype=DT)).layers
    assert tuple(g.name for g in row.gates) == spec.gates and row.units == H and row.applications == 7


@spec_param
@pytest.mark.parametrize("engine", ["loop", "fused", "scan"])
def test_float32_step_is_finite_where_both_gates_underflow(spec, engine):
    """Pre-activations of −90 and below make σ underflow to 0 in float32: the step's gate
    normalization must not reach 0/0 (it did for minLSTM on the loop), and every engine
    agrees with the float64 loop."""
    cell = new_cell(spec, dtype=torch.float32, i=1, h=3)
    with torch.no_grad():
        cell.weight_ih.fill_(1.0)
        cell.bias_ih.zero_()
    x = torch.tensor([-120.0, -95.0, -200.0, 3.0, -150.0], dtype=torch.float32).reshape(5, 1, 1).expand(5, 2, 1)
    out, final = tc.Recurrent(cell, engine=engine)(x, torch.full((2, 3), 0.5))
    assert torch.isfinite(out).all() and torch.isfinite(final).all()
    wide = tc.Recurrent(cell.double(), engine="loop")
    want, _ = wide(x.double(), torch.full((2, 3), 0.5, dtype=torch.float64))
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)
