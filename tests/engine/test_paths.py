"""The registry of paths: its order, ``engine=`` by name, refusals with their reasons, a
path added and removed again, the bracket around a path, the hooks a cell declares, and
the rule that the engine never imports the zoo."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path as FilePath

import pytest
import torch
from torch import nn

import torchcells as tc
from fixture_cells import UserLSTMCell
from torchcells.cell import Cell, declares
from torchcells.engine import engines, reverse_padded, run, unroll
from torchcells.engine.call import Call, Path, open_call
from torchcells.engine.paths import choose, get, paths, register, unregister
from torchcells.engine.unroll import unroll_call

T, B, I, H = 6, 3, 3, 5
ENGINE = FilePath(tc.__file__).parent / "engine"


def native_built() -> bool:
    from torchcells.engine.native import library
    return library() is not None


class Noisy(tc.Cell):
    """A step with a random operation: the fused path declines it."""

    def __init__(self) -> None:
        super().__init__(I, H)
        self.lin = nn.Linear(I + H, H)

    def forward(self, x, h):
        h = torch.tanh(nn.functional.dropout(self.lin(torch.cat([x, h], -1)), 0.5, True))
        return h, h


class PlainCell(nn.Module):
    """A cell that is not a ``Cell``: a module with ``forward(x, state)`` and ``init_state``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(I + H, H)

    def init_state(self, batch_size, *, device=None, dtype=None):
        return torch.zeros(batch_size, H, device=device, dtype=dtype)

    def forward(self, x, h):
        h = torch.tanh(self.lin(torch.cat([x, h], -1)))
        return h, h


class ToyPath(Path):
    """Runs the reference loop for ``PlainCell`` only, and remembers what it was handed."""

    name = "toy"

    def __init__(self) -> None:
        self.seen: list[Call] = []

    def accepts(self, call):
        return None if isinstance(call.cell, PlainCell) else "it runs PlainCell only"

    def run(self, call):
        self.seen.append(call)
        return unroll_call(call)


@pytest.fixture
def toy():
    path = register(ToyPath(), before="fused")
    try:
        yield path
    finally:
        unregister("toy")


def chosen(cell, x, *, engine="auto", **kw):
    return choose(open_call(cell, x, cell.init_state(x.shape[1]), **kw), engine).name


# ---------------------------------------------------------------- the registry
def test_registry_order():
    assert [p.name for p in paths()] == ["scan", "torch", "fused", "export", "loop"]
    assert engines() == ("auto", "scan", "torch", "fused", "export", "loop")


@pytest.mark.parametrize("name, make", [("scan", lambda: tc.MinGRUCell(I, H)), ("torch", lambda: tc.LSTMCell(I, H)),
                                        ("fused", lambda: UserLSTMCell(I, H)), ("export", lambda: UserLSTMCell(I, H)),
                                        ("loop", lambda: tc.GRUCell(I, H))])
def test_engine_by_name_runs_that_path(name, make, monkeypatch):
    torch.manual_seed(0)
    cell = make().double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    state = cell.init_state(B, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4])
    ran = []
    path = get(name)
    monkeypatch.setattr(path, "run", lambda call, run=path.run: ran.append(call) or run(call))
    out, final, _ = run(cell, x, state, lengths=lengths, reverse=True, engine=name)
    assert len(ran) == 1
    want, want_final, _ = unroll(cell, x, state, lengths=lengths, reverse=True)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(final, want_final)


def test_auto_takes_the_first_path_that_accepts():
    x = torch.randn(T, B, I)
    assert chosen(tc.MinGRUCell(I, H), x) == "scan"
    assert chosen(tc.LSTMCell(I, H), x) == "torch"
    assert chosen(tc.ElmanCell(I, H), x) == "torch"
    assert chosen(tc.GRUCell(I, H), x) == ("fused" if native_built() else "torch")  # deferred where faster
    assert chosen(tc.GRUCell(I, H), x, engine="torch") == "torch"                    # ... but runs when named
    assert chosen(tc.LSTMCell(I, H), x, all_states=True) == "fused"
    assert chosen(tc.LSTMCell(I, H, peepholes=True), x) == "fused"
    assert chosen(UserLSTMCell(I, H), x) == "fused"
    assert chosen(PlainCell(), x) == "fused"
    with pytest.warns(UserWarning, match=r"Noisy\(3→5\) runs on the reference loop.*random"):
        assert chosen(Noisy(), x) == "loop"
    for empty in (x[:0], x[:, :0]):  # nothing to speed up
        assert chosen(tc.MinGRUCell(I, H), empty, engine="torch") == "loop"


