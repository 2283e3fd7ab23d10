"""torch.export and ONNX with a dynamic sequence length and batch: every layer kind, exported once,
equals eager (and the reference loop, float64) at other lengths and batches, with ``lengths`` and an
initial state as inputs of the exported program; paths that cannot be exported refuse, naming the
cell; ``torchcells.export_onnx`` writes a checked file or a clear error and no file.

Under ``torch.export`` the registry runs every layer on the ``export`` path (torch's ``scan``
operator over the cell's own step); the others decline while exporting (``Path.exportable``).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
from torch import nn
from torch.export import Dim
from torch.utils._pytree import tree_leaves, tree_map

import torchcells as tc
from fixture_cells import TwoWidthCell, UserLSTMCell
from torchcells.engine.call import open_call
from torchcells.engine.paths import choose

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytestmark = pytest.mark.usefixtures("onnx_table_once")  # torch.onnx lists its onnxscript table once (conftest)

I, H = 3, 4
T0, B0 = 5, 3                            # the example's sizes
OTHER = ((9, 4), (2, 2), (1, 1))         # sizes the exported program runs at


def layer_state(model: nn.Module, batch: int, dtype: torch.dtype) -> Any:
    """A random initial state of a torchcells layer (Recurrent, Stack, Bidirectional) for ``batch``."""
    return tree_map(lambda t: torch.randn_like(t), model.init_state(batch, dtype=dtype))


def drop_in_state(model: Any, batch: int, dtype: torch.dtype) -> Any:
    """A random ``hx`` of a drop-in: ``(num_layers·D, B, H)``, a pair for the LSTM."""
    shape = (model.num_layers * (2 if model.bidirectional else 1), batch, model.hidden_size)
    h = torch.randn(shape, dtype=dtype)
    return (h, torch.randn(shape, dtype=dtype)) if model.mode == "LSTM" else h


@dataclass(frozen=True)
class Row:
    name: str
    make: Callable[[], nn.Module]
    state: Callable[[Any, int, torch.dtype], Any] = layer_state
    slow: bool = False  # exports that take several seconds (two directions, two layers)

    def __str__(self) -> str:
        return self.name


def params(rows: list[Row]) -> list[Any]:
    """The rows as pytest parameters, the slow ones marked ``slow`` (they still run in CI)."""
    return [pytest.param(r, id=r.name, marks=[pytest.mark.slow] if r.slow else []) for r in rows]


ROWS = [
    Row("user-lstm", lambda: tc.Recurrent(UserLSTMCell(I, H))),
    Row("two-width-reverse", lambda: tc.Recurrent(TwoWidthCell(I, H), reverse=True)),
    Row("stack", lambda: tc.Stack([tc.Recurrent(UserLSTMCell(I, H)), tc.Recurrent(tc.GRUCell(H, H))])),
    Row("bidirectional", lambda: tc.Bidirectional(tc.Recurrent(TwoWidthCell(I, H))), slow=True),
    Row("mingru", lambda: tc.Recurrent(tc.MinGRUCell(I, H))),
    Row("minlstm-reverse", lambda: tc.Recurrent(tc.MinLSTMCell(I, H), reverse=True)),
    Row("LSTM-2-bi", lambda: tc.LSTM(I, H, num_layers=2, bidirectional=True), drop_in_state, slow=True),
    Row("GRU", lambda: tc.GRU(I, H), drop_in_state),
    Row("RNN", lambda: tc.RNN(I, H), drop_in_state),
]


def first_arg(model: nn.Module) -> str:
    return "input" if isinstance(model, (tc.LSTM, tc.GRU, tc.RNN)) else "x"


def inputs(row: Row, model: nn.Module, steps: int, batch: int, dtype: torch.dtype, *, lengths: bool,
           state: bool) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of one call: ``x`` and, as asked, ``lengths`` (one full, one empty if
    ``batch > 1``) and a random initial state."""
    x = torch.randn(steps, batch, I, dtype=dtype)
    kwargs: dict[str, Any] = {}
    if lengths:
        lens = torch.randint(0, steps + 1, (batch,))
        lens[0] = steps
        if batch > 1:
            lens[-1] = 0
        kwargs["lengths"] = lens
    args: tuple = (x,)
    if state:
        args = (x, row.state(model, batch, dtype))
    return args, kwargs


