"""Mixed precision on every path: each path, for each cell, in each lower-precision mode a
PyTorch user trains with (``torch.autocast`` bfloat16, a ``.bfloat16()`` module, a
``.half()`` module) gives the loop's dtypes and is as accurate as the loop in that mode --
or declines, by name, and says why.

Accuracy is measured against a float64 run of the same weights: a path's error (outputs;
input and parameter gradients, relative to the largest reference gradient) may be at most
:data:`FACTOR` times the loop's own error in that mode (plus a floor of one unit in the
mode's last place), so a path that rounded where the loop does not -- the scan's running sums
in bfloat16 were three times the loop's error -- fails here.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

import torchcells as tc
from fixture_cells import UserLSTMCell
from torchcells.engine.derive import fused_program
from torchcells.engine.executors import reasons
from torchcells.engine.hoist import hoisted
from torchcells.engine.native import build

T, B, I, H = 12, 4, 5, 8
#: a path's error may be this many times the loop's own in the same mode
FACTOR = 2.5
MODES = ("autocast", "bf16", "half")
LOW = {"autocast": torch.bfloat16, "bf16": torch.bfloat16, "half": torch.float16}


class TwoWidths(tc.Cell):
    """A user cell whose state is two leaves of different widths, ``(h (B, H), m (B, 3))``."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.a = torch.nn.Linear(input_size + hidden_size + 3, hidden_size)
        self.b = torch.nn.Linear(hidden_size, 3)

    def init_state(self, batch_size, *, device=None, dtype=None):
        return (torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype),
                torch.zeros(batch_size, 3, device=device, dtype=dtype))

    def forward(self, x, state):
        h, m = state
        h = torch.tanh(self.a(torch.cat([x, h, m], -1)))
        m = 0.5 * m + torch.sigmoid(self.b(h))  # a number where aten.mul.Tensor takes a tensor
        return h, (h, m)


CELLS = {"lstm": lambda: tc.LSTMCell(I, H), "gru": lambda: tc.GRUCell(I, H), "elman": lambda: tc.ElmanCell(I, H),
         "user-lstm": lambda: UserLSTMCell(I, H), "two-widths": lambda: TwoWidths(I, H),
         "mingru": lambda: tc.MinGRUCell(I, H), "minlstm": lambda: tc.MinLSTMCell(I, H)}
#: which cells each path serves (engine name, TORCHCELLS_NATIVE)
PATHS = {"fused-native": ("fused", "1", list(CELLS)), "fused-python": ("fused", "0", list(CELLS)),
         "scan": ("scan", "1", ["mingru", "minlstm"]), "torch": ("torch", "1", ["lstm", "gru", "elman"])}
#: under autocast these steps return their state in bfloat16 where they were given float32
STATE_CHANGES_DTYPE = {"elman", "two-widths"}


def _cell(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return CELLS[name]()


def _run(cell: torch.nn.Module, mode: str, engine: str) -> tuple:
    """Outputs, final state leaves and gradients (of ``x``, then each parameter) of one run."""
    torch.manual_seed(1)
    x = torch.randn(T, B, I)
    cell = copy.deepcopy(cell)
    if mode in ("bf16", "half", "f64"):
        dtype = {"bf16": torch.bfloat16, "half": torch.float16, "f64": torch.float64}[mode]
        cell, x = cell.to(dtype), x.to(dtype)
    x.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
        y, final = tc.Recurrent(cell, engine=engine)(x)
    weights = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).reshape(y.shape)
    (y.double() * weights).sum().backward()
    leaves = list(final) if isinstance(final, tuple) else [final]
    return y, leaves, [x.grad] + [p.grad for p in cell.parameters()]


def _errors(run: tuple, reference: tuple) -> tuple[float, float]:
    """Max output error; max gradient error relative to the largest reference gradient."""
    y, _, grads = run
    y_error = (y.double() - reference[0]).abs().max().item()
    g_error = max(((g.double() - r).abs().max() / r.abs().max()).item() for g, r in zip(grads, reference[2]))
    return y_error, g_error


@functools.lru_cache(maxsize=None)
def _reference(name: str) -> tuple:
    return _run(_cell(name), "f64", "loop")


@functools.lru_cache(maxsize=None)
def _loop(name: str, mode: str) -> tuple:
    run = _run(_cell(name), mode, "loop")
    return run, _errors(run, _reference(name))


def _cases():
    for path, (_, _, cells) in PATHS.items():
        for name in cells:
            for mode in MODES:
                yield pytest.param(path, name, mode, id=f"{path}-{name}-{mode}")


