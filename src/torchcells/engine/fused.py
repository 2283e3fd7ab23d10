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
Python-driven loop otherwise). This module prepares a forward-reading call
(:mod:`.call`; the ``fused`` path of :mod:`.paths`) and hands it over:
:func:`fused_call` with autograd, :func:`inference_call` without. ``run_fused`` and
``run_inference`` have exactly the contract of :func:`.unroll.unroll` and are tested
equal to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Optional

from torch import Tensor, nn

from ..graph import StateDtypeChange, TraceError, as_traced
from . import hoist
from .call import Call, Result, bracket
from .derive import FusedKernels, explain_fallback, fused_program
from .executors import SequenceInputs, SequenceOutputs, choose, run_with_grad

__all__ = ["FusedKernels", "explain_fallback", "fused_call", "fused_program", "inference_call", "run_fused",
           "run_inference", "step_program"]


@dataclass
class _Prepared:
    """What every fused call computes before the time loop."""

    kernels: FusedKernels
    x: Tensor                      # in reading order, padded steps zeroed
    leaves: list[Tensor]
    spec: Any
    valid: Optional[Tensor]        # (T, B) bool, or None for full lengths
    hoisted: tuple[Tensor, ...]    # the input region over all steps, (T, B, ...) each
    consts: list[Tensor]
    params: list[Tensor]           # the step's parameters and buffers (program.param_names order)

    def inputs(self) -> SequenceInputs:
        return SequenceInputs(self.kernels, list(self.hoisted), self.leaves, self.consts, self.valid,
                              self.x.shape[0], (self.x, self.params))


def _prepare(call: Call, params: Optional[list[Tensor]] = None) -> _Prepared:
    """``params``: the step's parameters and buffers in ``program.param_names`` order, where they are
    not the cell's own (the registered operators, :mod:`.ops`, run on the tensors they were given)."""
    from torch.utils._pytree import tree_flatten

    if call.steps == 0:
        raise TraceError("no steps to run")
    x = call.x
    kernels, state = _traced(call, masked=call.valid is not None)
    program = kernels.program
    leaves, spec = tree_flatten(state)
    params = program.params(call.cell) if params is None else params
    with as_traced(x.device.type):  # the graphs hold autocast's casts, and only those
        consts = list(program.const_fn(*params))
        hoisted: tuple[Tensor, ...] = ()
        if program.n_hoisted:
            # vmap over time keeps the traced step's shapes (B rows) and dims exact; each
            # product becomes one over all T·B rows, rounded once as the loop's (.hoist)
            hoisted = hoist.hoisted(program, x, params)
    return _Prepared(kernels, x, list(leaves), spec, call.valid, hoisted, consts, params)


def step_program(call: Call, masked: bool) -> FusedKernels:
    """The cell's fused step for this call (traced once per structure and shapes; looked up once per call)."""
    return _traced(call, masked)[0]


def _traced(call: Call, masked: bool) -> tuple[FusedKernels, Any]:
    """The fused step and the state it runs from: the call's, or, where under autocast the step
    returns its state in autocast's dtype (an Elman cell's ``h = tanh(product)``), the call's
    state cast to those dtypes -- the dtypes the loop runs every later step on. The first step
    then reads ``h_0`` rounded to that dtype (exact for zeros; a product under autocast rounds
    it so anyway); the gradient of ``h_0`` comes back in its own dtype through the cast."""
    from torch.utils._pytree import tree_flatten, tree_unflatten

    def trace() -> tuple[FusedKernels, Any]:
        x_t = call.raw_x[0]
        try:
            return fused_program(call.cell, x_t, call.state, masked=masked), call.state
        except StateDtypeChange as change:
            leaves, spec = tree_flatten(call.state)
            state = tree_unflatten([t.to(d) for t, d in zip(leaves, change.dtypes)], spec)
            return fused_program(call.cell, x_t, state, masked=masked), state
    return call.memo((step_program, masked), trace)


def _finish(prep: _Prepared, out: SequenceOutputs) -> Result:
    from torch.utils._pytree import tree_unflatten

    states = tree_unflatten(out.states, prep.spec) if out.states is not None else None
    return out.ys, tree_unflatten(out.final, prep.spec), states


def run_fused(cell: nn.Module, x: Tensor, state: Any, *, lengths: Optional[Tensor] = None,
              reverse: bool = False, all_states: bool = False,
              native: Optional[bool] = None) -> tuple[Tensor, Any, Optional[Any]]:
    """:func:`.unroll.unroll`'s contract, on the fused path; raises TraceError if the cell can't be fused."""
    return bracket(partial(fused_call, native=native), cell, x, state, lengths=lengths, reverse=reverse,
                   all_states=all_states)


def fused_call(call: Call, *, native: Optional[bool] = None, params: Optional[list[Tensor]] = None) -> Result:
    """The fused path over a forward call, with autograd; raises TraceError if the cell can't be fused.

    The time loops run in the executor chosen for the step and the device (the native
    runtime where it is built and the step could be planned for it; ``native=False``
    keeps them in Python; ``params``: see :func:`_prepare`)."""
    prep = _prepare(call, params)
    with as_traced(prep.x.device.type):
        out = run_with_grad(choose(prep.kernels, prep.x.device, native), prep.inputs(), call.all_states)
    return _finish(prep, out)


def run_inference(cell: nn.Module, x: Tensor, state: Any, *, lengths: Optional[Tensor] = None,
                  reverse: bool = False, all_states: bool = False,
                  native: Optional[bool] = None) -> tuple[Tensor, Any, Optional[Any]]:
    """:func:`.unroll.unroll`'s contract, on the fused path without autograd (:func:`inference_call`)."""
    return bracket(partial(inference_call, native=native), cell, x, state, lengths=lengths, reverse=reverse,
                   all_states=all_states)


def inference_call(call: Call, *, native: Optional[bool] = None, params: Optional[list[Tensor]] = None) -> Result:
    """The fused path over a forward call, without autograd: hoisted input part, then the
    step per step, nothing saved for a backward (in the executor :func:`fused_call` would use)."""
    prep = _prepare(call, params)
    with as_traced(prep.x.device.type):
        out = choose(prep.kernels, prep.x.device, native).infer(prep.inputs(), call.all_states)
    return _finish(prep, out)
