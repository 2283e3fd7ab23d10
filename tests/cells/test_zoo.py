"""Every cell and wrapper of the zoo, one row each in tests/cells/cell_table.py: every row gets every check.

A row gives the factory of a cell (or of a wrapper around one) and its step written out
from the paper's equations, independently of the library. Every row is checked:

* one step equals the reference: outputs, states and gradients (float64);
* ``gradcheck`` in float64 (the random cells and wrappers with a fixed seed inside);
* ``Recurrent`` (forwards and reversed), ``Stack`` and ``Bidirectional`` with
  lengths equal the ``reference_loop`` fixture over each sequence, with exact zeros at
  padded steps;
* gradients reach every parameter through a layer with lengths, in training mode;
* the fused engine equals the loop (lengths, reverse, every-step states, gradients)
  where the row's step has no random operation; where it has one, the layer falls
  back to the loop with a warning and ``engine="fused"`` is a named error;
* eval mode is deterministic;
* bad input, a bad state and a bad constructor argument get errors naming the cell.

The rows in torch's form (Elman, LSTM, GRU) also get the checks of tests/cells/test_cells.py.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any, Optional

import pytest
import torch
from torch import Tensor, nn

import torchcells as tc
from torchcells.cell import map_state, state_leaves

from cell_table import DT, IMAGE, ROWS, CellRow

TOL = {"atol": 1e-10, "rtol": 1e-8}
I, H, B, T = 3, 4, 4, 5
LENGTHS = [3, 0, 5, 1]
spec_param = pytest.mark.parametrize("spec", ROWS, ids=str)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def new_cell(spec: CellRow, i: int = I, h: int = H, seed: int = 0, train: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    cell = spec.make(i, h).to(DT)
    with torch.no_grad():  # move gains/leaks off their tidy initial values
        for name, p in cell.named_parameters():
            if name.endswith(("norm_ih.weight", "norm_hh.weight", "norm_c.weight", "leak")):
                p.add_(0.3 * torch.randn_like(p))
            elif name.endswith(("norm_ih.bias", "norm_hh.bias", "norm_c.bias")):
                p.add_(0.2 * torch.randn_like(p))
    cell.train(train)
    if spec.id == "weight-drop" and train:
        cell.resample()  # a mask for direct steps (a layer call draws its own)
    return cell


def step_shape(spec: CellRow, i: int = I) -> tuple[int, ...]:
    return (i, *IMAGE) if spec.image else (i,)


def random_input(spec: CellRow, *lead: int, gen: torch.Generator, i: int = I) -> Tensor:
    return torch.randn(*lead, *step_shape(spec, i), dtype=DT, generator=gen)


def initial_state(spec: CellRow, cell: nn.Module, batch: int, gen: torch.Generator) -> Any:
    if spec.state is not None:
        return spec.state(cell, batch, gen)
    return map_state(lambda s: torch.randn(s.shape, dtype=DT, generator=gen), cell.init_state(batch, dtype=DT))


def nested(state: Any) -> Any:
    """A state as plain nested tuples (NamedTuples compare as tuples with the reference's)."""
    if isinstance(state, Tensor):
        return state
    return tuple(nested(s) for s in state)


def assert_close(actual: Any, expected: Any, what: str = "", tol: Optional[dict] = None) -> None:
    a, e = state_leaves(nested(actual)) if not isinstance(actual, Tensor) else [actual], \
        state_leaves(nested(expected)) if not isinstance(expected, Tensor) else [expected]
    assert len(a) == len(e), f"{what}: {len(a)} tensors vs {len(e)}"
    for k, (x, y) in enumerate(zip(a, e)):
        torch.testing.assert_close(x, y, **(tol or TOL), msg=lambda m: f"{what}[{k}]: {m}")


def rows(state: Any, b: int) -> Any:
    return map_state(lambda s: s[b:b + 1], state)


# --------------------------------------------------------------------------------------
# One step against the reference, with gradients
# --------------------------------------------------------------------------------------
@spec_param
def test_step_matches_reference(spec):
    gen = torch.Generator().manual_seed(1)
    cell = new_cell(spec, train=not spec.random)  # random rows: the deterministic eval form
    x = random_input(spec, B, gen=gen).requires_grad_()
    state = initial_state(spec, cell, B, gen)
    if not spec.random:
        cell.train()
    leaves = [t.detach().clone().requires_grad_() for t in state_leaves(state)]
    flat_state = _pack(state, leaves)
    params = dict(cell.named_parameters())

    y, new = cell(x, flat_state)
    y_ref, new_ref = spec.reference(cell, params, x, nested(flat_state))
    assert y.shape == y_ref.shape == (B, *step_shape(spec, spec.out(I, H)))
    assert_close(y, y_ref, "output")
    assert_close(new, new_ref, "state")
    assert type(new) is type(cell.init_state(1, dtype=DT))

    outs, outs_ref = [y, *state_leaves(new)], [y_ref, *state_leaves(nested(new_ref))]
    weights = [torch.randn(o.shape, dtype=DT, generator=gen) for o in outs]
    wrt = [x, *leaves, *params.values()]
    got = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, weights)), wrt, allow_unused=True)
    want = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs_ref, weights)), wrt, allow_unused=True)
    for k, (g, w) in enumerate(zip(got, want)):
        if w is None:
            assert g is None or not g.any(), f"gradient {k}"
        else:
            assert g is not None, f"gradient {k} missing"
            torch.testing.assert_close(g, w, **TOL)


