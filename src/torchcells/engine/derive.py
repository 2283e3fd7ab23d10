"""Deriving a cell's fused step: traced once per cell structure and shapes, then cached.

From the step region of :func:`torchcells.graph.trace_cell`, the step and its
``torch.autograd.grad`` are traced together (``make_fx``, fake tensors) and the joint
graph is cut: nodes that read a tangent form the backward, the others the forward,
and the forward values the backward reads are what each step saves. Then the
backward is rewritten so that gradients of weights used by per-step products come
out as the products' operands (summed over all steps later, in few large products),
and aten calls are pointed at their cheaper torch twins (a copy with aten targets is
kept for executors that compile the step). :func:`fused_program` returns the result
as :class:`FusedKernels`, for no backend in particular; :mod:`.fused` hands them to
an executor (:mod:`.executors`), which may plan them for itself on first use.
"""

from __future__ import annotations

import contextlib
import operator
import os
import sys
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, fx, nn

from ..cell import cell_name
from ..graph import (TRACING, CellProgram, TraceError, as_traced, batch_guards, cut_graph, drop_detach, fast_targets,
                     trace_cell)
from .trace_key import StepKey, describe_change, step_key

__all__ = ["FusedKernels", "explain_fallback", "fused_program"]

aten = torch.ops.aten
_SHAPE_OPS = {aten.t.default, aten.view.default, aten._unsafe_view.default, aten.reshape.default,
              aten.permute.default, aten.transpose.int, aten.unsqueeze.default, aten.squeeze.dim,
              aten.squeeze.default}


@dataclass
class FusedKernels:
    """Forward/backward graphs of the step region for one (masked or not) variant."""

    program: CellProgram
    masked: bool
    forward: fx.GraphModule            # (*hoisted_t, *state, *consts[, valid]) -> (*outs, *saved)
    backward: fx.GraphModule           # (*saved, *tangents) -> grads (see below)
    n_outputs: int                     # outs = (y, *state)
    deferred: dict[int, fx.GraphModule]  # const index -> graph turning sum_t A_t @ B_t into its gradient
    transposed: dict[int, bool]        # const index -> the deferred left operands come transposed
    n_grads: int                       # backward outputs before the deferred operands (one per primal)
    tangent_meta: list[tuple[torch.Size, torch.dtype]]  # shape and dtype of each output's gradient
    # forward and backward as derived, with aten targets (before the torch twins): what an
    # executor that compiles the step (the native runtime's planner) reads
    aten_graphs: tuple[fx.Graph, fx.Graph]
    # what executors made of these graphs (a plan, or why there is none), by executor name
    lowered: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: autocast's state when the step was traced (its casts are in the graphs), or None
    autocast: Any = None
    #: the batch size's symbol where the graphs serve every ``B >= 2`` (:mod:`.specialize`), else None
    batch_symbol: Any = None
    #: per batch size, these kernels specialized to it (made on first use; a few kept)
    by_batch: "OrderedDict[int, FusedKernels]" = field(default_factory=OrderedDict, repr=False, compare=False)


# Kernels are shared by cells of the same structure: the graphs take parameters as
# inputs, so two LSTMCell(64, 256) share one trace. The key (:mod:`.trace_key`) holds
# everything the trace may depend on: the structure, the step's shapes, and every Python
# value the step's code can read (attributes, class attributes, globals, the forward in
# effect). An entry is ``(kernels or the TraceError that stopped them, references to the
# objects its key names by identity, its weight in graph nodes)``.
_CACHE: "OrderedDict[tuple, tuple[Any, tuple, int]]" = OrderedDict()
_CACHE_SIZE = 256
#: the cache's bound in graph nodes, all entries together (:func:`_weight`): memory, not only a count
_CACHE_NODES = 40_000
_WARNED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()
#: derivations in a row for one cell (none found in the cache) after which it is told why, once
RETRACES_IN_A_ROW = 8
#: per cell: the key of its last derivation and how many derivations in a row it has had since a hit
_STREAKS: "weakref.WeakKeyDictionary[nn.Module, list]" = weakref.WeakKeyDictionary()
_WARNED_RETRACES: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def _key(cell: nn.Module, x_t: Tensor, state: Any, masked: bool, batch_generic: bool = False) -> StepKey:
    return step_key(cell, x_t, state, masked, _autocast_key(x_t.device.type), batch_generic)


