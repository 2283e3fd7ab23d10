"""A trace of a step on the CPU without torch's compiler stack.

``make_fx`` imports ``torch._inductor`` (and through it ``torch._dynamo`` and sympy) on every
trace, a one-time cost of about a second -- most of a fresh process's first call of a layer.
Fake and meta tensors do not avoid it: their Python shape functions import ``torch._dynamo`` at
their first operation. :func:`real_trace` records the same graph for the common case with a
dispatch mode of its own over *real* CPU tensors (copies; one step at the call's sizes costs
little): each aten call that reaches it becomes one ``call_function`` node, named as
``make_fx`` names it, after autograd, so ``torch.autograd.grad`` inside the traced function is
recorded as its backward's aten calls; each node's ``meta["val"]`` is then an empty ``meta``
tensor of the value's shape, strides and dtype (a cached graph keeps no data). What it does not
handle the way ``make_fx`` does -- a tensor that is neither an input nor made inside the trace (a
constant), a value or shape read from data (``.item()``, ``if tensor:``, ``z[z > 0]``, which real data
would let pass and bake in), an input not on the CPU, autocast on -- raises :class:`Unsupported`, and the caller
traces with ``make_fx`` instead: the light trace is a shortcut, never a second meaning.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import torch
from torch import Tensor, fx
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

__all__ = ["Unsupported", "fake_mode_trace", "real_trace", "usable"]


class Unsupported(Exception):
    """The light trace cannot record this function as ``make_fx`` would (why is the message)."""


class _Recorder(TorchDispatchMode):
    """Records every aten call into ``graph``; tensors map to the nodes that made them."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # torch would wrap __torch_dispatch__ in a dynamo-disable: importing torch._dynamo

    def __init__(self, graph: fx.Graph) -> None:
        super().__init__()
        self.graph = graph
        self.nodes: dict[int, tuple[Tensor, fx.Node]] = {}  # id -> (the tensor, kept alive; its node)

    def bind(self, tensor: Tensor, node: fx.Node) -> None:
        self.nodes[id(tensor)] = (tensor, node)
        node.meta["val"] = tensor

    def node_of(self, value: Any) -> Any:
        if isinstance(value, Tensor):
            found = self.nodes.get(id(value))
            if found is None or found[0] is not value:
                raise Unsupported("a tensor that is neither an input nor made in the trace (a constant)")
            return found[1]
        if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            raise Unsupported("a symbolic size")
        return value

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        from torch.utils._python_dispatch import autograd_would_have_decomposed

        kwargs = kwargs or {}
        if func is torch.ops.prim.device.default:
            return func(*args, **kwargs)
        flat, _ = tree_flatten((args, kwargs))
        if func in (torch.ops.aten.is_nonzero.default, torch.ops.aten.lift_fresh.default) \
                or torch.Tag.data_dependent_output in func.tags or torch.Tag.dynamic_output_shape in func.tags:
            # a value or a shape read from data (z[z > 0], nonzero, unique): real data would let it pass
            raise Unsupported(f"{func} (make_fx treats it apart)")
        if autograd_would_have_decomposed(func, flat):  # as make_fx does: record its decomposition
            with self:
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        node_args, node_kwargs = tree_map(self.node_of, (args, kwargs))
        out = func(*args, **kwargs)
        outs = out if isinstance(out, (tuple, list)) else [out]
        if not all(isinstance(o, Tensor) and o.device.type == "cpu" for o in outs):
            raise Unsupported(f"{func} returned something other than CPU tensors")
        node = self.graph.create_node("call_function", func, node_args, node_kwargs,
                                      name=self.graph._target_to_str(func.overloadpacket.__name__))
        if isinstance(out, Tensor):
            self.bind(out, node)
        else:
            node.meta["val"] = out
            for i, o in enumerate(out):
                self.bind(o, self.graph.create_node("call_function", operator.getitem, (node, i), {}, name="getitem"))
        return out


def usable(tensors: list[Tensor]) -> bool:
    """Whether :func:`real_trace` may stand in for ``make_fx`` here: every tensor a plain CPU
    tensor and autocast off (a trace under autocast records its casts; left to ``make_fx``)."""
    return (all(type(t) in (Tensor, torch.nn.Parameter) and t.device.type == "cpu" for t in tensors)
            and not torch.is_autocast_enabled("cpu"))


def real_trace(fn: Callable[..., Any], *args: Any) -> fx.GraphModule:
    """``make_fx(fn, tracing_mode="fake")(*args)`` for the common case (see the module's
    docstring), run on copies of ``args`` (CPU tensors or lists of them, :func:`usable`),
    flattened into placeholders in order. Raises :class:`Unsupported` where ``make_fx`` is
    needed, or what ``fn`` raised."""
    leaves, spec = tree_flatten(args)
    if not all(isinstance(t, Tensor) for t in leaves) or not usable(leaves):
        raise Unsupported("an argument that is not a CPU tensor, or autocast on")
    graph = fx.Graph()
    recorder = _Recorder(graph)
    copies = [t.detach().clone().requires_grad_(t.requires_grad) for t in leaves]
    for i, copy in enumerate(copies):
        recorder.bind(copy, graph.placeholder(f"arg{i}_1"))
    with recorder:
        out = fn(*tree_unflatten(copies, spec))
    graph.output(tree_map(recorder.node_of, out))
    for node in graph.nodes:
        if "val" in node.meta:
            node.meta["val"] = tree_map(_meta_like, node.meta["val"])
    return fx.GraphModule(torch.nn.Module(), graph, getattr(fn, "__name__", "fn"))


def _meta_like(value: Any) -> Any:
    if not isinstance(value, Tensor):
        return value
    return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")


def fake_mode_trace(fn: Callable[..., Any], *args: Any, passthrough: tuple[type[BaseException], ...] = ()) -> fx.GraphModule:
    """``make_fx(fn, tracing_mode="fake")(*args)``: by :func:`real_trace` where it serves (no compiler
    stack imported), else by ``make_fx`` itself. An exception of a ``passthrough`` type from ``fn``
    (the caller's own verdict on the step) is raised at once; any other failure of the light trace
    leaves the call to ``make_fx``, which raises what it raises."""
    leaves, _ = tree_flatten(args)
    if all(isinstance(t, Tensor) for t in leaves) and usable(leaves):
        try:
            return real_trace(fn, *args)
        except passthrough:
            raise
        except Exception:
            pass
    from torch.fx.experimental.proxy_tensor import make_fx

    return make_fx(fn, tracing_mode="fake")(*args)