@pytest.mark.parametrize("path, name, mode", list(_cases()))
def test_each_path_gives_the_loops_dtypes_and_accuracy(path, name, mode, monkeypatch):
    engine, native, _ = PATHS[path]
    monkeypatch.setenv("TORCHCELLS_NATIVE", native)
    (loop_y, loop_leaves, _), (loop_y_error, loop_g_error) = _loop(name, mode)
    got = _run(_cell(name), mode, engine)
    y_error, g_error = _errors(got, _reference(name))
    floor = torch.finfo(LOW[mode]).eps
    if not (path == "torch" and name == "lstm" and mode == "autocast"):
        assert got[0].dtype == loop_y.dtype, f"{path} {name} {mode}: output dtype"
        assert [t.dtype for t in got[1]] == [t.dtype for t in loop_leaves], f"{path} {name} {mode}: state dtypes"
    else:  # torch's LSTM kernel under autocast returns bfloat16, as nn.LSTM does (the loop: float32)
        assert got[0].dtype == torch.bfloat16
    assert y_error <= FACTOR * loop_y_error + floor, f"{path} {name} {mode}: output error {y_error:.2e}, " \
        f"loop's {loop_y_error:.2e}"
    assert g_error <= FACTOR * loop_g_error + floor, f"{path} {name} {mode}: gradient error {g_error:.2e}, " \
        f"loop's {loop_g_error:.2e}"


@pytest.mark.parametrize("mode", ["autocast", "bf16"])
def test_the_hoisted_product_rounds_once_as_the_loops(mode):
    """The input region over all steps is one ``addmm`` over ``T·B`` rows, rounded once, bit for
    bit the loop's per-step ``addmm``. vmap's own rule for ``addmm`` is ``mm``, then ``+ b``: the
    product rounded to bfloat16 before the bias is added. Here (MinLSTM, seeds of
    :func:`_run`) that turned a candidate pre-activation of -0.00094 into 0.0, where the slope of
    ``g`` jumps from 1/4 to 1: one input gradient had 15x the loop's error (an xfail until then)."""
    cell = _cell("minlstm")
    torch.manual_seed(1)
    x = torch.randn(T, B, I)
    if mode == "bf16":
        cell, x = cell.bfloat16(), x.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
        kernels = fused_program(cell, x[0], cell.init_state(B, dtype=x.dtype), masked=False)
        params = kernels.program.params(cell)
        got = hoisted(kernels.program, x, params)
        want = [torch.stack(step) for step in zip(*[kernels.program.input_fn(x[t], *params) for t in range(T)])]
    for g, w in zip(got, want):
        assert g.dtype == w.dtype == torch.bfloat16
        assert torch.equal(g, w), (g.float() - w.float()).abs().max()