class NotBatchGeneric(TraceError):
    """A batch-generic trace guarded on the batch size (or failed): the cell is traced per ``B``."""


def _autocast_key(device_type: str) -> Any:
    """Autocast's state for ``device_type``: a trace records the casts autocast makes, so a step
    traced under autocast must not run outside it, nor the other way round."""
    try:
        if torch.is_autocast_enabled(device_type):
            return ("autocast", torch.get_autocast_dtype(device_type))
    except RuntimeError:  # a device type without autocast
        pass
    return None


def fused_program(cell: nn.Module, x_t: Tensor, state: Any, *, masked: bool) -> FusedKernels:
    """The cell's fused kernels for these shapes (traced once, then cached); raises TraceError.

    A cell's first batch size is derived for itself (:func:`_generic_wanted`); from its second on, at
    ``B >= 2``, the derivation is batch-generic: traced once with a symbolic batch size, it serves
    every ``B >= 2``, each ``B`` getting a cheap specialization (:func:`.specialize.for_batch`).
    A cell whose trace branches on ``B`` (a guard on the symbol) is derived per ``B`` instead, as
    is every step at ``B < 2`` (torch specializes sizes 0 and 1, so the generic trace assumed
    ``B >= 2`` and may have folded a test like ``B > 1`` without a guard)."""
    from .specialize import for_batch

    batch = x_t.shape[0] if x_t.dim() else 0
    with TRACING:  # one derivation at a time (make_fx is not thread-safe); the cache under it too
        found: Any = None
        if batch >= 2 and _generic_wanted(cell, batch):
            key = _key(cell, x_t, state, masked, batch_generic=True)
            found, built = _cached_or_built(key, cell, x_t, state, masked, batch_generic=True)
        if found is None or isinstance(found, NotBatchGeneric):
            key = _key(cell, x_t, state, masked)
            found, built = _cached_or_built(key, cell, x_t, state, masked)
        changing = _count_retraces(cell, key, built)
        if isinstance(found, FusedKernels) and found.batch_symbol is not None:
            found = for_batch(found, batch)
    if changing is not None:
        warnings.warn(changing, stacklevel=_caller_level())
    if isinstance(found, TraceError):
        raise found
    return found


#: per cell, the batch size of its first derivation (at ``B >= 2``), until a second one comes
_FIRST_BATCH: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()


def _generic_wanted(cell: nn.Module, batch: int) -> bool:
    """Whether this derivation at ``batch >= 2`` should be batch-generic: once the cell has met a
    second batch size. Its first is derived for that ``B`` alone: a symbolic trace imports torch's
    compiler stack (sympy, ``torch._dynamo``: about a second in a fresh process) and a per-``B`` trace
    on the CPU needs neither (:mod:`torchcells.graph.light`); a cell that only ever sees one ``B``
    never pays for the generic one."""
    first = _FIRST_BATCH.setdefault(cell, batch)
    return first != batch


def _cached_or_built(key: StepKey, cell: nn.Module, x_t: Tensor, state: Any, masked: bool,
                     batch_generic: bool = False) -> tuple[Any, bool]:
    """The cache's entry for ``key`` (kernels or the TraceError that stopped them), built if missing;
    and whether it was built. A batch-generic derivation that fails for any reason is entered as
    :class:`NotBatchGeneric` (the per-B derivation then says why, if it fails too)."""
    entry = _CACHE.get(key)
    if entry is not None and key.same_objects(entry[1]):
        _CACHE.move_to_end(key)
        return entry[0], False
    before = set(_fx_sources())
    if batch_generic:
        found = _build_generic(cell, x_t, state, masked)
    else:
        try:
            found = _build(cell, x_t, state, masked)
        except TraceError as e:
            found = e
        except Exception as e:  # a failure of the derivation itself: fall back, say why
            first_line = str(e).splitlines()[0] if str(e) else ""
            found = TraceError(f"deriving the fused step failed: {type(e).__name__}: {first_line}")
        if isinstance(found, FusedKernels):
            found.autocast = key[2][6]  # the key's autocast item
    # the sources of graph modules this derivation compiled and no longer uses (every recompile
    # makes a new one; make_fx's own) are forgotten now, those the entry keeps when it leaves
    _forget_sources(set(_fx_sources()) - before - _sources_of(found))
    _store(key, found)
    return found, (not isinstance(found, NotBatchGeneric)) if batch_generic else True


