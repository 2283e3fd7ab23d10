"""Chunked recomputation equals the plain run (outputs, states, gradients) on every engine."""


import pytest
import torch

import torchcells as tc
from torchcells.cell import map_state, state_leaves
from fixture_cells import UserLSTMCell

T, B, I, H = 11, 4, 3, 5
CELLS = {"user-lstm": lambda: UserLSTMCell(I, H), "gru": lambda: tc.GRUCell(I, H),
         "mingru": lambda: tc.MinGRUCell(I, H)}


def run(layer, x, state, lengths, all_states):
    x = x.detach().clone().requires_grad_()
    state = map_state(lambda s: s.detach().clone().requires_grad_(), state)
    result = layer(x, state, lengths=lengths, all_states=all_states)
    leaves = [result[0], *state_leaves(result[1])] + (state_leaves(result[2]) if all_states else [])
    gen = torch.Generator().manual_seed(3)
    loss = sum((l * torch.randn(l.shape, dtype=l.dtype, generator=gen)).sum() for l in leaves)
    grads = torch.autograd.grad(loss, [x, *state_leaves(state), *layer.parameters()])
    return leaves + list(grads)


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("engine", ["auto", "loop"])
@pytest.mark.parametrize("chunk", [1, 4, 20])
@pytest.mark.parametrize("use_lengths, reverse, all_states",
                         [(False, False, False), (True, False, True), (True, True, False), (False, True, True)])
def test_checkpointed_equals_plain(name, engine, chunk, use_lengths, reverse, all_states):
    torch.manual_seed(0)
    cell = CELLS[name]().double()
    plain = tc.Recurrent(cell, reverse=reverse, engine=engine)
    chunked = tc.Recurrent(cell, reverse=reverse, engine=engine, checkpoint_steps=chunk)
    x = torch.randn(T, B, I, dtype=torch.float64)
    state = map_state(lambda s: torch.randn_like(s), cell.init_state(B, dtype=torch.float64))
    lengths = torch.tensor([11, 0, 5, 8]) if use_lengths else None
    for got, want in zip(run(chunked, x, state, lengths, all_states), run(plain, x, state, lengths, all_states)):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_bad_checkpoint_steps():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="checkpoint_steps should be a positive int"):
            tc.Recurrent(tc.GRUCell(I, H), checkpoint_steps=bad)
    assert "checkpoint_steps=8" in repr(tc.Recurrent(tc.GRUCell(I, H), checkpoint_steps=8))


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_a_scannable_cell_forced_onto_the_fused_engine_recomputes_too(cell):
    """The minimal cells forced onto ``engine="fused"`` with chunks: before the paths were
    chosen outside ``torch.utils.checkpoint``, deriving their step inside it failed
    ("Please convert all Tensors to FakeTensors")."""
    torch.manual_seed(0)
    make = {"mingru": tc.MinGRUCell, "minlstm": tc.MinLSTMCell}[cell]
    fused = tc.Recurrent(make(I, H).double(), engine="fused", checkpoint_steps=2)
    loop = tc.Recurrent(fused.cell, engine="loop")
    x = torch.randn(T, B, I, dtype=torch.float64)
    state = fused.cell.init_state(B, dtype=torch.float64)
    lengths = torch.tensor([T, 3, 0, 7])
    for got, want in zip(run(fused, x, state, lengths, True), run(loop, x, state, lengths, True)):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
