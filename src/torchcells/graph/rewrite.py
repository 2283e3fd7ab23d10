"""Rewriting traced graphs: cutting a sub-graph out, dropping detaches, cheaper call targets."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

__all__ = ["cut_graph", "drop_detach", "fast_targets"]

aten = torch.ops.aten


def cut_graph(graph: fx.Graph, inputs: list[fx.Node], outputs: list[Any]) -> fx.Graph:
    """A new graph computing ``outputs`` from ``inputs`` (nodes of ``graph``), copying what is needed."""
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for i, node in enumerate(inputs):
        env[node] = new.placeholder(f"in_{i}_{node.name}")
        env[node].meta = dict(node.meta)

    def copy(node: fx.Node) -> fx.Node:
        if node not in env:
            for a in node.all_input_nodes:
                copy(a)
            env[node] = new.node_copy(node, lambda n: env[n])
        return env[node]

    new.output(tuple(copy(o) if isinstance(o, fx.Node) else o for o in outputs))
    new.eliminate_dead_code()
    return new


def drop_detach(graph: fx.Graph) -> None:
    """Remove ``detach`` nodes; only for graphs that run without autograd (derived backward graphs)."""
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in (aten.detach.default, aten.alias.default):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)



# aten overloads with a torch function of the same signature and semantics: the torch
# function is called with less Python overhead (~0.6 µs a call), which adds up per step.
_FAST = {
    aten.add.Tensor: torch.add, aten.sub.Tensor: torch.sub, aten.mul.Tensor: torch.mul,
    aten.div.Tensor: torch.div, aten.sigmoid.default: torch.sigmoid, aten.tanh.default: torch.tanh,
    aten.relu.default: torch.relu, aten.exp.default: torch.exp, aten.neg.default: torch.neg,
    aten.mm.default: torch.mm, aten.addmm.default: torch.addmm, aten.t.default: torch.t,
    aten.cat.default: torch.cat, aten.where.self: torch.where, aten.rsub.Scalar: torch.rsub,
    aten.clone.default: torch.clone,
    # the graphs given to fast_targets run without autograd, where split's view tracking is moot
    aten.split.Tensor: torch.unsafe_split,
}


def fast_targets(graph: fx.Graph) -> None:
    """Point aten calls at their torch twins where both mean the same (see ``_FAST``).

    Only for graphs that run without autograd (the derived forward/backward of the
    fused path, the inference step)."""
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _FAST:
            node.target = _FAST[node.target]
