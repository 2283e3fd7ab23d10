"""The fused path: hoisted input part, one autograd node for the whole sequence.

From a cell's traced step (:mod:`.trace`):

1. the *const* region runs once and the *input* region runs once for all ``T``
   steps (``vmap`` over time: one large product instead of ``T`` small ones), both
   under ordinary autograd;
2. the *step* region runs ``T`` times inside one ``autograd.Function``. Its
   forward and backward graphs are derived automatically (the step and its
   ``autograd.grad`` traced together with ``make_fx``, then cut into the part that
   reads no gradient and the part that does), so each step runs straight-line aten
   code with no autograd bookkeeping, saving only what the backward reads;
3. in the backward, the gradient of every weight used by a per-step product
   (``h_{t-1} W_hhᵀ``) is not computed per step: the step's backward hands out the
   two operands and one matrix product over all ``T·B`` rows follows the loop --
   the structure cuDNN uses. Other parameter gradients are summed over steps.

``run_fused`` has exactly the contract of :func:`.unroll.unroll` and is tested
equal to it.
"""

from __future__ import annotations

import operator
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor, fx, nn
from torch.autograd.function import once_differentiable

from ..cell import map_state
from .lengths import reverse_padded, step_mask
from .trace import CellProgram, TraceError, drop_detach, fast_targets, trace_cell

__all__ = ["FusedKernels", "explain_fallback", "fused_program", "run_fused", "run_inference"]

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
    n_outputs: int                     # outs = [y,] *state   (y omitted when it is a state leaf)
    y_index: Optional[int]             # position of y among outs
    deferred: dict[int, fx.GraphModule]  # const index -> graph turning sum_t A_t @ B_t into its gradient
    transposed: dict[int, bool]        # const index -> the deferred left operands come transposed
    n_grads: int                       # backward outputs before the deferred operands (one per primal)
    tangent_meta: list[tuple[torch.Size, torch.dtype]]  # shape and dtype of each output's gradient


# Kernels are shared by cells of the same structure: the graphs take parameters as
# inputs, so two LSTMCell(64, 256) share one trace. The key holds everything the
# trace may depend on: module types, their plain attributes, parameter shapes,
# training modes, and the step's shapes.
_CACHE: "OrderedDict[tuple, Any]" = OrderedDict()
_CACHE_SIZE = 256
_WARNED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()
_SIMPLE = (int, float, str, bool, type(None), torch.dtype, torch.device)


def _attribute_key(value: Any) -> Any:
    if isinstance(value, _SIMPLE):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, _SIMPLE) for v in value):
        return tuple(value)
    return ("object", id(value))


