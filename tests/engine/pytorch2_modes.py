"""The PyTorch 2 columns of the mode matrix (``test_mode_matrix.py``): torch.compile, torch.export,
ONNX (onnxruntime) and torch.func, over the same cells and paths as the eager modes.

Each column either equals the reference loop (float64 at 1e-12; ONNX in float32 at 1e-5, as the
export issue asks) or raises a clear error naming the path and why, decided per row below -- never
a silent difference. Which rows refuse, and why, by design:

* torch.export and ONNX record only the ``export`` path (torch's ``scan`` operator over the cell's
  step); a layer whose engine is named otherwise refuses at export time (TypeError naming it);
* under torch.compile the scan refuses (it sizes its chunks from the data); the loop compiles once
  per ``T`` (dynamo unrolls it), the other paths once for every ``T``;
* under torch.func the scan refuses (its autograd.Function has no functorch rules), and torch's
  kernel refuses under ``vmap`` (no batching rule in torch).
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import pytest
import torch
import torch._dynamo
from torch.export import Dim
from torch.func import functional_call, grad, vmap

import torchcells as tc

I = 3  # the matrix's input width; B and the lengths T below differ from it and from H (dynamo ties equal sizes)
B = 6  # the compiled column's batch: apart from I, H and every length it compiles at

#: (path, column) pairs that refuse, with what the error says
REFUSES = {
    ("scan", "compiled"): "scan cannot run: it sizes its chunks from the data",
    ("scan", "func_grad"): "the scan cannot run: its autograd.Function has no functorch rules",
    ("scan", "func_vmap"): "the scan cannot run: its autograd.Function has no functorch rules",
    ("torch", "func_vmap"): "torch has no batching rule for its RNN kernels",
}
EXPORT_REFUSAL = "records only the 'export' path"


def _engine(layer: tc.Recurrent) -> str:
    return layer.engine


def _loss(model, x):
    out, final = model(x)
    leaves = list(final) if isinstance(final, tuple) else [final]
    return out.square().sum() + sum(f.square().sum() for f in leaves), out


def compiled(layer: tc.Recurrent, loop: tc.Recurrent) -> None:
    """``torch.compile(fullgraph=True, dynamic=True)``: forward and backward equal the loop at two
    lengths; no new compilation for the second length (the loop's unrolled graph excepted)."""
    layer, loop = layer.double(), loop.double()
    torch._dynamo.reset()
    model = torch.compile(layer, fullgraph=True, dynamic=True, backend="aot_eager")
    if (_engine(layer), "compiled") in REFUSES:
        with pytest.raises(Exception, match=REFUSES[(_engine(layer), "compiled")]):
            model(torch.randn(7, B, I, dtype=torch.float64))
        return
    params = [p for p in layer.parameters() if p.requires_grad]
    loop_params = [p for p in loop.parameters() if p.requires_grad]
    unrolled = _engine(layer) == "loop"   # dynamo unrolls the loop, once per T: shorter lengths cost less
    lengths = (2, 5) if unrolled else (7, 11)
    for steps in lengths:
        recompile_is_an_error = steps != lengths[0] and not unrolled
        x = torch.randn(steps, B, I, dtype=torch.float64, requires_grad=True)
        with torch._dynamo.config.patch(error_on_recompile=recompile_is_an_error):
            loss, out = _loss(model, x)
            got = [out, *torch.autograd.grad(loss, [x, *params])]
        loss, out = _loss(loop, x)
        want = [out, *torch.autograd.grad(loss, [x, *loop_params])]
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-10)


def _export(layer: tc.Recurrent, dtype: torch.dtype):
    x = torch.randn(5, 2, I, dtype=dtype)
    shapes = {"x": {0: Dim("T", min=1), 1: Dim("B", min=1)}}
    return torch.export.export(layer, (x,), dynamic_shapes=shapes)


def exported(layer: tc.Recurrent, loop: tc.Recurrent) -> None:
    """``torch.export`` with dynamic ``T`` and ``B``: the program equals the loop at other sizes."""
    layer, loop = layer.double(), loop.double()
    if _engine(layer) != "export":
        with pytest.raises(TypeError, match=EXPORT_REFUSAL):
            _export(layer, torch.float64)
        return
    program = _export(layer, torch.float64).module()
    for steps, batch in ((9, 4), (1, 1)):
        x = torch.randn(steps, batch, I, dtype=torch.float64)
        for g, w in zip(torch.utils._pytree.tree_leaves(program(x)), torch.utils._pytree.tree_leaves(loop(x))):
            torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-10)


def onnx(layer: tc.Recurrent, loop: tc.Recurrent) -> None:
    """``torchcells.export_onnx``: onnxruntime runs the file at other sizes with eager's float32
    results (≤ 1e-5); a path that cannot be exported refuses and writes nothing."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")

    with tempfile.TemporaryDirectory() as folder:
        _onnx_in(layer, loop, Path(folder) / "layer.onnx")


def _onnx_in(layer: tc.Recurrent, loop: tc.Recurrent, path: Path) -> None:
    import onnxruntime

    x = torch.randn(5, 2, I)
    if _engine(layer) != "export":
        with pytest.raises(RuntimeError, match=EXPORT_REFUSAL):
            tc.export_onnx(layer, x, path)
        assert not path.exists()
        return
    tc.export_onnx(layer.eval(), x, path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for steps, batch in ((9, 4), (2, 1)):
        x = torch.randn(steps, batch, I)
        got = session.run(None, {name: x.numpy()})
        want = torch.utils._pytree.tree_leaves(loop.eval()(x))
        for g, w in zip(got, want):
            torch.testing.assert_close(torch.from_numpy(g), w.detach(), atol=1e-5, rtol=1e-5)


def _refuses_under_func(layer: tc.Recurrent, column: str, run) -> bool:
    if (_engine(layer), column) not in REFUSES:
        return False
    with pytest.raises(TypeError, match=REFUSES[(_engine(layer), column)]):
        run()
    return True


def func_grad(layer: tc.Recurrent, loop: tc.Recurrent) -> None:
    """``torch.func.grad`` of a loss over the parameters (through ``functional_call``) equals the loop's."""
    layer, loop = layer.double(), loop.double()
    params = {k: v.detach() for k, v in layer.named_parameters()}
    x = torch.randn(5, 2, I, dtype=torch.float64)

    def of(model):
        return lambda p: _loss(lambda x: functional_call(model, p, (x,)), x)[0]

    if _refuses_under_func(layer, "func_grad", lambda: grad(of(layer))(params)):
        return
    got, want = grad(of(layer))(params), grad(of(loop))(params)
    for name in params:
        torch.testing.assert_close(got[name], want[name], atol=1e-12, rtol=1e-10)


def func_vmap(layer: tc.Recurrent, loop: tc.Recurrent) -> None:
    """``torch.func.vmap`` over a leading batch of sequences equals the loop's, one sequence at a time."""
    layer, loop = layer.double(), loop.double()
    xs = torch.randn(3, 5, 2, I, dtype=torch.float64)
    if _refuses_under_func(layer, "func_vmap", lambda: vmap(lambda x: layer(x)[0])(xs)):
        return
    got = vmap(lambda x: layer(x)[0])(xs)
    torch.testing.assert_close(got, torch.stack([loop(x)[0] for x in xs]), atol=1e-12, rtol=1e-10)


def copies(layer: tc.Recurrent) -> tuple[tc.Recurrent, tc.Recurrent]:
    """The row's layer and the reference loop over an identical copy of its cell."""
    return layer, tc.Recurrent(copy.deepcopy(layer.cell), engine="loop")
