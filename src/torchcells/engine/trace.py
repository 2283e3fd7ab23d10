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
from torch.utils._pytree import TreeSpec, tree_flatten, tree_unflatten

__all__ = ["CellProgram", "TraceError", "cut_graph", "drop_detach", "fast_targets", "trace_cell", "trace_step"]

aten = torch.ops.aten

# Operations whose results differ from call to call: never hoisted or fused.
_RANDOM = {"bernoulli", "native_dropout", "rand", "randn", "rand_like", "randn_like", "randint",
           "normal", "uniform", "multinomial", "randperm", "exponential", "geometric", "cauchy",
           "log_normal", "poisson", "dropout"}


class TraceError(RuntimeError):
    """The cell's step cannot be split (why is in the message); the reference loop runs instead."""


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



def _op_name(node: fx.Node) -> str:
    target = node.target
    name = getattr(target, "__name__", str(target))
    packet = getattr(target, "overloadpacket", None)
    if packet is not None:
        name = getattr(packet, "__name__", name)
    return name.split(".")[0].rstrip("_")


def trace_cell(cell: nn.Module, x: Tensor, state: Any) -> CellProgram:
    """Trace ``cell`` at the shapes of one step ``x`` ``(B, ...)`` and ``state``.

    Raises :class:`TraceError` when the step cannot be traced (data-dependent
    control flow, random operations, state that is not a tree of tensors).
    """
    gm, names, spec = trace_step(cell, x, state)
    return _split(gm, names, spec, spec.num_leaves)


def trace_step(cell: nn.Module, x: Tensor, state: Any) -> tuple[fx.GraphModule, list[str], TreeSpec]:
    """The whole step as one aten graph, unsplit: ``(graph_module, param_names, state_spec)``.

    The graph's placeholders are the parameters and buffers (``param_names`` order),
    ``x_t``, then the state's leaves; its output is ``(y_t, *new_state_leaves)``.
    Raises :class:`TraceError` as :func:`trace_cell` does.
    """
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.func import functional_call

    named = list(cell.named_parameters()) + list(cell.named_buffers())
    names = [n for n, _ in named]
    tensors = [t for _, t in named]
    leaves, spec = tree_flatten(state)
    if not all(isinstance(t, Tensor) for t in leaves):
        raise TraceError("the state is not made of tensors only")

    def step(params: list[Tensor], x_t: Tensor, *state_leaves: Tensor):
        y, new = functional_call(cell, dict(zip(names, params)), (x_t, tree_unflatten(list(state_leaves), spec)))
        new_leaves, new_spec = tree_flatten(new)
        if new_spec != spec:
            raise TraceError(f"the new state's structure {new_spec} differs from the old {spec}")
        return (y, *new_leaves)

    try:
        with torch.no_grad():
            gm = make_fx(step, tracing_mode="fake")([t.detach() for t in tensors], x.detach(),
                                                   *[t.detach() for t in leaves])
    except TraceError:
        raise
    except Exception as e:  # data-dependent control flow, unsupported ops, ...
        raise TraceError(f"tracing {type(cell).__name__}.forward failed: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from e
    return gm, names, spec


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
        if _op_name(node) in _RANDOM:
            raise TraceError(f"the step uses a random operation ({_op_name(node)})")
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
