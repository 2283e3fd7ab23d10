"""``Recurrent(cell)`` equals a hand-written loop over the cell.

The reference is the ``reference_loop`` fixture (tests/conftest.py), written independently
of ``torchcells.engine``: a Python ``for`` loop calling ``cell(x[t], state)``, one sequence
at a time, on ``x[:L_b, b:b+1]`` (last step first for ``reverse``). Every check is
table-driven over ``CELLS``, so a new cell is one more row.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import pytest
import torch
from torch import Tensor, nn

from torchcells import Cell, ElmanCell, GRUCell, LSTMCell, LSTMState, Recurrent

DT = torch.float64
TOL = {"atol": 1e-12, "rtol": 1e-10}
I = 3  # input features of every cell in the table
T, B = 5, 4
LENGTHS = [3, 0, 5, 1]  # unsorted, with an empty and a full sequence


# ---------------------------------------------------------------- the table of cells
class MemState(NamedTuple):
    h: Tensor
    m: Tensor


class TwoTensorCell(Cell):
    """A user cell whose output is not its state (catches output/state mix-ups)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.inp = nn.Linear(input_size + hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)

    def init_state(self, batch_size, *, device=None, dtype=None):
        z = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return MemState(z, z.clone())

    def forward(self, x, state):
        h, m = state
        m = 0.7 * m + torch.tanh(self.inp(torch.cat([x, h], -1)))
        h = torch.sigmoid(m) * h + torch.tanh(m)
        return self.out(h), MemState(h, m)


CELLS = [
    pytest.param(lambda: ElmanCell(I, 4, dtype=DT), id="elman"),
    pytest.param(lambda: ElmanCell(I, 4, nonlinearity="relu", dtype=DT), id="elman-relu"),
    pytest.param(lambda: LSTMCell(I, 4, dtype=DT), id="lstm"),
    pytest.param(lambda: LSTMCell(I, 5, proj_size=2, dtype=DT), id="lstm-proj"),
    pytest.param(lambda: GRUCell(I, 4, dtype=DT), id="gru"),
    pytest.param(lambda: TwoTensorCell(I, 4).to(DT), id="user"),
]


def make(factory: Callable[[], Cell], seed: int = 0) -> Cell:
    torch.manual_seed(seed)
    return factory()


# ---------------------------------------------------------------- state helpers (not the library's)
def tmap(fn: Callable[..., Tensor], s: Any, *others: Any) -> Any:
    if isinstance(s, Tensor):
        return fn(s, *others)
    parts = [tmap(fn, a, *(o[i] for o in others)) for i, a in enumerate(s)]
    return type(s)(*parts) if hasattr(type(s), "_fields") else tuple(parts)


def leaves(s: Any) -> list[Tensor]:
    if s is None:
        return []
    if isinstance(s, Tensor):
        return [s]
    return [t for part in s for t in leaves(part)]


def assert_close(actual: Any, expected: Any, what: str = "") -> None:
    a, e = leaves(actual), leaves(expected)
    assert len(a) == len(e), f"{what}: {len(a)} tensors vs {len(e)}"
    assert type(actual) is type(expected) or isinstance(expected, Tensor), \
        f"{what}: {type(actual).__name__} vs {type(expected).__name__}"
    for i, (x, y) in enumerate(zip(a, e)):
        torch.testing.assert_close(x, y, **TOL, msg=lambda m: f"{what}[{i}]: {m}")


def random_state(cell: Cell, batch: int) -> Any:
    return tmap(lambda z: torch.randn_like(z), cell.init_state(batch, dtype=DT))


def grads(result: Any, weights: list[Tensor], wrt: list[Tensor]) -> list[Tensor]:
    outs = leaves(result)
    assert len(outs) == len(weights)
    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    gs = torch.autograd.grad(loss, wrt, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(gs, wrt)]


