"""torch.compile and torch.func over every path: equal to eager, no recompilation for another ``T``.

``torch.compile(layer, fullgraph=True, dynamic=True)``: forward and backward equal the eager
layer's (float64 tight, float32 at float32 tolerance), a second call at another ``T`` (and other
lengths) compiles nothing new. Under compile the fused path runs the registered operators
``torchcells::fused_forward``/``fused_backward`` (engine/ops.py); the scan declines (its chunks
are sized from the data) and the torch path defers to the fused operator in ``auto`` (torch's
kernel is decomposed per ``T``). torch.func's ``grad``, ``jacrev`` and ``vmap`` on the fused path
equal the loop's.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from fixture_cells import TwoWidthCell, UserLSTMCell
from torch.func import functional_call, grad, jacrev, vmap

import torchcells as tc

I, H = 4, 5  # I, H, B and the lengths T differ: dynamo's duck sizing would tie equal sizes together


def _recurrent(cell_factory, engine="auto"):
    return lambda: tc.Recurrent(cell_factory(), engine=engine)


ROWS = {
    "user_lstm_fused": _recurrent(lambda: UserLSTMCell(I, H)),
    "two_width_fused": _recurrent(lambda: TwoWidthCell(I, H)),
    "stack": lambda: tc.Stack([tc.Recurrent(UserLSTMCell(I, H)), tc.Recurrent(TwoWidthCell(H, 6))]),
    "bidirectional": lambda: tc.Bidirectional(tc.Recurrent(UserLSTMCell(I, H))),
    "mingru_auto": _recurrent(lambda: tc.MinGRUCell(I, H)),
    "lstm_cell_torch": _recurrent(lambda: tc.LSTMCell(I, H), engine="torch"),
    "lstm_cell_fused": _recurrent(lambda: tc.LSTMCell(I, H), engine="fused"),
    "tc_lstm": lambda: tc.LSTM(I, H, num_layers=2),
    "tc_gru": lambda: tc.GRU(I, H),
    "tc_rnn": lambda: tc.RNN(I, H, batch_first=True),
}


def _inputs(model, steps, dtype, lengths):
    batch_first = getattr(model, "batch_first", False)
    shape = (3, steps, I) if batch_first else (steps, 3, I)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    kwargs = {"lengths": torch.tensor([steps, 2, steps - 3])} if lengths else {}
    return x, kwargs


def _run(model, x, kwargs):
    """Outputs and the gradients of a loss of outputs and final state, for the parameters and ``x``."""
    out, final = model(x, **kwargs)[:2]
    leaves = [final] if isinstance(final, torch.Tensor) else list(torch.utils._pytree.tree_leaves(final))
    loss = out.pow(2).sum() + sum(f.sum() for f in leaves)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [*params, x])
    return out.detach(), grads


def _compile_and_compare(factory, *, dtype=torch.float64, lengths=False, backend="aot_eager", tol=1e-12):
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = factory().to(dtype)
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=backend)
    for steps in (7, 11):  # the second length must not compile again
        with torch._dynamo.config.patch(error_on_recompile=steps != 7):
            x, kwargs = _inputs(model, steps, dtype, lengths)
            out, grads = _run(compiled, x, kwargs)
        ref_out, ref_grads = _run(model, x, kwargs)
        torch.testing.assert_close(out, ref_out, atol=tol, rtol=tol)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, atol=tol, rtol=tol)


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("row", sorted(ROWS))
def test_compiled_equals_eager_float64(row, lengths):
    _compile_and_compare(ROWS[row], lengths=lengths)


@pytest.mark.parametrize("row", ["user_lstm_fused", "tc_lstm", "lstm_cell_torch"])
def test_compiled_equals_eager_float32(row):
    _compile_and_compare(ROWS[row], dtype=torch.float32, lengths=True, tol=2e-5)


def test_python_executor_under_compile(monkeypatch):
    monkeypatch.setenv("TORCHCELLS_NATIVE", "0")
    from torchcells.engine.executors import PYTHON, choose
    from torchcells.engine.fused import step_program
    from torchcells.engine.call import Call

    cell = UserLSTMCell(I, H).double()
    x = torch.zeros(2, 3, I, dtype=torch.float64)
    kernels = step_program(Call(cell, x, cell.init_state(3, dtype=torch.float64)), masked=False)
    assert choose(kernels, x.device) is PYTHON  # the setting holds for this process's choices
    _compile_and_compare(ROWS["user_lstm_fused"], lengths=True)


def test_loop_under_compile_equals_eager():
    """The loop is the reference, unrolled by dynamo: equal, but compiled once per ``T``."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = tc.Recurrent(UserLSTMCell(I, H), engine="loop").double()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend="aot_eager")
    x, kwargs = _inputs(model, 7, torch.float64, True)
    out, grads = _run(compiled, x, kwargs)
    ref_out, ref_grads = _run(model, x, kwargs)
    torch.testing.assert_close(out, ref_out)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_the_graph_holds_the_fused_operator():
    """What dynamo sees: one torchcells.fused_forward node, the step loop not unrolled."""
    torch._dynamo.reset()
    graphs = []

    def backend(gm, inputs):
        graphs.append(gm)
        return gm.forward

    model = tc.Recurrent(UserLSTMCell(I, H))
    torch.compile(model, fullgraph=True, dynamic=True, backend=backend)(torch.randn(9, 3, I))
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert targets.count("torchcells.fused_forward.default") == 1
    assert not any("sigmoid" in t for t in targets)


