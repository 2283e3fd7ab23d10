"""A differentiable backward for the sequence node, by recomputation.

An executor's backward is first-order: straight-line derived graphs that autograd does
not see into. When a backward must itself be differentiable (``create_graph=True``),
:class:`.base.SequenceNode` calls :func:`differentiable_grads` instead: the sequence is
recomputed under autograd from what the node was computed from -- the hoisted part from
the sequence ``x`` and the step's parameters (``input_fn``), then the step region
(``step_fn``) step by step, padded steps masked as the derived step masks them -- and
``torch.autograd.grad`` of it with ``create_graph=True`` gives gradients whose own graph
reaches back to ``x``, the parameters, the initial state and the incoming gradients. These
are the reference loop's gradients (the same operations), so their gradients are the
loop's second-order gradients. The cost is the loop's, paid only by such a backward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

from ...graph import as_traced

from .. import hoist

if TYPE_CHECKING:
    from ..derive import FusedKernels

__all__ = ["differentiable_grads"]


def differentiable_grads(kernels: "FusedKernels", device_type: str, valid: Optional[Tensor], steps: int,
                         state: list[Tensor], consts: list[Tensor], source: list[Tensor], d_ys: Optional[Tensor],
                         d_final: list[Optional[Tensor]], d_states: list[Optional[Tensor]]) -> list[Optional[Tensor]]:
    """Gradients of ``(*hoisted, *state, *consts)`` with a graph of their own (see the module)."""
    program = kernels.program
    with torch.enable_grad(), as_traced(device_type):  # the graphs hold autocast's casts, and only those
        hoisted: list[Tensor] = []
        if program.n_hoisted:
            x, params = source[0], source[1:]
            # the same hoisting as the forward (fused._prepare): the step's shapes stay exact
            hoisted = list(hoist.hoisted(program, x, params))
        ys, final, history = _run(program.step_fn, hoisted, state, consts, valid, steps)
        outputs = [ys, *final] + ([torch.stack([s[j] for s in history]) for j in range(len(final))]
                                  if d_states else [])
        given = [d_ys, *d_final, *d_states]
        pairs = [(o, g) for o, g in zip(outputs, given) if g is not None and o.requires_grad]
        wrt = [*hoisted, *state, *consts]
        wanted = [i for i, t in enumerate(wrt) if t.requires_grad]
        if not pairs or not wanted:
            return [None] * len(wrt)
        found = torch.autograd.grad([o for o, _ in pairs], [wrt[i] for i in wanted], [g for _, g in pairs],
                                    create_graph=True, allow_unused=True)
    grads: list[Optional[Tensor]] = [None] * len(wrt)
    for i, g in zip(wanted, found):
        grads[i] = g
    return grads


def _run(step_fn, hoisted: list[Tensor], state: list[Tensor], consts: list[Tensor], valid: Optional[Tensor],
         steps: int) -> tuple[Tensor, list[Tensor], list[list[Tensor]]]:
    """The step region over all steps under autograd, masked as the derived step masks padded steps."""
    ys, history = [], []
    for t in range(steps):
        y, *new = step_fn(*[h[t] for h in hoisted], *state, *consts)
        if valid is not None:
            keep = valid[t]
            new = [torch.where(keep.reshape(keep.shape + (1,) * (n.dim() - 1)), n, o) for n, o in zip(new, state)]
            y = y.masked_fill(~keep.reshape(keep.shape + (1,) * (y.dim() - 1)), 0)
        ys.append(y)
        state = list(new)
        history.append(state)
    return torch.stack(ys), state, history
