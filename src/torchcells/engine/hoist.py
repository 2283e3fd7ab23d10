"""The input region over all steps: one product over ``T·B`` rows, rounded once.

The fused path runs a cell's input region (:func:`torchcells.graph.trace_cell`,
``input_fn(x_t, *params)``, traced for one step's ``B`` rows) over the whole sequence
with ``torch.vmap`` over time, so any per-step code keeps its shapes and dims exact.
But vmap's rule for ``addmm(b, x, Wᵀ)`` with ``x`` batched is ``mm`` over the stacked
rows, then ``b·1 + product``: the product is rounded to its dtype *before* the bias is
added, where the loop's ``addmm`` adds the bias to the unrounded sum and rounds once.
In float32 the second rounding is 2⁻²⁴ of the product; in bfloat16 it is 2⁻⁸ of it,
and where ``x·Wᵀ ≈ −b`` it decides the sign of the pre-activation: MinLSTM's candidate
activation ``g`` has slope 1 above 0 and 1/4 below, so one pre-activation of −0.00094
(the loop's) that came out 0.0 (vmap's) made one input gradient 15× the loop's error.

:func:`hoisted` therefore runs a copy of ``input_fn`` whose plain ``addmm`` calls go
through :class:`_RowsAddmm`, whose vmap rule folds the batch into the rows and calls
``addmm`` once (one rounding, and one pass instead of three); its backward is addmm's
(``dx = g W``, ``dWᵀ = xᵀ g``, ``db = Σ_rows g``) over all rows, in differentiable
operations (so second-order gradients go through it).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor, fx

from ..graph import CellProgram

__all__ = ["hoisted"]

aten = torch.ops.aten
#: input_fn -> its copy with rows_addmm
_REWRITTEN: "weakref.WeakKeyDictionary[fx.GraphModule, fx.GraphModule]" = weakref.WeakKeyDictionary()


def hoisted(program: CellProgram, x: Tensor, params: list[Tensor]) -> tuple[Tensor, ...]:
    """``program.input_fn`` over every step of ``x`` ``(T, B, ...)``: its outputs ``(T, B, ...)`` each."""
    fn = _REWRITTEN.get(program.input_fn)
    if fn is None:
        fn = _REWRITTEN[program.input_fn] = _with_rows_addmm(program.input_fn)
    return tuple(torch.vmap(fn, in_dims=(0,) + (None,) * len(params))(x, *params))


def _with_rows_addmm(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` with each plain ``addmm(b, x, w)`` (no ``beta``/``alpha``) as :func:`rows_addmm`."""
    graph = fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    for node in graph.nodes:
        if node.op == "call_function" and node.target is aten.addmm.default and len(node.args) == 3 \
                and not node.kwargs:
            node.target = rows_addmm
    graph.lint()
    return fx.GraphModule(gm, graph)


def rows_addmm(bias: Tensor, x: Tensor, w: Tensor) -> Tensor:
    """``addmm(bias, x, w)``, whose vmap over ``x`` alone is one ``addmm`` over the folded rows."""
    return _RowsAddmm.apply(bias, x, w)


class _RowsAddmm(torch.autograd.Function):
    """``bias + x @ w`` with addmm's single rounding under vmap (see the module)."""

    @staticmethod
    def forward(bias: Tensor, x: Tensor, w: Tensor) -> Tensor:
        return torch.addmm(bias, x, w)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        bias, x, w = inputs
        ctx.save_for_backward(x, w)
        ctx.bias_shape = bias.shape

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        x, w = ctx.saved_tensors
        d_bias = d_x = d_w = None
        if ctx.needs_input_grad[0]:
            d_bias = grad.sum_to_size(ctx.bias_shape)
        if ctx.needs_input_grad[1]:
            d_x = grad.mm(w.t())
        if ctx.needs_input_grad[2]:
            d_w = x.t().mm(grad)
        return d_bias, d_x, d_w

    @staticmethod
    def vmap(info: Any, in_dims: tuple, bias: Tensor, x: Tensor, w: Tensor) -> tuple[Tensor, int]:
        bias_dim, x_dim, w_dim = in_dims
        if bias_dim is not None or w_dim is not None or x_dim is None:
            # not the hoisting case: vmap's own rule for addmm (the product rounded before the sum)
            return torch.vmap(_addmm, in_dims=in_dims)(bias, x, w), 0
        rows = x.movedim(x_dim, 0)
        batch, per = rows.shape[0], rows.shape[1]
        out = _RowsAddmm.apply(bias, rows.reshape(batch * per, rows.shape[2]), w)
        return out.reshape(batch, per, out.shape[-1]), 0


def _addmm(bias: Tensor, x: Tensor, w: Tensor) -> Tensor:
    return torch.addmm(bias, x, w)
