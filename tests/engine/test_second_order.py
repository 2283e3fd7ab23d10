"""Second-order gradients (a gradient penalty: ``create_graph=True``; ``gradgradcheck``) equal the
reference loop's on every path: the fused engine's backward recomputes the sequence under autograd
when it must itself be differentiable (``executors/second_order.py``)."""

from __future__ import annotations

import pytest
import torch

import torchcells as tc
from fixture_cells import UserLSTMCell
from test_fused import autograd_nodes

T, B, I, H = 5, 2, 3, 4


def penalty_gradients(layer, x: torch.Tensor, h0=None, lengths=None) -> list:
    """d/dθ of |∂L/∂x|² for L = Σ out² (and of the initial state when given)."""
    x = x.detach().requires_grad_()
    out = layer(x, h0, lengths=lengths)[0] if lengths is not None else layer(x, h0)[0]
    gx, = torch.autograd.grad((out * out).sum(), x, create_graph=True)
    wrt = list(layer.parameters()) + ([h0] if h0 is not None else [])
    return list(torch.autograd.grad(gx.pow(2).sum(), wrt))


CELLS = {"user-lstm": lambda: UserLSTMCell(I, H), "gru": lambda: tc.GRUCell(I, H),
         "lstm": lambda: tc.LSTMCell(I, H), "elman": lambda: tc.ElmanCell(I, H),
         "mingru": lambda: tc.MinGRUCell(I, H)}
PATHS = [("user-lstm", "fused-native"), ("user-lstm", "fused-python"), ("gru", "fused-native"),
         ("gru", "fused-python"), ("gru", "torch"), ("lstm", "fused-native"), ("lstm", "torch"),
         ("elman", "fused-native"), ("mingru", "scan"), ("mingru", "fused-native")]


def _layer(cell, path, monkeypatch) -> tc.Recurrent:
    if path == "fused-python":
        monkeypatch.setenv("TORCHCELLS_NATIVE", "0")
    return tc.Recurrent(cell, engine=path.split("-")[0])


@pytest.mark.parametrize("lengths", [None, [5, 3]], ids=["full", "lengths"])
@pytest.mark.parametrize("cell_name, path", PATHS, ids=[f"{c}-{p}" for c, p in PATHS])
def test_second_order_gradients_equal_the_loop(cell_name, path, lengths, monkeypatch):
    torch.manual_seed(0)
    cell = CELLS[cell_name]().double()
    layer = _layer(cell, path, monkeypatch)
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = layer.init_state(B, dtype=torch.float64)
    if isinstance(h0, tuple):  # a NamedTuple of leaves: the first one is differentiated through
        h0 = type(h0)(*[torch.randn_like(h).requires_grad_() for h in h0])
        h0_leaf = h0[0]
    else:
        h0 = h0_leaf = torch.randn_like(h0).requires_grad_()
    lens = torch.tensor(lengths) if lengths is not None else None

    def run(engine_layer):
        xx = x.detach().requires_grad_()
        out, final = engine_layer(xx, h0, lengths=lens)
        last = final[0] if isinstance(final, tuple) else final  # the final state counts too (lengths!)
        gx, = torch.autograd.grad((out * out).sum() + (last * last).sum(), xx, create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum(), list(cell.parameters()) + [h0_leaf])

    got = run(layer)
    want = run(tc.Recurrent(cell, engine="loop"))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("path", ["fused-native", "fused-python"])
@pytest.mark.parametrize("cell_name", ["user-lstm", "gru"])
def test_gradgradcheck_passes_on_the_fused_engine(cell_name, path, monkeypatch):
    torch.manual_seed(0)
    cell = CELLS[cell_name]().double()
    layer = _layer(cell, path, monkeypatch)
    x = torch.randn(3, 2, I, dtype=torch.float64, requires_grad=True)
    params = list(cell.parameters())

    def f(x, *ps):
        named = dict(zip([n for n, _ in cell.named_parameters()], ps))
        return torch.func.functional_call(layer, {f"cell.{k}": v for k, v in named.items()}, (x,))[0]

    assert torch.autograd.gradgradcheck(f, (x, *params))


def test_the_drop_in_gru_gives_nn_grus_second_order_gradients():
    torch.manual_seed(0)
    ours, theirs = tc.GRU(I, H, num_layers=2).double(), torch.nn.GRU(I, H, num_layers=2).double()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    for got, want in zip(penalty_gradients(ours, x), penalty_gradients(theirs, x)):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_the_fused_engine_ran_and_first_order_gradients_are_unchanged(monkeypatch):
    """The fused node is really on the graph of these tests (not a fallback to the loop), and a
    plain backward still runs its first-order backward."""
    cell = UserLSTMCell(I, H).double()
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    out = tc.Recurrent(cell, engine="fused")(x)[0]
    assert {"NativeSequenceBackward", "_FusedSequenceBackward"} & autograd_nodes(out)
    out.sum().backward()
    loop_x = x.detach().requires_grad_()
    tc.Recurrent(cell, engine="loop")(loop_x)[0].sum().backward()
    torch.testing.assert_close(x.grad, loop_x.grad, atol=1e-12, rtol=1e-10)

