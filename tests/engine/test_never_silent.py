"""What a cell returns is checked on every path, and a cached trace follows the Python
values the step reads: the fused engine equals the loop or raises, never differs silently."""

from __future__ import annotations

import types
import warnings
from dataclasses import dataclass

import pytest
import torch

import torchcells as tc
from fixture_cells import Annealed, UserLSTMCell
from torchcells.engine.derive import _key

T, B, I, H = 4, 3, 3, 4


class Buggy(tc.Cell):
    """A step that returns something other than what it was given."""

    def __init__(self, bug: str) -> None:
        super().__init__(I, H)
        self.bug = bug
        self.lin = torch.nn.Linear(I + H, H)

    def forward(self, x, h):
        h = torch.tanh(self.lin(torch.cat([x, h], -1)))
        return {"batch": (h, h[:1]), "scalar": (h, h.sum()), "dtype": (h, h.double()),
                "y-batch": (h[:1], h), "structure": (h, (h, h))}[self.bug]


EXPECTED = {"batch": (ValueError, r"leaf 0 has shape \(1, 4\); expected \(3, 4\)"),
            "scalar": (ValueError, r"leaf 0 has shape \(\); expected \(3, 4\)"),
            "dtype": (TypeError, r"leaf 0 has dtype torch.float64; expected torch.float32"),
            "y-batch": (ValueError, r"y of shape \(1, 4\); expected the batch of the input \(3\) first"),
            "structure": (TypeError, r"returned a new state tuple\(.*\); expected tensor of shape \(3, 4\)")}


@pytest.mark.parametrize("bug", list(EXPECTED))
@pytest.mark.parametrize("engine, steps", [("loop", 1), ("loop", T), ("auto", T), ("fused", T)])
def test_a_step_that_returns_the_wrong_thing_is_an_error_on_every_path(bug, engine, steps):
    error, message = EXPECTED[bug]
    if engine == "fused":  # the fused path declines the cell and says why
        error, message = TypeError, "cannot run on the fused engine: .*" + message
    with pytest.warns() if engine == "auto" else _nothing(), pytest.raises(error, match=message):
        tc.Recurrent(Buggy(bug), engine=engine)(torch.randn(steps, B, I))


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Gained(tc.Cell):
    """A step reading a private attribute and a plain public one."""

    def __init__(self) -> None:
        super().__init__(I, H)
        self._gain = 1.0
        self.shift = 0.0
        self.lin = torch.nn.Linear(I + H, H)

    def forward(self, x, h):
        h = torch.tanh(self._gain * self.lin(torch.cat([x, h], -1)) + self.shift)
        return h, h


@pytest.mark.parametrize("attribute", ["_gain", "shift"])
def test_a_changed_attribute_is_seen_by_the_fused_engine(attribute):
    torch.manual_seed(0)
    cell = Gained().double()
    fused, loop = tc.Recurrent(cell, engine="fused"), tc.Recurrent(cell, engine="loop")
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.testing.assert_close(fused(x)[0], loop(x)[0], atol=1e-12, rtol=1e-10)
    setattr(cell, attribute, 3.0)
    torch.testing.assert_close(fused(x)[0], loop(x)[0], atol=1e-12, rtol=1e-10)


def test_cells_of_one_structure_still_share_a_trace():
    x = torch.randn(B, I)
    a, b = tc.LSTMCell(I, H), tc.LSTMCell(I, H)
    assert _key(a, x, a.init_state(B), False) == _key(b, x, b.init_state(B), False)
    c, d = Gained(), Gained()
    d._gain = 2.0
    assert _key(c, x, c.init_state(B), False) != _key(d, x, d.init_state(B), False)


def _autocast_then_fp32(layer, x, first: str):
    def under_autocast():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return layer(x)[0].float()

    def plain():
        return layer(x)[0]

    runs = {"autocast": under_autocast, "fp32": plain}
    order = [first, "fp32" if first == "autocast" else "autocast"]
    return {name: runs[name]() for name in order}


