"""The light trace (graph/light.py): the graph make_fx records, without torch's compiler stack."""

from __future__ import annotations

import subprocess
import sys

import torch
from fixture_cells import UserLSTMCell
from torch.fx.experimental.proxy_tensor import make_fx

from torchcells.graph.light import real_trace


def _joint(w, x, h, tangent):
    w = w.requires_grad_(True)
    y = torch.tanh(x @ w + h).sigmoid()
    return (y, *torch.autograd.grad(y, [w], tangent))


def _ops(gm):
    return [(str(n.target), tuple(n.meta["val"].shape)) for n in gm.graph.nodes
            if n.op == "call_function" and "detach" not in str(n.target)]


def test_the_light_trace_records_what_make_fx_records_forward_and_backward():
    args = (torch.randn(3, 4), torch.randn(2, 3), torch.randn(2, 4), torch.randn(2, 4))
    light, reference = real_trace(_joint, *args), make_fx(_joint, tracing_mode="fake")(*args)
    assert _ops(light) == _ops(reference)
    assert all(n.meta["val"].device.type == "meta" for n in light.graph.nodes if "val" in n.meta)  # no data kept


def test_a_first_fused_call_on_the_cpu_imports_no_compiler_stack():
    """Nor sympy (torch's symbolic shapes, which ``autograd.grad``'s checks import): together
    about a second of a first call. Where the native runtime is built, loading it imports neither
    ``torch.utils.cpp_extension`` nor setuptools (0.1 s) either."""
    from torchcells.engine.native import available

    heavy = ("torch._dynamo", "torch._inductor", "sympy", "torch.utils.cpp_extension", "setuptools")
    code = ("import sys, torch, torchcells as tc; from fixture_cells import UserLSTMCell; "
            "from torchcells.engine.native import available; "
            "layer = tc.Recurrent(UserLSTMCell(3, 4), engine='fused'); "
            "layer(torch.randn(5, 2, 3, requires_grad=True))[0].sum().backward(); "
            f"print(available(), *(m in sys.modules for m in {heavy!r}))")
    tests = __file__.rsplit("/graph/", 1)[0]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tests, check=True)
    built, *imported = out.stdout.split()
    assert built == str(available()), out.stderr[-2000:]
    # without a build, loading tries one: cpp_extension (and setuptools) are then imported by design
    expected = ["False"] * (len(heavy) if available() else 3)
    assert imported[:len(expected)] == expected, (dict(zip(heavy, imported)), out.stderr[-2000:])


def test_a_data_dependent_step_is_left_to_make_fx():
    cell = UserLSTMCell(3, 4)
    from torchcells.graph import TraceError, trace_cell

    class Branching(type(cell)):
        def forward(self, x, state):
            return super().forward(x if x.sum() > 0 else -x, state)

    branching = Branching(3, 4)
    try:
        trace_cell(branching, torch.randn(2, 3), branching.init_state(2))
    except TraceError:
        return
    raise AssertionError("a step that reads its data traced without an error")


def test_a_shape_read_from_data_is_left_to_make_fx():
    """``z[z > 0]`` has a shape read from the data: real data would let the light trace record one
    shape and bake it in (the native backward then failed with a shape mismatch); it is left to
    make_fx, and the layer runs on the loop, equal to it, values and gradients."""
    import pytest

    from torchcells.graph.light import Unsupported

    with pytest.raises(Unsupported, match="index"):
        real_trace(lambda z: z + z[z > 0].sum(), torch.randn(5, 4))

    class Selecting(UserLSTMCell):
        def forward(self, x, state):
            y, new = super().forward(x, state)
            return y + y[y > 0].sum(), new

    import torchcells as tc

    cell = Selecting(3, 4).double()
    x = torch.randn(12, 5, 3, dtype=torch.float64, requires_grad=True)
    with pytest.warns(UserWarning, match="runs on the reference loop"):
        out = tc.Recurrent(cell)(x)[0]
    ref = tc.Recurrent(cell, engine="loop")(x)[0]
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), x)[0], torch.autograd.grad(ref.sum(), x)[0],
                               atol=1e-12, rtol=1e-10)
