"""Calling the native drivers: ``forward_sequence`` and ``backward_sequence`` in ``runtime.cpp``.

Each driver takes the program and one struct with named fields (``ForwardRun``,
``BackwardRun``, made with every field named: a missing or misspelt one is a
``TypeError``), filled here from a step's :class:`~.records.NativePlan`. The
forward writes the new state leaves straight into a ``[T+1, ...]`` history per leaf
(which is also the every-step-state output and where the backward reads the states
it needs), each saved value into a ``[T, ...]`` buffer, or once when it depends on
per-sequence values only. The autograd side is :mod:`..executors.native`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from .records import PRODUCT_BLOCK_COLS, NativePlan, Packing

__all__ = ["PRODUCT_ROWS", "column_blocks", "run_backward", "run_forward", "packed_weights"]

#: Rows per product for deferred weight-gradient operands collected step by step.
PRODUCT_ROWS = 1024


def run_forward(lib: Any, plan: NativePlan, n_outputs: int, hoisted: list[Tensor], state: list[Tensor],
                consts: list[Tensor], valid: Optional[Tensor], steps: int, *,
                save: bool) -> tuple[Tensor, list[Tensor], list[Tensor], list[Optional[Tensor]]]:
    """The forward over all steps (``state`` and ``consts`` contiguous): ``(ys, final leaves, histories
    [T+1, ...], saved)``; with ``save=False`` the inference program runs and nothing is saved."""
    run = lib.ForwardRun(hoisted=hoisted, state=state, consts=consts, valid=valid,
                         extras=packed_weights([consts[i] for i in plan.fw_packed], hoisted, state,
                                               packing=plan.packing),
                         steps=steps, n_outputs=n_outputs, y_alias=plan.y_alias,
                         saved_kind=plan.saved_kinds if save else [], saved_index=plan.saved_indices if save else [])
    program = plan.forward if save else plan.inference
    result = lib.forward_sequence(program.build(lib), run)
    n = len(state)
    return result[0], result[1:1 + n], result[1 + n:1 + 2 * n], result[1 + 2 * n:]


def run_backward(lib: Any, plan: NativePlan, kernels: Any, saved: list[Optional[Tensor]], history: list[Tensor],
                 d_ys: Optional[Tensor], d_final: list[Optional[Tensor]], d_hist: list[Optional[Tensor]],
                 d_hoisted: list[Tensor], zero_like: list[Tensor], steps: int, batch: int) -> list[Optional[Tensor]]:
    """The backward over all steps, in reverse: ``[*d_hoisted, *d_state, *d_consts (summed), *summed
    deferred products]`` (``None`` where there is no gradient)."""
    order = sorted(kernels.deferred)
    run = lib.BackwardRun(saved=saved, saved_kind=plan.saved_kinds, saved_index=plan.saved_indices,
                          history=history, d_ys=d_ys, d_final=d_final, d_hist=d_hist, d_hoisted=d_hoisted,
                          zero_like=zero_like, n_consts=kernels.program.n_const, n_grads=kernels.n_grads,
                          transposed=[kernels.transposed[k] for k in order], operand_source=plan.operand_sources,
                          operand_index=plan.operand_indices, steps=steps, chunk_rows=PRODUCT_ROWS,
                          extras=packed_weights([saved[j] for j in plan.bw_packed], [], history, batch=batch,
                                                packing=plan.packing))
    return lib.backward_sequence(plan.backward.build(lib), run)


def packed_weights(operands: list, hoisted: list[Tensor], state: list[Tensor], *,
                   batch: Optional[int] = None, packing: Packing = Packing.MKL) -> list[Tensor]:
    """For each per-sequence right operand ``W`` (``[K, N]``) of a per-step product, its copy for the
    sequence: with ``Packing.BLOCKS`` its columns in blocks (``[ceil(N / nb), K, nb]``, the last
    block padded with zeros; what a :class:`~.records.ProductBlock` reads); with ``Packing.MKL``
    MKL's packed copy of ``Wᵀ`` for ``batch`` rows, and ``Wᵀ`` itself (what ``mkl::_mkl_linear`` takes)."""
    if not operands:
        return []
    if packing is Packing.BLOCKS:
        return [column_blocks(w, PRODUCT_BLOCK_COLS) for w in operands]
    if batch is None:
        batch = (hoisted[0].shape[1] if hoisted else state[0].shape[0])
    extras: list[Tensor] = []
    for w in operands:
        weight = w.t().contiguous()
        extras += [torch.ops.mkl._mkl_reorder_linear_weight(weight, batch), weight]
    return extras


def column_blocks(w: Tensor, block_cols: int) -> Tensor:
    """``w`` (``[K, N]``) as ``[ceil(N / block_cols), K, block_cols]``: block ``j`` holds columns
    ``j·block_cols ...``, each block contiguous; the last one padded with zeros."""
    k, n = w.shape
    blocks = -(-n // block_cols)
    if blocks * block_cols != n:
        w = torch.nn.functional.pad(w, (0, blocks * block_cols - n))
    out = torch.empty(blocks, k, block_cols, dtype=w.dtype, device=w.device)
    out.permute(1, 0, 2).copy_(w.unflatten(1, (blocks, block_cols)))  # one copy, from any strides
    return out
