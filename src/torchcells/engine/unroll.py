"""The reference loop: a cell applied once per step. It defines correctness.

Every faster path in ``engine/`` is tested equal to :func:`unroll`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from ..cell import Cell, State, cell_name, check_step, map_state, step_fits, step_pair
from .call import Call, Result, bracket, expand


def unroll(cell: Cell, x: Tensor, state: State, *, lengths: Optional[Tensor] = None,
           reverse: bool = False, all_states: bool = False) -> tuple[Tensor, State, Optional[Any]]:
    """Run ``cell`` over ``x`` ``(T, B, ...)`` from ``state``; time-major, already validated.

    Args:
        cell: the step function.
        x: the inputs, time-major.
        state: the state before the first step.
        lengths: ``(B,)`` int64 valid lengths (any order) or ``None`` for full length.
        reverse: read each sequence from its own last valid step back to step 0.
        all_states: also return every step's state, each leaf stacked to ``(T, B, ...)``.

    Returns:
        ``(outputs (T, B, ...), final_state, states_or_None)``. Outputs and every-step states are
        exactly zero at padded steps; ``final_state`` is each sequence's state after its last valid
        step (its initial state if its length is 0).
    """
    return bracket(unroll_call, cell, x, state, lengths=lengths, reverse=reverse, all_states=all_states)


def unroll_call(call: Call) -> Result:
    """The loop over a forward call (:mod:`.call`): one cell call per step; at padded
    steps the state is kept and ``y`` is zero."""
    cell, x, state, valid = call.cell, call.x, call.state, call.valid
    if call.steps == 0:
        # No step to take: learn the output's shape from a zero-row call.
        y, _ = step_pair(cell_name(cell), cell(x.new_zeros((0,) + tuple(x.shape[2:])), map_state(lambda s: s[:0], state)))
        outputs = y.new_zeros((0, call.batch) + tuple(y.shape[1:]))
        states = map_state(lambda s: s.new_zeros((0,) + tuple(s.shape)), state) if call.all_states else None
        return outputs, state, states
    ys: list[Tensor] = []
    history: list[State] = []
    for t in range(call.steps):
        y, new = cell(x[t], state) if t else _first_step(cell, x[0], state)
        if valid is None:
            state = new
        else:
            keep = valid[t]
            state = map_state(lambda n, o: torch.where(expand(keep, n), n, o), new, state)
            y = y.masked_fill(~expand(keep, y), 0)
        ys.append(y)
        if call.all_states:
            history.append(state)
    outputs = torch.stack(ys)
    states = map_state(lambda *leaves: torch.stack(leaves), history[0], *history[1:]) if call.all_states else None
    return outputs, state, states


def _first_step(cell: Any, x_t: Tensor, state: State) -> tuple[Tensor, State]:
    """The first step's ``(y, new_state)``, checked (:func:`~torchcells.cell.check_step`): a cell
    that returns something else is an error naming it, at every call."""
    returned = cell(x_t, state)
    if not isinstance(returned, tuple) or len(returned) != 2:
        step_pair(cell_name(cell), returned)  # raises, saying what came
    y, new = returned
    if not step_fits(x_t, state, y, new):
        check_step(cell_name(cell), x_t, state, y, new)
    return y, new