def _pack(template: Any, leaves: list[Tensor]) -> Any:
    it = iter(leaves)
    return map_state(lambda _: next(it), template)


# --------------------------------------------------------------------------------------
# gradcheck
# --------------------------------------------------------------------------------------
@spec_param
def test_gradcheck(spec):
    """Analytic gradients (input, state, every parameter) equal finite differences.

    Rows with random steps are checked in training mode with the generator reseeded
    inside the function, so every evaluation draws the same noise. The spiking cell's
    output is a step function whose backward is a surrogate by design, so only its
    state (the membrane) is checked."""
    gen = torch.Generator().manual_seed(4)
    cell = new_cell(spec, i=2, h=2)
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    x = random_input(spec, 2, gen=gen, i=2).requires_grad_()
    template = initial_state(spec, cell, 2, gen)
    leaves = [t.detach().clone().requires_grad_() for t in state_leaves(template)]
    n_state = len(leaves)

    def f(x, *rest):
        torch.manual_seed(7)
        state = _pack(template, rest[:n_state])
        y, new = torch.func.functional_call(cell, dict(zip(names, rest[n_state:])), (x, state))
        return tuple(state_leaves(new)) if spec.spike else (y, *state_leaves(new))

    # feature maps have many numbers: check random directions (fast mode) rather than every entry
    assert torch.autograd.gradcheck(f, (x, *leaves, *params), eps=1e-6, atol=1e-5, fast_mode=spec.image)


