"""The reference loop ``engine.unroll`` called directly, time-major and pre-validated."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
import torch
from torch import Tensor, nn

from torchcells import Cell, ElmanCell, GRUCell, LSTMCell, LSTMState
from torchcells.engine import unroll

DT = torch.float64
TOL = {"atol": 1e-12, "rtol": 1e-10}
T, B, I = 5, 4, 3
LENGTHS = torch.tensor([3, 0, 5, 1])

CELLS = [
    pytest.param(lambda: ElmanCell(I, 4, dtype=DT), id="elman"),
    pytest.param(lambda: LSTMCell(I, 4, dtype=DT), id="lstm"),
    pytest.param(lambda: LSTMCell(I, 5, proj_size=3, dtype=DT), id="lstm-proj"),
    pytest.param(lambda: GRUCell(I, 4, dtype=DT), id="gru"),
]


def leaves(s: Any) -> list[Tensor]:
    return [s] if isinstance(s, Tensor) else [t for part in s for t in leaves(part)]


@pytest.mark.parametrize("make_cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
def test_unroll_equals_a_hand_loop(make_cell, reverse, lengths, reference_loop):
    torch.manual_seed(0)
    cell = make_cell()
    x = torch.randn(T, B, I, dtype=DT)
    zeros = cell.init_state(B, dtype=DT)
    state = LSTMState(*map(torch.randn_like, zeros)) if isinstance(zeros, tuple) else torch.randn_like(zeros)
    out, final, states = unroll(cell, x, state, lengths=lengths, reverse=reverse)
    assert states is None
    want_out, want_final = reference_loop(cell, x, state, lengths, reverse=reverse)
    torch.testing.assert_close(out, want_out, **TOL)
    assert type(final) is type(state)
    for got, want in zip(leaves(final), leaves(want_final)):
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("make_cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_full_length_tensor_equals_no_lengths(make_cell, reverse):
    torch.manual_seed(0)
    cell = make_cell()
    x = torch.randn(T, B, I, dtype=DT)
    state = cell.init_state(B, dtype=DT)
    a = unroll(cell, x, state, reverse=reverse, all_states=True)
    b = unroll(cell, x, state, lengths=torch.full((B,), T), reverse=reverse, all_states=True)
    for u, v in zip(leaves(a), leaves(b)):
        torch.testing.assert_close(u, v, **TOL)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_all_states_stacks_every_leaf_zero_past_each_length(reverse):
    torch.manual_seed(0)
    cell = LSTMCell(I, 4, dtype=DT)
    x = torch.randn(T, B, I, dtype=DT)
    out, final, states = unroll(cell, x, cell.init_state(B, dtype=DT), lengths=LENGTHS, reverse=reverse,
                                all_states=True)
    assert isinstance(states, LSTMState)
    assert states.h.shape == (T, B, 4) and states.c.shape == (T, B, 4)
    torch.testing.assert_close(states.h, out, **TOL)  # an LSTM's output is its h
    for b, L in enumerate(LENGTHS.tolist()):
        assert torch.all(states.h[L:, b] == 0) and torch.all(states.c[L:, b] == 0)
        if L:
            at = 0 if reverse else L - 1
            torch.testing.assert_close(states.c[at, b], final.c[b], **TOL)


@pytest.mark.parametrize("all_states", [False, True])
def test_zero_steps(all_states):
    cell = LSTMCell(I, 5, proj_size=2, dtype=DT)
    state = LSTMState(torch.randn(3, 2, dtype=DT), torch.randn(3, 5, dtype=DT))
    out, final, states = unroll(cell, torch.randn(0, 3, I, dtype=DT), state, all_states=all_states)
    assert out.shape == (0, 3, 2)
    assert torch.equal(final.h, state.h) and torch.equal(final.c, state.c)
    if all_states:
        assert states.h.shape == (0, 3, 2) and states.c.shape == (0, 3, 5)
    else:
        assert states is None


class RecordingCell(Cell):
    """Elman-like cell that records every input it is given."""

    def __init__(self) -> None:
        super().__init__(I, 4)
        self.lin = nn.Linear(I + 4, 4, dtype=DT)
        self.seen: list[Tensor] = []

    def forward(self, x, h):
        self.seen.append(x.detach().clone())
        h = torch.tanh(self.lin(torch.cat([x, h], -1)))
        return h, h


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_the_cell_never_sees_padding_and_runs_once_per_step(reverse):
    cell = RecordingCell()
    x = torch.randn(T, B, I, dtype=DT)
    for b, L in enumerate(LENGTHS.tolist()):
        x[L:, b] = float("nan")
    out, final, _ = unroll(cell, x, cell.init_state(B, dtype=DT), lengths=LENGTHS, reverse=reverse)
    assert 1 <= len(cell.seen) <= T  # the batch goes through together, not one sequence at a time
    assert all(torch.isfinite(s).all() for s in cell.seen)
    assert torch.isfinite(out).all() and torch.isfinite(final).all()


class Nested(NamedTuple):
    h: Tensor
    extra: tuple


class NestedCell(Cell):
    """State ``Nested(h, (a, b))``; ``a`` counts the steps taken, ``b`` is a ``(2, 2)`` matrix per row."""

    def __init__(self) -> None:
        super().__init__(I, 2)
        self.lin = nn.Linear(I, 2, dtype=DT)

    def init_state(self, batch_size, *, device=None, dtype=None):
        z = torch.zeros(batch_size, 2, device=device, dtype=dtype)
        return Nested(z, (torch.zeros(batch_size, 1, device=device, dtype=dtype),
                          torch.zeros(batch_size, 2, 2, device=device, dtype=dtype)))

    def forward(self, x, state):
        h = torch.tanh(self.lin(x) + state.h)
        a, m = state.extra
        return h, Nested(h, (a + 1, m + h.unsqueeze(-1) * h.unsqueeze(-2)))


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_nested_state_is_masked_leaf_by_leaf(reverse):
    torch.manual_seed(0)
    cell = NestedCell()
    state = cell.init_state(B, dtype=DT)
    out, final, states = unroll(cell, torch.randn(T, B, I, dtype=DT), state, lengths=LENGTHS,
                                reverse=reverse, all_states=True)
    assert isinstance(final, Nested) and isinstance(final.extra, tuple)
    assert final.extra[0][:, 0].tolist() == [float(v) for v in LENGTHS.tolist()]  # steps actually taken
    assert final.extra[1].shape == (B, 2, 2)
    assert states.extra[1].shape == (T, B, 2, 2)
    for b, L in enumerate(LENGTHS.tolist()):
        assert torch.all(states.extra[0][L:, b] == 0) and torch.all(states.extra[1][L:, b] == 0)
        counts = states.extra[0][:L, b, 0].tolist()
        assert counts == ([float(t + 1) for t in range(L)][::-1] if reverse else [float(t + 1) for t in range(L)])


class PixelCell(Cell):
    """A cell over ``(C, W)`` steps (``step_rank = 2``): an element-wise leaky recurrence."""

    step_rank = 2

    def __init__(self, channels: int, width: int) -> None:
        super().__init__(channels, None)
        self.width = width
        self.a = nn.Parameter(torch.rand(channels, 1, dtype=DT))
        self.b = nn.Parameter(torch.randn(channels, 1, dtype=DT))

    def init_state(self, batch_size, *, device=None, dtype=None):
        return torch.zeros(batch_size, self.input_size, self.width, device=device, dtype=dtype)

    def forward(self, x, s):
        s = torch.tanh(self.a * s + self.b * x)
        return 2 * s, s


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_multi_dimensional_steps(reverse):
    torch.manual_seed(0)
    cell = PixelCell(2, 3)
    x = torch.randn(T, B, 2, 3, dtype=DT)
    out, final, _ = unroll(cell, x, cell.init_state(B, dtype=DT), lengths=LENGTHS, reverse=reverse)
    assert out.shape == (T, B, 2, 3)
    for b, L in enumerate(LENGTHS.tolist()):
        s = torch.zeros(1, 2, 3, dtype=DT)
        order = list(range(L))[::-1] if reverse else list(range(L))
        for t in order:
            y, s = cell(x[t, b:b + 1], s)
            torch.testing.assert_close(out[t, b], y[0], **TOL)
        torch.testing.assert_close(final[b], s[0], **TOL)
        assert torch.all(out[L:, b] == 0)