def _fx_sources() -> dict:
    """torch.fx's store of the source of every GraphModule it compiled (it never frees one: a cell
    re-traced at every call would grow it without bound)."""
    from torch.fx import graph_module

    return graph_module._loader.eval_cache


def _sources_of(found: Any) -> set[str]:
    """The keys of the sources the graph modules of a cache entry run from."""
    if not isinstance(found, FusedKernels):
        return set()
    from .hoist import _REWRITTEN  # the hoisted part's copy, made on first use

    program = found.program
    modules = [found.forward, found.backward, program.const_fn, program.input_fn, program.step_fn,
               program.fast_step_fn, *found.deferred.values()]
    if program.input_fn in _REWRITTEN:
        modules.append(_REWRITTEN[program.input_fn])
    return {code.co_filename for gm in modules if (code := getattr(gm.forward, "__code__", None)) is not None}


def _forget_sources(keys: set[str]) -> None:
    import linecache

    store = _fx_sources()
    for key in keys:
        store.pop(key, None)
        linecache.cache.pop(key, None)


def _store(key: StepKey, found: Any) -> None:
    """Enter ``found`` under ``key``; the least recently used entries leave while the cache holds
    more than :data:`_CACHE_SIZE` entries or :data:`_CACHE_NODES` nodes (the newest always stays)."""
    _CACHE.pop(key, None)
    _CACHE[tuple(key)] = (found, key.refs(), _weight(found))  # the plain tuple: no strong references
    nodes = sum(entry[2] for entry in _CACHE.values())  # a few hundred entries, on a miss only
    while len(_CACHE) > 1 and (len(_CACHE) > _CACHE_SIZE or nodes > _CACHE_NODES):
        gone = _CACHE.popitem(last=False)[1]
        nodes -= gone[2]
        _forget_sources(_sources_of(gone[0]))


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside torchcells and torch: the user's call."""
    inside = (os.path.dirname(os.path.dirname(__file__)), os.path.dirname(torch.__file__))
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


def _count_retraces(cell: nn.Module, key: StepKey, built: bool) -> Optional[str]:
    """Count ``cell``'s derivations in a row; at :data:`RETRACES_IN_A_ROW`, once per cell, what to
    tell the user: a Python value the trace bakes in changes at every call (each call then pays a
    trace, 40 ms or so, instead of reusing one)."""
    streak = _STREAKS.get(cell)
    if not built:
        if streak is not None:
            streak[1] = 0
        return None
    if streak is None:
        _STREAKS[cell] = [tuple(key), 0]  # the plain tuple (a bound forward would keep the cell alive)
        return None
    last, streak[0] = streak[0], tuple(key)
    streak[1] += 1
    if streak[1] < RETRACES_IN_A_ROW or cell in _WARNED_RETRACES:
        return None
    _WARNED_RETRACES.add(cell)
    changing = describe_change(last, streak[0])
    advice = ("pad batches to a few sizes" if changing == "the batch size" else
              "make it a buffer (register_buffer) or pass it to forward as a tensor, so the trace reads it "
              "instead of baking it in")
    return (f"{cell_name(cell)} was traced again at each of its last {streak[1]} calls of the fused engine "
            f"because {changing} changed every time; {advice}. While it keeps changing, engine='auto' runs "
            f"this cell on the reference loop (no more traces; a value that settles is traced again)")


def churning(cell: nn.Module, x_t: Tensor, state: Any, *, masked: bool) -> Optional[str]:
    """Why ``engine="auto"`` should leave this step to the loop without tracing it, or ``None``:
    the cell was derived again at each of its last :data:`RETRACES_IN_A_ROW` calls, and this
    call's key is new again (a value the step reads still changes at every call: each derivation
    costs a trace and keeps graphs; the loop reads the value as it is). A key seen at the call
    before is derived again (the value may have settled: the next call's hit ends the streak)."""
    streak = _STREAKS.get(cell)
    if streak is None or streak[1] < RETRACES_IN_A_ROW:
        return None
    with TRACING:
        batch = x_t.shape[0] if x_t.dim() else 0
        batch_generic = batch >= 2 and _FIRST_BATCH.get(cell, batch) != batch  # as fused_program keys it
        key = _key(cell, x_t, state, masked, batch_generic)
        entry = _CACHE.get(key)
        if (entry is not None and key.same_objects(entry[1])) or tuple(key) == streak[0]:
            return None
        streak[0] = tuple(key)
    return (f"a value its step reads changed at each of its last {streak[1]} calls, so each call would trace "
            f"the step again; the loop runs it while that goes on")