@pytest.mark.parametrize("engine, make, kw, reason", [
    ("scan", lambda: tc.LSTMCell(I, H), {},
     r"LSTMCell\(3→5\) cannot run on the scan engine: it does not declare scan_coefficients\(\)"),
    ("torch", lambda: UserLSTMCell(I, H), {},
     r"UserLSTMCell\(3→5\) cannot run on the torch engine: engine='torch' runs only cells in torch's own form"),
    ("torch", lambda: tc.GRUCell(I, H, reset_after=False), {}, r"runs only cells in torch's own form"),
    ("torch", lambda: tc.LSTMCell(I, H), {"all_states": True}, r"runs only without every-step states"),
    ("torch", lambda: tc.LSTMCell(I, H), {"lengths": torch.tensor([6, 0, 2])}, r"runs only sequences of length 1"),
    ("fused", lambda: Noisy(), {}, r"Noisy\(3→5\) cannot run on the fused engine: .*random"),
])
def test_a_path_named_that_declines_says_why(engine, make, kw, reason):
    cell = make()
    x = torch.randn(T, B, I)
    with pytest.raises(TypeError, match=reason):
        run(cell, x, cell.init_state(B), engine=engine, **kw)


def test_an_unknown_engine_is_refused():
    with pytest.raises(ValueError, match=r"engine should be one of \('auto', 'scan', 'torch', 'fused', 'export', 'loop'\)"):
        run(tc.GRUCell(I, H), torch.randn(T, B, I), torch.zeros(B, H), engine="fast")
    with pytest.raises(ValueError, match="engine should be one of"):
        tc.Recurrent(tc.GRUCell(I, H), engine="fast")


def test_a_registered_path_is_picked_by_name_and_in_order_then_removed(toy):
    assert [p.name for p in paths()] == ["scan", "torch", "toy", "fused", "export", "loop"]
    x = torch.randn(T, B, I)
    assert chosen(PlainCell(), x) == "toy"                   # before fused, which also accepts it
    assert chosen(UserLSTMCell(I, H), x) == "fused"           # declined by the toy
    assert chosen(PlainCell(), x, engine="toy") == "toy"
    with pytest.raises(TypeError, match=r"UserLSTMCell\(3→5\) cannot run on the toy engine: it runs PlainCell only"):
        chosen(UserLSTMCell(I, H), x, engine="toy")
    layer = tc.Recurrent(PlainCell(), engine="toy")          # a layer takes the new name too
    out, _ = layer(x)
    assert len(toy.seen) == 1 and out.shape == (T, B, H)
    with pytest.raises(ValueError, match="already registered"):
        register(ToyPath())
    unregister("toy")
    assert "toy" not in engines() and [p.name for p in paths()] == ["scan", "torch", "fused", "export", "loop"]
    register(toy)  # for the fixture to take out again


def test_a_path_is_handed_the_call_forwards_with_padding_zeroed(toy):
    torch.manual_seed(0)
    cell = PlainCell().double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4])
    dirty = x.clone()
    for b, L in enumerate(lengths.tolist()):
        dirty[L:, b] = float("nan")
    h0 = torch.randn(B, H, dtype=torch.float64)
    out, final, states = run(cell, dirty, h0, lengths=lengths, reverse=True, all_states=True, engine="toy")
    call = toy.seen[-1]
    want_x = reverse_padded(x, lengths)
    for b, L in enumerate(lengths.tolist()):
        want_x[L:, b] = 0
    assert torch.equal(call.x, want_x)                       # step 0 first, padded steps zero
    assert call.valid is not None and call.valid.sum(0).tolist() == lengths.tolist()
    want = unroll(cell, x, h0, lengths=lengths, reverse=True, all_states=True)
    for got, ref in zip((out, final, states), want):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    for b, L in enumerate(lengths.tolist()):                 # the bracket zeroed every-step states
        assert not states[L:, b].any()


def test_the_bracket_copies_nothing_without_lengths_or_reverse():
    x = torch.randn(T, B, I)
    call = open_call(tc.GRUCell(I, H), x, torch.zeros(B, H))
    assert call.raw_x is x and call.x is x and call.valid is None


