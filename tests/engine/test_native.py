"""The native runtime: each elementwise opcode equals torch, plans have the intended shape,
the runtime's enums match the plan's records, and the fused engine says so when the runtime
is missing or cannot be used.

(Whole cells through the native runtime are checked against the reference loop in
``test_fused.py``, which runs every row of its table on both runtimes.)
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import torchcells as tc
from fixture_cells import UserLSTMCell
from torchcells.engine.derive import fused_program
from torchcells.engine.executors.native import native_plan
from torchcells.engine.native import available, library, notice
from torchcells.engine.native.plan import plan_graph
from torchcells.engine.native.records import CallBlock, FusedBlock, OperandSource, Packing, ProductBlock

pytestmark = pytest.mark.skipif(not available(), reason=f"native runtime not built here: {notice()}")

R, C = 5, 37  # C not a multiple of any vector width: tails are exercised


def run_program(fn, *args):
    gm = make_fx(fn, tracing_mode="fake")(*args)
    spec = plan_graph(gm.graph)
    return spec, spec.build(library()).run(list(args), [])


def full(dtype, gen, lo=-3.0, hi=3.0):
    return (torch.rand(R, C, dtype=dtype, generator=gen) * (hi - lo) + lo)


ELEMENTWISE = {
    "add": lambda a, b: a + b,
    "add-alpha": lambda a, b: torch.add(a, b, alpha=0.5),
    "sub": lambda a, b: a - b,
    "sub-alpha": lambda a, b: torch.sub(a, b, alpha=3),
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (b.abs() + 1),
    "neg": lambda a, b: -a,
    "sigmoid": lambda a, b: torch.sigmoid(a),
    "tanh": lambda a, b: torch.tanh(a),
    "tanh-tiny": lambda a, b: torch.tanh(a * 1e-6),
    "tanh-huge": lambda a, b: torch.tanh(a * 100),
    "exp": lambda a, b: torch.exp(a),
    "log": lambda a, b: torch.log(a.abs() + 0.1),
    "relu": lambda a, b: torch.relu(a),
    "sqrt": lambda a, b: torch.sqrt(a.abs()),
    "rsqrt": lambda a, b: torch.rsqrt(a.abs() + 0.5),
    "reciprocal": lambda a, b: torch.reciprocal(a.abs() + 0.5),
    "abs": lambda a, b: a.abs(),
    "scalars": lambda a, b: (a * 2.5 + 1) / 4 - 0.25,
    "rsub": lambda a, b: 1 - a,
    "square": lambda a, b: a ** 2,
    "maximum": lambda a, b: torch.maximum(a, b),
    "minimum": lambda a, b: torch.minimum(a, b),
    "where": lambda a, b: torch.where(a > 0, a, b),
    "masked_fill": lambda a, b: a.masked_fill(b > 0, 0.5),
    "clone": lambda a, b: a.clone() * 1,
    "row-broadcast": lambda a, b: a + b[0],
    "column-broadcast": lambda a, b: a * b[:, :1],
    "scalar-broadcast": lambda a, b: a - b[2, 3],
    "chain": lambda a, b: torch.sigmoid(a) * torch.tanh(b) + (1 - torch.sigmoid(a)) * b,
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_each_elementwise_operation_equals_torch(name, dtype):
    gen = torch.Generator().manual_seed(0)
    a, b = full(dtype, gen), full(dtype, gen)
    fn = ELEMENTWISE[name]
    spec, (got,) = run_program(lambda a, b: (fn(a, b),), a, b)
    assert spec.n_fused_ops >= 1
    want = fn(a, b)
    tol = dict(atol=1e-13, rtol=1e-12) if dtype == torch.float64 else dict(atol=2e-6, rtol=2e-6)
    torch.testing.assert_close(got, want, **tol)


def test_activation_gradients_equal_torch():
    """The backward opcodes (sigmoid_backward, tanh_backward, threshold_backward)."""
    gen = torch.Generator().manual_seed(1)
    x, g = full(torch.float64, gen), full(torch.float64, gen)

    def grads(x, g):
        return (torch.ops.aten.sigmoid_backward(g, torch.sigmoid(x)),
                torch.ops.aten.tanh_backward(g, torch.tanh(x)),
                torch.ops.aten.threshold_backward(g, x, 0.0))

    spec, got = run_program(grads, x, g)
    assert spec.n_calls == 0
    for a, b in zip(got, grads(x, g)):
        torch.testing.assert_close(a, b, atol=1e-13, rtol=1e-12)


def test_nan_and_infinity_pass_through_like_torch():
    a = torch.tensor([[float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 40.0, -40.0, 1e-30]])
    fn = lambda a: (torch.tanh(a), torch.sigmoid(a), torch.exp(a))  # noqa: E731
    _, got = run_program(fn, a)
    for g, w in zip(got, fn(a)):
        torch.testing.assert_close(g, w, equal_nan=True, atol=1e-7, rtol=1e-6)


def test_lstm_step_plans_to_one_product_and_one_fused_group():
    """The forward of an LSTM step: the recurrent product, then one group reading the gates
    in place (no split, no copies), adding the hoisted part as it reads; the backward's gate
    gradients land in one buffer (cat folded)."""
    cell = UserLSTMCell(4, 8)
    kernels = fused_program(cell, torch.randn(3, 4), cell.init_state(3), masked=False)
    plan = native_plan(kernels)
    fw, bw = plan.forward, plan.backward
    assert sum(isinstance(b, FusedBlock) for b in fw.blocks) == 1 and fw.n_calls <= 2
    fw_calls = [b for b in fw.blocks if isinstance(b, CallBlock)]
    bw_calls = [b for b in bw.blocks if isinstance(b, CallBlock)]
    # h W_hhᵀ alone (a product this small is a plain call): the group adds the hoisted input part
    # as it reads the gates
    assert fw_calls[0].op == "aten::mm"
    assert not any("split" in b.op for b in fw_calls)
    assert not any(b.op == "aten::cat" for b in bw_calls)
    # what reads per-sequence values only (the weights' transposes) runs once, not once per step
    assert all(b.once for b in fw_calls if b.op == "aten::t")
    assert not any(b.once for b in fw_calls if b.op in ("aten::mm", "mkl::_mkl_linear"))
    # h_{t-1} and c_{t-1} come from the state history; the deferred weight gradient needs no copies
    assert plan.deferred and all(o.source != OperandSource.OWN_BUFFER
                                 for o in (plan.deferred[0].left, plan.deferred[0].right))


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_gradcheck_through_the_native_runtime(name):
    from torchcells.engine.fused import run_fused

    torch.manual_seed(0)
    cell = (tc.LSTMCell(2, 3) if name == "lstm" else tc.GRUCell(2, 3)).double()
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 2])

    def f(x, *params):
        return run_fused(cell, x, cell.init_state(2, dtype=torch.float64), lengths=lengths, native=True)[0]

    assert torch.autograd.gradcheck(f, (x,))


def test_disabled_runtime_gives_a_notice_and_the_python_loop_still_runs():
    code = ("import torch, torchcells as tc\n"
            "from torchcells.engine.native import notice, available\n"
            "layer = tc.Recurrent(tc.LSTMCell(3, 4), engine='fused')\n"
            "y, _ = layer(torch.randn(5, 2, 3))\n"
            "y.sum().backward()\n"
            "print(available(), y.grad_fn is not None)\n"
            "print(notice())\n")
    env = dict(os.environ, TORCHCELLS_NATIVE="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().splitlines()
    assert first == "False True"
    assert "TORCHCELLS_NATIVE=0" in second


def assert_refused_once(why: str) -> None:
    """``library()`` gives None with one one-line RuntimeWarning saying ``why``, and the fused
    engine still runs, on the Python executor."""
    from torchcells.engine.native import build

    with pytest.warns(RuntimeWarning) as caught:
        assert build.library() is None
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "native runtime unavailable" in messages[0] and why in messages[0]
    layer = tc.Recurrent(tc.LSTMCell(3, 4), engine="fused")
    out, _ = layer(torch.randn(5, 2, 3, requires_grad=True))
    assert type(out.grad_fn).__name__ == "_FusedSequenceBackward"


def test_a_failed_build_warns_once_in_one_line_and_the_fused_engine_still_runs(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    from torchcells.engine.native import build

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension: c++: command not found")

    monkeypatch.setattr(build, "_STATE", {})
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # no cached build: it must be built
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    assert_refused_once("command not found")
    assert build.library() is None  # no second warning, no second build attempt


def native_equals_loop_at_threads(cell, x, state, *, atol: float, rtol: float) -> None:
    """The native fused path against the loop at 1, 2 and 3 intra-op threads: the output without
    and with grad, the input's and every parameter's gradient."""
    from torchcells.engine.fused import run_fused
    from torchcells.engine.unroll import unroll

    def results(path):
        cell.zero_grad()
        xx = x.clone().requires_grad_()
        with torch.no_grad():
            quiet = path(cell, x, state)[0]
        out = path(cell, xx, state)[0]
        (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum().backward()
        return [quiet, out.detach(), xx.grad, *[p.grad.clone() for p in cell.parameters()]]

    want = results(unroll)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            for got, w in zip(results(lambda *a: run_fused(*a, native=True)), want):
                torch.testing.assert_close(got, w, atol=atol, rtol=rtol, msg=lambda m: f"{threads} threads: {m}")
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("sizes", [(32, 16, 256), (5, 7, 37)], ids=["B32-H256", "B5-I7-H37"])
@pytest.mark.parametrize("packing", list(Packing), ids=lambda p: p.name.lower())
@pytest.mark.parametrize("name", ["user-lstm", "gru"])
def test_float32_products_on_packed_weights_equal_the_loop(name, packing, sizes, monkeypatch):
    """Per-step products on a weight laid out once per sequence: MKL's packed copy (large products
    only) or column blocks for torch's batch-reduce GEMM (here at every size: 4·37 columns leave the
    last block padded). Forward with and without grad, and every gradient, against the loop."""
    from collections import OrderedDict

    from torchcells.engine import derive
    from torchcells.engine.native import plan as planner

    if packing is Packing.MKL and not planner._mkl_packing():
        pytest.skip("torch was built without MKL: products run unpacked")
    if packing is Packing.BLOCKS and not library().has_blocked_products():
        pytest.skip("this torch has no float32 batch-reduce GEMM")
    monkeypatch.setattr(planner, "product_packing", lambda: packing)
    monkeypatch.setattr(planner, "_BLOCKS_MIN_MACS", 0)  # the small shape on column blocks too
    monkeypatch.setattr(derive, "_CACHE", OrderedDict())  # plans made before kept their packing
    batch, inputs, hidden = sizes
    torch.manual_seed(0)
    cell = UserLSTMCell(inputs, hidden) if name == "user-lstm" else tc.GRUCell(inputs, hidden)
    x = torch.randn(4, batch, inputs)
    state = cell.init_state(batch)
    plan = native_plan(fused_program(cell, x[0], state, masked=False))
    assert plan.packing is packing
    blocks = [b for p in (plan.forward, plan.backward, plan.inference) for b in p.blocks]
    n_packed = (sum(isinstance(b, ProductBlock) for b in blocks) if packing is Packing.BLOCKS
                else sum(isinstance(b, CallBlock) and b.op == "mkl::_mkl_linear" for b in blocks))
    large = batch * hidden * 4 * hidden >= 2_000_000
    # h W_hhᵀ forward (training and inference programs), δ W_hh backward
    assert n_packed == (3 if packing is Packing.BLOCKS or large else 0)
    native_equals_loop_at_threads(cell, x, state, atol=2e-5, rtol=1e-4)  # blocks shared out over threads


def test_a_blocked_product_equals_mm_for_any_left_operand_and_place():
    """The product block run directly: strided, transposed, broadcast and empty left operands, a
    padded last block, and preset places that are not contiguous or that share memory with A (the
    GEMM then writes elsewhere first)."""
    from torchcells.engine.native.sequence import column_blocks

    lib = library()
    if lib is None or not lib.has_blocked_products():
        pytest.skip("no native runtime with the batch-reduce GEMM")

    def product(a, w, dest=None):
        program = lib.Program(3, [2])
        program.add_product(a=0, blocks=1, out=2, cols=w.shape[1], block_cols=64)
        return program.run([a, column_blocks(w, 64)], [] if dest is None else [dest])[0]

    torch.manual_seed(0)
    k, n = 100, 150
    w = torch.randn(k, n)
    lefts = [torch.randn(7, k), torch.randn(k, 1).t(), torch.randn(k).expand(1, k), torch.randn(7, 2 * k)[:, 5:5 + k],
             torch.randn(7, 2 * k)[:, ::2], torch.randn(1, k).expand(5, k), torch.randn(0, k), torch.randn(k, 6).t()]
    for a in lefts:
        torch.testing.assert_close(product(a, w), a @ w, atol=1e-4, rtol=1e-5, msg=lambda m: f"{a.stride()}: {m}")
    square = torch.randn(k, k)
    a = torch.randn(6, k)
    want = a @ square
    torch.testing.assert_close(product(a, square, dest=a), want, atol=1e-4, rtol=1e-5)  # dest is A
    torch.testing.assert_close(a, want, atol=1e-4, rtol=1e-5)                          # ... and holds the result
    dest = torch.empty(n, 7).t()
    a = torch.randn(7, k)
    product(a, w, dest=dest)
    torch.testing.assert_close(dest, a @ w, atol=1e-4, rtol=1e-5)


def test_a_weight_no_block_reads_is_not_laid_out(monkeypatch):
    """``h @ W`` added to a per-step value is planned as one ``addmm`` call: its weight gets no column
    blocks (none would read them) and stays among the per-sequence values copied contiguous."""
    from collections import OrderedDict

    from torchcells.engine import derive
    from torchcells.engine.native import plan as planner

    if library() is None or not library().has_blocked_products():
        pytest.skip("no native runtime with the batch-reduce GEMM")
    monkeypatch.setattr(planner, "_BLOCKS_MIN_MACS", 0)
    monkeypatch.setattr(derive, "_CACHE", OrderedDict())

    class Added(tc.Cell):
        def __init__(self) -> None:
            super().__init__(8, 16)
            self.U = torch.nn.Parameter(torch.randn(8, 16) / 4)
            self.W = torch.nn.Parameter(torch.randn(16, 16) / 4)

        def init_state(self, batch, **kw):
            return torch.zeros(batch, 16, **kw)

        def forward(self, x, h):
            h = torch.tanh(x @ self.U + h @ self.W)
            return h, h

    cell = Added()
    x = torch.randn(5, 4, 8)
    plan = native_plan(fused_program(cell, x[0], cell.init_state(4), masked=False))
    for program, packed in ((plan.forward, plan.fw_packed), (plan.backward, plan.bw_packed)):
        read = {r for b in program.blocks for r in b.reads()}
        first = program.n_inputs - len(packed)
        assert all(first + k in read for k in range(len(packed))), (packed, program.blocks)
    from torchcells.engine.fused import run_fused
    from torchcells.engine.unroll import unroll
    torch.testing.assert_close(run_fused(cell, x, cell.init_state(4), native=True)[0],
                               unroll(cell, x, cell.init_state(4))[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["user-lstm", "gru"])
def test_groups_split_over_threads_equal_the_loop_at_one_two_and_three_threads(name):
    """A fused group is split over threads above 4096 elements a step (here every group: B=64
    rows of at least H=128 columns): values and gradients, float64, whatever the intra-op
    thread count (make test's workers run at one thread each on a 2-CPU machine)."""
    torch.manual_seed(0)
    cell = (UserLSTMCell(8, 128) if name == "user-lstm" else tc.GRUCell(8, 128)).double()
    x = torch.randn(6, 64, 8, dtype=torch.float64)
    state = cell.init_state(64, dtype=torch.float64)
    native_equals_loop_at_threads(cell, x, state, atol=1e-12, rtol=1e-10)


def test_values_computed_once_per_sequence_follow_the_weights_between_sequences():
    """Run-once calls are cached per sequence: a weight changed between two calls is seen."""
    from torchcells.engine.fused import run_fused
    from torchcells.engine.unroll import unroll

    torch.manual_seed(0)
    cell = tc.GRUCell(3, 4).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for _ in range(2):
        with torch.no_grad():
            cell.weight_hh.add_(0.5)
        got = run_fused(cell, x.requires_grad_(), cell.init_state(2, dtype=torch.float64), native=True)[0]
        want = unroll(cell, x, cell.init_state(2, dtype=torch.float64))[0]
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_the_runtime_enums_match_the_plan_records():
    from torchcells.engine.native.records import ENUMS, enum_mismatch

    exported = library().enums()
    assert set(exported) == set(ENUMS)
    assert enum_mismatch(exported) is None


def test_an_enum_that_differs_is_named_with_the_values_that_differ():
    from enum import IntEnum

    from torchcells.engine.native.records import ENUMS, Op, enum_mismatch

    exported = library().enums()
    altered = dict(ENUMS, Op=IntEnum("Op", {**{m.name: m.value for m in Op}, "FILL": 99}))
    message = enum_mismatch(exported, altered)
    assert message is not None and "\n" not in message
    assert "enum Op differs" in message and "FILL=C++:22" in message and "FILL=Python:99" in message
    missing = dict(ENUMS)
    del missing["Layout"]
    assert "Layout" in (enum_mismatch(exported, missing) or "")


def test_a_build_whose_enums_differ_is_not_used_and_says_which_in_one_line(monkeypatch):
    from enum import IntEnum

    from torchcells.engine.native import build, records

    assert library() is not None
    monkeypatch.setattr(build, "_STATE", {})  # the same cached build, loaded again
    swapped = {m.name: m.value for m in records.SavedKind}
    swapped["ONCE"], swapped["PER_STEP"] = swapped["PER_STEP"], swapped["ONCE"]
    monkeypatch.setitem(records.ENUMS, "SavedKind", IntEnum("SavedKind", swapped))
    assert_refused_once("enum SavedKind differs")


def test_deriving_a_step_plans_nothing_and_the_native_executor_plans_it_once_on_first_use(monkeypatch):
    from collections import OrderedDict

    from torchcells.engine import derive
    from torchcells.engine.executors import native as native_executor
    from torchcells.engine.fused import run_fused

    monkeypatch.setattr(derive, "_CACHE", OrderedDict())
    cell = tc.GRUCell(3, 7)
    x = torch.randn(4, 5, 3, requires_grad=True)
    kernels = fused_program(cell, x[0], cell.init_state(5), masked=False)
    assert kernels.lowered == {}  # the derivation is for no backend in particular
    for gm, aten_graph in zip((kernels.forward, kernels.backward), kernels.aten_graphs):
        assert len(gm.graph.nodes) == len(aten_graph.nodes)  # the same graphs, aten targets kept
    planned = []
    real = native_executor.native_plan

    def counting(k):
        planned.append(k.lowered.get("native") is None)
        return real(k)

    monkeypatch.setattr(native_executor, "native_plan", counting)
    for _ in range(2):
        out = run_fused(cell, x, cell.init_state(5))[0]
        assert type(out.grad_fn).__name__ == "NativeSequenceBackward"
        out.sum().backward()
    assert "native" in kernels.lowered and planned.count(True) == 1


class GeluCell(tc.Cell):
    """A step with an operator whose arguments the native runtime does not pass (a string)."""

    def __init__(self, i: int, h: int) -> None:
        super().__init__(i, h)
        self.lin = torch.nn.Linear(i + h, h)

    def forward(self, x, h):
        h = torch.nn.functional.gelu(self.lin(torch.cat([x, h], -1)), approximate="tanh")
        return h, h


def test_a_step_that_cannot_be_planned_makes_the_native_executor_decline_with_the_reason():
    from torchcells.engine import executors
    from torchcells.engine.fused import run_fused
    from torchcells.engine.unroll import unroll

    torch.manual_seed(0)
    cell = GeluCell(3, 4).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    kernels = fused_program(cell, x[0], cell.init_state(2, dtype=torch.float64), masked=False)
    why = executors.reasons(kernels, torch.device("cpu"))
    assert why["python"] is None
    assert why["native"] is not None and "cannot be planned" in why["native"] and "approximate" in why["native"]
    assert executors.choose(kernels, torch.device("cpu")).name == "python"
    assert "CPU" in (executors.reasons(kernels, torch.device("meta"))["native"] or "")
    results = []
    for path in (unroll, lambda *a: run_fused(*a, native=True)):
        cell.zero_grad()
        xx = x.clone().requires_grad_()
        out = path(cell, xx, cell.init_state(2, dtype=torch.float64))[0]
        out.sin().sum().backward()
        results.append([out.detach(), xx.grad, *[p.grad for p in cell.parameters()]])
    assert type(out.grad_fn).__name__ == "_FusedSequenceBackward"
    for got, want in zip(*results[::-1]):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_a_run_once_value_reaches_the_place_of_every_step():
    """A new state leaf made by a run-once call (it reads per-sequence values only) goes into the
    history at every step: the value kept for later steps is the call's, not the driver's place
    for step 0 (a view the driver moves along). No derived cell step is known to plan such a call;
    the driver is run directly on a hand-planned program."""
    from torchcells.engine.native.plan import _placeholders

    def step(u_t, h, m, c, w):
        h = torch.tanh(u_t + h)
        return h, h, torch.ops.aten.mm(c, w)

    gen = torch.Generator().manual_seed(0)
    T, Bt, Hd = 5, 2, 3
    u, h0, m0, c = (torch.randn(*shape, dtype=torch.float64, generator=gen)
                    for shape in ((T, Bt, Hd), (Bt, Hd), (Bt, Hd), (Bt, Hd)))
    w = torch.randn(Hd, Hd, dtype=torch.float64, generator=gen)
    gm = make_fx(step)(u[0], h0, m0, c, w)
    ph = _placeholders(gm.graph)
    spec = plan_graph(gm.graph, per_sequence={ph[3], ph[4]})
    assert any(isinstance(b, CallBlock) and b.once for b in spec.blocks)
    lib = library()
    run = lib.ForwardRun(hoisted=[u], state=[h0, m0], consts=[c, w], valid=None, extras=[], steps=T, n_outputs=3,
                         y_alias=0, saved_kind=[], saved_index=[])
    ys, h_final, m_final, h_hist, m_hist = lib.forward_sequence(spec.build(lib), run)
    assert torch.equal(m_hist[0], m0)
    for t in range(1, T + 1):
        assert torch.equal(m_hist[t], c @ w), t
    h = h0
    for t in range(T):
        h = torch.tanh(u[t] + h)
        torch.testing.assert_close(h_hist[t + 1], h, atol=1e-12, rtol=0)  # the runtime's vector tanh
        assert torch.equal(ys[t], h_hist[t + 1])
    assert torch.equal(m_final, c @ w)
