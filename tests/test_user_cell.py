"""A cell written by a user gets every layer: Recurrent, Stack, Bidirectional.

``LeakyMemoryCell`` is what the README promises a user can write: a ``Cell``
subclass with a short ``forward`` and its own two-tensor NamedTuple state.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
import torch
from torch import Tensor, nn

from torchcells import Bidirectional, BidirectionalState, Cell, Recurrent, Stack

DT = torch.float64
TOL = {"atol": 1e-12, "rtol": 1e-10}
T, B = 5, 4
LENGTHS = [3, 0, 5, 1]


class Memory(NamedTuple):
    h: Tensor
    m: Tensor


class LeakyMemoryCell(Cell):
    """``m_t = a ⊙ m_{t-1} + (1 − a) ⊙ tanh(W [x_t; h_{t-1}])``, ``h_t = tanh(U m_t)``, ``y_t = h_t + m_t``."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.write = nn.Linear(input_size + hidden_size, hidden_size)
        self.read = nn.Linear(hidden_size, hidden_size, bias=False)
        self.leak = nn.Parameter(torch.zeros(hidden_size))

    def init_state(self, batch_size, *, device=None, dtype=None) -> Memory:
        z = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return Memory(z, z.clone())

    def forward(self, x: Tensor, state: Memory) -> tuple[Tensor, Memory]:
        h, m = state
        a = torch.sigmoid(self.leak)
        m = a * m + (1 - a) * torch.tanh(self.write(torch.cat([x, h], -1)))
        h = torch.tanh(self.read(m))
        return h + m, Memory(h, m)


def user_cell(i: int = 3, h: int = 4, seed: int = 0) -> LeakyMemoryCell:
    torch.manual_seed(seed)
    cell = LeakyMemoryCell(i, h).to(DT)
    with torch.no_grad():
        cell.leak.normal_()
    return cell


def random_memory(batch: int, h: int = 4) -> Memory:
    return Memory(torch.randn(batch, h, dtype=DT), torch.randn(batch, h, dtype=DT))


def leaves(s: Any) -> list[Tensor]:
    return [s] if isinstance(s, Tensor) else [t for part in s for t in leaves(part)]


def assert_close(actual: Any, expected: Any, what: str = "") -> None:
    a, e = leaves(actual), leaves(expected)
    assert len(a) == len(e), what
    for i, (x, y) in enumerate(zip(a, e)):
        torch.testing.assert_close(x, y, **TOL, msg=lambda m: f"{what}[{i}]: {m}")


# ---------------------------------------------------------------- Recurrent
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tbi", "bti"])
def test_user_cell_in_recurrent_equals_a_hand_loop(reverse, batch_first, reference_loop):
    cell = user_cell()
    layer = Recurrent(cell, reverse=reverse, batch_first=batch_first)
    x_tm = torch.randn(T, B, 3, dtype=DT, requires_grad=True)
    state = random_memory(B)
    for s in state:
        s.requires_grad_()
    out, final = layer(x_tm.transpose(0, 1) if batch_first else x_tm, state, lengths=LENGTHS)
    if batch_first:
        out = out.transpose(0, 1)
    assert isinstance(final, Memory)
    want_out, want_final = reference_loop(cell, x_tm, state, LENGTHS, reverse=reverse)
    assert_close(out, want_out, "outputs")
    assert_close(final, want_final, "final state")
    assert torch.equal(final.h[1], state.h[1]) and torch.equal(final.m[1], state.m[1])  # length 0

    wrt = [x_tm, state.h, state.m, *cell.parameters()]
    w = torch.randn_like(out)
    g_got = torch.autograd.grad((out * w).sum() + final.h.sum() + 2 * final.m.sum(), wrt)
    g_want = torch.autograd.grad((want_out * w).sum() + want_final.h.sum() + 2 * want_final.m.sum(), wrt)
    assert_close(list(g_got), list(g_want), "gradients")
    assert all(g.abs().sum() > 0 for g in g_got[3:])  # every parameter is reached


def test_user_cell_every_step_states():
    cell = user_cell()
    out, final, states = Recurrent(cell)(torch.randn(T, B, 3, dtype=DT), lengths=LENGTHS, all_states=True)
    assert isinstance(states, Memory)
    assert states.h.shape == (T, B, 4) and states.m.shape == (T, B, 4)
    torch.testing.assert_close(out, states.h + states.m, **TOL)  # y_t = h_t + m_t, zero where padded
    for b, L in enumerate(LENGTHS):
        assert torch.all(states.h[L:, b] == 0) and torch.all(states.m[L:, b] == 0)


