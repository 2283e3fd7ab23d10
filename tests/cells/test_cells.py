"""The cells in torch's form (Elman, LSTM, GRU): against torch.nn's cells and their equations.

The rows are those of tests/cells/cell_table.py with ``gates`` (torch's parameter layout and
signature) or ``torch_make`` (torch.nn has the cell); each gets: parity of outputs, states and
gradients with torch.nn (float64 tight, float32 loose), its equations, gradcheck, same-seed
initialization, state-dict compatibility, and named errors for bad input. Every row of the
table also gets the checks of tests/cells/test_zoo.py.
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import torchcells as tc
from torchcells.cell import state_leaves

from cell_table import P, TORCH_LAYOUT, TORCH_PARITY, CellRow

I, H, B = 3, 4, 3  # input features, hidden units, batch (the projection P = 2 is the table's)
DTYPES = [torch.float64, torch.float32]
spec_param = pytest.mark.parametrize("spec", TORCH_LAYOUT, ids=str)
torch_spec_param = pytest.mark.parametrize("spec", TORCH_PARITY, ids=str)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def pack_like(template: Any, leaves: list[Tensor] | tuple[Tensor, ...]) -> Any:
    """Our state with ``template``'s structure (a tensor or an ``LSTMState``) from its leaves."""
    if isinstance(template, Tensor):
        (only,) = leaves
        return only
    return type(template)(*leaves)


def random_state(cell: nn.Module, batch: Optional[int], dtype: torch.dtype, gen: torch.Generator) -> list[Tensor]:
    """Random leaves shaped like ``cell.init_state(batch)`` (no batch dim if ``batch`` is None)."""
    template = cell.init_state(1 if batch is None else batch, dtype=dtype)
    leaves = []
    for t in state_leaves(template):
        shape = t.shape[1:] if batch is None else t.shape
        leaves.append(torch.randn(shape, dtype=dtype, generator=gen))
    return leaves


