"""Split a cell's step into what depends on the input only and what needs the state.

``trace_cell(cell, x_t, state)`` traces the plain ``forward`` once (``make_fx`` with
fake tensors, so nothing is computed and data-dependent Python control flow is
detected rather than baked in) into a graph of aten operations, then sorts every
node into one of three regions:

* **const** -- depends on parameters only (``W_hhᵀ``, a bias sum): computed once
  per sequence;
* **input** -- depends on ``x_t`` (and parameters) but not on the state
  (``x_t W_ihᵀ + b_ih``): computed once for all ``T`` steps as one large product,
  outside the time loop (*hoisted*);
* **step** -- depends on the state: the only part that runs once per step.

The result, a :class:`CellProgram`, holds three graph modules: ``const_fn(*params)``,
``input_fn(x_t, *params)`` (applied to the whole sequence with ``torch.vmap`` over
time, so any per-step code is hoisted correctly whatever dims it names), and
``step_fn(*hoisted_t, *state_leaves, *consts) -> (y_t, *new_state_leaves)``.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.utils._pytree import TreeSpec

from .rewrite import cut_graph, fast_targets
from .trace import RANDOM_OPS, TraceError, op_name, trace_step

__all__ = ["CellProgram", "trace_cell"]

aten = torch.ops.aten


@dataclass
class CellProgram:
    """A cell's step split into const, input (hoisted) and step regions."""

    param_names: list[str]
    state_spec: TreeSpec
    n_state: int
    const_fn: fx.GraphModule
    input_fn: fx.GraphModule
    step_fn: fx.GraphModule
    n_hoisted: int
    n_const: int
    #: ``step_fn`` with torch twins for aten calls, for running without autograd.
    fast_step_fn: fx.GraphModule

    def params(self, cell: nn.Module) -> list[Tensor]:
        named: dict[str, Tensor] = dict(cell.named_parameters())
        named.update(dict(cell.named_buffers()))
        return [named[n] for n in self.param_names]



def trace_cell(cell: nn.Module, x: Tensor, state: Any, *, batch_generic: bool = False) -> CellProgram:
    """Trace ``cell`` at the shapes of one step ``x`` ``(B, ...)`` and ``state``.

    Raises :class:`TraceError` when the step cannot be traced (data-dependent
    control flow, random operations, state that is not a tree of tensors).
    """
    gm, names, spec = trace_step(cell, x, state, batch_generic=batch_generic)
    return _split(gm, names, spec, spec.num_leaves)


def _split(gm: fx.GraphModule, names: list[str], spec: TreeSpec, n_state: int) -> CellProgram:
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    n_params = len(names)
    param_nodes = placeholders[:n_params]
    x_node = placeholders[n_params]
    state_nodes = placeholders[n_params + 1:]
    region: dict[fx.Node, str] = {}
    for p in param_nodes:
        region[p] = "const"
    region[x_node] = "input"
    for s in state_nodes:
        region[s] = "step"
    output = next(n for n in graph.nodes if n.op == "output")
    _classify(graph, region)
    if _fold_into_products(graph, region):
        _classify(graph, region)
    if _merge_biases(graph, region):
        _classify(graph, region)
    _split_in_the_step(graph, region)

    # Values crossing from const/input into the step region (or straight to the output).
    consumers = [n for n in graph.nodes if region.get(n) == "step"] + [output]
    hoisted: list[fx.Node] = []
    consts: list[fx.Node] = []
    for node in consumers:
        for a in node.all_input_nodes:
            kind = region[a]
            if kind == "input" and a not in hoisted:
                hoisted.append(a)
            elif kind == "const" and a not in consts:
                consts.append(a)
    for a in hoisted + consts:
        if "val" in a.meta and not isinstance(a.meta["val"], Tensor):
            raise TraceError(f"a value crossing into the step is not a tensor ({a.name})")

    outputs = list(output.args[0])

    const_fn = fx.GraphModule(gm, cut_graph(graph, param_nodes, consts))
    input_fn = fx.GraphModule(gm, cut_graph(graph, [x_node] + param_nodes, hoisted))
    step_fn = fx.GraphModule(gm, cut_graph(graph, hoisted + state_nodes + consts, outputs))
    return CellProgram(names, spec, n_state, const_fn, input_fn, step_fn, len(hoisted), len(consts),
                       _fast_copy(step_fn))


def _classify(graph: fx.Graph, region: dict[fx.Node, str]) -> None:
    """Region of every computed node: step if it reads the state, else input if it reads x, else const."""
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op != "call_function":
            raise TraceError(f"unexpected graph node {node.op} {node.target}")
        if op_name(node) in RANDOM_OPS:
            raise TraceError(f"the step uses a random operation ({op_name(node)})")
        kinds = {region[a] for a in node.all_input_nodes}
        region[node] = "step" if "step" in kinds else ("input" if "input" in kinds else "const")