def explain_fallback(cell: Any, error: TraceError) -> None:
    """Warn once per cell that it runs on the reference loop, and why."""
    if cell not in _WARNED:
        _WARNED.add(cell)
        warnings.warn(f"{cell_name(cell)} runs on the reference loop (no hoisting, no fused backward): {error}",
                      stacklevel=4)


def _build_generic(cell: nn.Module, x_t: Tensor, state: Any, masked: bool) -> Any:
    """The batch-generic kernels, or :class:`NotBatchGeneric` (a guard on ``B``, or any failure)."""
    try:
        kernels = _build(cell, x_t, state, masked, batch_generic=True)
    except NotBatchGeneric as e:
        return e
    except Exception as e:
        first_line = (str(e).splitlines() or [""])[0]
        return NotBatchGeneric(f"the batch-generic trace failed: {type(e).__name__}: {first_line}")
    kernels.autocast = _autocast_key(x_t.device.type)
    return kernels


def _build(cell: nn.Module, x_t: Tensor, state: Any, masked: bool, batch_generic: bool = False) -> FusedKernels:
    with torch.enable_grad():  # deriving the backward needs autograd, even when called under no_grad
        # under the caller's autocast: its casts are recorded
        program = trace_cell(cell, x_t, state, batch_generic=batch_generic)
        with as_traced(x_t.device.type):  # the rest re-traces and runs that graph: no second casting
            return _build_with_grad(program, cell, x_t, state, masked)


def _build_with_grad(program: CellProgram, cell: nn.Module, x_t: Tensor, state: Any, masked: bool) -> FusedKernels:
    from torch.utils._pytree import tree_flatten

    step_fn = program.step_fn
    n_h, n_s, n_c = program.n_hoisted, program.n_state, program.n_const
    placeholder_outputs = _outputs_that_alias(step_fn)

    def wrapper(*args: Tensor):
        outs = list(step_fn(*args[: n_h + n_s + n_c]))
        outs = [o.clone() if i in placeholder_outputs else o for i, o in enumerate(outs)]
        y, new = outs[0], outs[1:]
        if masked:
            valid = args[-1]
            old = args[n_h: n_h + n_s]
            new = [torch.where(valid.reshape(valid.shape + (1,) * (n.dim() - 1)), n, o) for n, o in zip(new, old)]
            y = y.masked_fill(~valid.reshape(valid.shape + (1,) * (y.dim() - 1)), 0)
        # y is an output of its own even when it is a state leaf: its gradient is then added
        # inside the step's backward graph (one fused operation), not outside it
        return (y, *new)

    mode, symbol = _symbolic_mode(step_fn)
    if mode is None:
        leaves, _ = tree_flatten(state)
        with torch.no_grad():
            example_h = [torch.zeros(_shape(n), dtype=_dtype(n, x_t), device=x_t.device)
                         for n in _placeholders(step_fn)[:n_h]]
            consts = program.const_fn(*[p.detach() for p in program.params(cell)])
        args = [t.detach().clone() for t in [*example_h, *[l.detach() for l in leaves], *consts]]
        if masked:
            args.append(torch.ones(x_t.shape[0], dtype=torch.bool, device=x_t.device))
    else:  # the step's own fake inputs, symbolic batch dim included
        args = [n.meta["val"] for n in _placeholders(step_fn)]
        if masked:
            with mode:
                args.append(torch.ones(_batch_size(step_fn, n_h, n_s), dtype=torch.bool, device=x_t.device))
    fw, bw, n_outputs = _derive(wrapper, args, mode)
    guards = batch_guards(mode.shape_env) if mode is not None else []
    if guards:  # every guard names the one symbol: the step's Python read the batch size
        raise NotBatchGeneric(f"the trace branches on the batch size ({guards[0]})")
    n_grads = len(args)
    transposed: dict[int, bool] = {}
    deferred = _defer_weight_products(bw, range(n_h + n_s, n_h + n_s + n_c), transposed)
    for gm in (fw, bw):
        drop_detach(gm.graph)
        gm.graph.eliminate_dead_code()
    aten_graphs = (_copy_graph(fw.graph), _copy_graph(bw.graph))
    for gm in (fw, bw):
        fast_targets(gm.graph)
        gm.graph.lint()
        gm.recompile()
    fw_out = next(n for n in fw.graph.nodes if n.op == "output")
    tangent_meta = [(n.meta["val"].shape, n.meta["val"].dtype) for n in fw_out.args[0][:n_outputs]]
    kernels = FusedKernels(program, masked, fw, bw, n_outputs, deferred, transposed, n_grads,
                           tangent_meta, aten_graphs, batch_symbol=symbol)
    _slim(kernels)
    return kernels