# ---------------------------------------------------------------- Stack and Bidirectional
def test_user_cell_in_a_stack(reference_loop):
    first, second = user_cell(3, 4, seed=0), user_cell(4, 4, seed=1)
    net = Stack([Recurrent(first), Recurrent(second, reverse=True)])
    x = torch.randn(T, B, 3, dtype=DT, requires_grad=True)
    init = (random_memory(B), random_memory(B))
    out, (s1, s2) = net(x, init, lengths=LENGTHS)
    h1, w1 = reference_loop(first, x, init[0], LENGTHS)
    h2, w2 = reference_loop(second, h1, init[1], LENGTHS, reverse=True)
    assert_close(out, h2, "outputs")
    assert isinstance(s1, Memory) and isinstance(s2, Memory)
    assert_close((s1, s2), (w1, w2), "final states")
    g_got = torch.autograd.grad(out.square().sum() + s1.m.sum(), [x, *net.parameters()])
    g_want = torch.autograd.grad(h2.square().sum() + w1.m.sum(), [x, *net.parameters()])
    assert_close(list(g_got), list(g_want), "gradients")


def test_user_cell_in_bidirectional(reference_loop):
    with pytest.warns(UserWarning, match=r"cell\.leak .*without reset_parameters"):
        bi = Bidirectional(Recurrent(user_cell()), merge="concat")
    fwd, bwd = bi.forward_layer.cell, bi.backward_layer.cell
    assert isinstance(bwd, LeakyMemoryCell) and bwd is not fwd
    for name in ("write.weight", "write.bias", "read.weight"):  # freshly initialized, not copied
        assert not torch.equal(fwd.get_parameter(name), bwd.get_parameter(name)), name
    for p, q in zip(fwd.parameters(), bwd.parameters()):
        assert p.data_ptr() != q.data_ptr()

    x = torch.randn(T, B, 3, dtype=DT, requires_grad=True)
    init = BidirectionalState(random_memory(B), random_memory(B))
    out, final = bi(x, init, lengths=LENGTHS)
    f_out, f_fin = reference_loop(fwd, x, init.forward, LENGTHS)
    b_out, b_fin = reference_loop(bwd, x, init.backward, LENGTHS, reverse=True)
    want = torch.cat([f_out, b_out], -1)
    assert_close(out, want, "outputs")
    assert isinstance(final, BidirectionalState) and isinstance(final.backward, Memory)
    assert_close(final, (f_fin, b_fin), "final states")
    g_got = torch.autograd.grad(out.square().sum() + final.backward.h.sum(), [x, *bi.parameters()])
    g_want = torch.autograd.grad(want.square().sum() + b_fin.h.sum(), [x, *bi.parameters()])
    assert_close(list(g_got), list(g_want), "gradients")


# ---------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_gradcheck_recurrent_user_cell(reverse):
    cell = user_cell(2, 3)
    layer = Recurrent(cell, reverse=reverse)
    names = [n for n, _ in cell.named_parameters()]
    lengths = [2, 0, 4]

    def f(x, h0, m0, *params):
        out, (h, m) = torch.func.functional_call(
            layer, {f"cell.{n}": p for n, p in zip(names, params)}, (x, Memory(h0, m0)),
            {"lengths": lengths})
        return out, h, m

    torch.manual_seed(5)
    inputs = (torch.randn(4, 3, 2, dtype=DT, requires_grad=True),
              torch.randn(3, 3, dtype=DT, requires_grad=True),
              torch.randn(3, 3, dtype=DT, requires_grad=True),
              *[p.detach().clone().requires_grad_() for p in cell.parameters()])
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


# ---------------------------------------------------------------- the default init_state
class ForwardOnlyCell(Cell):
    """Defines only ``forward``: the state is the default zeros ``(B, hidden_size)``."""

    def __init__(self) -> None:
        super().__init__(3, 4)
        self.lin = nn.Linear(7, 4, dtype=DT)

    def forward(self, x, h):
        h = torch.tanh(self.lin(torch.cat([x, h], -1)))
        return h, h