# ---------------------------------------------------------------- equality with the loop
@pytest.mark.parametrize("make_cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "init-state"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tbi", "bti"])
@pytest.mark.parametrize("all_states", [False, True], ids=["final", "all-states"])
def test_recurrent_equals_hand_loop(make_cell, reverse, lengths, with_state, batch_first, all_states,
                                    reference_loop):
    cell = make(make_cell)
    layer = Recurrent(cell, batch_first=batch_first, reverse=reverse)
    x_tm = torch.randn(T, B, I, dtype=DT)
    x = (x_tm.transpose(0, 1) if batch_first else x_tm).clone().requires_grad_()
    state = random_state(cell, B) if with_state else None
    state_leaves = [s.requires_grad_() for s in leaves(state)]
    params = list(cell.parameters())
    wrt = [x] + state_leaves + params

    got = layer(x, state, lengths=lengths, all_states=all_states)
    assert len(got) == (3 if all_states else 2)
    out, final = got[0], got[1]
    if batch_first:  # compare time-major
        out = out.transpose(0, 1)
    got_tm = [out, final]
    if all_states:
        got_tm.append(tmap(lambda s: s.transpose(0, 1), got[2]) if batch_first else got[2])

    x_ref = x.transpose(0, 1) if batch_first else x
    s_ref = state if with_state else cell.init_state(B, dtype=DT)
    ref_out, ref_final, ref_states = reference_loop(cell, x_ref, s_ref, lengths, reverse=reverse, all_states=True)
    want = [ref_out, ref_final] + ([ref_states] if all_states else [])

    assert_close(got_tm[0], want[0], "outputs")
    assert_close(got_tm[1], want[1], "final state")
    assert type(got_tm[1]) is type(cell.init_state(1, dtype=DT))
    if all_states:
        assert_close(got_tm[2], want[2], "every-step states")

    if lengths is not None:  # padded positions are exactly zero
        for b, L in enumerate(lengths):
            assert torch.all(got_tm[0][L:, b] == 0)
            if all_states:
                for s in leaves(got_tm[2]):
                    assert torch.all(s[L:, b] == 0)

    torch.manual_seed(1)
    weights = [torch.randn_like(t) for t in leaves(got_tm)]
    g_got = grads(got_tm, weights, wrt)
    g_want = grads(want, weights, wrt)
    names = ["x"] + [f"state{i}" for i in range(len(state_leaves))] + \
        [n for n, _ in cell.named_parameters()]
    for name, a, e in zip(names, g_got, g_want):
        torch.testing.assert_close(a, e, **TOL, msg=lambda m: f"grad {name}: {m}")
    assert any(g.abs().sum() > 0 for g in g_got)


