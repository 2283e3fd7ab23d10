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

Most input regions need no vmap at all: an ``addmm``/``mm`` on the step's rows, pointwise
operations, splits along a feature dim and dtype casts treat each row of ``x_t`` on its own,
so the region over ``T·B`` folded rows *is* the region over every step, in one call and
without vmap's dispatch (about 1 ms a call at B=8, T=200). :func:`_row_wise` proves that
once per region and shapes, over one step's values: every operation reading the rows is one of
those, each other operand broadcasts over the rows (fewer dims, or a size-1 leading dim),
and every output is rows. Anything else (a convolution, a reshape with the batch size in
it, a random draw, a reduction) keeps vmap.
"""

from __future__ import annotations

import operator
import weakref
from typing import Any

import torch
from torch import Tensor, fx

from ..graph import CellProgram

__all__ = ["hoisted"]

aten = torch.ops.aten
#: input_fn -> its copy with rows_addmm
_REWRITTEN: "weakref.WeakKeyDictionary[fx.GraphModule, fx.GraphModule]" = weakref.WeakKeyDictionary()
#: input_fn -> {(x's per-row shape and dtype, the params' shapes and dtypes): whether it is row-wise}
_ROW_WISE: "weakref.WeakKeyDictionary[fx.GraphModule, dict]" = weakref.WeakKeyDictionary()


def hoisted(program: CellProgram, x: Tensor, params: list[Tensor]) -> tuple[Tensor, ...]:
    """``program.input_fn`` over every step of ``x`` ``(T, B, ...)``: its outputs ``(T, B, ...)`` each."""
    if x.dim() >= 2 and _row_wise(program.input_fn, x, params):
        steps, batch = x.shape[0], x.shape[1]
        outs = program.input_fn(x.reshape(steps * batch, *x.shape[2:]), *params)
        return tuple(o.reshape(steps, batch, *o.shape[1:]) for o in outs)
    fn = _REWRITTEN.get(program.input_fn)
    if fn is None:
        fn = _REWRITTEN[program.input_fn] = _with_rows_addmm(program.input_fn)
    return tuple(torch.vmap(fn, in_dims=(0,) + (None,) * len(params))(x, *params))


def _row_wise(gm: fx.GraphModule, x: Tensor, params: list[Tensor]) -> bool:
    """Whether ``gm(x_t, *params)`` treats each row of ``x_t`` on its own (see the module)."""
    key = (tuple(x.shape[2:]), x.dtype, tuple((tuple(p.shape), p.dtype) for p in params))
    known = _ROW_WISE.setdefault(gm, {})
    found = known.get(key)
    if found is None:
        found = known[key] = _RowWise(gm).proves(x, params)
    return found


class _RowWise(fx.Interpreter):
    """Runs the region over one step's values, marking what depends on the rows of ``x_t`` (its first
    placeholder) and refusing (:class:`_NotRowWise`) any operation that could mix rows."""

    _SPLITS = {aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default, aten.unbind.int,
               aten.select.int, aten.narrow.default, aten.slice.Tensor}
    _SAME = {aten.clone.default, aten._to_copy.default, aten.alias.default}

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.graph: fx.Graph = gm.graph
        self.x_t = next(iter(gm.graph.nodes))  # the first placeholder
        self.rows: set[fx.Node] = set()

    def proves(self, x: Tensor, params: list[Tensor]) -> bool:
        # one step's real values (a meta run would import torch's compiler stack, ~1 s, for
        # decompositions; this is one step's input product)
        try:
            with torch.no_grad():
                outs = self.run(*[t.detach() for t in (x[0], *params)])
        except Exception:  # _NotRowWise, or an operation that failed here: keep vmap
            return False
        out_node = next(n for n in self.graph.nodes if n.op == "output")
        flat = out_node.args[0] if isinstance(out_node.args[0], (tuple, list)) else [out_node.args[0]]
        return isinstance(outs, (tuple, list)) and all(isinstance(n, fx.Node) and n in self.rows for n in flat)

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.op == "placeholder":
            if n is self.x_t:
                self.rows.add(n)
        elif n.op == "call_function" and any(a in self.rows for a in n.all_input_nodes):
            self._check(n, result)
            self.rows.add(n)
        return result

    def _check(self, n: fx.Node, result: Any) -> None:
        target, args = n.target, n.args
        if target is operator.getitem:
            return
        if target in (aten.addmm.default, aten.mm.default):
            rows_arg = args[1] if target is aten.addmm.default else args[0]
            others = [a for a in args if isinstance(a, fx.Node) and a is not rows_arg]
            if n.kwargs or rows_arg not in self.rows or any(a in self.rows for a in others):
                raise _NotRowWise
            if target is aten.addmm.default and not self._broadcasts(args[0], result):
                raise _NotRowWise
            return
        if target in self._SPLITS:
            dim = args[1] if len(args) > 1 else n.kwargs.get("dim", 0)
            if target in (aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default):
                dim = args[2] if len(args) > 2 else n.kwargs.get("dim", 0)
            source = args[0]
            if not isinstance(dim, int) or not isinstance(source, fx.Node) or source not in self.rows \
                    or dim % self._ndim(source) == 0:
                raise _NotRowWise
            return
        if target in self._SAME:
            if set(n.kwargs) - {"dtype", "memory_format"}:
                raise _NotRowWise
            return
        tags = getattr(target, "tags", ())
        if torch.Tag.pointwise not in tags or torch.Tag.nondeterministic_seeded in tags or n.kwargs:
            raise _NotRowWise
        if not all(self._broadcasts(a, result) for a in args if isinstance(a, fx.Node)):
            raise _NotRowWise

    def _ndim(self, node: fx.Node) -> int:
        return max(1, self.env[node].dim())

    def _broadcasts(self, node: Any, out: Tensor) -> bool:
        """An operand of an operation whose output ``out`` is rows: rows of the same dims, or a
        value that reaches the rows by broadcasting (fewer dims, or a leading size-1 dim)."""
        if not isinstance(node, fx.Node):
            return True
        value = self.env[node]
        if not isinstance(value, Tensor):
            return True
        if node in self.rows:
            return value.dim() == out.dim()
        return value.dim() < out.dim() or value.shape[0] == 1


class _NotRowWise(Exception):
    pass


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