def test_scan_declines_under_compile_with_a_reason():
    torch._dynamo.reset()
    model = tc.Recurrent(tc.MinGRUCell(I, H), engine="scan")
    with pytest.raises(Exception, match="scan cannot run: it sizes its chunks from the data"):
        torch.compile(model, fullgraph=True, backend="aot_eager")(torch.randn(7, 3, I))


@pytest.mark.slow
@pytest.mark.parametrize("row", ["user_lstm_fused", "tc_lstm"])
def test_inductor(row):
    _compile_and_compare(ROWS[row], dtype=torch.float32, lengths=True, backend="inductor", tol=2e-5)


# --- torch.func over the fused path, against the loop ---------------------------------------

def _pair():
    torch.manual_seed(0)
    fused = tc.Recurrent(UserLSTMCell(3, 4), engine="fused").double()
    loop = tc.Recurrent(UserLSTMCell(3, 4), engine="loop").double()
    loop.load_state_dict(fused.state_dict())
    return fused, loop


def test_func_grad_of_parameters_equals_loop():
    fused, loop = _pair()
    params = {k: v.detach() for k, v in fused.named_parameters()}
    x = torch.randn(5, 2, 3, dtype=torch.float64)

    def loss(model):
        return lambda p: functional_call(model, p, (x,), {"lengths": torch.tensor([5, 3])})[0].pow(2).sum()

    got, want = grad(loss(fused))(params), grad(loss(loop))(params)
    for name in params:
        torch.testing.assert_close(got[name], want[name], atol=1e-12, rtol=1e-12)


def test_func_jacrev_equals_loop():
    fused, loop = _pair()
    params = {k: v.detach() for k, v in fused.named_parameters()}
    x = torch.randn(4, 2, 3, dtype=torch.float64)

    def outputs(model):
        return lambda p, x: functional_call(model, p, (x,))[0]

    got, want = jacrev(outputs(fused), argnums=(0, 1))(params, x), jacrev(outputs(loop), argnums=(0, 1))(params, x)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_func_vmap_over_inputs_equals_loop():
    fused, loop = _pair()
    xs = torch.randn(3, 5, 2, 3, dtype=torch.float64)
    got = vmap(lambda x: fused(x, lengths=torch.tensor([5, 2]))[0])(xs)
    want = vmap(lambda x: loop(x, lengths=torch.tensor([5, 2]))[0])(xs)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_func_grad_of_grad_refuses_with_a_reason():
    fused, _ = _pair()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    params = {k: v.detach() for k, v in fused.named_parameters()}

    def inner(p):
        return grad(lambda q: functional_call(fused, q, (x,))[0].sum())(p)["cell.hh.weight"].sum()

    with pytest.raises(RuntimeError, match="second-order gradients of the fused path under torch.func"):
        grad(inner)(params)


def test_second_order_eagerly_still_matches_the_loop():
    """``create_graph=True`` outside torch.func keeps the eager node's differentiable backward."""
    fused, loop = _pair()
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    results = []
    for model in (fused, loop):
        (g,) = torch.autograd.grad(model(x)[0].pow(2).sum(), x, create_graph=True)
        results.append(torch.autograd.grad(g.pow(2).sum(), [x, *model.parameters()]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_compile_check_is_marked_as_torchs_decorator_marks_and_import_leaves_dynamo_alone():
    """The mark is set by hand so that importing torchcells does not import torch._dynamo (0.85 s)."""
    import subprocess
    import sys

    from torchcells.engine import ops

    def probe():
        return None

    marked = torch._dynamo.assume_constant_result(probe)
    mine = {k: v for k, v in vars(ops.compile_check).items() if k.startswith("_dynamo")}
    assert mine == {k: v for k, v in vars(marked).items() if k.startswith("_dynamo")} != {}
    done = subprocess.run([sys.executable, "-c", "import sys, torchcells; print('torch._dynamo' in sys.modules)"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
