"""The executor contract: what runs a derived step over a whole sequence.

The fused path (:mod:`..fused`) prepares a sequence -- the hoisted input part over
all steps, the per-sequence values, the initial state -- and hands it, as
:class:`SequenceInputs`, to an executor chosen by device (:mod:`.`). An executor
runs the step's time loop three ways:

* ``forward`` / ``backward``: with autograd. Both run inside one autograd node for
  the whole sequence, :class:`SequenceNode`, which is shared by all executors: the
  node saves what ``forward`` asks it to save (through ``save_for_backward``, so
  autograd frees it after the backward and ``torch.utils.checkpoint`` can drop and
  recompute it) and hands it back to ``backward``;
* ``infer``: without autograd, nothing saved.

``accepts(kernels, device)`` says whether it can run a step here (``None``), or why not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Protocol, Sequence

import torch
from torch import Tensor

from ...graph import as_traced

if TYPE_CHECKING:
    from ..derive import FusedKernels

__all__ = ["Executor", "SequenceInputs", "SequenceNode", "SequenceOutputs", "Trained", "run_with_grad"]


@dataclass(slots=True)
class SequenceInputs:
    """One sequence, prepared for the step loop."""

    kernels: "FusedKernels"
    hoisted: list[Tensor]    # the input region over all steps, [T, B, ...] each
    state: list[Tensor]      # the initial state leaves
    consts: list[Tensor]     # per-sequence values (the const region)
    valid: Optional[Tensor]  # [T, B] bool, or None for full lengths
    steps: int               # T
    #: what the hoisted part was computed from: the sequence x (in reading order) and the
    #: step's parameters; kept (never copied) for a backward that must itself be differentiable
    source: tuple[Optional[Tensor], list[Tensor]] = (None, [])


@dataclass(slots=True)
class SequenceOutputs:
    """What a run over a sequence gives back."""

    ys: Tensor                       # [T, B, ...]
    final: list[Tensor]              # the state leaves after the last step
    states: Optional[list[Tensor]]   # every step's state leaves, [T, ...] each, when asked for


@dataclass(slots=True)
class Trained:
    """What an executor's ``forward`` gives the autograd node."""

    outputs: list[Tensor]  # [ys, *final leaves, *every step's leaves (when asked for)]
    saved: list[Tensor]    # what the backward reads, saved by the node
    memo: Any              # anything else the executor's backward needs (no tensors of the sequence)


class Executor(Protocol):
    """Runs the step loop of a derived step (:class:`~..derive.FusedKernels`) over a sequence."""

    #: short name ("python", "native"); also the key of the executor's cache on the kernels
    name: str
    #: the shared autograd node under this executor's name (as autograd graphs and profiles show it)
    node: type["SequenceNode"]

    def accepts(self, kernels: "FusedKernels", device: torch.device) -> Optional[str]:
        """``None`` when this executor runs ``kernels`` on ``device``, else why not (one line)."""
        ...

    def forward(self, inputs: SequenceInputs, want_states: bool) -> Trained:
        """The loop with autograd's forward: outputs, and what the backward reads."""
        ...

    def backward(self, memo: Any, saved: Sequence[Tensor], d_ys: Optional[Tensor], d_final: list[Optional[Tensor]],
                 d_states: list[Optional[Tensor]]) -> list[Optional[Tensor]]:
        """Gradients of ``(*hoisted, *state, *consts)`` from those of the outputs (``d_states``: of
        every step's state leaves, empty when they were not asked for)."""
        ...

    def infer(self, inputs: SequenceInputs, want_states: bool) -> SequenceOutputs:
        """The loop without autograd, nothing saved."""
        ...