def _graphs(kernels: FusedKernels) -> list[fx.Graph]:
    """Every graph the kernels hold."""
    program = kernels.program
    modules = [kernels.forward, kernels.backward, program.const_fn, program.input_fn, program.step_fn,
               program.fast_step_fn, *kernels.deferred.values()]
    return [gm.graph for gm in modules] + list(kernels.aten_graphs)


def _slim(kernels: FusedKernels) -> None:
    """Drop what a cache entry does not need: the nodes' metadata (fake tensors, stack traces,
    provenance), all but the aten graphs' shapes and dtypes (``val``), which a planner reads: 15 % of
    an entry (416 -> 356 KB of Python heap for an LSTMCell step; the rest is the graphs' nodes)."""
    for graph in _graphs(kernels):
        keep = graph in kernels.aten_graphs
        for node in graph.nodes:
            val = node.meta.get("val") if keep else None
            node.meta = {"val": val} if val is not None else {}


def _weight(found: Any) -> int:
    """A cache entry's weight: the nodes of its graphs (memory grows with them, ~2 KB a node)."""
    return sum(len(g.nodes) for g in _graphs(found)) if isinstance(found, FusedKernels) else 1


def _copy_graph(graph: fx.Graph) -> fx.Graph:
    """A copy of ``graph`` (nodes' metadata included) that later rewrites of ``graph`` leave alone."""
    copy = fx.Graph()
    copy.output(copy.graph_copy(graph, {}))
    return copy


def _symbolic_mode(step_fn: fx.GraphModule) -> tuple[Any, Any]:
    """The fake mode of a batch-generic step graph and its batch symbol; ``(None, None)`` for a concrete one."""
    for node in _placeholders(step_fn):
        val: Any = node.meta.get("val")
        for size in getattr(val, "shape", ()):
            if isinstance(size, torch.SymInt):
                return val.fake_mode, size.node.expr
    return None, None


def _batch_size(step_fn: fx.GraphModule, n_h: int, n_s: int) -> Any:
    """The (symbolic) batch size: dim 0 of the first hoisted or state input that has a symbolic one."""
    for node in _placeholders(step_fn)[:n_h + n_s]:
        shape = node.meta["val"].shape
        if len(shape) and isinstance(shape[0], torch.SymInt):
            return shape[0]
    raise TraceError("no input of the step has the batch size")


def _grad(outs: Sequence[Tensor], wrt: list[Tensor], tangents: Sequence[Tensor], *, checked: bool) -> tuple:
    """``torch.autograd.grad(outs, wrt, tangents, allow_unused=True)``; unless ``checked``, straight
    to the autograd engine without grad's checks of the tangents against the outputs (the tangents
    here are made as zeros like the outputs): their first use imports torch's symbolic-shapes module
    and sympy, 0.25-0.4 s of a first call in a fresh process. Where torch lacks the engine entry
    point, grad itself."""
    run = getattr(torch.autograd.graph, "_engine_run_backward", None)
    if checked or run is None:
        return torch.autograd.grad(outs, wrt, tangents, allow_unused=True)
    return run(tuple(outs), tuple(tangents), False, False, tuple(wrt), True, accumulate_grad=False)


