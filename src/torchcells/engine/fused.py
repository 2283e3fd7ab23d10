"""The fused path: hoisted input part, one autograd node for the whole sequence.

From a cell's traced step (:mod:`torchcells.graph`):

1. the *const* region runs once and the *input* region runs once for all ``T``
   steps (``vmap`` over time: one large product instead of ``T`` small ones), both
   under ordinary autograd;
2. the *step* region runs ``T`` times inside one ``autograd.Function``. Its
   forward and backward graphs are derived automatically (the step and its
   ``autograd.grad`` traced together with ``make_fx``, then cut into the part that
   reads no gradient and the part that does), so each step runs straight-line aten
   code with no autograd bookkeeping, saving only what the backward reads;
3. in the backward, the gradient of every weight used by a per-step product
   (``h_{t-1} W_hhᵀ``) is not computed per step: the step's backward hands out the
   two operands, and few large products sum them over all steps -- the structure
   cuDNN uses. Other parameter gradients are summed over steps.

The derivation (tracing, cutting, rewriting, caching) lives in :mod:`.derive`; the
time loops are run by an executor chosen by device (:mod:`.executors`: the C++
runtime on the CPU where it is built and the step can be planned for it, the
Python-driven loop otherwise). This module prepares a sequence and hands it over.
``run_fused`` has exactly the contract of :func:`.unroll.unroll` and is tested equal to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..cell import map_state
from .derive import FusedKernels, explain_fallback, fused_program
from .executors import SequenceInputs, choose, run_with_grad
from .lengths import reverse_padded, step_mask
from ..graph import TraceError

__all__ = ["FusedKernels", "explain_fallback", "fused_program", "run_fused", "run_inference"]


@dataclass
class _Prepared:
    """What every fused call computes before the time loop."""

    kernels: FusedKernels
    x: Tensor                      # reversed within lengths if asked, padded steps zeroed
    leaves: list[Tensor]
    spec: Any
    valid: Optional[Tensor]        # (T, B) bool, or None for full lengths
    hoisted: tuple[Tensor, ...]    # the input region over all steps, (T, B, ...) each
    consts: list[Tensor]


def _prepare(cell: nn.Module, x: Tensor, state: Any, lengths: Optional[Tensor], reverse: bool,
             masked: bool) -> _Prepared:
    from torch.utils._pytree import tree_flatten

    if x.shape[0] == 0:
        raise TraceError("no steps to run")
    kernels = fused_program(cell, x[0], state, masked=masked)
    program = kernels.program
    leaves, spec = tree_flatten(state)
    params = program.params(cell)
    if reverse:
        x = reverse_padded(x, lengths)
    valid = step_mask(lengths, x.shape[0], x.device) if lengths is not None else None
    if valid is not None:
        x = x.masked_fill(~_expand(valid, x), 0)
    consts = list(program.const_fn(*params))
    hoisted: tuple[Tensor, ...] = ()
    if program.n_hoisted:
        # vmap over time keeps the traced step's shapes (B rows) and dims exact; each
        # product becomes one over all T·B rows.
        hoisted = tuple(torch.vmap(program.input_fn, in_dims=(0,) + (None,) * len(params))(x, *params))
    return _Prepared(kernels, x, list(leaves), spec, valid, hoisted, consts)


def _expand(valid: Tensor, like: Tensor) -> Tensor:
    return valid.reshape(valid.shape + (1,) * (like.dim() - valid.dim()))


def _finish(prep: _Prepared, outputs: Tensor, final: list[Tensor], stacked: Optional[list[Tensor]],
            lengths: Optional[Tensor], reverse: bool) -> tuple[Tensor, Any, Optional[Any]]:
    from torch.utils._pytree import tree_unflatten

    states = None
    if stacked is not None:
        if prep.valid is not None:
            stacked = [s.masked_fill(~_expand(prep.valid, s), 0) for s in stacked]
        states = tree_unflatten(stacked, prep.spec)
    if reverse:
        outputs = reverse_padded(outputs, lengths)
        if states is not None:
            states = map_state(lambda s: reverse_padded(s, lengths), states)
    return outputs, tree_unflatten(final, prep.spec), states


def run_fused(cell: nn.Module, x: Tensor, state: Any, *, lengths: Optional[Tensor] = None,
              reverse: bool = False, all_states: bool = False,
              native: Optional[bool] = None) -> tuple[Tensor, Any, Optional[Any]]:
    """:func:`.unroll.unroll`'s contract, on the fused path; raises TraceError if the cell can't be fused.

    The time loops run in the native runtime where it is built and the step could be
    planned for it (``native=False`` keeps them in Python)."""
    prep = _prepare(cell, x, state, lengths, reverse, masked=lengths is not None)
    out = run_with_grad(choose(prep.kernels, x.device, native), _inputs(prep, x.shape[0]), all_states)
    return _finish(prep, out.ys, out.final, out.states, lengths, reverse)


def run_inference(cell: nn.Module, x: Tensor, state: Any, *, lengths: Optional[Tensor] = None,
                  reverse: bool = False, all_states: bool = False,
                  native: Optional[bool] = None) -> tuple[Tensor, Any, Optional[Any]]:
    """The fused path without autograd: hoisted input part, then the step per step, nothing
    saved for a backward (the loop in the native runtime where it is built and the step can
    be planned for it, unless ``native=False``). Same contract as :func:`.unroll.unroll`."""
    prep = _prepare(cell, x, state, lengths, reverse, masked=lengths is not None)
    out = choose(prep.kernels, x.device, native).infer(_inputs(prep, x.shape[0]), all_states)
    return _finish(prep, out.ys, out.final, out.states, lengths, reverse)


def _inputs(prep: _Prepared, steps: int) -> SequenceInputs:
    return SequenceInputs(prep.kernels, list(prep.hoisted), prep.leaves, prep.consts, prep.valid, steps)