@pytest.mark.parametrize("make_cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_every_step_states_hold_h_and_c_aligned_with_time(make_cell, reverse):
    """all_states[t] is the state after reading x[t], for reverse too (original positions)."""
    cell = make(make_cell)
    x = torch.randn(T, B, I, dtype=DT)
    out, final, states = Recurrent(cell, reverse=reverse)(x, lengths=LENGTHS, all_states=True)
    init = cell.init_state(B, dtype=DT)
    assert type(states) is type(init)
    for s, z in zip(leaves(states), leaves(init)):
        assert s.shape == (T,) + z.shape
    for b, L in enumerate(LENGTHS):
        if L == 0:
            continue
        last = L - 1 if not reverse else 0  # where the final state was produced
        for s, f in zip(leaves(states), leaves(final)):
            torch.testing.assert_close(s[last, b], f[b], **TOL)
        # a cell's output is read off its state: y_t = h_t for the library's cells
        if not isinstance(cell, TwoTensorCell):
            torch.testing.assert_close(out[:L, b], leaves(states)[0][:L, b], **TOL)


@pytest.mark.parametrize("make_cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_empty_sequence_keeps_its_initial_state(make_cell, reverse):
    cell = make(make_cell)
    state = random_state(cell, B)
    out, final = Recurrent(cell, reverse=reverse)(torch.randn(T, B, I, dtype=DT), state, lengths=LENGTHS)
    b = LENGTHS.index(0)
    for f, s in zip(leaves(final), leaves(state)):
        assert torch.equal(f[b], s[b])
    assert torch.all(out[:, b] == 0)


@pytest.mark.parametrize("make_cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("garbage", [float("nan"), float("inf"), -1e300], ids=["nan", "inf", "huge"])
def test_garbage_in_padded_steps_changes_nothing(make_cell, reverse, garbage):
    cell = make(make_cell)
    layer = Recurrent(cell, reverse=reverse)
    clean = torch.randn(T, B, I, dtype=DT)
    for b, L in enumerate(LENGTHS):
        clean[L:, b] = 0
    dirty = clean.clone()
    for b, L in enumerate(LENGTHS):
        dirty[L:, b] = garbage
    state = random_state(cell, B)
    params = list(cell.parameters())

    def run(x):
        x = x.clone().requires_grad_()
        out, final, states = layer(x, state, lengths=LENGTHS, all_states=True)
        torch.manual_seed(3)
        loss = sum((t * torch.randn_like(t)).sum() for t in [out, *leaves(final), *leaves(states)])
        g = torch.autograd.grad(loss, [x] + params)
        return out, final, states, g[0], g[1:]

    out_c, fin_c, st_c, gx_c, gp_c = run(clean)
    out_d, fin_d, st_d, gx_d, gp_d = run(dirty)
    assert torch.isfinite(out_d).all()
    assert_close(out_d, out_c, "outputs")
    assert_close(fin_d, fin_c, "final state")
    assert_close(st_d, st_c, "every-step states")
    for (name, _), a, e in zip(cell.named_parameters(), gp_d, gp_c):
        assert torch.isfinite(a).all(), f"grad {name} is not finite"
        torch.testing.assert_close(a, e, **TOL)
    assert torch.isfinite(gx_d).all()
    torch.testing.assert_close(gx_d, gx_c, **TOL)
    for b, L in enumerate(LENGTHS):  # padded inputs get no gradient
        assert torch.all(gx_d[L:, b] == 0)


@pytest.mark.parametrize("make_cell", CELLS)
def test_lengths_forms_agree_and_full_lengths_equal_no_lengths(make_cell):
    cell = make(make_cell)
    layer = Recurrent(cell)
    x = torch.randn(T, B, I, dtype=DT)
    base = layer(x, lengths=LENGTHS)
    for form in (tuple(LENGTHS), torch.tensor(LENGTHS), torch.tensor(LENGTHS, dtype=torch.int32)):
        assert_close(layer(x, lengths=form), base, f"lengths as {type(form).__name__}")
    full = layer(x)
    assert_close(layer(x, lengths=[T] * B), full, "all-full lengths")
    assert_close(layer(x, lengths=torch.full((B,), T)), full, "all-full lengths tensor")


# ---------------------------------------------------------------- unbatched input
@pytest.mark.parametrize("make_cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "init-state"])
def test_unbatched_input_and_state(make_cell, reverse, with_state, reference_loop):
    cell = make(make_cell)
    layer = Recurrent(cell, reverse=reverse)
    x = torch.randn(T, I, dtype=DT, requires_grad=True)
    state = tmap(lambda s: s[0], random_state(cell, 1)) if with_state else None
    wrt = [x] + [s.requires_grad_() for s in leaves(state)] + list(cell.parameters())

    out, final, states = layer(x, state, all_states=True)
    s_ref = tmap(lambda s: s.unsqueeze(0), state) if with_state else cell.init_state(1, dtype=DT)
    ref_out, ref_final, ref_states = reference_loop(cell, x.unsqueeze(1), s_ref, reverse=reverse, all_states=True)
    ref_out, ref_final = ref_out.squeeze(1), tmap(lambda s: s.squeeze(0), ref_final)
    ref_states = tmap(lambda s: s.squeeze(1), ref_states)

    assert out.dim() == 2 and out.shape[0] == T
    for f in leaves(final):
        assert f.dim() == 1
    for s in leaves(states):
        assert s.dim() == 2 and s.shape[0] == T
    assert_close(out, ref_out, "outputs")
    assert_close(final, ref_final, "final state")
    assert_close(states, ref_states, "every-step states")

    weights = [torch.randn_like(t) for t in leaves((out, final))]
    g_got = grads((out, final), weights, wrt)
    g_want = grads((ref_out, ref_final), weights, wrt)
    for a, e in zip(g_got, g_want):
        torch.testing.assert_close(a, e, **TOL)


# ---------------------------------------------------------------- zero sizes
@pytest.mark.parametrize("make_cell", CELLS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tbi", "bti"])
def test_zero_steps_returns_empty_outputs_and_initial_state(make_cell, batch_first):
    cell = make(make_cell)
    layer = Recurrent(cell, batch_first=batch_first)
    x = torch.randn(2, 0, I, dtype=DT) if batch_first else torch.randn(0, 2, I, dtype=DT)
    out_size = cell(torch.zeros(1, I, dtype=DT), cell.init_state(1, dtype=DT))[0].shape[-1]
    state = random_state(cell, 2)
    out, final, states = layer(x, state, lengths=[0, 0], all_states=True)
    assert out.shape == ((2, 0, out_size) if batch_first else (0, 2, out_size))
    assert_close(final, state, "final state")
    for s, z in zip(leaves(states), leaves(state)):
        assert s.shape == ((2, 0) if batch_first else (0, 2)) + tuple(z.shape[1:])
    out, final = layer(x)
    assert out.shape == ((2, 0, out_size) if batch_first else (0, 2, out_size))
    for f in leaves(final):
        assert f.shape[0] == 2 and torch.all(f == 0)


@pytest.mark.parametrize("make_cell", CELLS)
def test_empty_batch_returns_empty_outputs(make_cell):
    cell = make(make_cell)
    out_size = cell(torch.zeros(1, I, dtype=DT), cell.init_state(1, dtype=DT))[0].shape[-1]
    out, final = Recurrent(cell)(torch.randn(T, 0, I, dtype=DT))
    assert out.shape == (T, 0, out_size)
    assert all(f.shape[0] == 0 for f in leaves(final))
    out, final = Recurrent(cell, batch_first=True)(torch.randn(0, T, I, dtype=DT), lengths=[])
    assert out.shape == (0, T, out_size)


# ---------------------------------------------------------------- bad input
def test_wrong_feature_count_names_layer_and_cell():
    layer = Recurrent(LSTMCell(3, 4, dtype=DT))
    with pytest.raises(ValueError) as e:
        layer(torch.randn(5, 2, 7, dtype=DT))
    msg = str(e.value)
    assert "input has 7 features per step, expected 3" in msg
    assert "Recurrent(" in msg and "LSTMCell(3→4)" in msg
    with pytest.raises(ValueError, match="input has 7 features per step, expected 3"):
        layer(torch.randn(5, 7, dtype=DT))  # unbatched too


@pytest.mark.parametrize("shape", [(3,), (5, 2, 1, 3), ()], ids=["1d", "4d", "0d"])
def test_wrong_rank_is_a_value_error(shape):
    layer = Recurrent(GRUCell(3, 4, dtype=DT))
    with pytest.raises(ValueError, match=r"Recurrent\(GRUCell\(3→4\)\).*dimensions"):
        layer(torch.randn(shape, dtype=DT))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_input_is_a_type_error(dtype):
    layer = Recurrent(ElmanCell(3, 4, dtype=DT))
    with pytest.raises(TypeError, match=r"Recurrent\(ElmanCell\(3→4\)\).*input"):
        layer(torch.zeros(5, 2, 3, dtype=dtype))


def test_non_tensor_input_is_a_type_error():
    with pytest.raises(TypeError, match=r"Recurrent\(.*input"):
        Recurrent(ElmanCell(3, 4))([[0.0, 1.0, 2.0]])


@pytest.mark.parametrize("make_cell", CELLS)
def test_input_dtype_must_match_parameter_dtype(make_cell):
    layer = Recurrent(make(make_cell))  # float64 parameters
    with pytest.raises(TypeError) as e:
        layer(torch.randn(T, B, I, dtype=torch.float32))
    msg = str(e.value)
    assert "Recurrent(" in msg and "dtype" in msg and "float32" in msg and "float64" in msg


def test_lengths_with_unbatched_input_is_rejected():
    layer = Recurrent(LSTMCell(3, 4, dtype=DT))
    for lengths in ([2], torch.tensor([2]), [5]):
        with pytest.raises(ValueError, match=r"Recurrent\(LSTMCell\(3→4\)\).*lengths"):
            layer(torch.randn(5, 3, dtype=DT), lengths=lengths)


@pytest.mark.parametrize("lengths, error", [
    ([1, 2], ValueError), ([1, 2, 3, -1], ValueError), ([1, 2, 3, 6], ValueError),
    (torch.ones(4), TypeError), ([1.0, 2, 3, 4], TypeError),
], ids=["count", "negative", "too-long", "float-tensor", "float-entry"])
def test_bad_lengths_name_the_layer(lengths, error):
    with pytest.raises(error, match=r"Recurrent\(GRUCell\(3→4\)\).*lengths"):
        Recurrent(GRUCell(3, 4, dtype=DT))(torch.randn(T, B, I, dtype=DT), lengths=lengths)


@pytest.mark.parametrize("not_a_cell", [nn.Linear(3, 4), lambda x, s: (x, s), "LSTMCell", None],
                         ids=["linear", "function", "string", "none"])
def test_recurrent_needs_a_cell(not_a_cell):
    with pytest.raises(TypeError, match="Recurrent: cell"):
        Recurrent(not_a_cell)


def test_batched_state_with_unbatched_input_is_rejected():
    cell = LSTMCell(3, 4, dtype=DT)
    with pytest.raises(ValueError, match=r"Recurrent\(LSTMCell\(3→4\)\).*state"):
        Recurrent(cell)(torch.randn(5, 3, dtype=DT), cell.init_state(1, dtype=DT))


# ---------------------------------------------------------------- the module itself
def test_layer_shares_the_cells_parameters_and_names_itself():
    cell = LSTMCell(3, 4, dtype=DT)
    layer = Recurrent(cell, reverse=True, batch_first=True)
    assert layer.cell is cell
    assert [p is q for p, q in zip(layer.parameters(), cell.parameters())] == [True] * 4
    assert layer.short_name() == "Recurrent(LSTMCell(3→4), reverse)"
    assert layer.batch_first and layer.reverse
    assert_close(layer.init_state(2, dtype=DT), cell.init_state(2, dtype=DT))
    assert isinstance(layer.init_state(2), LSTMState)
