"""Second-order gradients (a gradient penalty: ``create_graph=True``) equal the reference
loop's on every path that can give them, and the fused engine, whose backward is
first-order, refuses them with an error that says what to do -- never a silent difference."""

from __future__ import annotations

import pytest
import torch

import torchcells as tc
from fixture_cells import UserLSTMCell

T, B, I, H = 5, 2, 3, 4


def penalty_gradients(layer: tc.Recurrent, x: torch.Tensor) -> list:
    x = x.detach().requires_grad_()
    out = layer(x)[0]
    gx, = torch.autograd.grad((out * out).sum(), x, create_graph=True)
    return list(torch.autograd.grad(gx.pow(2).sum(), list(layer.parameters())))


@pytest.mark.parametrize("make, engine", [(lambda: tc.MinGRUCell(I, H), "scan"), (lambda: tc.LSTMCell(I, H), "torch"),
                                          (lambda: tc.GRUCell(I, H), "torch"), (lambda: UserLSTMCell(I, H), "loop")],
                         ids=["mingru-scan", "lstm-torch", "gru-torch", "user-loop"])
def test_second_order_gradients_equal_the_loop(make, engine):
    torch.manual_seed(0)
    layer = tc.Recurrent(make().double(), engine=engine)
    x = torch.randn(T, B, I, dtype=torch.float64)
    got = penalty_gradients(layer, x)
    want = penalty_gradients(tc.Recurrent(layer.cell, engine="loop"), x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
@pytest.mark.parametrize("make", [lambda: UserLSTMCell(I, H), lambda: tc.GRUCell(I, H)], ids=["user-lstm", "gru"])
def test_the_fused_engine_refuses_second_order_gradients(make, native, monkeypatch):
    if not native:
        monkeypatch.setenv("TORCHCELLS_NATIVE", "0")
    layer = tc.Recurrent(make().double(), engine="fused")
    with pytest.raises(RuntimeError, match=r"first-order only.*create_graph=True.*engine='loop'"):
        penalty_gradients(layer, torch.randn(T, B, I, dtype=torch.float64))
    # first-order gradients are unchanged
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    layer(x)[0].sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in layer.parameters())


def test_the_drop_in_gru_on_torchs_kernel_gives_nn_grus_second_order_gradients():
    """The recipe in torch_compat's docstring for second-order gradients with torchcells.GRU."""
    torch.manual_seed(0)
    ours, theirs = tc.GRU(I, H).double(), torch.nn.GRU(I, H).double()
    theirs.load_state_dict(ours.state_dict())
    for layer in ours.modules():
        if isinstance(layer, tc.Recurrent):
            layer.engine = "torch"
    x = torch.randn(T, B, I, dtype=torch.float64)
    for got, want in zip(penalty_gradients(ours, x), penalty_gradients(theirs, x)):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
