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
   two operands, and products over chunks of at least 1024 rows (all ``T·B`` rows
   when fewer) sum them -- the structure cuDNN uses, without holding every step's
   operands at once. Other parameter gradients are summed over steps.

The derivation (tracing, cutting, rewriting, caching) lives in :mod:`.derive`; this
module runs the result. :func:`fused_call` and :func:`inference_call` run a forward call
(:mod:`.call`; the ``fused`` path of :mod:`.paths`); ``run_fused`` and ``run_inference``
have exactly the contract of :func:`.unroll.unroll` and are tested equal to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .call import Call, Result, bracket
from .derive import FusedKernels, explain_fallback, fused_program
from ..graph import TraceError

__all__ = ["FusedKernels", "explain_fallback", "fused_call", "fused_program", "inference_call", "run_fused",
           "run_inference", "step_program"]


class _FusedSequence(torch.autograd.Function):
    """The step region over all steps: one node in the autograd graph."""

    @staticmethod
    def forward(ctx, kernels: FusedKernels, valid: Optional[Tensor], steps: int, n_hoisted: int, n_state: int,
                want_states: bool, *flat: Tensor):
        hoisted = flat[:n_hoisted]
        state = list(flat[n_hoisted:n_hoisted + n_state])
        consts = list(flat[n_hoisted + n_state:])
        per_step = [h.unbind(0) for h in hoisted]
        masks = valid.unbind(0) if valid is not None else None
        fw, n_out = kernels.forward.forward, kernels.n_outputs
        ys, saved, history = [], [], []
        for t in range(steps):
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
        ctx.kernels, ctx.n_hoisted, ctx.n_state = kernels, n_hoisted, n_state
        # Through save_for_backward, so autograd frees them after the backward and
        # torch.utils.checkpoint can drop and recompute them.
        ctx.per_step = len(saved[0]) if saved else 0
        ctx.steps = steps
        ctx.save_for_backward(*[v for step in saved for v in step])
        ctx.want_states = want_states
        outputs = [torch.stack(ys)] + state
        if want_states:
            outputs += [torch.stack([s[j] for s in history]) for j in range(n_state)]
        ctx.mark_non_differentiable(*[o for o in outputs if not o.is_floating_point()])
        return tuple(outputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_ys: Tensor, *d_rest: Optional[Tensor]):
        kernels: FusedKernels = ctx.kernels
        n_h, n_s = ctx.n_hoisted, ctx.n_state
        d_final = list(d_rest[:n_s])
        d_hist = list(d_rest[n_s:]) if ctx.want_states else []
        steps, per_step = ctx.steps, ctx.per_step
        saved = ctx.saved_tensors
        bw = kernels.backward.forward
        n_c = kernels.program.n_const
        carry = [g for g in d_final]
        # Gradients of the hoisted inputs, written step by step into one (T, B, ...) buffer each.
        d_hoisted: list[Optional[Tensor]] = [None] * n_h
        acc: list[Optional[Tensor]] = [None] * n_c
        lhs: dict[int, list[Tensor]] = {k: [] for k in kernels.deferred}
        rhs: dict[int, list[Tensor]] = {k: [] for k in kernels.deferred}
        summed: dict[int, Optional[Tensor]] = {k: None for k in kernels.deferred}
        # Weight gradients of the per-step products: one product per chunk of steps with
        # at least _PRODUCT_ROWS rows (as efficient as one over all steps, without holding
        # every step's operands at once).
        chunk = max(1, -(-_PRODUCT_ROWS // max(1, d_ys.shape[1] if d_ys is not None and d_ys.dim() > 1 else 1)))
        d_y_steps: Optional[tuple[Tensor, ...]] = d_ys.unbind(0) if d_ys is not None else None
        d_hist_steps: list[Any] = [h.unbind(0) if h is not None else None for h in d_hist]
        for t in range(steps - 1, -1, -1):
            state_tangents = list(carry)
            for j in range(n_s):
                if d_hist_steps and d_hist_steps[j] is not None:
                    state_tangents[j] = _add(state_tangents[j], d_hist_steps[j][t])
            dy = d_y_steps[t] if d_y_steps is not None else None
            tangents = [dy] + state_tangents
            grads = bw(*saved[t * per_step:(t + 1) * per_step], *[g if g is not None else _zeros(meta, d_ys)
                                               for g, meta in zip(tangents, kernels.tangent_meta)])
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
            extra = grads[kernels.n_grads:]
            for pos, k in enumerate(sorted(kernels.deferred)):
                lhs[k].append(extra[2 * pos])
                rhs[k].append(extra[2 * pos + 1])
                if len(lhs[k]) >= chunk or t == 0:
                    product = _summed_product(lhs[k], rhs[k], kernels.transposed[k])
                    so_far = summed[k]
                    summed[k] = product if so_far is None else so_far.add_(product)
                    lhs[k], rhs[k] = [], []
        d_consts: list[Optional[Tensor]] = list(acc)
        for k, post in kernels.deferred.items():
            d_consts[k] = post(summed[k])
        return (None, None, None, None, None, None, *d_hoisted, *carry, *d_consts)


_PRODUCT_ROWS = 1024


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


def _zeros(meta: tuple[torch.Size, torch.dtype], like: Tensor) -> Tensor:
    return torch.zeros(meta[0], dtype=meta[1], device=like.device)


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


def _prepare(call: Call, masked: bool) -> _Prepared:
    from torch.utils._pytree import tree_flatten

    if call.steps == 0:
        raise TraceError("no steps to run")
    x = call.x
    kernels = step_program(call, masked)
    program = kernels.program
    leaves, spec = tree_flatten(call.state)
    params = program.params(call.cell)
    consts = list(program.const_fn(*params))
    hoisted: tuple[Tensor, ...] = ()
    if program.n_hoisted:
        # vmap over time keeps the traced step's shapes (B rows) and dims exact; each
        # product becomes one over all T·B rows.
        hoisted = tuple(torch.vmap(program.input_fn, in_dims=(0,) + (None,) * len(params))(x, *params))
    return _Prepared(kernels, x, list(leaves), spec, call.valid, hoisted, consts)


def step_program(call: Call, masked: bool) -> FusedKernels:
    """The cell's fused step for this call (traced once per structure and shapes; looked up once per call)."""
    return call.memo((step_program, masked), lambda: fused_program(call.cell, call.raw_x[0], call.state, masked=masked))


def _expand(valid: Tensor, like: Tensor) -> Tensor:
    return valid.reshape(valid.shape + (1,) * (like.dim() - valid.dim()))


def _finish(prep: _Prepared, outputs: Tensor, final: list[Tensor], stacked: Optional[list[Tensor]]) -> Result:
    from torch.utils._pytree import tree_unflatten

    states = tree_unflatten(stacked, prep.spec) if stacked is not None else None
    return outputs, tree_unflatten(final, prep.spec), states


def run_fused(cell: nn.Module, x: Tensor, state: Any, *, lengths: Optional[Tensor] = None,
              reverse: bool = False, all_states: bool = False,
              native: Optional[bool] = None) -> tuple[Tensor, Any, Optional[Any]]:
    """:func:`.unroll.unroll`'s contract, on the fused path; raises TraceError if the cell can't be fused."""
    return bracket(partial(fused_call, native=native), cell, x, state, lengths=lengths, reverse=reverse,
                   all_states=all_states)


def fused_call(call: Call, *, native: Optional[bool] = None) -> Result:
    """The fused path over a forward call, with autograd; raises TraceError if the cell can't be fused.

    The time loops run in the native runtime where it is built and the step could be
    planned for it (``native=False`` keeps them in Python)."""
    prep = _prepare(call, masked=call.valid is not None)
    x, all_states = prep.x, call.all_states
    n = len(prep.leaves)
    node: Any = _FusedSequence
    if native is not False and prep.kernels.native is not None and x.device.type == "cpu":
        from .native import library
        from .native.sequence import NativeSequence
        if library() is not None:
            node = NativeSequence
    result = node.apply(prep.kernels, prep.valid, x.shape[0], len(prep.hoisted), n, all_states,
                        *prep.hoisted, *prep.leaves, *prep.consts)
    return _finish(prep, result[0], list(result[1:1 + n]), list(result[1 + n:]) if all_states else None)


def run_inference(cell: nn.Module, x: Tensor, state: Any, *, lengths: Optional[Tensor] = None,
                  reverse: bool = False, all_states: bool = False,
                  native: Optional[bool] = None) -> tuple[Tensor, Any, Optional[Any]]:
    """:func:`.unroll.unroll`'s contract, on the fused path without autograd (:func:`inference_call`)."""
    return bracket(partial(inference_call, native=native), cell, x, state, lengths=lengths, reverse=reverse,
                   all_states=all_states)


def inference_call(call: Call, *, native: Optional[bool] = None) -> Result:
    """The fused path over a forward call, without autograd: hoisted input part, then the
    step graph per step, nothing saved for a backward (the loop in the native runtime where
    it is built, unless ``native=False``)."""
    x, all_states = call.x, call.all_states
    if native is not False and x.device.type == "cpu":
        from .native import library
        if library() is not None:
            prep = _prepare(call, masked=call.valid is not None)
            if prep.kernels.native is not None:
                from .native.sequence import run_without_grad
                out, final, histories = run_without_grad(prep.kernels, list(prep.hoisted), prep.leaves,
                                                         prep.consts, prep.valid, x.shape[0])
                every = [h[1:] for h in histories] if all_states else None
                return _finish(prep, out, final, every)
    prep = _prepare(call, masked=False)
    step = prep.kernels.program.fast_step_fn.forward
    per_step = [h.unbind(0) for h in prep.hoisted]
    masks = prep.valid.unbind(0) if prep.valid is not None else None
    leaves, ys, history = prep.leaves, [], []
    for t in range(x.shape[0]):
        outs = step(*[h[t] for h in per_step], *leaves, *prep.consts)
        y, new = outs[0], list(outs[1:])
        if masks is not None:
            keep = masks[t]
            new = [torch.where(_expand(keep, n), n, o) for n, o in zip(new, leaves)]
            y = y.masked_fill(~_expand(keep, y), 0)
        ys.append(y)
        leaves = new
        if all_states:
            history.append(leaves)
    stacked = [torch.stack([h[j] for h in history]) for j in range(len(leaves))] if all_states else None
    return _finish(prep, torch.stack(ys), leaves, stacked)
