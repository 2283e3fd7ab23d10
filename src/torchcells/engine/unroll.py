"""The reference loop: a cell applied once per step. It defines correctness.

Every faster path in ``engine/`` is tested equal to :func:`unroll`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from ..cell import Cell, State, map_state
from .lengths import reverse_padded, step_mask


def unroll(cell: Cell, x: Tensor, state: State, *, lengths: Optional[Tensor] = None,
           reverse: bool = False, all_states: bool = False) -> tuple[Tensor, State, Optional[Any]]:
    """Run ``cell`` over ``x`` ``(T, B, ...)`` from ``state``; time-major, already validated.

    Args:
        lengths: ``(B,)`` int64 valid lengths (any order) or ``None`` for full length.
        reverse: read each sequence from its own last valid step back to step 0.
        all_states: also return every step's state, each leaf stacked to ``(T, B, ...)``.

    Returns ``(outputs (T, B, ...), final_state, states_or_None)``. Outputs and
    every-step states are exactly zero at padded steps; ``final_state`` is each
    sequence's state after its last valid step (its initial state if its length is 0).
    """
    steps, batch = x.shape[0], x.shape[1]
    if steps == 0:
        # No step to take: learn the output's shape from a zero-row call.
        y, _ = cell(x.new_zeros((0,) + tuple(x.shape[2:])), map_state(lambda s: s[:0], state))
        outputs = y.new_zeros((0, batch) + tuple(y.shape[1:]))
        states = map_state(lambda s: s.new_zeros((0,) + tuple(s.shape)), state) if all_states else None
        return outputs, state, states
    if reverse:
        x = reverse_padded(x, lengths)
    ys: list[Tensor] = []
    history: list[State] = []
    if lengths is None:
        for t in range(steps):
            y, state = cell(x[t], state)
            ys.append(y)
            if all_states:
                history.append(state)
    else:
        mask = step_mask(lengths, steps, x.device)
        x = x.masked_fill(~mask.reshape(steps, batch, *([1] * (x.dim() - 2))), 0)
        for t in range(steps):
            valid = mask[t]
            y, new = cell(x[t], state)
            state = map_state(lambda n, o: torch.where(_expand(valid, n), n, o), new, state)
            ys.append(y.masked_fill(~_expand(valid, y), 0))
            if all_states:
                history.append(map_state(lambda s: s.masked_fill(~_expand(valid, s), 0), state))
    outputs = torch.stack(ys)
    states = map_state(lambda *leaves: torch.stack(leaves), history[0], *history[1:]) if all_states else None
    if reverse:
        outputs = reverse_padded(outputs, lengths)
        if states is not None:
            states = map_state(lambda s: reverse_padded(s, lengths), states)
    return outputs, state, states


def _expand(valid: Tensor, like: Tensor) -> Tensor:
    return valid.reshape(valid.shape[0], *([1] * (like.dim() - 1)))