def _key(cell: nn.Module, x_t: Tensor, state: Any, masked: bool) -> tuple:
    from torch.utils._pytree import tree_flatten
    leaves, spec = tree_flatten(state)
    modules = tuple(
        (name, type(m), m.training,
         tuple(sorted((k, _attribute_key(v)) for k, v in vars(m).items() if not k.startswith("_"))),
         tuple((n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in m.named_parameters(recurse=False)),
         tuple((n, tuple(b.shape), b.dtype) for n, b in m.named_buffers(recurse=False)))
        for name, m in cell.named_modules())
    return (modules, tuple(x_t.shape), x_t.dtype, x_t.device,
            tuple((tuple(t.shape), t.dtype) for t in leaves), str(spec), masked)


def fused_program(cell: nn.Module, x_t: Tensor, state: Any, *, masked: bool) -> FusedKernels:
    """The cell's fused kernels for these shapes (traced once, then cached); raises TraceError."""
    key = _key(cell, x_t, state, masked)
    found = _CACHE.get(key)
    if found is not None:
        _CACHE.move_to_end(key)
    else:
        try:
            found = _build(cell, x_t, state, masked)
        except TraceError as e:
            found = e
        except Exception as e:  # a failure of the derivation itself: fall back, say why
            first_line = str(e).splitlines()[0] if str(e) else ""
            found = TraceError(f"deriving the fused step failed: {type(e).__name__}: {first_line}")
        _CACHE[key] = found
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    if isinstance(found, TraceError):
        raise found
    return found


def explain_fallback(cell: Any, error: TraceError) -> None:
    """Warn once per cell that it runs on the reference loop, and why."""
    if cell not in _WARNED:
        _WARNED.add(cell)
        name = cell.short_name() if hasattr(cell, "short_name") else type(cell).__name__
        warnings.warn(f"{name} runs on the reference loop (no hoisting, no fused backward): {error}",
                      stacklevel=4)


def _build(cell: nn.Module, x_t: Tensor, state: Any, masked: bool) -> FusedKernels:
    with torch.enable_grad():  # deriving the backward needs autograd, even when called under no_grad
        return _build_with_grad(cell, x_t, state, masked)


def _build_with_grad(cell: nn.Module, x_t: Tensor, state: Any, masked: bool) -> FusedKernels:
    from torch.utils._pytree import tree_flatten

    program = trace_cell(cell, x_t, state)
    step_fn = program.step_fn
    n_h, n_s, n_c = program.n_hoisted, program.n_state, program.n_const
    y_is_state = None if masked else program.y_is_state
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
        return tuple(new) if y_is_state is not None else (y, *new)

    leaves, _ = tree_flatten(state)
    with torch.no_grad():
        example_h = [torch.zeros(_shape(n), dtype=_dtype(n, x_t), device=x_t.device)
                     for n in _placeholders(step_fn)[:n_h]]
        consts = program.const_fn(*[p.detach() for p in program.params(cell)])
    args = [t.detach().clone() for t in [*example_h, *[l.detach() for l in leaves], *consts]]
    if masked:
        args.append(torch.ones(x_t.shape[0], dtype=torch.bool, device=x_t.device))
    fw, bw, n_outputs = _derive(wrapper, args)
    n_grads = len(args)
    transposed: dict[int, bool] = {}
    deferred = _defer_weight_products(bw, range(n_h + n_s, n_h + n_s + n_c), transposed)
    for gm in (fw, bw):
        drop_detach(gm.graph)
        gm.graph.eliminate_dead_code()
        fast_targets(gm.graph)
        gm.graph.lint()
        gm.recompile()
    fw_out = next(n for n in fw.graph.nodes if n.op == "output")
    tangent_meta = [(n.meta["val"].shape, n.meta["val"].dtype) for n in fw_out.args[0][:n_outputs]]
    return FusedKernels(program, masked, fw, bw, n_outputs, y_is_state, deferred, transposed, n_grads,
                        tangent_meta)


def _derive(fn: Callable[..., tuple], args: list[Tensor]) -> tuple[fx.GraphModule, fx.GraphModule, int]:
    """Forward and backward graphs of one step, derived from ``fn`` by tracing its joint.

    ``fn``'s forward and ``torch.autograd.grad`` of it are traced together (``make_fx``,
    fake tensors); the joint graph is then cut: nodes that read a tangent form the
    backward, the others the forward, and the forward values the backward reads are
    what each step saves. Returns ``forward(*args) -> (*outputs, *saved)``,
    ``backward(*saved, *tangents) -> one gradient per arg (None where none)`` and the
    number of outputs.
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    differentiable = [a.is_floating_point() for a in args]
    n_args = len(args)
    counts: dict[str, int] = {}

    def joint(*flat: Tensor):
        primals = [p.requires_grad_(True) if d else p for p, d in zip(flat[:n_args], differentiable)]
        outs = fn(*primals)
        counts["outputs"] = len(outs)
        tangents = flat[n_args:]
        wrt = [p for p, d in zip(primals, differentiable) if d]
        grads = iter(torch.autograd.grad(outs, wrt, tangents, allow_unused=True))
        return (*outs, *[next(grads) if d else None for d in differentiable])

    with torch.enable_grad():
        probe = fn(*[a.detach().requires_grad_(d) for a, d in zip(args, differentiable)])
        if any(not o.requires_grad for o in probe):
            raise TraceError("the step's outputs do not all depend on differentiable inputs")
        tangent_args = [torch.zeros_like(o) for o in probe]
        graph = make_fx(joint, tracing_mode="fake")(*[a.detach() for a in args], *tangent_args).graph
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
    fw = fx.GraphModule(root, _cut(graph, primal_nodes, forward_outputs + saved))
    bw = fx.GraphModule(root, _cut(graph, saved + tangent_nodes, results[n_out:]))
    return fw, bw, n_out


def _cut(graph: fx.Graph, inputs: list[fx.Node], outputs: list[Any]) -> fx.Graph:
    """A new graph computing ``outputs`` from ``inputs`` (nodes of ``graph``)."""
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for i, node in enumerate(inputs):
        env[node] = new.placeholder(f"in{i}_{node.name}")
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


class _FusedSequence(torch.autograd.Function):
    """The step region over all steps: one node in the autograd graph."""

    @staticmethod
    def forward(ctx, kernels: FusedKernels, valid: Optional[Tensor], n_hoisted: int, n_state: int,
                want_states: bool, *flat: Tensor):
        hoisted = flat[:n_hoisted]
        state = list(flat[n_hoisted:n_hoisted + n_state])
        consts = list(flat[n_hoisted + n_state:])
        steps = hoisted[0].shape[0]
        per_step = [h.unbind(0) for h in hoisted]
        masks = valid.unbind(0) if valid is not None else None
        fw, n_out, y_index = kernels.forward.forward, kernels.n_outputs, kernels.y_index
        ys, saved, history = [], [], []
        for t in range(steps):
            args = [h[t] for h in per_step] + state + consts
            if masks is not None:
                args.append(masks[t])
            result = fw(*args)
            outs = result[:n_out]
            saved.append(result[n_out:])
            if y_index is None:
                ys.append(outs[0])
                state = list(outs[1:])
            else:
                state = list(outs)
                ys.append(outs[y_index])
            if want_states:
                history.append(state)
        ctx.kernels, ctx.n_hoisted, ctx.n_state = kernels, n_hoisted, n_state
        # Through save_for_backward, so autograd frees them after the backward and
        # torch.utils.checkpoint can drop and recompute them.
        ctx.per_step = len(saved[0]) if saved else 0
        ctx.steps = steps
        ctx.save_for_backward(*[v for step in saved for v in step])
        ctx.want_states = want_states
        ctx.hoisted_meta = [(h.shape, h.dtype) for h in hoisted]
        outputs = [torch.stack(ys)] + state
        if want_states:
            outputs += [torch.stack([s[j] for s in history]) for j in range(n_state)]
        ctx.mark_non_differentiable(*[o for o in outputs if not o.is_floating_point()])
        return tuple(outputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_ys: Tensor, *d_rest: Optional[Tensor]):
        kernels: FusedKernels = ctx.kernels
        n_h, n_s = ctx.n_hoisted, ctx.n_state
        d_final = list(d_rest[:n_s])
        d_hist = list(d_rest[n_s:]) if ctx.want_states else []
        steps, per_step = ctx.steps, ctx.per_step
        saved = ctx.saved_tensors
        bw, y_index = kernels.backward.forward, kernels.y_index
        n_c = kernels.program.n_const
        carry = [g for g in d_final]
        # Gradients of the hoisted inputs, written step by step into one (T, B, ...) buffer each.
        d_hoisted: list[Optional[Tensor]] = [None] * n_h
        acc: list[Optional[Tensor]] = [None] * n_c
        lhs: dict[int, list[Tensor]] = {k: [] for k in kernels.deferred}
        rhs: dict[int, list[Tensor]] = {k: [] for k in kernels.deferred}
        summed: dict[int, Optional[Tensor]] = {k: None for k in kernels.deferred}
        # Weight gradients of the per-step products: one product per chunk of steps with
        # at least _PRODUCT_ROWS rows (as efficient as one over all steps, without holding
        # every step's operands at once).
        chunk = max(1, -(-_PRODUCT_ROWS // max(1, d_ys.shape[1] if d_ys is not None and d_ys.dim() > 1 else 1)))
        d_y_steps: Optional[tuple[Tensor, ...]] = d_ys.unbind(0) if d_ys is not None else None
        d_hist_steps: list[Any] = [h.unbind(0) if h is not None else None for h in d_hist]
        for t in range(steps - 1, -1, -1):
            state_tangents = list(carry)
            for j in range(n_s):
                if d_hist_steps and d_hist_steps[j] is not None:
                    state_tangents[j] = _add(state_tangents[j], d_hist_steps[j][t])
            dy = d_y_steps[t] if d_y_steps is not None else None
            if y_index is None:
                tangents = [dy] + state_tangents
            else:
                tangents = state_tangents
                tangents[y_index] = _add(tangents[y_index], dy)
            grads = bw(*saved[t * per_step:(t + 1) * per_step], *[g if g is not None else _zeros(meta, d_ys)
                                               for g, meta in zip(tangents, kernels.tangent_meta)])
            for i in range(n_h):
                g = grads[i]
                if g is not None:
                    buffer = d_hoisted[i]
                    if buffer is None:
                        buffer = d_hoisted[i] = g.new_zeros((steps,) + tuple(g.shape))
                    buffer[t].copy_(g)
            carry = list(grads[n_h:n_h + n_s])
            for k in range(n_c):
                g = grads[n_h + n_s + k]
                if g is not None:
                    acc[k] = g if acc[k] is None else acc[k] + g
            extra = grads[kernels.n_grads:]
            for pos, k in enumerate(sorted(kernels.deferred)):
                lhs[k].append(extra[2 * pos])
                rhs[k].append(extra[2 * pos + 1])
                if len(lhs[k]) >= chunk or t == 0:
                    product = _summed_product(lhs[k], rhs[k], kernels.transposed[k])
                    so_far = summed[k]
                    summed[k] = product if so_far is None else so_far.add_(product)
                    lhs[k], rhs[k] = [], []
        d_consts: list[Optional[Tensor]] = list(acc)
        for k, post in kernels.deferred.items():
            d_consts[k] = post(summed[k])
        return (None, None, None, None, None, *d_hoisted, *carry, *d_consts)


_PRODUCT_ROWS = 1024


def _summed_product(lhs: list[Tensor], rhs: list[Tensor], transposed: bool) -> Tensor:
    """``sum_t A_t B_t`` as one product: ``[A_1 … A_k][B_1; …; B_k]`` (``A_t = X_tᵀ`` if transposed)."""
    left = torch.cat(lhs, 0).t() if transposed else torch.cat(lhs, 1)
    return torch.mm(left, torch.cat(rhs, 0))


def _add(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _zeros(meta: tuple[torch.Size, torch.dtype], like: Tensor) -> Tensor:
    return torch.zeros(meta[0], dtype=meta[1], device=like.device)


@dataclass
class _Prepared:
    """What every fused call computes before the time loop."""

    kernels: FusedKernels
    x: Tensor                      # reversed within lengths if asked, padded steps zeroed
    leaves: list[Tensor]
    spec: Any
    valid: Optional[Tensor]        # (T, B) bool, or None for full lengths
    hoisted: tuple[Tensor, ...]    # the input region over all steps, (T, B, ...) each
    consts: list[Tensor]


def _prepare(cell: nn.Module, x: Tensor, state: Any, lengths: Optional[Tensor], reverse: bool,
             masked: bool) -> _Prepared:
    from torch.utils._pytree import tree_flatten

    if x.shape[0] == 0:
        raise TraceError("no steps to run")
    kernels = fused_program(cell, x[0], state, masked=masked)
    program = kernels.program
    leaves, spec = tree_flatten(state)
    params = program.params(cell)
    if reverse:
        x = reverse_padded(x, lengths)
    valid = step_mask(lengths, x.shape[0], x.device) if lengths is not None else None
    if valid is not None:
        x = x.masked_fill(~_expand(valid, x), 0)
    consts = list(program.const_fn(*params))
    hoisted: tuple[Tensor, ...] = ()
    if program.n_hoisted:
        # vmap over time keeps the traced step's shapes (B rows) and dims exact; each
        # product becomes one over all T·B rows.
        hoisted = tuple(torch.vmap(program.input_fn, in_dims=(0,) + (None,) * len(params))(x, *params))
    return _Prepared(kernels, x, list(leaves), spec, valid, hoisted, consts)


def _expand(valid: Tensor, like: Tensor) -> Tensor:
    return valid.reshape(valid.shape + (1,) * (like.dim() - valid.dim()))


def _finish(prep: _Prepared, outputs: Tensor, final: list[Tensor], stacked: Optional[list[Tensor]],
            lengths: Optional[Tensor], reverse: bool) -> tuple[Tensor, Any, Optional[Any]]:
    from torch.utils._pytree import tree_unflatten

    states = None
    if stacked is not None:
        if prep.valid is not None:
            stacked = [s.masked_fill(~_expand(prep.valid, s), 0) for s in stacked]
        states = tree_unflatten(stacked, prep.spec)
    if reverse:
        outputs = reverse_padded(outputs, lengths)
        if states is not None:
            states = map_state(lambda s: reverse_padded(s, lengths), states)
    return outputs, tree_unflatten(final, prep.spec), states


def run_fused(cell: nn.Module, x: Tensor, state: Any, *, lengths: Optional[Tensor] = None,
              reverse: bool = False, all_states: bool = False) -> tuple[Tensor, Any, Optional[Any]]:
    """:func:`.unroll.unroll`'s contract, on the fused path; raises TraceError if the cell can't be fused."""
    prep = _prepare(cell, x, state, lengths, reverse, masked=lengths is not None)
    n = len(prep.leaves)
    result = _FusedSequence.apply(prep.kernels, prep.valid, len(prep.hoisted), n, all_states,
                                  *prep.hoisted, *prep.leaves, *prep.consts)
    return _finish(prep, result[0], list(result[1:1 + n]), list(result[1 + n:]) if all_states else None,
                   lengths, reverse)


def run_inference(cell: nn.Module, x: Tensor, state: Any, *, lengths: Optional[Tensor] = None,
                  reverse: bool = False, all_states: bool = False) -> tuple[Tensor, Any, Optional[Any]]:
    """The fused path without autograd: hoisted input part, then the step graph per step,
    nothing saved for a backward. Same contract as :func:`.unroll.unroll`."""
    prep = _prepare(cell, x, state, lengths, reverse, masked=False)
    step = prep.kernels.program.fast_step_fn.forward
    per_step = [h.unbind(0) for h in prep.hoisted]
    masks = prep.valid.unbind(0) if prep.valid is not None else None
    leaves, ys, history = prep.leaves, [], []
    for t in range(x.shape[0]):
        outs = step(*[h[t] for h in per_step], *leaves, *prep.consts)
        y, new = outs[0], list(outs[1:])
        if masks is not None:
            keep = masks[t]
            new = [torch.where(_expand(keep, n), n, o) for n, o in zip(new, leaves)]
            y = y.masked_fill(~_expand(keep, y), 0)
        ys.append(y)
        leaves = new
        if all_states:
            history.append(leaves)
    stacked = [torch.stack([h[j] for h in history]) for j in range(len(leaves))] if all_states else None
    return _finish(prep, torch.stack(ys), leaves, stacked, lengths, reverse)