def test_default_init_state_is_zeros_of_batch_by_hidden(reference_loop):
    cell = ForwardOnlyCell()
    z = cell.init_state(2, dtype=DT)
    assert isinstance(z, Tensor) and z.shape == (2, 4) and z.dtype == DT and torch.all(z == 0)
    torch.manual_seed(0)
    x = torch.randn(T, B, 3, dtype=DT)
    out, h = Recurrent(cell)(x, lengths=LENGTHS)
    assert h.shape == (B, 4) and torch.all(h[1] == 0)
    want_out, want_h = reference_loop(cell, x, torch.zeros(B, 4, dtype=DT), LENGTHS)
    assert_close((out, h), (want_out, want_h), "from the default zero state")
    out, h = Recurrent(cell)(x[:, 0])  # unbatched: state (H,)
    assert out.shape == (T, 4) and h.shape == (4,)


def test_cell_without_sizes_must_define_init_state():
    class Sizeless(Cell):
        def forward(self, x, h):
            return x, h

    with pytest.raises(NotImplementedError, match="Sizeless.*init_state"):
        Recurrent(Sizeless())(torch.randn(T, B, 3, dtype=DT))


# ---------------------------------------------------------------- state errors
@pytest.mark.parametrize("bad, error, words", [
    (torch.zeros(B, 4, dtype=DT), TypeError, "state should be Memory"),
    ((torch.zeros(B, 4, dtype=DT),), TypeError, "state should be Memory"),
    (Memory(torch.zeros(B, 4, dtype=DT), torch.zeros(B, 4, dtype=DT)) + (torch.zeros(B, 4, dtype=DT),),
     TypeError, "state should be Memory"),
    (Memory(torch.zeros(B, 5, dtype=DT), torch.zeros(B, 4, dtype=DT)), ValueError, "state.h should have shape"),
    (Memory(torch.zeros(B, 4, dtype=DT), torch.zeros(B + 1, 4, dtype=DT)), ValueError, "state.m should have shape"),
    (Memory(torch.zeros(B, 4, dtype=DT), torch.zeros(B, 4, dtype=torch.float32)), TypeError, "state.m has dtype"),
    (Memory(torch.zeros(B, 4, dtype=DT), [[0.0] * 4] * B), TypeError, "state.m should be a tensor"),
], ids=["tensor", "1-tuple", "3-tuple", "shape-h", "shape-m", "dtype", "list-leaf"])
def test_bad_state_names_the_layer_and_the_state(bad, error, words):
    layer = Recurrent(user_cell())
    with pytest.raises(error) as e:
        layer(torch.randn(T, B, 3, dtype=DT), bad)
    msg = str(e.value)
    assert msg.startswith("Recurrent(LeakyMemoryCell(3→4)): "), msg
    assert words in msg, msg


def test_a_plain_tuple_state_is_accepted_and_returned_named():
    layer = Recurrent(user_cell())
    x = torch.randn(T, B, 3, dtype=DT)
    state = random_memory(B)
    out, final = layer(x, (state.h, state.m), lengths=LENGTHS)
    assert isinstance(final, Memory)
    assert_close((out, final), layer(x, state, lengths=LENGTHS))


class ResettableCell(LeakyMemoryCell):
    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.leak.normal_()


def test_a_cell_with_reset_parameters_gets_a_fresh_backward_copy_without_warning():
    import warnings

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bi = Bidirectional(Recurrent(ResettableCell(3, 4)))
    assert not torch.equal(bi.forward_layer.cell.leak, bi.backward_layer.cell.leak)


def test_a_user_cell_may_set_its_output_size():
    """``output_size`` is a declared hook with a default (``hidden_size``); a cell that sets it
    in ``__init__`` (as it could before the hook was declared) keeps its value."""

    class Narrow(Cell):
        def __init__(self) -> None:
            super().__init__(3, 4)
            self.output_size = 2
            self.lin = torch.nn.Linear(7, 4)

        def forward(self, x, h):
            h = torch.tanh(self.lin(torch.cat([x, h], -1)))
            return h[:, :2], h

    cell = Narrow()
    assert cell.output_size == 2 and Cell(3, 4).output_size == 4
    out, _ = Recurrent(cell)(torch.randn(5, 2, 3))
    assert out.shape == (5, 2, 2)