def torch_step(cell: nn.Module, x: Tensor, leaves: list[Tensor]) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Call a torch.nn cell with our leaf convention: returns ``(y, leaves)``, ``y = h``."""
    out = cell(x, tuple(leaves) if len(leaves) > 1 else leaves[0])
    new = tuple(out) if isinstance(out, tuple) else (out,)
    return new[0], new


def leaf_copies(tensors) -> list[Tensor]:
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def cotangents(tensors, gen: torch.Generator) -> list[Tensor]:
    return [torch.randn(t.shape, dtype=t.dtype, generator=gen) for t in tensors]


def vjp_loss(outputs, cots) -> Tensor:
    return sum((o * g).sum() for o, g in zip(outputs, cots))


def new_cell(spec: CellRow, *, bias: bool = True, dtype: torch.dtype = torch.float64, seed: int = 0):
    torch.manual_seed(seed)
    return spec.make(I, H, bias=bias, dtype=dtype)


# --------------------------------------------------------------------------------------
# Parity with torch.nn: outputs, states and gradients
# --------------------------------------------------------------------------------------
@torch_spec_param
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_matches_torch_cell(spec, bias, dtype, batched, close):
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    theirs = spec.torch_make(I, H, bias=bias, dtype=dtype)
    ours = spec.make(I, H, bias=bias, dtype=dtype)
    result = ours.load_state_dict(theirs.state_dict())  # strict: same keys and shapes
    assert not result.missing_keys and not result.unexpected_keys

    batch = B if batched else None
    x = torch.randn((B, I) if batched else (I,), dtype=dtype, generator=gen)
    leaves = random_state(ours, batch, dtype, gen)
    template = ours.init_state(1, dtype=dtype)

    x_o, x_t = leaf_copies([x])[0], leaf_copies([x])[0]
    s_o, s_t = leaf_copies(leaves), leaf_copies(leaves)
    y_o, state_o = ours(x_o, pack_like(template, s_o))
    y_t, state_t = torch_step(theirs, x_t, s_t)

    assert type(state_o) is type(template)
    close(y_o, y_t, what="output")
    close(tuple(state_leaves(state_o)), state_t, what="state")

    cots = cotangents([y_t, *state_t], gen)
    vjp_loss([y_o, *state_leaves(state_o)], cots).backward()
    vjp_loss([y_t, *state_t], cots).backward()
    close(x_o.grad, x_t.grad, what="d input")
    close([s.grad for s in s_o], [s.grad for s in s_t], what="d state")
    theirs_params = dict(theirs.named_parameters())
    ours_params = dict(ours.named_parameters())
    assert list(ours_params) == list(theirs_params)
    for name, p in theirs_params.items():
        assert p.grad is not None
        close(ours_params[name].grad, p.grad, what=f"d {name}")


@spec_param
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_equations(spec, bias, dtype, close):
    """Every cell (the projected LSTM has no torch.nn cell) against its equations."""
    gen = torch.Generator().manual_seed(2)
    ours = new_cell(spec, bias=bias, dtype=dtype)
    names = [n for n, _ in ours.named_parameters()]
    params = dict(zip(names, leaf_copies(ours.parameters())))
    x = torch.randn(B, I, dtype=dtype, generator=gen)
    leaves = random_state(ours, B, dtype, gen)
    template = ours.init_state(1, dtype=dtype)

    x_o, x_e = leaf_copies([x])[0], leaf_copies([x])[0]
    s_o, s_e = leaf_copies(leaves), leaf_copies(leaves)
    y_o, state_o = ours(x_o, pack_like(template, s_o))
    y_e, state_e = spec.reference(ours, params, x_e, s_e[0] if len(s_e) == 1 else tuple(s_e))
    state_e = (state_e,) if isinstance(state_e, Tensor) else tuple(state_e)

    assert y_o.shape == (B, spec.out(I, H))
    close(y_o, y_e, what="output")
    close(tuple(state_leaves(state_o)), state_e, what="state")

    cots = cotangents([y_e, *state_e], gen)
    vjp_loss([y_o, *state_leaves(state_o)], cots).backward()
    vjp_loss([y_e, *state_e], cots).backward()
    close(x_o.grad, x_e.grad, what="d input")
    close([s.grad for s in s_o], [s.grad for s in s_e], what="d state")
    for name, p in ours.named_parameters():
        close(p.grad, params[name].grad, what=f"d {name}")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_projected_lstm_cell_is_one_step_of_nn_lstm(bias, close):
    """One step of ``nn.LSTM(proj_size=P)`` is our projected ``LSTMCell``, same weights."""
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    theirs = nn.LSTM(I, H, proj_size=P, bias=bias, dtype=torch.float64)
    ours = tc.LSTMCell(I, H, proj_size=P, bias=bias, dtype=torch.float64)
    ours.load_state_dict({k.removesuffix("_l0"): v for k, v in theirs.state_dict().items()})
    x = torch.randn(B, I, dtype=torch.float64, generator=gen)
    h0, c0 = random_state(ours, B, torch.float64, gen)
    assert h0.shape == (B, P) and c0.shape == (B, H)
    y, (h, c) = ours(x, tc.LSTMState(h0, c0))
    out, (h_n, c_n) = theirs(x.unsqueeze(0), (h0.unsqueeze(0), c0.unsqueeze(0)))
    close(y, out[0], what="output")
    close(h, h_n[0], what="h")
    close(c, c_n[0], what="c")


# --------------------------------------------------------------------------------------
# gradcheck
# --------------------------------------------------------------------------------------
@spec_param
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gradcheck(spec, bias):
    """Analytic gradients w.r.t. input, state and every parameter equal finite differences."""
    gen = torch.Generator().manual_seed(4)
    cell = spec.make(2, 3, bias=bias, dtype=torch.float64)  # lstm-proj: P = 2 < 3
    names = [n for n, _ in cell.named_parameters()]
    params = leaf_copies(cell.parameters())
    x = torch.randn(2, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    leaves = leaf_copies(random_state(cell, 2, torch.float64, gen))
    template = cell.init_state(1, dtype=torch.float64)
    n_state = len(leaves)

    def f(x, *rest):
        state = pack_like(template, rest[:n_state])
        p = dict(zip(names, rest[n_state:]))
        y, new = torch.func.functional_call(cell, p, (x, state))
        return (y, *state_leaves(new))

    if spec.id == "elman-relu":  # keep pre-activations away from relu's kink
        with torch.no_grad():
            x.mul_(0.5)
    assert torch.autograd.gradcheck(f, (x, *leaves, *params), eps=1e-6, atol=1e-5)


# --------------------------------------------------------------------------------------
# Initialization and the parameter layout
# --------------------------------------------------------------------------------------
@torch_spec_param
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_same_seed_same_parameters_as_torch(spec, bias):
    torch.manual_seed(0)
    theirs = spec.torch_make(I, H, bias=bias)
    after_theirs = torch.rand(8)
    torch.manual_seed(0)
    ours = spec.make(I, H, bias=bias)
    after_ours = torch.rand(8)
    sd_t, sd_o = theirs.state_dict(), ours.state_dict()
    assert list(sd_o) == list(sd_t)
    for k in sd_t:
        assert torch.equal(sd_o[k], sd_t[k]), k
    # Same number of random draws: whatever is built next is seeded the same.
    assert torch.equal(after_ours, after_theirs)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_projected_lstm_cell_same_seed_as_nn_lstm(bias):
    torch.manual_seed(0)
    theirs = nn.LSTM(I, H, proj_size=P, bias=bias)
    torch.manual_seed(0)
    ours = tc.LSTMCell(I, H, proj_size=P, bias=bias)
    sd_t = {k.removesuffix("_l0"): v for k, v in theirs.state_dict().items()}
    sd_o = ours.state_dict()
    assert list(sd_o) == list(sd_t)
    for k in sd_t:
        assert torch.equal(sd_o[k], sd_t[k]), k


@spec_param
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_parameter_layout(spec, bias):
    cell = new_cell(spec, bias=bias, dtype=torch.float32)
    g = len(spec.gates)
    rec = spec.out(I, H)
    want = {"weight_ih": (g * H, I), "weight_hh": (g * H, rec)}
    if bias:
        want.update(bias_ih=(g * H,), bias_hh=(g * H,))
    if "weight_hr" in spec.extra_params:
        want["weight_hr"] = (P, H)
    got = {n: tuple(p.shape) for n, p in cell.named_parameters()}
    assert got == want
    assert list(got) == list(want)  # torch's registration order
    if not bias:
        assert cell.bias_ih is None and cell.bias_hh is None
    bound = 1 / math.sqrt(H)
    for n, p in cell.named_parameters():
        assert p.dtype == torch.float32
        assert float(p.detach().abs().max()) <= bound, f"{n} outside torch's init range ±1/√H"
    assert cell.GATES == spec.gates
    rows = cell.gate_rows()
    assert list(rows) == list(spec.gates)
    assert [(s.start, s.stop) for s in rows.values()] == [(k * H, (k + 1) * H) for k in range(g)]


@torch_spec_param
def test_state_dict_loads_both_ways(spec):
    """Ours -> torch as well as torch -> ours."""
    ours = new_cell(spec, dtype=torch.float32, seed=5)
    theirs = spec.torch_make(I, H)
    theirs.load_state_dict(ours.state_dict())
    for (n_t, p_t), (n_o, p_o) in zip(theirs.named_parameters(), ours.named_parameters()):
        assert n_t == n_o
        assert torch.equal(p_t, p_o)


# --------------------------------------------------------------------------------------
# The state: init_state, the default state, and batch rows
# --------------------------------------------------------------------------------------
@spec_param
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_init_state_is_zeros_of_the_right_shapes(spec, dtype):
    cell = new_cell(spec, dtype=dtype)
    state = cell.init_state(B, dtype=dtype)
    leaves = state_leaves(state)
    if spec.id.startswith("lstm"):
        assert isinstance(state, tc.LSTMState)
        assert state.h.shape == (B, spec.out(I, H)) and state.c.shape == (B, H)
    else:
        assert isinstance(state, Tensor) and state.shape == (B, H)
    for t in leaves:
        assert t.dtype == dtype and not t.any()


@spec_param
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_missing_state_means_zeros(spec, batched, close):
    cell = new_cell(spec)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn((B, I) if batched else (I,), dtype=torch.float64, generator=gen)
    zeros = cell.init_state(B if batched else 1, dtype=torch.float64)
    if not batched:
        zeros = pack_like(zeros, [t[0] for t in state_leaves(zeros)])
    y_default, s_default = cell(x)
    y_zero, s_zero = cell(x, zeros)
    close(y_default, y_zero, what="output")
    close(tuple(state_leaves(s_default)), tuple(state_leaves(s_zero)), what="state")
    assert y_default.shape == ((B, spec.out(I, H)) if batched else (spec.out(I, H),))


@spec_param
def test_unbatched_step_is_one_row_of_a_batch(spec, close):
    cell = new_cell(spec)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(B, I, dtype=torch.float64, generator=gen)
    leaves = random_state(cell, B, torch.float64, gen)
    template = cell.init_state(1, dtype=torch.float64)
    y, state = cell(x, pack_like(template, leaves))
    for b in range(B):
        y_b, state_b = cell(x[b], pack_like(template, [t[b] for t in leaves]))
        close(y_b, y[b], what=f"row {b} output")
        close(tuple(state_leaves(state_b)), tuple(t[b] for t in state_leaves(state)), what=f"row {b} state")


@spec_param
@settings(max_examples=15)
@given(batch=st.integers(1, 5), row=st.integers(0, 4), seed=st.integers(0, 2**16))
def test_batch_rows_are_independent(spec, batch, row, seed):
    """Changing one row of the input or state changes no other row of the result."""
    row = row % batch
    cell = new_cell(spec)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, I, dtype=torch.float64, generator=gen)
    leaves = random_state(cell, batch, torch.float64, gen)
    template = cell.init_state(1, dtype=torch.float64)
    y1, s1 = cell(x, pack_like(template, leaves))
    x2 = x.clone()
    x2[row] += 1.0
    leaves2 = [t.clone() for t in leaves]
    for t in leaves2:
        t[row] -= 0.5
    y2, s2 = cell(x2, pack_like(template, leaves2))
    others = [b for b in range(batch) if b != row]
    assert torch.equal(y1[others], y2[others])
    for a, b in zip(state_leaves(s1), state_leaves(s2)):
        assert torch.equal(a[others], b[others])


@spec_param
def test_output_is_the_new_hidden_state(spec):
    cell = new_cell(spec)
    x = torch.randn(B, I, dtype=torch.float64)
    y, state = cell(x)
    h = state.h if isinstance(state, tc.LSTMState) else state
    assert torch.equal(y, h)


# --------------------------------------------------------------------------------------
# Names and errors
# --------------------------------------------------------------------------------------
@spec_param
def test_short_name_and_repr(spec):
    cell = new_cell(spec, bias=False)
    cls = type(cell).__name__
    assert cell.short_name() == f"{cls}({I}→{H})"
    text = repr(cell)
    assert text.startswith(f"{cls}({I}, {H}")
    assert "bias=False" in text
    if spec.kwargs_repr:
        assert spec.kwargs_repr in text
    assert "bias=False" not in repr(new_cell(spec, bias=True))


def _bad_inputs():
    return [
        pytest.param(lambda: torch.randn(B, I + 2), ValueError, rf"{I + 2} features per step, expected {I}",
                     id="wrong-features"),
        pytest.param(lambda: torch.randn(I + 2), ValueError, rf"{I + 2} features per step, expected {I}",
                     id="wrong-features-unbatched"),
        pytest.param(lambda: torch.ones(B, I, dtype=torch.int64), TypeError, r"torch\.int64.*floating",
                     id="integer-input"),
        pytest.param(lambda: torch.ones(B, I, dtype=torch.bool), TypeError, r"torch\.bool.*floating",
                     id="bool-input"),
        pytest.param(lambda: torch.randn(2, B, I), ValueError, r"dimensions.*got 3", id="rank-3"),
        pytest.param(lambda: torch.tensor(1.0), ValueError, r"dimensions.*got 0", id="rank-0"),
        pytest.param(lambda: [[0.0] * I] * B, TypeError, r"should be a tensor.*list", id="not-a-tensor"),
    ]


@spec_param
@pytest.mark.parametrize("make_x, error, problem", _bad_inputs())
def test_bad_input_names_the_cell_and_the_problem(spec, make_x, error, problem):
    cell = new_cell(spec, dtype=torch.float32)
    name = re.escape(f"{type(cell).__name__}({I}→{H})")
    with pytest.raises(error, match=rf"^{name}: input .*{problem}"):
        cell(make_x())


def _bad_states(spec: CellRow):
    """(description, make_state(cell, dtype), error, message regex) for a batch-B float32 input."""
    def like_init(transform):
        def make(cell):
            init = cell.init_state(B, dtype=torch.float32)
            return pack_like(init, [transform(i, t) for i, t in enumerate(state_leaves(init))])
        return make

    is_lstm = spec.id.startswith("lstm")
    cases = [
        pytest.param(like_init(lambda i, t: torch.zeros(B, t.shape[1] + 1)), ValueError, r"should have shape",
                     id="wrong-size"),
        pytest.param(like_init(lambda i, t: torch.zeros(1, t.shape[1])), ValueError, r"should have shape",
                     id="batch-1-would-broadcast"),
        pytest.param(like_init(lambda i, t: torch.zeros(B + 1, t.shape[1])), ValueError, r"should have shape",
                     id="wrong-batch"),
        pytest.param(like_init(lambda i, t: torch.zeros(t.shape[1])), ValueError, r"should have shape",
                     id="unbatched-state-batched-input"),
        pytest.param(like_init(lambda i, t: t.double()), TypeError, r"dtype", id="wrong-dtype"),
    ]
    if is_lstm:
        cases.append(pytest.param(lambda cell: torch.zeros(B, spec.out(I, H)), TypeError, r"should be a tuple \(h, c\)",
                                  id="tensor-for-lstm-state"))
    else:
        cases.append(pytest.param(lambda cell: (torch.zeros(B, H), torch.zeros(B, H)), TypeError, r"should be a tensor",
                                  id="tuple-for-tensor-state"))
    return cases


@pytest.mark.parametrize(
    "spec, make_state, error, problem",
    [pytest.param(s, *case.values, id=f"{s.id}-{case.id}") for s in TORCH_LAYOUT for case in _bad_states(s)],
)
def test_bad_state_names_the_cell_and_the_problem(spec, make_state, error, problem):
    """A mismatched state is a named error, never a broadcast or a matmul shape error."""
    cell = new_cell(spec, dtype=torch.float32)
    name = re.escape(f"{type(cell).__name__}({I}→{H})")
    with pytest.raises(error, match=rf"^{name}: state.*{problem}"):
        cell(torch.randn(B, I), make_state(cell))


@spec_param
def test_unbatched_input_with_batched_state_is_an_error(spec):
    """``x`` ``(I,)`` with a ``(B, H)`` state is a named error, not a silent batch of B."""
    cell = new_cell(spec, dtype=torch.float32)
    name = re.escape(f"{type(cell).__name__}({I}→{H})")
    with pytest.raises(ValueError, match=rf"^{name}: state.*should have shape"):
        cell(torch.randn(I), cell.init_state(2))


CONSTRUCTOR_ERRORS = [
    pytest.param(lambda: tc.ElmanCell(0, 4), r"ElmanCell: input_size should be a positive int, got 0", id="I=0"),
    pytest.param(lambda: tc.GRUCell(3, -1), r"GRUCell: hidden_size should be a positive int, got -1", id="H<0"),
    pytest.param(lambda: tc.LSTMCell(3, 2.5), r"LSTMCell: hidden_size should be a positive int, got 2\.5",
                 id="H-float"),
    pytest.param(lambda: tc.LSTMCell(True, 4), r"LSTMCell: input_size should be a positive int, got True",
                 id="I-bool"),
    pytest.param(lambda: tc.ElmanCell(3, 4, nonlinearity="sigmoid"),
                 r"ElmanCell: nonlinearity should be 'tanh' or 'relu', got 'sigmoid'", id="nonlinearity"),
    pytest.param(lambda: tc.LSTMCell(3, 4, proj_size=4), r"LSTMCell: proj_size .*hidden_size=4.*got 4",
                 id="proj=H"),
    pytest.param(lambda: tc.LSTMCell(3, 4, proj_size=5), r"LSTMCell: proj_size .*got 5", id="proj>H"),
    pytest.param(lambda: tc.LSTMCell(3, 4, proj_size=-1), r"LSTMCell: proj_size .*got -1", id="proj<0"),
    pytest.param(lambda: tc.LSTMCell(3, 4, proj_size=1.5), r"LSTMCell: proj_size .*got 1\.5", id="proj-float"),
]


@pytest.mark.parametrize("make, message", CONSTRUCTOR_ERRORS)
def test_constructor_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_sizes_are_keyword_free_but_options_are_keyword_only():
    with pytest.raises(TypeError):
        tc.LSTMCell(3, 4, False)  # bias is keyword-only
    cell = tc.LSTMCell(3, 4, bias=False)
    assert cell.input_size == 3 and cell.hidden_size == 4 and cell.bias is False


@spec_param
def test_dtype_and_device_arguments(spec):
    cell = spec.make(I, H, dtype=torch.float64, device="cpu")
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in cell.parameters())
    y, _ = cell(torch.randn(B, I, dtype=torch.float64))
    assert y.dtype == torch.float64