# ---------------------------------------------------------------- hooks declared on Cell
def test_hooks_have_defaults_on_cell_and_are_declared_by_overriding():
    class Bare(Cell):
        def forward(self, x, h):
            return h, h

    bare = Bare(I, H)
    assert bare.output_size == H and bare.GATES == () and bare.torch_kernel() is None
    assert not declares(bare, "scan_coefficients") and not declares(bare, "torch_kernel")
    assert declares(tc.MinGRUCell(I, H), "scan_coefficients") and declares(tc.LSTMCell(I, H), "torch_kernel")
    assert tc.LSTMCell(I, H).torch_kernel().kind == "lstm" and tc.LSTMCell(I, 4, proj_size=2).output_size == 2
    assert tc.ElmanCell(I, H, nonlinearity="relu").torch_kernel().kind == "rnn_relu"
    assert len(tc.GRUCell(I, H, bias=False).torch_kernel().weights) == 2
    with pytest.raises(ValueError, match="hook should be one of"):
        declares(bare, "forward")


def test_a_module_that_is_not_a_cell_declares_what_it_defines():
    plain = PlainCell()
    assert not declares(plain, "scan_coefficients") and not declares(plain, "torch_kernel")
    plain.scan_coefficients = lambda x: (x, x)
    assert declares(plain, "scan_coefficients")
    x = torch.randn(T, B, I)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, _ = tc.Recurrent(PlainCell())(x)  # fused, no warning
    assert out.shape == (T, B, H)


# ---------------------------------------------------------------- the engine never imports the zoo
def _imported_modules(path: FilePath) -> set[str]:
    package = ".".join(("torchcells",) + path.relative_to(ENGINE.parent).with_suffix("").parts)
    if path.name == "__init__.py":
        package = package.rsplit(".", 1)[0] + "._"  # relative imports count from the package itself
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level)[0]
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_no_engine_module_imports_the_cells():
    files = sorted(ENGINE.rglob("*.py"))
    assert len(files) > 10
    # the relative imports resolve (so the check below can see an import of the zoo)
    assert {"torchcells.cell.declares", "torchcells.engine.call"} <= _imported_modules(ENGINE / "paths" / "scan.py")
    assert "torchcells.engine.paths.loop" in _imported_modules(ENGINE / "paths" / "__init__.py")
    offenders = {str(f.relative_to(ENGINE)): sorted(m for m in _imported_modules(f)
                                                    if m == "torchcells.cells" or m.startswith("torchcells.cells."))
                 for f in files}
    assert {f: m for f, m in offenders.items() if m} == {}


# ---------------------------------------------------------------- misuse of the seams
class Raising(Path):
    """A registered path whose ``accepts`` has a bug."""

    name = "raising"

    def accepts(self, call):
        raise KeyError("oops")

    def run(self, call):  # pragma: no cover - never accepted
        raise AssertionError


def test_a_path_whose_accepts_fails_is_named_in_the_error():
    register(Raising(), before="scan")
    try:
        with pytest.raises(RuntimeError, match="engine path 'raising' could not decide on LSTMCell"):
            tc.Recurrent(tc.LSTMCell(I, H))(torch.randn(T, B, I))
    finally:
        unregister("raising")
    assert [p.name for p in paths()] == ["scan", "torch", "fused", "export", "loop"]


def test_register_refuses_an_unknown_place_and_unregister_an_unknown_name():
    with pytest.raises(ValueError, match="before should name a registered path.*got 'nope'"):
        register(ToyPath(), before="nope")
    with pytest.raises(ValueError, match="unregister: no path named 'nope' is registered"):
        unregister("nope")
    assert [p.name for p in paths()] == ["scan", "torch", "fused", "export", "loop"]


def test_an_unknown_engine_name_is_refused_even_for_an_empty_call():
    cell = tc.LSTMCell(I, H)
    for x in (torch.randn(0, B, I), torch.randn(T, 0, I)):
        with pytest.raises(ValueError, match="engine should be one of .* got 'nonexistent'"):
            run(cell, x, cell.init_state(x.shape[1]), engine="nonexistent")


class WrongForm(nn.Module):
    """Not a Cell; its unrelated ``torch_kernel`` method returns a tensor, not a TorchKernelForm."""

    def __init__(self) -> None:
        super().__init__()
        self.input_size, self.hidden_size = I, H
        self.lin = nn.Linear(I + H, H)

    def init_state(self, batch_size, *, device=None, dtype=None):
        return torch.zeros(batch_size, H, device=device, dtype=dtype)

    def torch_kernel(self):
        return torch.zeros(1)

    def forward(self, x, h):
        h = torch.tanh(self.lin(torch.cat([x, h], -1)))
        return h, h


@pytest.mark.parametrize("engine", ["auto", "torch"])
def test_a_torch_kernel_hook_that_returns_something_else_is_a_named_error(engine):
    with pytest.raises(TypeError, match=r"WrongForm: torch_kernel\(\) should return a TorchKernelForm or None, got Tensor"):
        tc.Recurrent(WrongForm(), engine=engine)(torch.randn(T, B, I))