def dynamic(model: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """``T`` and ``B`` dynamic on the input and the lengths; the state's sizes found by torch.export."""
    steps, batch = Dim("T", min=1), Dim("B", min=1)
    shapes: dict[str, Any] = {first_arg(model): {0: steps, 1: batch}}
    if len(args) > 1:
        shapes["hx" if first_arg(model) == "input" else "state"] = tree_map(
            lambda t: {d: Dim.AUTO for d in range(t.dim())}, args[1])
    if "lengths" in kwargs:
        shapes["lengths"] = {0: batch}
    return shapes


def on_loop(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose every layer runs the reference loop."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, tc.Recurrent):
            module.engine = "loop"
    return twin


def export(model: nn.Module, args: tuple, kwargs: dict) -> Any:
    return torch.export.export(model, args, kwargs, dynamic_shapes=dynamic(model, args, kwargs))


# ---------------------------------------------------------------- torch.export
# a plain user cell and MinGRU are rows of the mode matrix (test_mode_matrix.py: exported, onnx columns);
# here the others: reverse, composites, drop-ins
ONNX_ROWS = [r for r in ROWS if r.name not in ("user-lstm", "mingru")]


@pytest.mark.parametrize("row", params([r for r in ROWS if r.name in ("stack", "GRU")]))
def test_exported_program_runs_every_length_and_batch_as_eager(row):
    """float32, input only: the exported program at other sizes equals the eager layer (its fast path);
    every row runs with lengths below (the steps without a mask are the same code for every cell)."""
    torch.manual_seed(0)
    model = row.make().eval()
    args, kwargs = inputs(row, model, T0, B0, torch.float32, lengths=False, state=False)
    program = export(model, args, kwargs).module()
    for steps, batch in OTHER:
        args, kwargs = inputs(row, model, steps, batch, torch.float32, lengths=False, state=False)
        got, want = tree_leaves(program(*args, **kwargs)), tree_leaves(model(*args, **kwargs))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("row", params(ROWS))
def test_exported_program_with_lengths_and_state_equals_the_loop_in_float64(row, close):
    """float64, lengths and an initial state as inputs of the program: the reference loop's results."""
    torch.manual_seed(1)
    model = row.make().double().eval()
    args, kwargs = inputs(row, model, T0, B0, torch.float64, lengths=True, state=True)
    program = export(model, args, kwargs).module()
    loop = on_loop(model)
    for steps, batch in OTHER[:2]:
        args, kwargs = inputs(row, model, steps, batch, torch.float64, lengths=True, state=True)
        got, want = tree_leaves(program(*args, **kwargs)), tree_leaves(loop(*args, **kwargs))
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want)):
            close(g, w, what=f"{row.name} leaf {i} at T={steps}, B={batch}")


@pytest.mark.parametrize("make", [lambda: UserLSTMCell(I, H), lambda: TwoWidthCell(I, H)], ids=["user-lstm", "two-width"])
def test_export_path_run_eagerly_equals_the_loop_with_gradients(make, close):
    """Named, the export path also runs eagerly (and under autograd): the loop's values and gradients,
    reverse, lengths (one empty), every-step states and an initial state included."""
    torch.manual_seed(5)
    cell = make().double()
    x = torch.randn(T0, B0, I, dtype=torch.float64, requires_grad=True)
    h0 = tree_map(lambda t: torch.randn_like(t).requires_grad_(), cell.init_state(B0, dtype=torch.float64))
    lengths = torch.tensor([T0, 0, 2])
    leaves = [x, *tree_leaves(h0), *cell.parameters()]
    results = []
    for engine in ("export", "loop"):
        out, final, states = tc.engine.run(cell, x, h0, lengths=lengths, reverse=True, all_states=True, engine=engine)
        loss = out.square().sum() + sum(t.sum() for t in tree_leaves(final)) + sum(
            t.sin().sum() for t in tree_leaves(states))
        results.append((out, final, states, torch.autograd.grad(loss, leaves)))
    close(results[0][:3], results[1][:3], what="values")
    close(list(results[0][3]), list(results[1][3]), what="gradients")


