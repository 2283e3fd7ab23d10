"""Short calls without gradients (streaming): ``engine="auto"`` leaves them to the reference loop.

A fast path's set-up (the trace-cache key, hoisting, packing for torch's kernel, the scan's
chunks) costs more than it saves over a few steps; each path's ``short_steps`` says up to how
many steps the loop runs instead (:func:`torchcells.engine.paths.short_call`).
"""

from __future__ import annotations

import pytest
import torch
from fixture_cells import Annealed, UserLSTMCell

from torchcells import GRUCell, LSTMCell, MinGRUCell, Recurrent
from torchcells.engine.call import open_call
from torchcells.engine.paths import choose, get, short_call

I, H, B = 3, 4, 2

CELLS = {"user-lstm": lambda: UserLSTMCell(I, H), "gru": lambda: GRUCell(I, H), "lstm": lambda: LSTMCell(I, H),
         "mingru": lambda: MinGRUCell(I, H)}


def chosen(cell, steps, *, grad=False):
    x = torch.randn(steps, B, I, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        return choose(open_call(cell, x, cell.init_state(B))).name


@pytest.mark.parametrize("name", list(CELLS))
def test_a_short_call_without_grad_runs_on_the_loop_and_a_longer_or_trained_one_does_not(name):
    cell = CELLS[name]()
    fast = chosen(cell, 64)
    assert fast != "loop"
    assert chosen(cell, 1) == "loop"
    assert chosen(cell, get(fast).short_steps) == "loop"
    assert chosen(cell, get(fast).short_steps + 1) == fast
    assert chosen(cell, 1, grad=True) == fast   # with gradients the fast path's backward pays off


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("steps", [1, 2])  # at most every path's short_steps
def test_short_calls_give_the_loops_results_exactly(name, steps):
    torch.manual_seed(0)
    cell = CELLS[name]()
    x, lengths = torch.randn(steps, B, I), [steps, 1]
    state = tuple(torch.randn_like(t) for t in torch.utils._pytree.tree_leaves(cell.init_state(B)))
    state = type(cell.init_state(B))(*state) if len(state) > 1 else state[0]
    with torch.no_grad():
        for kwargs in ({}, {"lengths": lengths}, {"all_states": True}):
            auto = Recurrent(cell, reverse=True)(x, state, **kwargs)
            loop = Recurrent(cell, reverse=True, engine="loop")(x, state, **kwargs)
            for a, b in zip(torch.utils._pytree.tree_leaves(auto), torch.utils._pytree.tree_leaves(loop)):
                assert torch.equal(a, b)


def test_a_value_changed_between_streaming_steps_is_seen():
    cell = Annealed(I, H)
    layer = Recurrent(cell)
    x = torch.randn(B, I)
    h = cell.init_state(B)
    with torch.no_grad():
        for temperature in (1.0, 0.25, 4.0, 0.25):
            cell.temperature = temperature
            expected, _ = cell(x, h)
            y, h_new = layer.step(x, h)
            assert torch.equal(y, expected)
            out, _ = layer(torch.stack([x] * 12), h)   # longer: the fused path, which keys the value
            torch.testing.assert_close(out[0], expected)
            h = h_new


def test_no_short_call_in_a_recording_mode_or_a_transform():
    cell = GRUCell(I, H)
    call = open_call(cell, torch.randn(1, B, I), cell.init_state(B))
    with torch.no_grad():
        assert short_call(call)
    seen = []

    def probe(x):
        seen.append(short_call(open_call(cell, x.unsqueeze(0), cell.init_state(B))))
        return x.sum()

    with torch.no_grad():
        torch.func.vmap(probe)(torch.randn(3, B, I))
    assert seen == [False]   # under torch.func the registered operators run (the fused path)
