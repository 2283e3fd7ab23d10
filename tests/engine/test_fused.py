"""The fused path (hoisted input part, one autograd node per sequence) equals the reference loop.

Table-driven over cells: every built-in cell and user cells with awkward features
(a state leaf passed through unchanged, an output distinct from the state, ops
naming dim 1 explicitly, weights on the left of their products). Each row is checked
with and without lengths, forwards and reversed, with every-step states, in float64
(tight) and float32, gradients
included; inference (no grad) runs a save-nothing variant, also checked. Cells that
cannot be traced fall back to the loop with a warning that says why.
"""

from __future__ import annotations

import itertools
import warnings
from typing import NamedTuple

import pytest
import torch
from torch import Tensor, nn

import torchcells as tc
from torchcells.cell import map_state, state_leaves
from torchcells.engine import derive as derive_module
from torchcells.engine.fused import run_fused, run_inference
from torchcells.engine.native import available as native_library_available
from torchcells.engine.native import notice as native_notice
from torchcells.engine.run import run
from torchcells.graph import TraceError, trace_cell
from torchcells.engine.unroll import unroll

T, B, I, H = 6, 4, 3, 5
LENGTHS = torch.tensor([4, 0, 6, 2])


class Pair(NamedTuple):
    h: Tensor
    m: Tensor


class PassThroughCell(tc.Cell):
    """y_t = tanh(W [x; h] ) + m; new state (y_t, h_{t-1}): a leaf passed through unchanged."""

    def __init__(self, i: int, h: int) -> None:
        super().__init__(i, h)
        self.mix = nn.Linear(i + h, h)

    def init_state(self, batch_size, *, device=None, dtype=None):
        z = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return Pair(z, z)

    def forward(self, x, state):
        y = torch.tanh(self.mix(torch.cat([x, state.h], 1))) + state.m
        return y * 2, Pair(y, state.h)


class DimOneCell(tc.Cell):
    """Gates split with ``chunk(2, 1)`` (dim 1, not -1), input-only work hoisted under vmap."""

    def __init__(self, i: int, h: int) -> None:
        super().__init__(i, h)
        self.inp = nn.Linear(i, 2 * h)
        self.rec = nn.Linear(h, 2 * h, bias=False)

    def forward(self, x, h):
        a, b = self.inp(x).chunk(2, 1)
        ra, rb = self.rec(h).chunk(2, 1)
        h = torch.sigmoid(a + ra) * h + torch.tanh(b * 0.5) * torch.sigmoid(rb)
        return h, h


class LeftWeightCell(tc.Cell):
    """Weights on the left of their products (``W @ h.T``): their gradients' operands are collected
    step by step (not read for all steps after the loop), one of them a step's input itself."""

    def __init__(self, i: int, h: int) -> None:
        super().__init__(i, h)
        self.w = nn.Parameter(torch.randn(h, h) * 0.4)
        self.u = nn.Parameter(torch.randn(h, i) * 0.4)

    def forward(self, x, h):
        h = torch.tanh((self.w @ h.T).T + (self.u @ x.T).T)
        return h, h


class ViewOutputCell(tc.Cell):
    """The output is a view (a slice) of the new state."""

    def __init__(self, i: int, h: int) -> None:
        super().__init__(i, h)
        self.lin = nn.Linear(i + h, h)

    def forward(self, x, h):
        h = torch.tanh(self.lin(torch.cat([x, h], -1)))
        return h[:, :2], h


class NormedCell(tc.Cell):
    """A layer-normalized recurrence: a reduction inside the step (and a list of flags in its backward)."""

    def __init__(self, i: int, h: int) -> None:
        super().__init__(i, h)
        self.lin = nn.Linear(i + h, h)
        self.norm = nn.LayerNorm(h)

    def forward(self, x, h):
        h = torch.tanh(self.norm(self.lin(torch.cat([x, h], -1))))
        return h, h


class BranchyCell(tc.Cell):
    """Data-dependent control flow: cannot be traced; must fall back to the loop."""

    def __init__(self, i: int, h: int) -> None:
        super().__init__(i, h)
        self.lin = nn.Linear(i + h, h)

    def forward(self, x, h):
        z = self.lin(torch.cat([x, h], -1))
        if z.sum() > 0:
            z = -z
        h = torch.tanh(z)
        return h, h