def test_auto_runs_the_export_path_only_while_exporting(monkeypatch):
    """Outside torch.export auto keeps its fast paths; inside, every path but 'export' declines."""
    x = torch.randn(T0, B0, I)
    for cell, usual in ((UserLSTMCell(I, H), "fused"), (tc.MinGRUCell(I, H), "scan"), (tc.LSTMCell(I, H), "torch")):
        call = open_call(cell, x, cell.init_state(B0))
        assert choose(call).name == usual
        monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
        assert choose(open_call(cell, x, cell.init_state(B0))).name == "export"
        monkeypatch.undo()


@pytest.mark.parametrize("engine, make", [("fused", lambda: UserLSTMCell(I, H)), ("loop", lambda: tc.GRUCell(I, H)),
                                          ("scan", lambda: tc.MinGRUCell(I, H)), ("torch", lambda: tc.LSTMCell(I, H))])
def test_a_named_engine_that_cannot_export_says_so(engine, make):
    layer = tc.Recurrent(make(), engine=engine)
    x = torch.randn(T0, B0, I)
    with pytest.raises(TypeError, match=rf"\(3→4\) cannot run on the {engine} engine: torch.export .* records only "
                                        r"the 'export' path"):
        torch.export.export(layer, (x,), dynamic_shapes={"x": {0: Dim("T"), 1: Dim("B")}})
    assert layer(x)[0].shape == (T0, B0, H)  # eager still runs