def _derive(fn: Callable[..., tuple], args: list[Tensor],
            mode: Any = None) -> tuple[fx.GraphModule, fx.GraphModule, int]:
    """Forward and backward graphs of one step, derived from ``fn`` by tracing its joint.

    ``fn``'s forward and ``torch.autograd.grad`` of it are traced together (``make_fx``,
    fake tensors); the joint graph is then cut: nodes that read a tangent form the
    backward, the others the forward, and the forward values the backward reads are
    what each step saves. Returns ``forward(*args) -> (*outputs, *saved)``,
    ``backward(*saved, *tangents) -> one gradient per arg (None where none)`` and the
    number of outputs.
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    from ..graph.light import fake_mode_trace

    differentiable = [a.is_floating_point() for a in args]
    n_args = len(args)
    counts: dict[str, int] = {}

    def joint(*flat: Tensor):
        primals = [p.requires_grad_(True) if d else p for p, d in zip(flat[:n_args], differentiable)]
        outs = fn(*primals)
        counts["outputs"] = len(outs)
        tangents = flat[n_args:]
        wrt = [p for p, d in zip(primals, differentiable) if d]
        grads = iter(_grad(outs, wrt, tangents, checked=mode is not None))
        return (*outs, *[next(grads) if d else None for d in differentiable])

    with torch.enable_grad(), (mode if mode is not None else contextlib.nullcontext()):
        probe = fn(*[a.detach().requires_grad_(d) for a, d in zip(args, differentiable)])
        if any(not o.requires_grad for o in probe):
            raise TraceError("the step's outputs do not all depend on differentiable inputs")
        tangent_args = [torch.zeros_like(o) for o in probe]
        # args already fake (a symbolic batch size): traced as they are, in their mode
        inputs = [*[a.detach() for a in args], *tangent_args]
        # fake tracing without the compiler stack where it serves (graph.light)
        graph = (make_fx(joint)(*inputs) if mode is not None else
                 fake_mode_trace(joint, *inputs, passthrough=(TraceError,))).graph
    n_out = counts["outputs"]
    for node in graph.nodes:
        if node.op == "call_function" and getattr(getattr(node.target, "_schema", None), "is_mutable", False):
            raise TraceError(f"the step mutates a tensor in place ({node.target})")
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    primal_nodes, tangent_nodes = placeholders[:n_args], placeholders[n_args:]
    output = next(n for n in graph.nodes if n.op == "output")
    results = list(output.args[0])
    backward_nodes: set[fx.Node] = set(tangent_nodes)
    for node in graph.nodes:
        if node.op == "call_function" and any(a in backward_nodes for a in node.all_input_nodes):
            backward_nodes.add(node)
    _sizes_from_tangents(graph, backward_nodes, tangent_nodes)
    forward_outputs = results[:n_out]
    if any(isinstance(o, fx.Node) and o in backward_nodes for o in forward_outputs):
        raise TraceError("an output of the step depends on its own gradient")
    saved: list[fx.Node] = []
    for node in graph.nodes:
        if node in backward_nodes and node.op == "call_function":
            for a in node.all_input_nodes:
                if a not in backward_nodes and a not in saved:
                    saved.append(a)
    for r in results[n_out:]:  # gradients that do not read a tangent (constants, zeros)
        if isinstance(r, fx.Node) and r not in backward_nodes and r not in saved:
            saved.append(r)
    root = torch.nn.Module()
    fw = fx.GraphModule(root, cut_graph(graph, primal_nodes, forward_outputs + saved))
    bw = fx.GraphModule(root, cut_graph(graph, saved + tangent_nodes, results[n_out:]))
    return fw, bw, n_out


def _sizes_from_tangents(graph: fx.Graph, backward_nodes: set[fx.Node], tangent_nodes: list[fx.Node]) -> None:
    """In a batch-generic joint graph, the sizes (``SymInt`` nodes) the backward reads from the forward
    are computed again in the backward, from a tangent's batch dim: a step saves tensors only (what
    executors save between the passes), never numbers. Raises TraceError where a size is not a
    function of a tangent's dims (the cell is then traced per ``B``)."""
    def is_size(node: Any) -> bool:
        return isinstance(node, fx.Node) and isinstance(node.meta.get("val"), torch.SymInt)

    wanted = [a for n in list(backward_nodes) for a in n.all_input_nodes if a not in backward_nodes and is_size(a)]
    if not wanted:
        return
    dims: dict[Any, tuple[fx.Node, int]] = {}  # a tangent dim's size expression -> (tangent, dim)
    for t in tangent_nodes:
        for d, size in enumerate(getattr(t.meta.get("val"), "shape", ())):
            if isinstance(size, torch.SymInt):
                dims.setdefault(size.node.expr, (t, d))
    copies: dict[fx.Node, fx.Node] = {}
    cursor = [tangent_nodes[-1]]  # new nodes go after the placeholders, in the order they are made

    def copy(node: fx.Node) -> fx.Node:
        if node in copies:
            return copies[node]
        expr = node.meta["val"].node.expr
        target: Any
        args: Any
        kwargs: Any
        if expr in dims:
            target, args, kwargs = aten.sym_size.int, dims[expr], {}
        elif node.op == "call_function" and node.target is not aten.sym_size.int:
            target = node.target
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda a: copy(a) if is_size(a) else a)
        else:
            raise TraceError(f"the backward reads a size of the forward ({expr}) that no gradient's shape gives")
        with graph.inserting_after(cursor[0]):
            new = graph.call_function(target, tuple(args), dict(kwargs))
        cursor[0] = new
        new.meta["val"] = node.meta["val"]
        backward_nodes.add(new)
        copies[node] = new
        return new

    for n in [n for n in graph.nodes if n in backward_nodes]:
        n.args, n.kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: copy(a) if a in wanted else a)


