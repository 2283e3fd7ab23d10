"""What a cell returns is checked on every path, and a cached trace follows the Python
values the step reads: the fused engine equals the loop or raises, never differs silently."""

from __future__ import annotations

import pytest
import torch

import torchcells as tc
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
