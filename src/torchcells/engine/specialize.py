"""Batch-generic kernels made concrete for one batch size.

A batch-generic derivation (:func:`.derive.fused_program` at ``B >= 2``) holds graphs whose
batch dim is a symbol. The Python executor runs them as they are (a ``sym_size`` node reads
the size from the tensor it is given). What reads shapes ahead of the run -- the native
planner (the aten graphs' ``val`` metadata and their ``SymInt`` arguments) and the executors'
zero tangents (``tangent_meta``) -- gets, per ``B``, a copy of the kernels whose aten graphs
have the symbol replaced by ``B``: each ``SymInt`` node becomes its number, each value's
metadata a ``meta`` tensor of the concrete shape. The copy shares the forward, backward and
program graphs with the generic kernels and has its own ``lowered`` cache (a native plan per
``B``). A few copies are kept per kernels (:data:`KEPT`), the most recently used.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

if TYPE_CHECKING:
    from .derive import FusedKernels

__all__ = ["KEPT", "for_batch"]

#: specializations kept per batch-generic kernels (each holds two graph copies and maybe a plan)
KEPT = 8


def for_batch(kernels: "FusedKernels", batch: int) -> "FusedKernels":
    """``kernels`` (batch-generic) specialized to ``batch`` (made on first use, a few kept)."""
    kept = kernels.by_batch
    found = kept.get(batch)
    if found is not None:
        kept.move_to_end(batch)
        return found
    values = {kernels.batch_symbol: batch}
    found = dataclasses.replace(
        kernels, batch_symbol=None, lowered={},
        tangent_meta=[(torch.Size(_ints(shape, values)), dtype) for shape, dtype in kernels.tangent_meta],
        aten_graphs=(_concrete_graph(kernels.aten_graphs[0], values), _concrete_graph(kernels.aten_graphs[1], values)))
    found.by_batch = kept  # not used by the copy; the field is shared, not copied per B
    kept[batch] = found
    while len(kept) > KEPT:
        kept.popitem(last=False)
    return found


def _int(size: Any, values: dict) -> int:
    if isinstance(size, torch.SymInt):
        return int(size.node.expr.xreplace(values))
    return int(size)


def _ints(shape: Any, values: dict) -> tuple[int, ...]:
    return tuple(_int(s, values) for s in shape)


def _concrete_val(val: Any, values: dict) -> Any:
    """``val`` with the batch symbol replaced: a number for a ``SymInt``, a ``meta`` tensor of the
    concrete shape, stride and dtype for a tensor, lists and tuples item by item."""
    if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        number = val.node.expr.xreplace(values)
        kind = {torch.SymInt: int, torch.SymFloat: float, torch.SymBool: bool}[type(val)]
        return kind(number)
    if isinstance(val, torch.Tensor):
        return torch.empty_strided(_ints(val.shape, values), _ints(val.stride(), values), dtype=val.dtype,
                                   device="meta")
    if isinstance(val, (list, tuple)):
        return type(val)(_concrete_val(v, values) for v in val)
    return val


def _concrete_graph(graph: fx.Graph, values: dict) -> fx.Graph:
    """A copy of ``graph`` for one batch size: symbolic-size nodes folded to numbers, metadata concrete."""
    copy = fx.Graph()
    env: dict[fx.Node, Any] = {}
    for node in graph.nodes:
        if node.op == "output":
            copy.output(fx.node.map_arg(node.args[0], lambda n: env[n]))
            continue
        val = node.meta.get("val")
        if node.op != "placeholder" and isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            env[node] = _concrete_val(val, values)  # a number where the node was
            continue
        env[node] = new = copy.node_copy(node, lambda n: env[n])
        new.meta = {"val": _concrete_val(val, values)} if val is not None else {}
    return copy