def test_checkpointed_layer_exports_as_one_scan():
    """checkpoint_steps cuts time into chunks in Python eagerly; exported, it is one call for every length."""
    torch.manual_seed(0)
    layer = tc.Recurrent(UserLSTMCell(I, H), checkpoint_steps=2)
    program = export(layer, (torch.randn(T0, B0, I),), {}).module()
    x = torch.randn(9, 4, I)
    torch.testing.assert_close(program(x)[0], layer(x)[0], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- ONNX
def onnx_session(model: nn.Module, args: tuple, kwargs: dict) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.onnx's own notes
        program = torch.onnx.export(model, args, kwargs=kwargs, dynamo=True,
                                    dynamic_shapes=dynamic(model, args, kwargs), verbose=False)
    return onnxruntime.InferenceSession(program.model_proto.SerializeToString(),
                                        providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("row", params(ONNX_ROWS))
def test_onnx_runs_every_length_and_batch_as_eager(row):
    """torch.onnx.export(dynamo=True) with dynamic T and B, lengths as an input: onnxruntime equals eager."""
    torch.manual_seed(2)
    model = row.make().eval()
    args, kwargs = inputs(row, model, T0, B0, torch.float32, lengths=True, state=False)
    session = onnx_session(model, args, kwargs)
    names = [i.name for i in session.get_inputs()]
    assert len(names) == 2
    for steps, batch in OTHER:
        args, kwargs = inputs(row, model, steps, batch, torch.float32, lengths=True, state=False)
        got = session.run(None, dict(zip(names, (args[0].numpy(), kwargs["lengths"].numpy()))))
        want = tree_leaves(model(*args, **kwargs))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            torch.testing.assert_close(torch.from_numpy(g), w.detach(), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- torchcells.export_onnx
def run_file(path, *feeds) -> list:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: f.numpy() for i, f in zip(session.get_inputs(), feeds)})


def test_export_onnx_writes_a_file_for_every_length_batch_and_state(tmp_path):
    torch.manual_seed(3)
    model = tc.LSTM(I, H, batch_first=True).eval()
    hx = (torch.randn(1, B0, H), torch.randn(1, B0, H))
    path = tc.export_onnx(model, torch.randn(B0, T0, I), tmp_path / "lstm.onnx", lengths=torch.tensor([5, 2, 3]),
                          state=hx)
    assert path == tmp_path / "lstm.onnx" and path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["lstm.onnx"]  # no temporary file left
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input", "lengths", "state_in_0", "state_in_1"]
    assert [o.name for o in session.get_outputs()] == ["output", "state_out_0", "state_out_1"]
    for steps, batch in ((11, 6), (1, 1)):
        x, lens = torch.randn(batch, steps, I), torch.randint(0, steps + 1, (batch,))
        h = (torch.randn(1, batch, H), torch.randn(1, batch, H))
        out, (h_n, c_n) = model(x, h, lengths=lens)
        got = run_file(path, x, lens, *h)
        for g, w in zip(got, (out, h_n, c_n)):
            torch.testing.assert_close(torch.from_numpy(g), w.detach(), atol=1e-5, rtol=1e-5)


def test_export_onnx_of_a_user_cell_without_lengths(tmp_path):
    torch.manual_seed(4)
    model = tc.Bidirectional(tc.Recurrent(TwoWidthCell(I, H)))
    path = tc.export_onnx(model, torch.randn(T0, B0, I), tmp_path / "bi.onnx")
    x = torch.randn(8, 5, I)
    out, final = model(x)
    got = run_file(path, x)
    for g, w in zip(got, tree_leaves((out, final))):
        torch.testing.assert_close(torch.from_numpy(g), w.detach(), atol=1e-5, rtol=1e-5)


def test_export_onnx_refuses_what_it_cannot_export_and_writes_nothing(tmp_path):
    target = tmp_path / "fused.onnx"
    with pytest.raises(RuntimeError, match=r"export_onnx: Recurrent\(UserLSTMCell\(3→4\)\) cannot be exported .*"
                                           r"no file written.*UserLSTMCell\(3→4\) cannot run on the fused engine"):
        tc.export_onnx(tc.Recurrent(UserLSTMCell(I, H), engine="fused"), torch.randn(T0, B0, I), target)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_export_onnx_refuses_a_file_that_differs_from_eager(tmp_path):
    """Dropout in training mode: the file's random masks are not eager's; the check says so."""
    model = tc.Stack([tc.Recurrent(UserLSTMCell(I, H)), tc.Recurrent(UserLSTMCell(H, H))], dropout=0.5).train()
    target = tmp_path / "train.onnx"
    with pytest.raises(tc.export.OnnxCheckError, match=r"Stack\(2 layers\): onnxruntime's output differs from the "
                                                       r"eager model's at 8 steps and 4 sequences.*training mode"):
        tc.export_onnx(model, torch.randn(T0, B0, I), target)
    assert not target.exists()


@pytest.mark.parametrize("x, match", [
    (torch.randn(T0, I), r"example_input should be a batched sequence .* got shape \(5, 3\)"),
    (torch.randn(1, B0, I), r"example_input should have at least 2 steps and 2 sequences .* got 1 steps and 3 sequences"),
    (torch.randn(T0, 1, I), r"example_input should have at least 2 steps and 2 sequences .* got 5 steps and 1 sequences"),
])
def test_export_onnx_refuses_an_example_it_cannot_generalize(tmp_path, x, match):
    with pytest.raises(ValueError, match=r"export_onnx: Recurrent\(UserLSTMCell\(3→4\)\): " + match):
        tc.export_onnx(tc.Recurrent(UserLSTMCell(I, H)), x, tmp_path / "x.onnx")


def test_export_onnx_never_replaces_a_file_unless_told(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_text("not ours")
    model = tc.GRU(I, H)
    with pytest.raises(FileExistsError, match="model.onnx exists; pass overwrite=True"):
        tc.export_onnx(model, torch.randn(T0, B0, I), target)
    assert target.read_text() == "not ours"
    tc.export_onnx(model, torch.randn(T0, B0, I), target, overwrite=True, check=False)
    x = torch.randn(7, 2, I)
    torch.testing.assert_close(torch.from_numpy(run_file(target, x)[0]), model(x)[0].detach(), atol=1e-5, rtol=1e-5)
