"""The Python executor: the time loop driven from Python, one call of the derived graph per step.

Runs every step on every device (the fallback of :mod:`.`). With autograd, each step
runs the derived forward graph (straight-line code, no autograd bookkeeping) and keeps
what the backward graph reads; the backward runs the backward graph in reverse. The
gradient of every weight used by a per-step product (``h_{t-1} W_hhᵀ``) is not
computed per step: the step's backward hands out the two operands, and products over
chunks of at least :data:`PRODUCT_ROWS` rows (all ``T·B`` rows when fewer) sum them --
the structure cuDNN uses, without holding every step's operands at once. Other
parameter gradients are summed over steps. Without autograd, the step graph itself
runs (torch twins for aten calls), padded steps masked here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch
from torch import Tensor

from ..call import expand
from .base import SequenceInputs, SequenceNode, SequenceOutputs, Trained

if TYPE_CHECKING:
    from ..derive import FusedKernels

__all__ = ["PRODUCT_ROWS", "PythonExecutor"]

#: Rows per product for the deferred weight-gradient operands.
PRODUCT_ROWS = 1024


class _FusedSequence(SequenceNode):
    """The sequence node, run by the Python executor."""


@dataclass(slots=True)
class _Memo:
    kernels: "FusedKernels"
    n_hoisted: int
    n_state: int
    per_step: int  # saved values per step
    steps: int


class PythonExecutor:
    """The step loop in Python; accepts every step on every device."""

    name = "python"
    node: type[SequenceNode] = _FusedSequence

    def accepts(self, kernels: "FusedKernels", device: torch.device) -> Optional[str]:
        return None

    def forward(self, inputs: SequenceInputs, want_states: bool) -> Trained:
        kernels = inputs.kernels
        per_step = [h.unbind(0) for h in inputs.hoisted]
        masks = inputs.valid.unbind(0) if inputs.valid is not None else None
        fw, n_out = kernels.forward.forward, kernels.n_outputs
        state, consts = list(inputs.state), list(inputs.consts)
        ys, saved, history = [], [], []
        for t in range(inputs.steps):
            args = [h[t] for h in per_step] + state + consts
            if masks is not None:
                args.append(masks[t])
            result = fw(*args)
            outs = result[:n_out]
            saved.append(result[n_out:])
            ys.append(outs[0])
            state = list(outs[1:])
            if want_states:
                history.append(state)
        outputs = [torch.stack(ys)] + state
        if want_states:
            outputs += [torch.stack([s[j] for s in history]) for j in range(len(state))]
        memo = _Memo(kernels, len(inputs.hoisted), len(inputs.state), len(saved[0]) if saved else 0, inputs.steps)
        return Trained(outputs, [v for step in saved for v in step], memo)

    def backward(self, memo: _Memo, saved: Sequence[Tensor], d_ys: Optional[Tensor], d_final: list[Optional[Tensor]],
                 d_states: list[Optional[Tensor]]) -> list[Optional[Tensor]]:
        kernels = memo.kernels
        n_h, n_s, n_c, steps = memo.n_hoisted, memo.n_state, kernels.program.n_const, memo.steps
        bw = kernels.backward.forward
        carry = list(d_final)
        # gradients of the hoisted inputs, written step by step into one (T, B, ...) buffer each
        d_hoisted: list[Optional[Tensor]] = [None] * n_h
        acc: list[Optional[Tensor]] = [None] * n_c
        batch = d_ys.shape[1] if d_ys is not None and d_ys.dim() > 1 else 1
        products = _DeferredProducts(kernels, batch)
        d_y_steps = d_ys.unbind(0) if d_ys is not None else None
        d_state_steps: list[Any] = [h.unbind(0) if h is not None else None for h in d_states]
        for t in range(steps - 1, -1, -1):
            state_tangents = list(carry)
            for j in range(n_s):
                if d_state_steps and d_state_steps[j] is not None:
                    state_tangents[j] = _add(state_tangents[j], d_state_steps[j][t])
            tangents = [d_y_steps[t] if d_y_steps is not None else None] + state_tangents
            grads = bw(*saved[t * memo.per_step:(t + 1) * memo.per_step],
                       *[g if g is not None else _zeros(meta, d_ys) for g, meta in zip(tangents, kernels.tangent_meta)])
            for i in range(n_h):
                g = grads[i]
                if g is not None:
                    buffer = d_hoisted[i]
                    if buffer is None:
                        buffer = d_hoisted[i] = g.new_zeros((steps,) + tuple(g.shape))
                    buffer[t].copy_(g)
            carry = list(grads[n_h:n_h + n_s])
            for k in range(n_c):
                g = grads[n_h + n_s + k]
                if g is not None:
                    acc[k] = g if acc[k] is None else acc[k] + g
            products.add(grads[kernels.n_grads:], last=t == 0)
        return [*d_hoisted, *carry, *products.gradients(acc)]

    def infer(self, inputs: SequenceInputs, want_states: bool) -> SequenceOutputs:
        step = inputs.kernels.program.fast_step_fn.forward
        per_step = [h.unbind(0) for h in inputs.hoisted]
        masks = inputs.valid.unbind(0) if inputs.valid is not None else None
        leaves, ys, history = list(inputs.state), [], []
        for t in range(inputs.steps):
            outs = step(*[h[t] for h in per_step], *leaves, *inputs.consts)
            y, new = outs[0], list(outs[1:])
            if masks is not None:
                keep = masks[t]
                new = [torch.where(expand(keep, n), n, o) for n, o in zip(new, leaves)]
                y = y.masked_fill(~expand(keep, y), 0)
            ys.append(y)
            leaves = new
            if want_states:
                history.append(leaves)
        stacked = [torch.stack([h[j] for h in history]) for j in range(len(leaves))] if want_states else None
        return SequenceOutputs(torch.stack(ys), leaves, stacked)


class _DeferredProducts:
    """The weight gradients of the per-step products: ``sum_t A_t B_t`` per deferred const, as one
    product per chunk of steps with at least :data:`PRODUCT_ROWS` rows (as efficient as one over
    all steps, without holding every step's operands at once)."""

    def __init__(self, kernels: "FusedKernels", batch: int) -> None:
        self.kernels = kernels
        self.order = sorted(kernels.deferred)
        self.chunk = max(1, -(-PRODUCT_ROWS // max(1, batch)))
        self.lhs: dict[int, list[Tensor]] = {k: [] for k in self.order}
        self.rhs: dict[int, list[Tensor]] = {k: [] for k in self.order}
        self.summed: dict[int, Optional[Tensor]] = {k: None for k in self.order}

    def add(self, operands: Sequence[Tensor], *, last: bool) -> None:
        """One step's operand pairs (in const order); ``last``: the final step of the loop."""
        for pos, k in enumerate(self.order):
            self.lhs[k].append(operands[2 * pos])
            self.rhs[k].append(operands[2 * pos + 1])
            if len(self.lhs[k]) >= self.chunk or last:
                product = _summed_product(self.lhs[k], self.rhs[k], self.kernels.transposed[k])
                so_far = self.summed[k]
                self.summed[k] = product if so_far is None else so_far.add_(product)
                self.lhs[k], self.rhs[k] = [], []

    def gradients(self, acc: list[Optional[Tensor]]) -> list[Optional[Tensor]]:
        """``acc`` (the consts' summed gradients) with each deferred const's gradient filled in."""
        d_consts = list(acc)
        for k, post in self.kernels.deferred.items():
            d_consts[k] = post(self.summed[k])
        return d_consts


def _summed_product(lhs: list[Tensor], rhs: list[Tensor], transposed: bool) -> Tensor:
    """``sum_t A_t B_t`` as one product: ``[A_1 … A_k][B_1; …; B_k]`` (``A_t = X_tᵀ`` if transposed)."""
    left = torch.cat(lhs, 0).t() if transposed else torch.cat(lhs, 1)
    return torch.mm(left, torch.cat(rhs, 0))


def _add(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _zeros(meta: tuple[torch.Size, torch.dtype], like: Optional[Tensor]) -> Tensor:
    return torch.zeros(meta[0], dtype=meta[1], device=like.device if like is not None else None)