@pytest.mark.parametrize("first", ["autocast", "fp32"])
@pytest.mark.parametrize("make", [lambda: tc.GRUCell(8, 32), lambda: Gained()], ids=["gru", "user"])
def test_a_trace_made_under_autocast_is_not_used_outside_it(make, first):
    """A trace records autocast's casts: one made under autocast ran later in fp32 (and the other
    way round) gave bf16-accurate results in fp32 without a word."""
    torch.manual_seed(0)
    cell = make()
    x = torch.randn(6, 4, cell.input_size)
    fused = _autocast_then_fp32(tc.Recurrent(cell, engine="fused"), x, first)
    loop = _autocast_then_fp32(tc.Recurrent(cell, engine="loop"), x, first)
    torch.testing.assert_close(fused["fp32"], loop["fp32"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fused["autocast"], loop["autocast"], atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_stacked_drop_ins_run_under_autocast_as_torch_nn_does(name):
    """A stack's second layer gets the first one's bfloat16 output under autocast (as in torch.nn):
    the dtype check lets autocast cast it (it refused, so a 2-layer drop-in failed under autocast)."""
    torch.manual_seed(0)
    ours, theirs = getattr(tc, name)(5, 7, num_layers=2), getattr(torch.nn, name)(5, 7, num_layers=2)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(6, 3, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = ours(x)[0], theirs(x)[0]
    assert got.dtype == want.dtype
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)
    with pytest.raises(TypeError, match="input has dtype torch.bfloat16"):
        ours(x.bfloat16())  # outside autocast, a mismatch is still an error


# -- Python values the step reads, outside the cell's instance attributes: a change after the
# first call gives the loop's result; two cells that differ only there do not share a trace.

SCALE = 1.0
OFFSETS = {"shift": 0.0}


def _scaled(v):
    return v * SCALE


class Reading(tc.Cell):
    """A step that reads a class attribute, a module global (directly and through a helper), the
    contents of a dict, a list and a dataclass, a method and a property."""

    GAIN = 1.0

    def __init__(self) -> None:
        super().__init__(I, H)
        self.lin = torch.nn.Linear(I + H, H)
        self.cfg = {"gain": 1.0}
        self.taps = [1.0, 0.5]
        self.opts = _Options()

    @property
    def bias(self):
        return OFFSETS["shift"]

    def squash(self, v):
        return torch.tanh(v)

    def forward(self, x, h):
        z = _scaled(self.lin(torch.cat([x, h], -1))) * self.GAIN * self.cfg["gain"] * self.taps[1]
        h = self.squash(z * self.opts.gain + self.bias)
        return h, h


@dataclass
class _Options:
    gain: float = 1.0


def _set_global(name: str, value) -> None:
    globals()[name] = value


def _other_forward(self, x, h):
    h = torch.sigmoid(self.lin(torch.cat([x, h], -1)))
    return h, h


# name -> (change made on the cell, or on its class and module, after the first call; undo)
CHANGES = {
    "class attribute": (lambda c: setattr(Reading, "GAIN", 3.0), lambda: setattr(Reading, "GAIN", 1.0)),
    "global": (lambda c: _set_global("SCALE", 3.0), lambda: _set_global("SCALE", 1.0)),
    "dict contents": (lambda c: c.cfg.update(gain=3.0), lambda: None),
    "list contents": (lambda c: c.taps.__setitem__(1, 3.0), lambda: None),
    "dataclass contents": (lambda c: setattr(c.opts, "gain", 3.0), lambda: None),
    "global dict read by a property": (lambda c: OFFSETS.update(shift=0.5), lambda: OFFSETS.update(shift=0.0)),
    "method replaced": (lambda c: setattr(Reading, "squash", lambda self, v: torch.sigmoid(v)),
                        lambda: setattr(Reading, "squash", lambda self, v: torch.tanh(v))),
    "class forward replaced": (lambda c: setattr(Reading, "forward", _other_forward),
                               lambda: setattr(Reading, "forward", _READING_FORWARD)),
    "instance forward replaced": (lambda c: setattr(c, "forward", types.MethodType(_other_forward, c)),
                                  lambda: None),
}
_READING_FORWARD = Reading.forward


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
def test_a_changed_python_value_the_step_reads_is_seen_by_the_fused_engine(change, lengths):
    make, undo = CHANGES[change]
    torch.manual_seed(0)
    cell = Reading().double()
    fused, loop = tc.Recurrent(cell, engine="fused"), tc.Recurrent(cell, engine="loop")
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    kwargs = {"lengths": torch.tensor([4, 2, 3])} if lengths else {}
    try:
        torch.testing.assert_close(fused(x, **kwargs)[0], loop(x, **kwargs)[0], atol=1e-12, rtol=1e-10)
        make(cell)
        got, want = fused(x, **kwargs)[0], loop(x, **kwargs)[0]
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
        g_got = torch.autograd.grad(got.sum(), [x, *cell.parameters()])
        g_want = torch.autograd.grad(want.sum(), [x, *cell.parameters()])
        for a, b in zip(g_got, g_want):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    finally:
        undo()


@pytest.mark.parametrize("change", ["class attribute", "dict contents", "dataclass contents"])
def test_cells_that_differ_only_in_a_value_read_do_not_share_a_trace(change):
    """Two live cells, one changed: each gets its own result (neither reuses the other's trace)."""
    make, undo = CHANGES[change]
    torch.manual_seed(0)
    x = torch.randn(T, B, I, dtype=torch.float64)
    first, second = Reading().double(), Reading().double()
    second.load_state_dict(first.state_dict())
    try:
        if change == "class attribute":  # a subclass differs from its base only in the class value

            class Louder(Reading):
                GAIN = 3.0

            second = Louder().double()
            second.load_state_dict(first.state_dict())
        else:
            make(second)
        outs = {}
        for name, cell in (("first", first), ("second", second), ("first again", first)):
            outs[name] = tc.Recurrent(cell, engine="fused")(x)[0]
            torch.testing.assert_close(outs[name], tc.Recurrent(cell, engine="loop")(x)[0], atol=1e-12, rtol=1e-10)
        assert not torch.allclose(outs["first"], outs["second"])
    finally:
        undo()



def _calls(cell, values) -> None:
    layer, x = tc.Recurrent(cell, engine="fused"), torch.randn(T, B, I)
    for v in values:
        cell.temperature = v
        torch.testing.assert_close(layer(x)[0], tc.Recurrent(cell, engine="loop")(x)[0])


def test_a_value_that_changes_at_every_call_is_named_once():
    from torchcells.engine.derive import RETRACES_IN_A_ROW

    cell = Annealed(I, H)
    values = [1.0 + 0.01 * i for i in range(RETRACES_IN_A_ROW + 1)]
    with pytest.warns(UserWarning, match=r"Annealed\(3→4\) was traced again at each of its last 8 calls .*"
                                         r"attribute temperature of the cell changed every time; make it a buffer"):
        _calls(cell, values)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _calls(cell, [2.0 + 0.01 * i for i in range(RETRACES_IN_A_ROW + 1)])  # once per cell


def test_a_value_that_changes_a_few_times_is_not_named():
    from torchcells.engine.derive import RETRACES_IN_A_ROW

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _calls(Annealed(I, H), [1.0, 0.5, 0.25] * RETRACES_IN_A_ROW)  # three values, each traced once
        _calls(Annealed(I, H), [1.0 + i for i in range(RETRACES_IN_A_ROW - 1)])  # fewer changes than the limit


def _closure_forward():
    gain = 1.0

    def forward(self, x, h):
        h = torch.tanh(gain * self.lin(torch.cat([x, h], -1)))
        return h, h

    def set_gain(value):
        nonlocal gain
        gain = value

    return forward, set_gain


def test_a_changed_closure_variable_of_the_forward_in_effect_is_seen():
    forward, set_gain = _closure_forward()
    torch.manual_seed(0)
    cell = Reading().double()
    cell.forward = types.MethodType(forward, cell)
    x = torch.randn(T, B, I, dtype=torch.float64)
    for gain in (1.0, 3.0):
        set_gain(gain)
        torch.testing.assert_close(tc.Recurrent(cell, engine="fused")(x)[0], tc.Recurrent(cell, engine="loop")(x)[0],
                                   atol=1e-12, rtol=1e-10)


def test_the_cache_keeps_no_cell_alive():
    """An instance forward bound to the cell is keyed by identity, but held weakly: dropping the cell
    frees it (the cache and the re-trace count keep no strong reference)."""
    import gc
    import weakref

    cell = Reading()
    cell.forward = types.MethodType(_other_forward, cell)
    for batch in (1, 2):
        tc.Recurrent(cell, engine="fused")(torch.randn(T, batch, I))
    gone = weakref.ref(cell)
    del cell
    gc.collect()
    assert gone() is None


def test_a_cell_retraced_at_every_call_leaves_a_bounded_store_of_graph_sources(monkeypatch):
    """torch.fx keeps the source of every GraphModule it compiles and never frees it; a value that
    changes at every call re-traces at every call. The derivation forgets the sources it no longer
    uses and an evicted entry its own: the store stays bounded by the cache."""
    import warnings
    from collections import OrderedDict

    from torch.fx import graph_module

    from torchcells.engine import derive

    class Annealed(UserLSTMCell):
        temperature = 1.0

        def forward(self, x, state):
            y, s = super().forward(x, state)
            return y / self.temperature, s

    monkeypatch.setattr(derive, "_CACHE", OrderedDict())
    monkeypatch.setattr(derive, "_CACHE_SIZE", 3)
    cell = Annealed(3, 4)
    layer, loop = tc.Recurrent(cell), tc.Recurrent(cell, engine="loop")
    x = torch.randn(4, 2, 3, requires_grad=True)
    sizes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the "changes at every call" notice
        for i in range(12):
            cell.temperature = 1.0 + i / 10
            layer(x)[0].sum().backward()
            sizes.append(len(graph_module._loader.eval_cache))
    assert sizes[-1] == sizes[5], sizes  # flat once the cache is full and evicting
    torch.testing.assert_close(layer(x)[0], loop(x)[0])  # evicting sources breaks nothing


def test_auto_stops_tracing_a_cell_whose_value_keeps_changing_and_fuses_it_again_once_it_settles(monkeypatch):
    """Memory and time stay bounded while a value the step reads changes at every call: after
    ``RETRACES_IN_A_ROW`` derivations in a row, ``engine="auto"`` runs that cell on the loop (equal
    to it by definition) without deriving again; once the value holds, the cell is fused again."""
    from torchcells.engine import derive
    from torchcells.engine.call import open_call
    from torchcells.engine.paths import choose

    builds = []
    real_build = derive._build
    monkeypatch.setattr(derive, "_build", lambda *a, **k: builds.append(1) or real_build(*a, **k))
    cell = Annealed(I, H)
    layer, x = tc.Recurrent(cell), torch.randn(T + 8, B, I, requires_grad=True)  # long enough to fuse
    with pytest.warns(UserWarning, match="engine='auto' runs this cell on the reference loop"):
        for i in range(3 * derive.RETRACES_IN_A_ROW):
            cell.temperature = 5.0 + 0.01 * i  # values no other test traced (the cache is shared)
            torch.testing.assert_close(layer(x)[0], tc.Recurrent(cell, engine="loop")(x)[0])
    # the generic and the per-B derivation of B >= 2 may both build: at most two per traced call
    assert len(builds) <= 2 * derive.RETRACES_IN_A_ROW + 2
    cell.temperature = 9.75                               # one more new value: the loop runs it
    assert choose(open_call(cell, x, cell.init_state(B)), "auto").name == "loop"
    layer(x)                                              # the value holds: traced once more ...
    assert choose(open_call(cell, x, cell.init_state(B)), "auto").name == "fused"  # ... and fused from then on
    torch.testing.assert_close(layer(x)[0], tc.Recurrent(cell, engine="loop")(x)[0])


def test_a_named_fused_engine_keeps_tracing_a_changing_value():
    """``engine="fused"`` asked by name is not switched to the loop: it keeps deriving (and warned once)."""
    from torchcells.engine.derive import RETRACES_IN_A_ROW

    with pytest.warns(UserWarning, match="was traced again"):
        _calls(Annealed(I, H), [7.0 + 0.01 * i for i in range(RETRACES_IN_A_ROW + 3)])  # values no other test traced


class MatCell(tc.Cell):
    """A step reading its weights as they are (no transpose): the native runtime's per-step product reads
    ``W`` itself, and the backward keeps it from the forward."""

    def __init__(self) -> None:
        super().__init__(I, H)
        self.U = torch.nn.Parameter(torch.randn(I, H, dtype=torch.float64) / 4)
        self.W = torch.nn.Parameter(torch.randn(H, H, dtype=torch.float64) / 4)

    def forward(self, x, h):
        h = torch.tanh(x @ self.U + h @ self.W)
        return h, h


@pytest.mark.parametrize("engine, native", [("loop", "1"), ("fused", "1"), ("fused", "0")],
                         ids=["loop", "fused-native", "fused-python"])
def test_a_weight_changed_in_place_between_forward_and_backward_is_an_error_on_every_path(engine, native,
                                                                                        monkeypatch):
    """As torch's own autograd: the backward would read the changed weight, so it refuses -- on the
    fused paths in torchcells' words whatever torch's message was (the Python loop's is torch's
    message about a view made without grad whose base changed in place), with torch's after them."""
    monkeypatch.setenv("TORCHCELLS_NATIVE", native)
    layer = tc.Recurrent(MatCell(), engine=engine)
    y = layer(torch.randn(T, B, I, dtype=torch.float64))[0]
    with torch.no_grad():
        layer.cell.W.mul_(2)
    ours = r"torchcells: a value the backward of a recurrent layer reads .* was modified by an inplace operation " \
           r"after the forward ran .* Call backward\(\) before changing it\. torch says: "
    with pytest.raises(RuntimeError, match=ours if engine == "fused" else "modified by an inplace operation"):
        y.sum().backward()