CELLS = {
    "elman-tanh": lambda: tc.ElmanCell(I, H),
    "elman-relu": lambda: tc.ElmanCell(I, H, nonlinearity="relu"),
    "lstm": lambda: tc.LSTMCell(I, H),
    "lstm-proj": lambda: tc.LSTMCell(I, H, proj_size=2),
    "lstm-nobias": lambda: tc.LSTMCell(I, H, bias=False),
    "gru": lambda: tc.GRUCell(I, H),
    "passthrough": lambda: PassThroughCell(I, H),
    "dim-one": lambda: DimOneCell(I, H),
    "view-output": lambda: ViewOutputCell(I, H),
    "layer-norm": lambda: NormedCell(I, H),
    "left-weight": lambda: LeftWeightCell(I, H),
}


def make(name: str, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return CELLS[name]().to(dtype)


def random_state(cell, dtype):
    gen = torch.Generator().manual_seed(1)
    return map_state(lambda s: torch.randn(s.shape, dtype=dtype, generator=gen), cell.init_state(B, dtype=dtype))


def run_and_grad(path, cell, x, state, **kw):
    x = x.detach().clone().requires_grad_()
    state = map_state(lambda s: s.detach().clone().requires_grad_(), state)
    out, final, states = path(cell, x, state, **kw)
    results = [out, *state_leaves(final)] + (state_leaves(states) if states is not None else [])
    gen = torch.Generator().manual_seed(2)
    loss = sum((r * torch.randn(r.shape, dtype=r.dtype, generator=gen)).sum() for r in results)
    grads = torch.autograd.grad(loss, [x, *state_leaves(state), *cell.parameters()])
    return results, list(grads)


GRID = list(itertools.product([False, True], [False, True], [False, True]))


def native_or_skip() -> None:
    if not native_library_available():
        pytest.skip(f"native runtime not built here: {native_notice()}")


def fused_path(runtime: str):
    """run_fused with its time loops in Python or in the native runtime (asserted to be used)."""
    if runtime == "native":
        native_or_skip()

    def path(cell, x, state, **kw):
        result = run_fused(cell, x, state, native=runtime == "native", **kw)
        expected = "NativeSequenceBackward" if runtime == "native" else "_FusedSequenceBackward"
        assert expected in autograd_nodes(result[0])
        return result
    return path


def autograd_nodes(t: Tensor) -> set[str]:
    """Names of the autograd nodes behind ``t``."""
    seen, todo, names = set(), [t.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        todo.extend(f for f, _ in fn.next_functions)
    return names


RUNTIMES = ["python", "native"]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("use_lengths, reverse, all_states", GRID,
                         ids=[f"{'len' if a else 'full'}-{'rev' if b else 'fwd'}-{'all' if c else 'final'}"
                              for a, b, c in GRID])
def test_fused_equals_loop_float64(name, use_lengths, reverse, all_states, runtime):
    cell = make(name)
    x = torch.randn(T, B, I, dtype=torch.float64)
    if use_lengths:
        x[5:, 0] = float("nan")  # garbage in padded steps changes nothing
    state = random_state(cell, torch.float64)
    kw = dict(lengths=LENGTHS if use_lengths else None, reverse=reverse, all_states=all_states)
    want, want_grads = run_and_grad(unroll, cell, x, state, **kw)
    got, got_grads = run_and_grad(fused_path(runtime), cell, x, state, **kw)
    for g, w in zip(got + got_grads, want + want_grads):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", ["lstm", "gru", "elman-tanh", "passthrough"])
def test_fused_equals_loop_float32(name, runtime):
    cell = make(name, torch.float32)
    x = torch.randn(T, B, I)
    state = random_state(cell, torch.float32)
    kw = dict(lengths=LENGTHS, reverse=True, all_states=True)
    want, want_grads = run_and_grad(unroll, cell, x, state, **kw)
    got, got_grads = run_and_grad(fused_path(runtime), cell, x, state, **kw)
    for g, w in zip(got + got_grads, want + want_grads):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("use_lengths", [False, True])
def test_inference_path_equals_loop(name, use_lengths, runtime):
    if runtime == "native":
        native_or_skip()
    cell = make(name)
    x = torch.randn(T, B, I, dtype=torch.float64)
    state = random_state(cell, torch.float64)
    lengths = LENGTHS if use_lengths else None
    with torch.no_grad():
        want = unroll(cell, x, state, lengths=lengths, reverse=True, all_states=True)
        got = run_inference(cell, x, state, lengths=lengths, reverse=True, all_states=True,
                            native=runtime == "native")
        assert run(cell, x, state, lengths=lengths, engine="fused")[0].shape == want[0].shape
    assert not got[0].requires_grad
    for g, w in zip([got[0], *state_leaves(got[1]), *state_leaves(got[2])],
                    [want[0], *state_leaves(want[1]), *state_leaves(want[2])]):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-10)


def test_recurrent_uses_fused_by_default_and_matches_the_loop():
    torch.manual_seed(0)
    fast = tc.Recurrent(PassThroughCell(I, H).double())
    slow = tc.Recurrent(fast.cell, engine="loop")
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: this cell traces
        out, (h, m) = fast(x, lengths=[6, 1, 3, 0])
    ref, (h2, m2) = slow(x, lengths=[6, 1, 3, 0])
    assert type(out.grad_fn).__name__ in ("_FusedSequenceBackward", "NativeSequenceBackward")
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(m, m2, atol=1e-12, rtol=0)


def test_hoisting_moves_the_input_product_out_of_the_step():
    cell = tc.LSTMCell(I, H)
    program = trace_cell(cell, torch.randn(B, I), cell.init_state(B))
    step_targets = [str(n.target) for n in program.step_fn.graph.nodes if n.op == "call_function"]
    hoisted_targets = [str(n.target) for n in program.input_fn.graph.nodes if n.op == "call_function"]
    # one product per step (h W_hhᵀ, with x W_ihᵀ + both biases folded in as its addend)
    assert sum("addmm" in t or t.endswith("mm.default") for t in step_targets) == 1
    assert any("addmm" in t for t in hoisted_targets)
    step_outputs = next(n for n in program.step_fn.graph.nodes if n.op == "output").args[0]
    assert program.n_hoisted == 1 and step_outputs[0] is step_outputs[1]  # y is the state leaf h


class CenteredInput(tc.Cell):
    """An input region that mixes a step's rows (each x_t centred on its batch mean): hoisting it over
    the T·B folded rows would centre on the sequence's mean; it must keep per-step rows (vmap)."""

    def __init__(self) -> None:
        super().__init__(I, H)
        self.ih, self.hh = nn.Linear(I, H), nn.Linear(H, H, bias=False)

    def forward(self, x, h):
        h = torch.tanh(self.ih(x - x.mean(0, keepdim=True)) + self.hh(h))
        return h, h


@pytest.mark.parametrize("make, folds", [(lambda: tc.LSTMCell(I, H), True), (lambda: tc.GRUCell(I, H), True),
                                         (CenteredInput, False)], ids=["lstm", "gru", "batch-mean"])
def test_the_input_region_runs_on_folded_rows_only_where_it_treats_each_row_on_its_own(make, folds):
    from torchcells.engine import hoist

    cell = make().double()
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    program = trace_cell(cell, x[0], cell.init_state(B, dtype=torch.float64))
    params = program.params(cell)
    assert hoist._row_wise(program.input_fn, x, params) is folds
    got = hoist.hoisted(program, x, params)
    want = [torch.stack(step) for step in zip(*(program.input_fn(x[t], *params) for t in range(T)))]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=0)
    grads = torch.autograd.grad(sum(g.sum() for g in got), [x, *params], allow_unused=True)
    refs = torch.autograd.grad(sum(w.sum() for w in want), [x, *params], allow_unused=True)
    for g, r in zip(grads, refs):
        assert (g is None) == (r is None)
        if g is not None:
            torch.testing.assert_close(g, r, atol=1e-12, rtol=0)
    slow = tc.Recurrent(cell, engine="loop")
    fast = tc.Recurrent(cell, engine="fused")
    torch.testing.assert_close(fast(x)[0], slow(x)[0], atol=1e-12, rtol=0)


