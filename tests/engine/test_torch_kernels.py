"""torch's fused kernels for the built-in cells equal the reference loop (and are chosen by "auto")."""

import itertools

import pytest
import torch

import torchcells as tc
from torchcells.cell import map_state, state_leaves
from torchcells.engine.run import run
from torchcells.engine.torch_kernels import has_torch_kernel

T, B, I, H = 6, 4, 3, 5
CELLS = {
    "elman-tanh": lambda: tc.ElmanCell(I, H),
    "elman-relu": lambda: tc.ElmanCell(I, H, nonlinearity="relu"),
    "lstm": lambda: tc.LSTMCell(I, H),
    "lstm-proj": lambda: tc.LSTMCell(I, H, proj_size=2),
    "gru-nobias": lambda: tc.GRUCell(I, H, bias=False),
    "gru": lambda: tc.GRUCell(I, H),
}


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("use_lengths, reverse", list(itertools.product([False, True], [False, True])))
def test_torch_kernel_equals_loop(name, use_lengths, reverse):
    torch.manual_seed(0)
    cell = CELLS[name]().double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    state = map_state(lambda s: torch.randn_like(s), cell.init_state(B, dtype=torch.float64))
    lengths = torch.tensor([4, 1, 6, 2]) if use_lengths else None
    results = []
    for engine in ("loop", "torch"):
        xs = x.clone().requires_grad_()
        st = map_state(lambda s: s.clone().requires_grad_(), state)
        out, final, _ = run(cell, xs, st, lengths=lengths, reverse=reverse, engine=engine)
        leaves = [out, *state_leaves(final)]
        loss = sum((l * torch.linspace(-1, 1, l.numel(), dtype=l.dtype).reshape(l.shape)).sum() for l in leaves)
        grads = torch.autograd.grad(loss, [xs, *state_leaves(st), *cell.parameters()])
        results.append(leaves + list(grads))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_auto_uses_the_kernel_only_where_it_applies():
    x = torch.randn(T, B, I)
    assert has_torch_kernel(tc.LSTMCell(I, H), x, None, False)
    assert not has_torch_kernel(tc.LSTMCell(I, H), x, None, True)               # every-step states
    assert not has_torch_kernel(tc.LSTMCell(I, H), x, torch.tensor([3, 0, 1, 2]), False)  # empty sequence

    class MyLSTM(tc.LSTMCell):
        pass

    assert not has_torch_kernel(MyLSTM(I, H), x, None, False)                  # a subclass may change forward
    with pytest.raises(TypeError, match="engine='torch' runs only"):
        tc.Recurrent(MyLSTM(I, H), engine="torch")(x)