class SequenceNode(torch.autograd.Function):
    """The step region over all steps: one node in the autograd graph; the executor runs both
    directions. Each executor names a subclass of its own (nothing overridden).

    Its backward is the executor's, first-order. When autograd asks for a backward that is
    itself differentiable (``create_graph=True``: a gradient penalty, ``gradgradcheck``,
    ``torch.func``'s grad of grad), the node recomputes the sequence with autograd from what it
    was computed from (:func:`.second_order.differentiable_grads`) and differentiates that:
    the reference loop's second-order gradients, at the loop's cost, for that backward only."""

    @staticmethod
    def forward(ctx, executor: Executor, kernels: "FusedKernels", valid: Optional[Tensor], steps: int,
                n_hoisted: int, n_state: int, want_states: bool, n_source: int, *flat: Tensor):
        n_in = len(flat) - n_source
        inputs = SequenceInputs(kernels, list(flat[:n_hoisted]), list(flat[n_hoisted:n_hoisted + n_state]),
                                list(flat[n_hoisted + n_state:n_in]), valid, steps)
        trained = executor.forward(inputs, want_states)
        ctx.executor, ctx.memo, ctx.n_state, ctx.want_states = executor, trained.memo, n_state, want_states
        ctx.shape = (kernels, valid, steps, n_hoisted, len(trained.saved), n_in)
        ctx.device_type = trained.outputs[0].device.type
        # the inputs too (references, not copies: autograd keeps them alive anyway), for a
        # differentiable backward: state, consts and the hoisted part's source
        ctx.save_for_backward(*trained.saved, *flat[n_hoisted:])
        ctx.mark_non_differentiable(*[o for o in trained.outputs if not o.is_floating_point()])
        return tuple(trained.outputs)

    @staticmethod
    def backward(ctx, d_ys: Optional[Tensor], *d_rest: Optional[Tensor]):
        n_s = ctx.n_state
        d_final, d_states = list(d_rest[:n_s]), (list(d_rest[n_s:]) if ctx.want_states else [])
        # a backward run inside autocast (AMP recipes run it outside): the derived graphs hold the
        # forward's casts and their backward in the forward's dtypes, as autocast documents; the
        # executors run them as planned (casting them again would mix dtypes inside the runtime)
        with as_traced(ctx.device_type):
            return SequenceNode._backward(ctx, d_ys, d_final, d_states)

    @staticmethod
    def _backward(ctx, d_ys: Optional[Tensor], d_final: list, d_states: list) -> tuple:
        n_s = ctx.n_state
        if torch.is_grad_enabled():  # autograd runs a backward with grad on only for create_graph=True
            from .second_order import differentiable_grads
            kernels, valid, steps, n_hoisted, n_saved, n_in = ctx.shape
            rest = _saved_tensors(ctx)[n_saved:]
            n_const = n_in - n_hoisted - n_s
            grads = differentiable_grads(kernels, ctx.device_type, valid, steps, list(rest[:n_s]),
                                         list(rest[n_s:n_s + n_const]), list(rest[n_s + n_const:]), d_ys, d_final,
                                         d_states)
        else:
            grads = SequenceNode._first_order(ctx, d_ys, d_final, d_states)
        return (None,) * 8 + tuple(grads) + (None,) * (len(ctx.needs_input_grad) - 8 - len(grads))

    @staticmethod
    def _first_order(ctx, d_ys: Optional[Tensor], d_final: list, d_states: list) -> list[Optional[Tensor]]:
        n_saved = ctx.shape[4]
        return ctx.executor.backward(ctx.memo, _saved_tensors(ctx)[:n_saved], d_ys, d_final, d_states)


#: what torch says when a tensor saved for a backward changed in place after it was saved: the
#: usual message, or -- for a view made without grad, as the Python loop's are -- another one
_CHANGED_IN_PLACE = ("modified by an inplace operation", "has been modified inplace")


def _saved_tensors(ctx: Any) -> tuple[Tensor, ...]:
    """``ctx.saved_tensors``; a value changed in place since the forward (a weight an optimizer
    step or ``p.mul_()`` changed before ``backward()``, or an output changed in place: the native
    executor's outputs are views of what it saved) is refused in the same words on every executor,
    with torch's message after them."""
    try:
        return ctx.saved_tensors
    except RuntimeError as e:
        if not any(m in str(e) for m in _CHANGED_IN_PLACE):
            raise
        first = (str(e).splitlines() or [""])[0]
        raise RuntimeError(
            "torchcells: a value the backward of a recurrent layer reads (a weight, a state, one of the "
            "layer's outputs, or what its input part made) was modified by an inplace operation after the "
            "forward ran -- an optimizer step or p.mul_() on a weight, or an in-place change to an output, "
            "between forward and backward? Call backward() before changing it. "
            f"torch says: {first}") from e


def run_with_grad(executor: Executor, inputs: SequenceInputs, want_states: bool) -> SequenceOutputs:
    """``inputs`` through ``executor`` inside one autograd node (:class:`SequenceNode`)."""
    n = len(inputs.state)
    x, params = inputs.source
    source = ([x] if x is not None and inputs.hoisted else []) + (list(params) if inputs.hoisted else [])
    result = executor.node.apply(executor, inputs.kernels, inputs.valid, inputs.steps, len(inputs.hoisted), n,
                                 want_states, len(source), *inputs.hoisted, *inputs.state, *inputs.consts, *source)
    return SequenceOutputs(result[0], list(result[1:1 + n]), list(result[1 + n:]) if want_states else None)