def test_weight_gradient_of_the_recurrent_product_is_batched_over_time():
    cell = tc.GRUCell(I, H)
    kernels = derive_module.fused_program(cell, torch.randn(B, I), cell.init_state(B), masked=False)
    assert len(kernels.deferred) == 1  # W_hhᵀ: one product over all T·B rows after the loop
    step_mms = [n for n in kernels.backward.graph.nodes if n.op == "call_function" and "mm" in str(n.target)]
    assert len(step_mms) == 1  # per step only d h = dG W_hh remains


def test_untraceable_cell_falls_back_with_one_warning():
    torch.manual_seed(0)
    layer = tc.Recurrent(BranchyCell(I, H).double())
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    with pytest.warns(UserWarning, match=r"BranchyCell\(3→5\) runs on the reference loop.*tracing"):
        out, _ = layer(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again, _ = layer(x)  # warned once per cell
    ref, _ = tc.Recurrent(layer.cell, engine="loop")(x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(again, ref)
    with pytest.raises(TypeError, match=r"BranchyCell\(3→5\) cannot run on the fused engine"):
        tc.Recurrent(layer.cell, engine="fused")(x)


def test_random_ops_are_not_fused():
    class Noisy(tc.Cell):
        def __init__(self):
            super().__init__(I, H)
            self.lin = nn.Linear(I + H, H)

        def forward(self, x, h):
            h = torch.tanh(nn.functional.dropout(self.lin(torch.cat([x, h], -1)), 0.5, True))
            return h, h

    with pytest.raises(TraceError, match="random"):
        trace_cell(Noisy(), torch.randn(B, I), torch.zeros(B, H))


def test_cells_of_one_structure_share_a_trace_and_attributes_split_it():
    derive_module._CACHE.clear()
    x = torch.randn(T, B, I, requires_grad=True)
    a, b = tc.ElmanCell(I, H), tc.ElmanCell(I, H)
    run_fused(a, x, a.init_state(B))
    run_fused(b, x, b.init_state(B))
    assert len(derive_module._CACHE) == 1
    b.nonlinearity = "relu"
    out, _, _ = run_fused(b, x, b.init_state(B))
    assert len(derive_module._CACHE) == 2
    torch.testing.assert_close(out, unroll(b, x, b.init_state(B))[0])


def test_gradgradcheck_fused_path_reverse_and_lengths():
    """Second-order gradients of the fused path (its backward recomputes under autograd when it
    must be differentiable), by finite differences of the first-order ones: input, initial state."""
    cell = tc.GRUCell(2, 3).double()

    def f(x, h0):
        out, final, _ = run_fused(cell, x, h0, lengths=torch.tensor([3, 1]), reverse=True)
        return out, final

    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(f, (x, h0))


def test_the_cache_is_bounded_in_graph_nodes_and_its_slim_entries_still_run(monkeypatch):
    """Entries keep no node metadata but the aten graphs' shapes; the least recently used leave
    once the cache holds more nodes than its bound (memory, not only a count)."""
    from collections import OrderedDict

    monkeypatch.setattr(derive_module, "_CACHE", OrderedDict())
    cell = tc.GRUCell(I, H).double()
    x = torch.randn(T, 2, I, dtype=torch.float64)
    run_fused(cell, x, cell.init_state(2, dtype=torch.float64))
    (kernels, _, weight), = derive_module._CACHE.values()
    assert weight == sum(len(g.nodes) for g in derive_module._graphs(kernels))
    for graph in derive_module._graphs(kernels):
        kept = {k for n in graph.nodes for k in n.meta}
        assert kept <= ({"val"} if graph in kernels.aten_graphs else set()), kept
    monkeypatch.setattr(derive_module, "_CACHE_NODES", 2 * weight + 1)
    # one entry per structure (a batch-generic one serves every batch size): new hidden sizes
    for batch, hidden in ((3, H + 1), (4, H + 2), (5, H + 3), (2, H)):
        cell = tc.GRUCell(I, hidden).double()
        x = torch.randn(T, batch, I, dtype=torch.float64, requires_grad=True)
        for native in (True, False):
            out = run_fused(cell, x, cell.init_state(batch, dtype=torch.float64), native=native)[0]
            want = unroll(cell, x, cell.init_state(batch, dtype=torch.float64))[0]
            torch.testing.assert_close(out, want, atol=1e-12, rtol=1e-10)
            grads = torch.autograd.grad(out.sum(), [x, *cell.parameters()])
            wants = torch.autograd.grad(want.sum(), [x, *cell.parameters()])
            for got, expected in zip(grads, wants):
                torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-10)
        assert len(derive_module._CACHE) == 2  # the two most recent


def test_gradcheck_fused_path():
    """Input and initial-state gradients by finite differences (parameter gradients are
    checked against the loop above, and the loop's by gradcheck in test_recurrent)."""
    cell = tc.LSTMCell(2, 3).double()

    def f(x, h0, c0):
        out, final, _ = run_fused(cell, x, tc.LSTMState(h0, c0), lengths=torch.tensor([3, 1]), reverse=True)
        return out, final.h, final.c

    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x, h0, c0))


