"""The whole sequence as one autograd node, its time loops run by the native runtime.

Same contract as ``fused._FusedSequence`` (and tested equal to it and to the
reference loop); the difference is where the loops run: ``forward_sequence`` and
``backward_sequence`` in ``runtime.cpp``. The new state leaves are written straight
into a ``[T+1, ...]`` history per leaf (which is also the every-step-state output
and where the backward reads the states it needs), each saved value into a
``[T, ...]`` buffer, or once when it depends on per-sequence values only.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .build import library

_PRODUCT_ROWS = 1024


class NativeSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kernels: Any, valid: Optional[Tensor], steps: int, n_hoisted: int, n_state: int,
                want_states: bool, *flat: Tensor):
        lib: Any = library()
        native = kernels.native
        hoisted = list(flat[:n_hoisted])
        state = [s.contiguous() for s in flat[n_hoisted:n_hoisted + n_state]]
        # one contiguous copy of each per-sequence value (a transposed weight): faster products
        consts = [c.contiguous() for c in flat[n_hoisted + n_state:]]
        result = lib.forward_sequence(native.forward.build(lib), hoisted, state, consts, valid,
                                      kernels.n_outputs, native.y_alias, native.saved_kind, steps,
                                      packed_weights([consts[i] for i in native.fw_packed], hoisted, state))
        ys = result[0]
        final = result[1:1 + n_state]
        history = result[1 + n_state:1 + 2 * n_state]
        saved = result[1 + 2 * n_state:]
        ctx.kernels, ctx.n_hoisted, ctx.n_state, ctx.want_states = kernels, n_hoisted, n_state, want_states
        ctx.steps = ys.shape[0]
        ctx.hoisted_meta = [(h.shape, h.dtype) for h in hoisted]
        ctx.device = ys.device
        ctx.batch = ys.shape[1] if ys.dim() > 1 else 1
        ctx.has_saved = [s is not None for s in saved]
        ctx.save_for_backward(*history, *[s for s in saved if s is not None])
        outputs = [ys] + [f.clone() for f in final]
        if want_states:
            outputs += [h[1:].clone() for h in history]
        ctx.mark_non_differentiable(*[o for o in outputs if not o.is_floating_point()])
        return tuple(outputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_ys: Optional[Tensor], *d_rest: Optional[Tensor]):
        lib: Any = library()
        kernels = ctx.kernels
        native = kernels.native
        n_h, n_s = ctx.n_hoisted, ctx.n_state
        tensors = ctx.saved_tensors
        history = list(tensors[:n_s])
        rest = iter(tensors[n_s:])
        saved = [next(rest) if has else None for has in ctx.has_saved]
        d_final = list(d_rest[:n_s])
        d_hist = list(d_rest[n_s:]) if ctx.want_states else []
        d_hist = [g.contiguous() if g is not None else None for g in d_hist]
        zero_like = [torch.zeros(shape, dtype=dtype, device=ctx.device) for shape, dtype in kernels.tangent_meta]
        order = sorted(kernels.deferred)
        n_c = kernels.program.n_const
        d_hoisted_buffers = [torch.empty(shape, dtype=dtype, device=ctx.device) for shape, dtype in ctx.hoisted_meta]
        result = lib.backward_sequence(
            native.backward.build(lib), saved, native.saved_kind, history,
            d_ys.contiguous() if d_ys is not None else None, d_final, d_hist, d_hoisted_buffers, n_c,
            kernels.n_grads, order, [kernels.transposed[k] for k in order], native.deferred_source, zero_like,
            ctx.steps, _PRODUCT_ROWS, packed_weights([saved[j] for j in native.bw_packed], [], history,
                                                     batch=ctx.batch))
        d_hoisted = result[:n_h]
        d_state = result[n_h:n_h + n_s]
        d_consts = list(result[n_h + n_s:n_h + n_s + n_c])
        for k, summed in zip(order, result[n_h + n_s + n_c:]):
            d_consts[k] = kernels.deferred[k](summed) if summed is not None else None
        return (None, None, None, None, None, None, *d_hoisted, *d_state, *d_consts)


def run_without_grad(kernels: Any, hoisted: list[Tensor], state: list[Tensor], consts: list[Tensor],
                     valid: Optional[Tensor], steps: int) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """The forward only, nothing saved: ``(ys, final leaves, histories [T+1, ...])``."""
    lib: Any = library()
    native = kernels.native
    n_state = len(state)
    consts = [c.contiguous() for c in consts]
    state = [s.contiguous() for s in state]
    result = lib.forward_sequence(native.inference.build(lib), hoisted, state, consts, valid, kernels.n_outputs,
                                  native.y_alias, [], steps,
                                  packed_weights([consts[i] for i in native.fw_packed], hoisted, state))
    return result[0], list(result[1:1 + n_state]), list(result[1 + n_state:1 + 2 * n_state])


def packed_weights(operands: list, hoisted: list[Tensor], state: list[Tensor], *,
                   batch: Optional[int] = None) -> list[Tensor]:
    """For each per-sequence right operand ``W`` (``[K, N]``) of a per-step product: MKL's packed
    copy of ``Wᵀ`` for ``batch`` rows, and ``Wᵀ`` itself (what ``mkl::_mkl_linear`` takes)."""
    if not operands:
        return []
    if batch is None:
        batch = (hoisted[0].shape[1] if hoisted else state[0].shape[0])
    extras: list[Tensor] = []
    for w in operands:
        weight = w.t().contiguous()
        extras += [torch.ops.mkl._mkl_reorder_linear_weight(weight, batch), weight]
    return extras