def _placeholders(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "placeholder"]


def _shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["val"].shape)


def _dtype(node: fx.Node, like: Tensor) -> torch.dtype:
    return node.meta["val"].dtype if "val" in node.meta else like.dtype


def _outputs_that_alias(gm: fx.GraphModule) -> set[int]:
    """Outputs of the step graph that are inputs or views (of inputs or of other values):
    cloned, so every output is a fresh tensor and the derived graphs return it as such."""
    views = _SHAPE_OPS | {aten.slice.Tensor, aten.select.int, aten.expand.default, aten.alias.default,
                          aten.as_strided.default, aten.narrow.default, aten.detach.default, operator.getitem}
    out = next(n for n in gm.graph.nodes if n.op == "output")
    return {i for i, node in enumerate(out.args[0])
            if isinstance(node, fx.Node) and (node.op == "placeholder"
                                              or (node.op == "call_function" and node.target in views))}


def _defer_weight_products(bw: fx.GraphModule, const_slots: range,
                           transposed: dict[int, bool]) -> dict[int, fx.GraphModule]:
    """Rewrite ``bw`` so gradients of consts that are (views of) one ``mm`` come out as the
    ``mm``'s two operands instead; returns, per const, the graph that maps the product
    summed over all steps to the gradient."""
    graph = bw.graph
    out = next(n for n in graph.nodes if n.op == "output")
    results = list(out.args[0])
    deferred: dict[int, fx.GraphModule] = {}
    extra: list[fx.Node] = []
    for k, slot in enumerate(const_slots):
        node = results[slot]
        if not isinstance(node, fx.Node):
            continue
        chain = []
        while node.op == "call_function" and node.target in _SHAPE_OPS and len(node.users) == 1:
            chain.append(node)
            node = node.args[0]
        if not (node.op == "call_function" and node.target is aten.mm.default and len(node.users) == 1):
            continue
        post = fx.Graph()
        value = post.placeholder("summed_product")
        for link in reversed(chain):
            value = post.node_copy(link, lambda n, v=value: v)  # type: ignore[misc]
        post.output(value)
        deferred[k] = fx.GraphModule(torch.nn.Module(), post)
        results[slot] = None
        lhs, rhs = node.args[:2]
        # sum_t A_t B_t = [A_1 … A_T][B_1; …; B_T]. When A_t = X_tᵀ, stacking the X_t
        # row-wise is a plain copy; stacking transposed columns is a strided one.
        if isinstance(lhs, fx.Node) and lhs.target is aten.t.default:
            lhs = lhs.args[0]
            transposed[k] = True
        else:
            transposed[k] = False
        extra.extend([lhs, rhs])
    out.args = (tuple(results) + tuple(extra),)
    graph.eliminate_dead_code()
    return deferred
