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
from torch.autograd.function import once_differentiable

if TYPE_CHECKING:
    from ..derive import FusedKernels

__all__ = ["SECOND_ORDER", "Executor", "SequenceInputs", "SequenceNode", "SequenceOutputs", "Trained", "run_with_grad"]


@dataclass(slots=True)
class SequenceInputs:
    """One sequence, prepared for the step loop."""

    kernels: "FusedKernels"
    hoisted: list[Tensor]    # the input region over all steps, [T, B, ...] each
    state: list[Tensor]      # the initial state leaves
    consts: list[Tensor]     # per-sequence values (the const region)
    valid: Optional[Tensor]  # [T, B] bool, or None for full lengths
    steps: int               # T


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


#: why the fused engine refuses a backward that must itself be differentiable.
SECOND_ORDER = ("torchcells: the fused engine's backward is first-order only, and this backward was asked to "
                "build a graph for second-order gradients (create_graph=True: a gradient penalty, "
                "torch.autograd.gradgradcheck, torch.func's grad of grad). Run the layer with engine='loop' "
                "(Recurrent(cell, engine='loop')), whose backward is autograd's and differentiable.")


class SequenceNode(torch.autograd.Function):
    """The step region over all steps: one node in the autograd graph; the executor runs both
    directions. Each executor names a subclass of its own (nothing overridden)."""

    @staticmethod
    def forward(ctx, executor: Executor, kernels: "FusedKernels", valid: Optional[Tensor], steps: int,
                n_hoisted: int, n_state: int, want_states: bool, *flat: Tensor):
        inputs = SequenceInputs(kernels, list(flat[:n_hoisted]), list(flat[n_hoisted:n_hoisted + n_state]),
                                list(flat[n_hoisted + n_state:]), valid, steps)
        trained = executor.forward(inputs, want_states)
        ctx.executor, ctx.memo, ctx.n_state, ctx.want_states = executor, trained.memo, n_state, want_states
        ctx.save_for_backward(*trained.saved)
        ctx.mark_non_differentiable(*[o for o in trained.outputs if not o.is_floating_point()])
        return tuple(trained.outputs)

    @staticmethod
    def backward(ctx, d_ys: Optional[Tensor], *d_rest: Optional[Tensor]):
        if torch.is_grad_enabled():  # autograd runs a backward with grad on only for create_graph=True
            raise RuntimeError(SECOND_ORDER)
        return SequenceNode._first_order(ctx, d_ys, *d_rest)

    @staticmethod
    @once_differentiable
    def _first_order(ctx, d_ys: Optional[Tensor], *d_rest: Optional[Tensor]):
        n_s = ctx.n_state
        d_states = list(d_rest[n_s:]) if ctx.want_states else []
        grads = ctx.executor.backward(ctx.memo, ctx.saved_tensors, d_ys, list(d_rest[:n_s]), d_states)
        return (None, None, None, None, None, None, None, *grads)


def run_with_grad(executor: Executor, inputs: SequenceInputs, want_states: bool) -> SequenceOutputs:
    """``inputs`` through ``executor`` inside one autograd node (:class:`SequenceNode`)."""
    n = len(inputs.state)
    result = executor.node.apply(executor, inputs.kernels, inputs.valid, inputs.steps, len(inputs.hoisted), n,
                                 want_states, *inputs.hoisted, *inputs.state, *inputs.consts)
    return SequenceOutputs(result[0], list(result[1:1 + n]), list(result[1 + n:]) if want_states else None)