def _fold_into_products(graph: fx.Graph, region: dict[fx.Node, str]) -> bool:
    """Re-associate ``u_t + (c + h W)`` as ``(u_t + c) + h W`` with ``u_t + c`` hoisted.

    ``add(U, addmm(c, h, W))`` with ``U`` from the input region and ``c`` const becomes
    ``addmm(add(U, c), h, W)``, and ``add(U, mm(h, W))`` becomes ``addmm(U, h, W)``: the
    per-step bias add disappears, and so does the per-step bias gradient (it comes
    from the hoisted part, summed over all steps at once).
    """
    changed = False
    for node in list(graph.nodes):
        if not (node.op == "call_function" and node.target is aten.add.Tensor and len(node.args) == 2
                and not node.kwargs):
            continue
        a, b = node.args
        for hoisted, product in ((a, b), (b, a)):
            if not (isinstance(hoisted, fx.Node) and isinstance(product, fx.Node)
                    and region.get(hoisted) == "input" and region.get(product) == "step"
                    and len(product.users) == 1 and not product.kwargs):
                continue
            if not _same_shape(hoisted, node):
                continue
            if product.target is aten.addmm.default and len(product.args) == 3 \
                    and isinstance(product.args[0], fx.Node) and region.get(product.args[0]) == "const":
                with graph.inserting_before(product):
                    folded = graph.call_function(aten.add.Tensor, (hoisted, product.args[0]))
                    folded.meta = dict(hoisted.meta)
                product.args = (folded,) + tuple(product.args[1:])
            elif product.target is aten.mm.default:
                product.target = aten.addmm.default
                product.args = (hoisted,) + tuple(product.args)
            else:
                continue
            product.meta = dict(node.meta)
            node.replace_all_uses_with(product)
            graph.erase_node(node)
            changed = True
            break
    return changed


def _merge_biases(graph: fx.Graph, region: dict[fx.Node, str]) -> bool:
    """``addmm(b1, x, W) + b2`` with both biases const becomes ``addmm(b1 + b2, x, W)``: one
    pass over the hoisted ``[T·B, ...]`` product instead of two (``b2`` is typically the
    recurrent bias that :func:`_fold_into_products` moved out of the step)."""
    changed = False
    for node in list(graph.nodes):
        if not (node.op == "call_function" and node.target is aten.add.Tensor and len(node.args) == 2
                and not node.kwargs and region.get(node) == "input"):
            continue
        for product, bias in (node.args, node.args[::-1]):
            if not (isinstance(product, fx.Node) and isinstance(bias, fx.Node)
                    and product.op == "call_function" and product.target is aten.addmm.default
                    and len(product.args) == 3 and not product.kwargs and len(product.users) == 1
                    and region.get(bias) == "const" and isinstance(product.args[0], fx.Node)
                    and region.get(product.args[0]) == "const" and _same_shape(product.args[0], bias)
                    and _same_shape(product, node)):
                continue
            with graph.inserting_before(product):
                merged = graph.call_function(aten.add.Tensor, (product.args[0], bias))
                merged.meta = dict(bias.meta)
            product.args = (merged,) + tuple(product.args[1:])
            node.replace_all_uses_with(product)
            graph.erase_node(node)
            changed = True
            break
    return changed


_SPLITS = {aten.split.Tensor, aten.split_with_sizes.default, aten.unsafe_split.Tensor}


def _split_in_the_step(graph: fx.Graph, region: dict[fx.Node, str]) -> None:
    """Hoist a product whole, not its pieces: when every piece of a split hoisted value is read
    only by the step, the split moves into the step (a view per step). The step then reads one
    ``(T, B, n)`` hoisted tensor, and its backward writes that tensor's gradient in one piece
    rather than in parts that autograd would have to join."""
    output = next(n for n in graph.nodes if n.op == "output")
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in _SPLITS or region.get(node) != "input":
            continue
        pieces = list(node.users)
        if not pieces or any(p.target is not operator.getitem for p in pieces):
            continue
        if all(all(region.get(u) == "step" or u is output for u in p.users) for p in pieces):
            region[node] = "step"
            for p in pieces:
                region[p] = "step"


def _same_shape(a: fx.Node, b: fx.Node) -> bool:
    va, vb = a.meta.get("val"), b.meta.get("val")
    return isinstance(va, Tensor) and isinstance(vb, Tensor) and va.shape == vb.shape and va.dtype == vb.dtype


def _fast_copy(gm: fx.GraphModule) -> fx.GraphModule:
    fast = copy.deepcopy(gm)
    fast_targets(fast.graph)
    fast.recompile()
    return fast