class ClockCell(tc.Cell):
    """Ignores its input: nothing to hoist; the state alone drives the step."""

    def __init__(self, i: int, h: int) -> None:
        super().__init__(i, h)
        self.rec = nn.Linear(h, h)

    def forward(self, x, h):
        h = torch.tanh(self.rec(h))
        return h, h


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_cell_that_ignores_its_input(runtime):
    torch.manual_seed(0)
    cell = ClockCell(I, H).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    state = random_state(cell, torch.float64)
    results = []
    for path in (unroll, fused_path(runtime)):
        cell.zero_grad()
        out, final, _ = path(cell, x, state, lengths=LENGTHS)
        (out.sin().sum() + final.sum()).backward()
        results.append([out, final, *[p.grad.clone() for p in cell.parameters()]])
    for g, w in zip(*results[::-1]):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-10)


def test_an_executor_is_one_registration_and_runs_inside_the_shared_autograd_node():
    """A registered executor (here: the Python one under another name, taking CPU float64 only) is
    chosen ahead of the fallbacks where it accepts, and its forward/backward run in the shared node."""
    from torchcells.engine import executors
    from torchcells.engine.executors.python import PythonExecutor

    class _RecordingSequence(executors.SequenceNode):
        pass

    class Recording(PythonExecutor):
        name = "recording"
        node = _RecordingSequence

        def __init__(self):
            self.calls = []

        def accepts(self, kernels, device):
            return None if device.type == "cpu" and kernels.tangent_meta[0][1] == torch.float64 else "float64 only"

        def forward(self, inputs, want_states):
            self.calls.append("forward")
            return super().forward(inputs, want_states)

        def backward(self, memo, saved, d_ys, d_final, d_states):
            self.calls.append("backward")
            return super().backward(memo, saved, d_ys, d_final, d_states)

        def infer(self, inputs, want_states):
            self.calls.append("infer")
            return super().infer(inputs, want_states)

    recording = Recording()
    executors.register(recording, before="native")
    try:
        assert [e.name for e in executors.EXECUTORS] == ["recording", "native", "python"]
        cell = make("gru")
        x = torch.randn(T, B, I, dtype=torch.float64)
        state = random_state(cell, torch.float64)
        want, want_grads = run_and_grad(unroll, cell, x, state, lengths=LENGTHS, all_states=True)
        got, got_grads = run_and_grad(run_fused, cell, x, state, lengths=LENGTHS, all_states=True)
        assert "_RecordingSequenceBackward" in autograd_nodes(got[0])
        for g, w in zip(got + got_grads, want + want_grads):
            torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-10)
        with torch.no_grad():
            run_inference(cell, x, state)
        assert recording.calls == ["forward", "backward", "infer"]
        f32 = make("gru", torch.float32)
        out = run_fused(f32, x.float().requires_grad_(), random_state(f32, torch.float32))[0]
        assert "_RecordingSequenceBackward" not in autograd_nodes(out)  # declined: the next one ran
        assert recording.calls == ["forward", "backward", "infer"]
    finally:
        executors.unregister("recording")
    assert [e.name for e in executors.EXECUTORS] == ["native", "python"]
    with pytest.raises(ValueError):
        executors.unregister("python")
