"""torch's fused kernels for the built-in cells equal the reference loop (and are chosen by "auto")."""

import itertools

import pytest
import torch

import torchcells as tc
from torchcells.cell import map_state, state_leaves
from torchcells.engine.call import open_call
from torchcells.engine.paths import get
from torchcells.engine.run import run

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


def accepts(cell, x, lengths=None, all_states=False):
    """Whether the torch path takes this call (no reason given)."""
    call = open_call(cell, x, cell.init_state(x.shape[1]), lengths=lengths, all_states=all_states)
    return get("torch").accepts(call) is None


def test_auto_uses_the_kernel_only_where_it_applies():
    x = torch.randn(T, B, I)
    assert accepts(tc.LSTMCell(I, H), x)
    assert not accepts(tc.LSTMCell(I, H), x, all_states=True)                     # every-step states
    assert not accepts(tc.LSTMCell(I, H), x, lengths=torch.tensor([3, 0, 1, 2]))  # empty sequence

    class MyLSTM(tc.LSTMCell):
        pass

    assert MyLSTM(I, H).torch_kernel() is None                                   # a subclass may change forward
    assert not accepts(MyLSTM(I, H), x)
    with pytest.raises(TypeError, match="engine='torch' runs only"):
        tc.Recurrent(MyLSTM(I, H), engine="torch")(x)