@pytest.mark.parametrize("native", ["1", "0"], ids=["native", "python"])
@pytest.mark.parametrize("name", sorted(STATE_CHANGES_DTYPE))
def test_a_step_whose_state_takes_autocasts_dtype_runs_fused_as_the_loop(name, native, monkeypatch):
    """An Elman step under autocast returns ``h`` in bfloat16 where it was given float32; a trace
    made for the first step crashed on the second ("expected m1 and m2 to have the same dtype").
    The fused engine traces again from the state in the step's dtypes: the loop's from step 1 on.
    A nonzero float32 ``h_0`` keeps its gradient's dtype."""
    monkeypatch.setenv("TORCHCELLS_NATIVE", native)
    cell = _cell(name)
    x = torch.randn(T, B, I)
    made = cell.init_state(B)
    start = [t.uniform_(-1, 1) for t in (made if isinstance(made, tuple) else (made,))]
    results = {}
    for engine in ("fused", "loop"):
        state = tuple(t.clone().requires_grad_() for t in start)
        state = state if isinstance(made, tuple) else state[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, final = tc.Recurrent(cell, engine=engine)(x, state)
        leaves = state if isinstance(state, tuple) else (state,)
        grads = torch.autograd.grad(y.float().sum(), leaves)
        results[engine] = y, [g.dtype for g in grads], grads
    (fused, fused_dtypes, fused_grads), (loop, loop_dtypes, loop_grads) = results["fused"], results["loop"]
    assert fused.dtype == loop.dtype == torch.bfloat16 and fused_dtypes == loop_dtypes == [torch.float32] * len(loop_dtypes)
    torch.testing.assert_close(fused.float(), loop.float(), atol=3e-2, rtol=3e-2)
    for got, want in zip(fused_grads, loop_grads):
        torch.testing.assert_close(got, want, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_the_native_runtime_runs_a_step_traced_under_autocast(name):
    """A step traced under autocast (its casts, bfloat16 products and mixed-dtype elementwise
    operations in the graph) runs on the native runtime, so the ``fused-native`` rows of
    :func:`test_each_path_gives_the_loops_dtypes_and_accuracy` test it there, not on the Python
    executor. (It was declined until the planner's calls were checked under autocast: each
    aten call of the trace runs as traced, its casts included; only float32/float64 operations
    of one dtype are fused into groups.)"""
    cell = _cell(name)
    x = torch.randn(T, B, I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        state = cell.init_state(B, dtype=torch.bfloat16 if name in STATE_CHANGES_DTYPE else None)
        kernels = fused_program(cell, x[0], state, masked=False)
    assert kernels.autocast == ("autocast", torch.bfloat16)
    found = reasons(kernels, x.device)
    if build.library() is None:
        pytest.skip("the native runtime is not built here")
    assert found["native"] is None, found["native"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_native_runtime_plans_a_lower_precision_step_with_a_number_in_a_tensor_argument(dtype):
    """``0.5 * m`` traces to ``aten.mul.Tensor(m, 0.5)``; run op by op (a bfloat16 step), the
    runtime was handed a double where a tensor goes ("Expected Tensor but got Double")."""
    cell = _cell("two-widths").to(dtype)
    x = torch.randn(T, B, I, dtype=dtype)
    kernels = fused_program(cell, x[0], cell.init_state(B, dtype=dtype), masked=False)
    if reasons(kernels, x.device).get("native", "not registered") is not None:
        pytest.skip("the native runtime is not built here")
    fused = tc.Recurrent(cell, engine="fused")(x)[0]
    loop = tc.Recurrent(cell, engine="loop")(x)[0]
    torch.testing.assert_close(fused, loop, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_drop_ins_give_torch_nns_dtype_and_accuracy(kind, mode):
    torch.manual_seed(0)
    ours, theirs = getattr(tc, kind)(I, H, num_layers=2), getattr(torch.nn, kind)(I, H, num_layers=2)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, I)
    want = theirs.double()(x.double())[0]
    got = {}
    for who, module in (("ours", ours), ("theirs", theirs)):
        module, xx = copy.deepcopy(module).float(), x
        if mode != "autocast":
            module, xx = module.to(LOW[mode]), x.to(LOW[mode])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
            got[who] = module(xx)[0]
    assert got["ours"].dtype == got["theirs"].dtype
    error = {who: (y.double() - want).abs().max().item() for who, y in got.items()}
    assert error["ours"] <= FACTOR * error["theirs"] + torch.finfo(LOW[mode]).eps, error


class Float32Recurrence(tc.Cell):
    """A cell that keeps its recurrent product out of autocast (``torch.autocast(enabled=False)``
    inside ``forward``), as AMP guides advise for a sensitive product."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.ih = torch.nn.Linear(input_size, hidden_size)
        self.w = torch.nn.Parameter(torch.randn(hidden_size, hidden_size) / hidden_size ** 0.5)

    def forward(self, x, h):
        a = self.ih(x)
        with torch.autocast("cpu", enabled=False):
            r = h.float() @ self.w.t()
        h = torch.tanh(a.float() + r)
        return h, h


@pytest.mark.parametrize("native", ["1", "0"], ids=["native", "python"])
def test_a_product_kept_out_of_autocast_inside_forward_stays_float32_on_the_fused_engine(native, monkeypatch):
    """The traced graphs hold autocast's casts; running them under autocast again cast the product
    the cell keeps in float32 too (errors 7e-3 in y, 8e-2 in a weight gradient, no word): the fused
    engine runs its graphs with autocast off."""
    monkeypatch.setenv("TORCHCELLS_NATIVE", native)
    torch.manual_seed(0)
    cell = Float32Recurrence(5, 8)
    x = torch.randn(12, 4, 5)
    runs = []
    for engine in ("loop", "fused"):
        xx = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = tc.Recurrent(cell, engine=engine)(xx)[0]
        y.float().square().sum().backward()  # outside autocast, as the AMP recipes do
        runs.append([y, xx.grad, cell.w.grad.clone(), cell.ih.weight.grad.clone()])
        cell.zero_grad()
    for got, want in zip(runs[1][:3], runs[0][:3]):  # y, x's and the float32 product's gradients
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the hoisted bf16 product's weight gradient sums all T·B rows in one bf16 product (rounded
    # once) where the loop rounds each step's: equal within a bf16 ulp of the largest entry (0.125 of 20.5)
    got, want = runs[1][3], runs[0][3]
    torch.testing.assert_close(got, want, atol=2 ** -7 * float(want.abs().max()), rtol=0)