# --------------------------------------------------------------------------------------
# In layers, with lengths
# --------------------------------------------------------------------------------------
@spec_param
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_recurrent_with_lengths_equals_hand_loop(spec, reverse, reference_loop):
    gen = torch.Generator().manual_seed(2)
    cell = new_cell(spec, train=not spec.random)
    x = random_input(spec, T, B, gen=gen)
    x[LENGTHS[0]:, 0] = float("nan")  # garbage in padded steps changes nothing
    state = initial_state(spec, cell, B, gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a fallback warning is tested below
        out, final = tc.Recurrent(cell, reverse=reverse)(x, state, lengths=LENGTHS)
    want, want_final = reference_loop(cell, x, state, LENGTHS, reverse=reverse)
    for b, L in enumerate(LENGTHS):
        assert torch.all(out[L:, b] == 0), "padded outputs are exactly zero"
    assert_close(out, want, "outputs")
    assert_close(final, want_final, "final state")
    assert_close(rows(final, 1), rows(state, 1), "a sequence of length 0 keeps its state")


@spec_param
def test_stack_and_bidirectional_with_lengths(spec, reference_loop):
    gen = torch.Generator().manual_seed(3)
    first = new_cell(spec, train=not spec.random)
    mid = spec.out(I, H)
    second = new_cell(spec, mid, H, seed=1, train=not spec.random)
    x = random_input(spec, T, B, gen=gen)
    net = tc.Stack([tc.Recurrent(first), tc.Recurrent(second, reverse=True)])
    init = net.init_state(B, dtype=DT)  # masks drawn here, for the wrappers that keep them in the state
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, (s1, s2) = net(x, init, lengths=LENGTHS)
    h1, w1 = reference_loop(first, x, init[0], LENGTHS)
    h2, w2 = reference_loop(second, h1, init[1], LENGTHS, reverse=True)
    assert_close(out, h2, "stack outputs")
    assert_close((s1, s2), (w1, w2), "stack final states")
    for b, L in enumerate(LENGTHS):
        assert torch.all(out[L:, b] == 0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bi = tc.Bidirectional(tc.Recurrent(first), merge="sum" if spec.image else "concat")
        init = bi.init_state(B, dtype=DT)
        out, (fwd, bwd) = bi(x, init, lengths=LENGTHS)
    f_out, f_final = reference_loop(bi.forward_layer.cell, x, init.forward, LENGTHS)
    b_out, b_final = reference_loop(bi.backward_layer.cell, x, init.backward, LENGTHS, reverse=True)
    merged = f_out + b_out if spec.image else torch.cat([f_out, b_out], -1)
    assert_close(out, merged, "bidirectional outputs")
    assert_close((fwd, bwd), (f_final, b_final), "bidirectional final states")
    for b, L in enumerate(LENGTHS):
        assert torch.all(out[L:, b] == 0)


@spec_param
def test_gradients_reach_every_parameter(spec):
    gen = torch.Generator().manual_seed(5)
    cell = new_cell(spec)
    x = random_input(spec, T, B, gen=gen).requires_grad_()
    if spec.id == "lif":
        x = (x * 3).detach().requires_grad_()  # enough drive for some spikes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, final = tc.Recurrent(cell)(x, lengths=LENGTHS)
    loss = (out * torch.randn(out.shape, dtype=DT, generator=gen)).sum()
    loss = loss + sum((s * torch.randn(s.shape, dtype=DT, generator=gen)).sum() for s in state_leaves(final))
    params = list(cell.named_parameters())
    grads = torch.autograd.grad(loss, [x] + [p for _, p in params])
    assert grads[0].abs().sum() > 0
    for (name, _), g in zip(params, grads[1:]):
        assert g.abs().sum() > 0, f"no gradient reaches {name}"
    for b, L in enumerate(LENGTHS):
        assert not grads[0][L:, b].any(), "padded steps get no gradient"


# --------------------------------------------------------------------------------------
# Engines
# --------------------------------------------------------------------------------------
@spec_param
@pytest.mark.parametrize("reverse, all_states", [(False, False), (True, True)], ids=["fwd", "rev-all"])
def test_fused_engine_equals_loop(spec, reverse, all_states):
    gen = torch.Generator().manual_seed(6)
    cell = new_cell(spec, train=not spec.random)  # random rows: fused in eval
    x = random_input(spec, T, B, gen=gen)
    state = initial_state(spec, cell, B, gen)

    def run(engine):
        xx = x.clone().requires_grad_()
        s0 = map_state(lambda s: s.clone().requires_grad_(), state)
        torch.manual_seed(7)  # a layer call may draw (WeightDrop: a new mask per call): the same draws on both
        result = tc.Recurrent(cell, engine=engine, reverse=reverse)(xx, s0, lengths=LENGTHS, all_states=all_states)
        leaves = [result[0], *state_leaves(result[1:])]
        loss = sum((t * torch.randn(t.shape, dtype=DT, generator=torch.Generator().manual_seed(k))).sum()
                   for k, t in enumerate(leaves))
        grads = torch.autograd.grad(loss, [xx, *state_leaves(s0), *cell.parameters()], allow_unused=True)
        return result, leaves, grads

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fused path must not fall back
        fused, fused_leaves, fused_grads = run("fused")
    loop, loop_leaves, loop_grads = run("loop")
    assert (_in_graph(fused[0].grad_fn, "_FusedSequenceBackward")
            or _in_graph(fused[0].grad_fn, "NativeSequenceBackward")), "the fused engine ran"
    assert_close(fused_leaves, loop_leaves, "outputs and states")
    for g, w in zip(fused_grads, loop_grads):
        if w is None:
            assert g is None or not g.any()
        else:
            torch.testing.assert_close(g, w, **TOL)


def _in_graph(node: Any, name: str) -> bool:
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n is None or n in seen:
            continue
        seen.add(n)
        if type(n).__name__ == name:
            return True
        todo.extend(f for f, _ in n.next_functions)
    return False


@pytest.mark.parametrize("spec", [s for s in ROWS if s.random], ids=str)
def test_random_steps_fall_back_to_the_loop_in_training(spec):
    cell = new_cell(spec)
    # with gradients, so that even a cell without parameters (noisy-input) asks the fused path (a short
    # call without gradients goes to the loop unasked, and no fallback is then due)
    x = random_input(spec, T, B, gen=torch.Generator().manual_seed(0)).requires_grad_()
    with pytest.warns(UserWarning, match=rf"{re.escape(cell.short_name())} runs on the reference loop.*random"):
        out, _ = tc.Recurrent(cell)(x, lengths=LENGTHS)
    assert out.shape[:2] == (T, B)
    with pytest.raises(TypeError, match=rf"{re.escape(cell.short_name())} cannot run on the fused engine"):
        tc.Recurrent(cell, engine="fused")(x)


@spec_param
def test_eval_mode_is_deterministic_and_fused(spec):
    gen = torch.Generator().manual_seed(8)
    cell = new_cell(spec, train=False)
    x = random_input(spec, T, B, gen=gen)
    layer = tc.Recurrent(cell)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # in eval every row runs fused (inference variant), no fallback
        a, sa = layer(x, lengths=LENGTHS)
        b, sb = layer(x, lengths=LENGTHS)
        ref, s_ref = tc.Recurrent(cell, engine="loop")(x, lengths=LENGTHS)
    assert torch.equal(a, b)
    assert all(torch.equal(u, v) for u, v in zip(state_leaves(sa), state_leaves(sb)))
    assert_close((a, sa), (ref, s_ref), "the inference path equals the loop")


# --------------------------------------------------------------------------------------
# Errors name the cell, the argument, what was expected and what came
# --------------------------------------------------------------------------------------
@spec_param
def test_bad_input_names_the_cell(spec):
    cell = new_cell(spec)
    name = re.escape(cell.short_name())
    shape = step_shape(spec, I + 2)
    with pytest.raises(ValueError, match=rf"^{name}: input has {I + 2} features per step, expected {I}"):
        cell(torch.randn(B, *shape, dtype=DT))
    with pytest.raises(TypeError, match=rf"^{name}: input has dtype torch.int64, expected a floating-point"):
        cell(torch.ones(B, *step_shape(spec), dtype=torch.int64))
    with pytest.raises(ValueError, match=rf"^{name}: input should have"):
        cell(torch.randn(2, 2, B, *step_shape(spec), dtype=DT))
    layer = re.escape(f"Recurrent({cell.short_name()})")
    with pytest.raises(ValueError, match=rf"^{layer}: input has {I + 2} features per step, expected {I}"):
        tc.Recurrent(cell)(torch.randn(T, B, *shape, dtype=DT))


@spec_param
def test_bad_state_names_the_cell(spec):
    cell = new_cell(spec)
    name = re.escape(cell.short_name())
    template = cell.init_state(B, dtype=DT)
    if not state_leaves(template):
        with pytest.raises(TypeError, match=rf"^{name}: state should be tuple\(\)"):
            cell(torch.randn(B, *step_shape(spec), dtype=DT), (torch.zeros(B, H, dtype=DT),))
        return
    wrong_batch = map_state(lambda s: torch.zeros((B + 1,) + tuple(s.shape[1:]), dtype=DT), template)
    with pytest.raises(ValueError, match=rf"^{name}: state.*should have shape \({B},.*got \({B + 1},"):
        cell(torch.randn(B, *step_shape(spec), dtype=DT), wrong_batch)
    wrong_dtype = map_state(lambda s: s.float(), template)
    with pytest.raises(TypeError, match=rf"^{name}: state.*dtype torch.float32"):
        cell(torch.randn(B, *step_shape(spec), dtype=DT), wrong_dtype)
    with pytest.raises((TypeError, ValueError), match=rf"^Recurrent\({name}\): state"):
        tc.Recurrent(cell)(torch.randn(T, B, *step_shape(spec), dtype=DT), wrong_batch)


@spec_param
def test_unbatched_step_is_one_row_of_a_batch(spec):
    gen = torch.Generator().manual_seed(9)
    cell = new_cell(spec, train=not spec.random)
    x = random_input(spec, B, gen=gen)
    state = initial_state(spec, cell, B, gen)
    if spec.random:
        cell.eval()
    y, new = cell(x, state)
    y1, new1 = cell(x[2], map_state(lambda s: s[2], state))
    assert_close(y1, y[2], "output")
    assert_close(new1, map_state(lambda s: s[2], new), "state")


def test_every_zoo_class_has_a_row():
    """A new zoo class without a row in the table fails (minGRU and minLSTM are in test_minimal.py)."""
    covered = {type(new_cell(s)).__name__ for s in ROWS}
    covered |= {"MinGRUCell", "MinLSTMCell"}
    exported = {n for n in tc.cells.__all__ if n.endswith("Cell") or n in (
        "Neuron", "NoisyInput", "Zoneout", "VariationalDropout", "RecurrentDropout", "WeightDrop", "Residual")}
    assert exported <= covered, exported - covered


CONSTRUCTOR_ERRORS = [
    (lambda: tc.MGUCell(0, 4), r"MGUCell: input_size should be a positive int, got 0"),
    (lambda: tc.IndRNNCell(3, 4, nonlinearity="sigmoid"), r"IndRNNCell: nonlinearity should be 'relu' or 'tanh'"),
    (lambda: tc.SLSTMCell(3, 4, forget="softplus"), r"SLSTMCell: forget should be 'sigmoid' or 'exp'"),
    (lambda: tc.LIFCell(3, 4, beta=1.5), r"LIFCell: beta should be in \(0, 1\), got 1.5"),
    (lambda: tc.Neuron(3, 4, activation="swish"), r"Neuron: activation should be one of"),
    (lambda: tc.NoisyInput(3, std=-1.0), r"NoisyInput: std should be a number >= 0"),
    (lambda: tc.KernelCell(3, 4, kernel_size=0), r"KernelCell: kernel_size should be a positive int, got 0"),
    (lambda: tc.PoolCell(3, mode="min"), r"PoolCell: mode should be 'max' or 'avg', got 'min'"),
    (lambda: tc.ConvLSTMCell(2, 3, kernel_size=2, spatial_size=(4, 4)), r"ConvLSTMCell: kernel_size should be odd"),
    (lambda: tc.ConvGRUCell(2, 3, spatial_size=(4,)), r"ConvGRUCell: spatial_size should be \(height, width\)"),
    (lambda: tc.LSTMCell(3, 4, bias=False, forget_bias=1.0), r"LSTMCell: forget_bias=1.0 needs bias=True"),
    (lambda: tc.Zoneout(tc.LSTMCell(3, 4), 1.0), r"Zoneout: p_h should be a probability in \[0, 1\), got 1.0"),
    (lambda: tc.Zoneout(tc.LSTMCell(3, 4), (0.1, 0.2, 0.3)), r"Zoneout: p should be a probability or \(p_h, p_c\)"),
    (lambda: tc.VariationalDropout(tc.LSTMCell(3, 4), (0.1, -0.1)), r"VariationalDropout: p_out should be"),
    (lambda: tc.RecurrentDropout(tc.GRUCell(3, 4), True), r"RecurrentDropout: p should be a probability"),
    (lambda: tc.WeightDrop(tc.GRUCell(3, 4), 0.5, weights=("weight_hr",)),
     r"WeightDrop: GRUCell\(3→4\) has no parameter 'weight_hr'"),
    (lambda: tc.Residual(tc.GRUCell(3, 4)), r"Residual: GRUCell\(3→4\) should output as many features as it reads"),
    (lambda: tc.StackedCell([tc.GRUCell(3, 4), tc.LSTMCell(5, 4)]),
     r"StackedCell: cell 0 \(GRUCell\(3→4\)\) outputs 4 features but cell 1 \(LSTMCell\(5→4\)\) reads 5"),
    (lambda: tc.StackedCell([]), r"StackedCell: cells should hold at least one cell"),
]


@pytest.mark.parametrize("make, message", CONSTRUCTOR_ERRORS, ids=[m for _, m in CONSTRUCTOR_ERRORS])
def test_constructor_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_wrapping_something_that_is_not_a_cell_is_a_type_error():
    with pytest.raises(TypeError, match=r"Zoneout: cell should be a torchcells.Cell .*got Linear"):
        tc.Zoneout(nn.Linear(3, 4))


def test_options_after_the_sizes_are_keyword_only():
    with pytest.raises(TypeError):
        tc.SLSTMCell(3, 4, "exp")  # type: ignore[misc]
    with pytest.raises(TypeError):
        tc.ConvLSTMCell(3, 4, 3, (4, 4))  # type: ignore[misc]


def test_short_names_of_wrappers_and_stacks():
    assert tc.VariationalDropout(tc.LSTMCell(3, 4)).short_name() == "VariationalDropout(LSTMCell(3→4))"
    assert tc.StackedCell([tc.GRUCell(3, 4), tc.LSTMCell(4, 4)]).short_name() == \
        "StackedCell(GRUCell(3→4), LSTMCell(4→4))"
    assert math.isclose(tc.Zoneout(tc.LSTMCell(3, 4), 0.25).p_c, 0.25)


# --------------------------------------------------------------------------------------
# Float32 with large pre-activations
# --------------------------------------------------------------------------------------
#: weights (and biases) times this, inputs times 3: gate pre-activations reach about ±100
STRESS_GAIN = 30.0


def _stress_run(spec: CellRow, dtype: torch.dtype, engine: str) -> list[Tensor]:
    """Outputs, final state leaves and gradients (``x``, then each parameter) of one stressed run."""
    torch.manual_seed(0)
    cell = spec.make(I, H).double().train(not spec.random)
    with torch.no_grad():
        for name, p in cell.named_parameters():
            if name.rsplit(".", 1)[-1].startswith(("weight", "bias")) and "norm" not in name:
                p.mul_(STRESS_GAIN)
    gen = torch.Generator().manual_seed(9)
    x = 3 * random_input(spec, T, B, gen=gen)
    state = initial_state(spec, cell, B, gen)
    cell, x = cell.to(dtype), x.to(dtype).requires_grad_()
    out, final = tc.Recurrent(cell, engine=engine)(x, map_state(lambda s: s.to(dtype), state))
    leaves = [out, *state_leaves(final)]
    loss = sum((t * torch.linspace(-1, 1, t.numel(), dtype=dtype).reshape(t.shape)).sum() for t in leaves)
    grads = torch.autograd.grad(loss, [x, *cell.parameters()], allow_unused=True)
    return leaves + [g for g in grads if g is not None]


@spec_param
def test_float32_stress_large_preactivations_stay_finite_and_fused_equals_loop(spec):
    """Every cell in float32 with weights and inputs scaled so its pre-activations reach about
    ±100, where σ and tanh saturate, ``exp`` of a gate overflows (e^89 > float32's max) and a
    normalizer of saturated gates can reach 0/0 (MinLSTM's ``f / (f + i)``, sLSTM's ``n``):
    outputs and gradients are finite wherever the float64 run's are within float32's range
    (GaussianCell's KL term holds ``σ² = e^{log σ²}``: at ``log σ² ≈ 100`` the value itself
    exceeds float32, not a formula's intermediate), and the path ``auto`` picks (fused or scan;
    eval for the random rows, which run fused there) equals the loop within float32 tolerances
    relative to the values' size where those are representable."""
    reference = _stress_run(spec, torch.float64, "loop")
    loop, auto = _stress_run(spec, torch.float32, "loop"), _stress_run(spec, torch.float32, "auto")
    big = torch.finfo(torch.float32).max
    for k, (want, got_loop, got_auto) in enumerate(zip(reference, loop, auto)):
        representable = want.abs() < big / 2
        for engine, got in (("loop", got_loop), ("auto", got_auto)):
            assert torch.isfinite(got[representable]).all(), f"{spec}: {engine}, value {k} not finite"
        if not representable.any():
            continue
        scale = got_loop[representable].abs().max().clamp_min(1.0)
        torch.testing.assert_close(got_auto[representable] / scale, got_loop[representable] / scale,
                                   atol=2e-5, rtol=2e-5,
                                   msg=lambda m: f"{spec}: auto vs loop, value {k}: {m}")
