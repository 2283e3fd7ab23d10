"""Properties of every layer, checked on many small random cases (hypothesis, derandomized).

Shapes; batch-row independence; reversing twice is the identity; padded steps
never change the result.
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from torchcells import ElmanCell, GRUCell, LSTMCell, Recurrent
from torchcells.engine import reverse_padded

DT = torch.float64
TOL = {"atol": 1e-12, "rtol": 1e-10}
SETTINGS = settings(derandomize=True, deadline=None, max_examples=25, database=None)

KINDS = ["elman", "lstm", "lstm-proj", "gru"]


def make_cell(kind: str, i: int, h: int, seed: int):
    torch.manual_seed(seed)
    if kind == "elman":
        return ElmanCell(i, h, dtype=DT)
    if kind == "lstm":
        return LSTMCell(i, h, dtype=DT)
    if kind == "lstm-proj":
        return LSTMCell(i, h + 1, proj_size=h, dtype=DT)  # output and h have h features
    return GRUCell(i, h, dtype=DT)


def leaves(s: Any) -> list[Tensor]:
    return [s] if isinstance(s, Tensor) else [t for part in s for t in leaves(part)]


@st.composite
def batches(draw, min_steps: int = 0):
    """A random layer configuration with a batch and per-sequence lengths."""
    steps = draw(st.integers(min_steps, 5))
    batch = draw(st.integers(1, 3))
    lengths = draw(st.lists(st.integers(0, steps), min_size=batch, max_size=batch))
    return {
        "kind": draw(st.sampled_from(KINDS)),
        "steps": steps, "batch": batch,
        "input_size": draw(st.integers(1, 3)), "hidden_size": draw(st.integers(1, 3)),
        "reverse": draw(st.booleans()), "batch_first": draw(st.booleans()),
        "lengths": draw(st.none() | st.just(lengths)),
        "seed": draw(st.integers(0, 2**16)),
    }


def setup(c):
    cell = make_cell(c["kind"], c["input_size"], c["hidden_size"], c["seed"])
    layer = Recurrent(cell, reverse=c["reverse"], batch_first=c["batch_first"])
    x = torch.randn(c["steps"], c["batch"], c["input_size"], dtype=DT)
    state = [torch.randn_like(s) for s in leaves(cell.init_state(c["batch"], dtype=DT))]
    state = type(cell.init_state(1))(*state) if len(state) == 2 else state[0]
    return cell, layer, x, state


def layout(x: Tensor, batch_first: bool) -> Tensor:
    return x.transpose(0, 1) if batch_first else x


@SETTINGS
@given(batches())
def test_output_and_state_shapes(c):
    cell, layer, x, state = setup(c)
    T, B, H = c["steps"], c["batch"], c["hidden_size"]
    out, final, states = layer(layout(x, c["batch_first"]), lengths=c["lengths"], all_states=True)
    assert out.shape == ((B, T, H) if c["batch_first"] else (T, B, H))
    assert out.dtype == DT
    for f, z in zip(leaves(final), leaves(cell.init_state(B, dtype=DT))):
        assert f.shape == z.shape
    for s, z in zip(leaves(states), leaves(cell.init_state(B, dtype=DT))):
        assert s.shape == ((B, T) if c["batch_first"] else (T, B)) + tuple(z.shape[1:])
    if c["lengths"] is not None:
        o = layout(out, c["batch_first"])
        for b, L in enumerate(c["lengths"]):
            assert torch.all(o[L:, b] == 0)


@SETTINGS
@given(batches())
def test_batch_rows_are_independent(c):
    """Row ``b``'s outputs and final state do not depend on the other rows."""
    cell, layer, x, state = setup(c)
    bf = c["batch_first"]
    out, final = layer(layout(x, bf), state, lengths=c["lengths"])
    out = layout(out, bf)
    for b in range(c["batch"]):
        row_state = type(state)(*[s[b:b + 1] for s in state]) if isinstance(state, tuple) else state[b:b + 1]
        row_lengths = None if c["lengths"] is None else [c["lengths"][b]]
        row_out, row_final = layer(layout(x[:, b:b + 1], bf), row_state, lengths=row_lengths)
        torch.testing.assert_close(layout(row_out, bf)[:, 0], out[:, b], **TOL)
        for f, r in zip(leaves(final), leaves(row_final)):
            torch.testing.assert_close(f[b], r[0], **TOL)


@SETTINGS
@given(st.integers(0, 6), st.integers(0, 4), st.lists(st.integers(1, 3), max_size=2), st.data())
def test_reverse_padded_twice_is_identity(steps, batch, trailing, data):
    lengths = data.draw(st.lists(st.integers(0, steps), min_size=batch, max_size=batch))
    x = torch.randn(steps, batch, *trailing, dtype=DT)
    lens = torch.tensor(lengths, dtype=torch.int64)
    once = reverse_padded(x, lens)
    assert once.shape == x.shape
    assert torch.equal(reverse_padded(once, lens), x)
    for b, L in enumerate(lengths):
        assert torch.equal(once[:L, b], x[:L, b].flip(0))
        assert torch.equal(once[L:, b], x[L:, b])


@SETTINGS
@given(batches(min_steps=1), st.integers(1, 3),
       st.sampled_from([0.0, 1e6, float("nan"), float("inf")]))
def test_padded_steps_never_change_the_result(c, extra, pad_value):
    """Appending padding steps (of any value) leaves valid outputs and final states unchanged."""
    cell, layer, x, state = setup(c)
    bf = c["batch_first"]
    lengths = c["lengths"] if c["lengths"] is not None else [c["steps"]] * c["batch"]
    padding = torch.randn(extra, c["batch"], c["input_size"], dtype=DT) if pad_value == 0.0 else \
        torch.full((extra, c["batch"], c["input_size"]), pad_value, dtype=DT)
    longer = torch.cat([x, padding])
    out, final = layer(layout(x, bf), state, lengths=lengths)
    out_long, final_long = layer(layout(longer, bf), state, lengths=lengths)
    out, out_long = layout(out, bf), layout(out_long, bf)
    assert out_long.shape[0] == c["steps"] + extra
    torch.testing.assert_close(out_long[:c["steps"]], out, **TOL)
    assert torch.all(out_long[c["steps"]:] == 0)
    for a, b in zip(leaves(final_long), leaves(final)):
        torch.testing.assert_close(a, b, **TOL)
