"""The fused path as registered PyTorch operators: what ``torch.compile`` and ``torch.func`` see.

The eager fused path (:mod:`.fused`) is one ``autograd.Function`` (``SequenceNode``) whose
forward and backward call the executors: dynamo cannot look inside it (the native runtime's
calls are opaque, the derivation runs ``make_fx`` under a lock), and ``torch.func`` refuses a
Function without ``setup_context``. Here the same computation is two operators of the
``torchcells`` namespace, which both systems treat as single, known ops:

``torchcells::fused_forward(handle, x, state, params, lengths, all_states) -> [ys, *final, *states]``
    The sequence without autograd: hoisting, the step loop in the executor the eager path
    would choose (the native runtime on the CPU where built), nothing saved.
``torchcells::fused_backward(handle, x, state, params, lengths, all_states, grads) -> [dx, *dstate, *dparams]``
    The eager fused path's training forward again (saving what the executor's backward reads)
    and its backward: the executor's reverse loop, the weight products batched over time.

``handle`` is an int naming the cell in a registry (:func:`handle_of`): an operator takes only
tensors and scalars. The kernels are looked up inside each call from the cell, the concrete
shapes and the tensors given (``FusedKernels`` are cached per batch size by :mod:`.derive`), so
a compiled graph holds for every ``T`` and ``B``. ``params`` are the cell's parameters and
buffers in ``named_parameters()``/``named_buffers()`` order, passed explicitly so that
``torch.func.functional_call`` and AOT autograd see (and differentiate) the tensors they pass.

What dynamo sees: the layer's Python (argument checks, the bracket's reversal and masking)
traced into aten operations, and for the step loop one ``torchcells.fused_forward`` node whose
fake implementation gives the output shapes from the derived step's metadata at the
sequence's ``T`` and ``B`` (symbolic where dynamic: no data is read). Its autograd formula is
``torchcells.fused_backward`` -- at the cost of one more forward in the backward, since an
operator's outputs (and so what it saves) must have shapes known without running it.
Under ``create_graph=True`` outside ``torch.func`` the formula recomputes through the eager
fused path, whose backward is then differentiable (:mod:`.executors.second_order`).
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from dataclasses import dataclass
from functools import partial
from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..cell import cell_name
from ..graph import TraceError
from .call import Call, Result
from .derive import FusedKernels

__all__ = ["compile_check", "compiling", "functorch_active", "fused_backward", "fused_forward", "handle_of", "run_ops", "vmap_active"]


@dataclass(frozen=True)
class _Entry:
    cell: "weakref.ref[nn.Module]"
    names: tuple[str, ...]  # the cell's parameters then buffers, the order the operators take them in


_ENTRIES: dict[int, _Entry] = {}
_HANDLES: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()
_COUNTER = itertools.count(1)


def handle_of(cell: nn.Module) -> int:
    """The int that names ``cell`` to the operators (one per cell, never reused; the entry goes with
    the cell)."""
    found = _HANDLES.get(cell)
    if found is None:
        found = _HANDLES[cell] = next(_COUNTER)
        _ENTRIES[found] = _Entry(weakref.ref(cell, partial(_forget, found)), _names(cell))
    return found


def _forget(handle: int, _: Any) -> None:
    _ENTRIES.pop(handle, None)


def _init_state(cell: nn.Module, batch: int) -> Any:
    """The cell's initial state on the meta device (its structure and shapes, no memory)."""
    return cell.init_state(batch, device="meta")  # type: ignore[operator]


def _named(cell: nn.Module) -> list[Tensor]:
    return [p for _, p in cell.named_parameters()] + [b for _, b in cell.named_buffers()]


def _cell(handle: int, params: list[Tensor]) -> tuple[nn.Module, dict[str, Tensor]]:
    entry = _ENTRIES.get(handle)
    cell = entry.cell() if entry is not None else None
    if entry is None or cell is None:
        raise RuntimeError(f"torchcells.fused_forward: no live cell has handle {handle} (a compiled graph "
                           f"outlived its layer); compile the layer again")
    if len(params) != len(entry.names):
        raise RuntimeError(f"torchcells.fused_forward: {cell_name(cell)} has {len(entry.names)} parameters and "
                           f"buffers, the operator got {len(params)}; compile the layer again")
    return cell, dict(zip(entry.names, params))


def compiling() -> bool:
    """Whether dynamo is tracing for ``torch.compile`` (not for ``torch.export``: an exported program
    must not hold this package's operators; export has its own path)."""
    return torch.compiler.is_compiling() and not torch.compiler.is_exporting()


def functorch_active() -> bool:
    """Whether a ``torch.func`` transform (``vmap``, ``grad``, ``jacrev``, ...) is running."""
    return torch._C._functorch.peek_interpreter_stack() is not None


def vmap_active() -> bool:
    """Whether a ``torch.func.vmap`` is among the running transforms (torch's RNN kernels have no
    batching rule)."""
    if not functorch_active():
        return False
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
    from torch._C._functorch import TransformType
    return any(i.key() == TransformType.Vmap for i in retrieve_all_functorch_interpreters())


#: the dispatcher's thread-local key sets of plain eager code (taken at import, outside any transform)
_EAGER_KEYS = (torch._C._dispatch_tls_local_include_set(), torch._C._dispatch_tls_local_exclude_set())


@contextlib.contextmanager
def _eager() -> Iterator[None]:
    """Inside an operator's kernel as in plain eager code. The dispatcher runs a kernel with autograd,
    functorch and most other layers excluded (under a compiled graph's runtime nearly all of them),
    but the fused path's eager code hoists through ``torch.vmap`` and an ``autograd.Function``, and the
    backward differentiates a recomputed sequence. The ``torch.func`` transforms around the call are
    set aside too (a derivation in a transform's scope would take its wrapped tensors for
    constants). Grad mode and autocast are set by the callers."""
    from torch._functorch.pyfunctorch import temporarily_clear_interpreter_stack

    with temporarily_clear_interpreter_stack(), torch._C._ForceDispatchKeyGuard(*_EAGER_KEYS):
        yield


def _example_kernels(cell: nn.Module, x_shape: tuple, dtype: torch.dtype, device: torch.device,
                     leaves: list[tuple[tuple, torch.dtype]], masked: bool) -> FusedKernels:
    """The derived step for one step of these shapes, from plain zeros: outside any fake mode,
    functorch transform and dynamo trace, as the eager path derives it (raises TraceError)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily(), _eager(), torch._guards.tracing(None):
        x = torch.zeros((1,) + tuple(x_shape), dtype=dtype, device=device)
        spec = tree_flatten(_init_state(cell, 1))[1]
        state = tree_unflatten([torch.zeros(s, dtype=d, device=device) for s, d in leaves], spec)
        lengths = torch.ones(x_shape[0], dtype=torch.int64) if masked else None
        stand_ins = {n: torch.zeros(t.shape, dtype=t.dtype, device=t.device).requires_grad_(t.requires_grad)
                     for n, t in zip(_names(cell), _named(cell))}
        return _derived(Call(cell, x, state, lengths), stand_ins)


def _derived(call: Call, params: dict[str, Tensor]) -> FusedKernels:
    """The call's fused step, derived from the cell with ``params`` in place of its own tensors:
    under ``torch.func.functional_call`` the cell holds the transform's wrapped tensors, which a
    trace would take for constants."""
    from torch.nn.utils.stateless import _reparametrize_module
    from .fused import step_program

    with _eager(), _reparametrize_module(call.cell, params):
        return step_program(call, masked=call.lengths is not None)


def _names(cell: nn.Module) -> tuple[str, ...]:
    return tuple(n for n, _ in cell.named_parameters()) + tuple(n for n, _ in cell.named_buffers())


def kernels_for(call: Call) -> FusedKernels:
    """:func:`_example_kernels` at a call's shapes (for a call whose tensors are not plain: wrapped
    by ``torch.func``)."""
    leaves = [(tuple(t.shape), t.dtype) for t in tree_flatten(call.state)[0]]
    return _example_kernels(call.cell, tuple(call.raw_x.shape[1:]), call.raw_x.dtype, call.raw_x.device, leaves,
                            call.lengths is not None)


def _assume_constant_result(fn: Any) -> Any:
    """``torch.compiler.assume_constant_result`` without importing dynamo when this module loads
    (``torch._dynamo`` costs 0.85 s of every ``import torchcells``; torch.compile imports it anyway
    before it traces). Dynamo reads this mark when it meets the function; torch's decorator sets
    exactly it (tested: tests/engine/test_compile.py)."""
    fn._dynamo_marked_constant = True
    return fn


@_assume_constant_result
def compile_check(cell: nn.Module, masked: bool, dtype: torch.dtype, device: torch.device) -> tuple[int, Optional[str]]:
    """Run by dynamo while it traces (its result is a constant of the graph): the cell's handle, and
    why the fused path cannot compile it, or ``None``. Where the cell declares its step's sizes
    (``input_size``, steps of rank 1) the step is derived here, at one sequence of two rows: a cell
    that does not trace then runs on the next path; otherwise the fake implementation derives it
    and raises."""
    if torch.is_autocast_enabled(device.type):
        return 0, ("under torch.compile inside torch.autocast the fused path's traced casts cannot be kept "
                   "apart from the compiled graph's (run it eagerly, or without autocast)")
    handle = handle_of(cell)
    size = getattr(cell, "input_size", None)
    if getattr(cell, "step_rank", 1) != 1 or not isinstance(size, int):
        return handle, None
    leaves = [(tuple(t.shape), dtype) for t in tree_flatten(_init_state(cell, 2))[0]]
    try:
        _example_kernels(cell, (2, size), dtype, device, leaves, masked)
    except TraceError as error:
        return handle, str(error)
    return handle, None


def _call(handle: int, x: Tensor, state: list[Tensor], params: list[Tensor], lengths: Optional[Tensor],
          all_states: bool) -> tuple[Call, list[Tensor]]:
    """The forward-reading call an operator runs, and the step's parameters in the program's order."""
    cell, named = _cell(handle, params)
    spec = tree_flatten(_init_state(cell, 1))[1]
    call = Call(cell, x, tree_unflatten(list(state), spec), lengths, all_states)
    program = _derived(call, named).program
    return call, [named[n] for n in program.param_names]


def _plain(outputs: list[Tensor], inputs: list[Tensor]) -> list[Tensor]:
    """``outputs`` contiguous, and none a view of an input or of another output (an operator's
    outputs are fresh tensors)."""
    seen = {t.untyped_storage().data_ptr() for t in inputs if t.numel()}
    fresh = []
    for t in outputs:
        t = t.contiguous()
        if t.numel() and t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        fresh.append(t)
    return fresh


@torch.library.custom_op("torchcells::fused_forward", mutates_args=())
def fused_forward(handle: int, x: Tensor, state: list[Tensor], params: list[Tensor], lengths: Optional[Tensor],
                  all_states: bool) -> list[Tensor]:
    """The fused sequence without autograd: ``[ys (T, B, ...), *final leaves, *every-step leaves]``."""
    from .fused import inference_call

    call, ordered = _call(handle, x, state, params, lengths, all_states)
    with _eager(), torch.no_grad():
        ys, final, states = inference_call(call, params=ordered)
    outputs = [ys, *tree_flatten(final)[0]] + (tree_flatten(states)[0] if all_states else [])
    return _plain(outputs, [x, *state, *params])


@fused_forward.register_fake
def _fused_forward_fake(handle: int, x: Tensor, state: list[Tensor], params: list[Tensor],
                        lengths: Optional[Tensor], all_states: bool) -> list[Tensor]:
    """Shapes from the derived step's metadata (derived at the size hints of one step; ``T`` and
    ``B`` stay symbolic): ``y_t``'s trailing dims and dtype, the state leaves' dtypes."""
    cell, _ = _cell(handle, params)
    step = tuple(_hint(n) for n in x.shape[1:])
    leaves = [(tuple(_hint(n) for n in s.shape), s.dtype) for s in state]
    try:
        kernels = _example_kernels(cell, step, x.dtype, x.device, leaves, lengths is not None)
    except TraceError as error:
        raise TypeError(f"{cell_name(cell)} cannot run on the fused engine under torch.compile: {error}; "
                        f"use engine='loop' for it") from error
    y_shape, y_dtype = kernels.tangent_meta[0]
    steps, batch = x.shape[0], x.shape[1]
    ys = x.new_empty((steps, batch, *y_shape[1:]), dtype=y_dtype)
    dtypes = [d for _, d in kernels.tangent_meta[1:]]
    final = [s.new_empty(s.shape, dtype=d) for s, d in zip(state, dtypes)]
    every = [s.new_empty((steps, *s.shape), dtype=d) for s, d in zip(state, dtypes)] if all_states else []
    return [ys, *final, *every]


def _hint(n: Any) -> int:
    """A size as an int: a symbolic one's example value (no guard; the shapes stay symbolic)."""
    from torch.fx.experimental.symbolic_shapes import optimization_hint
    return optimization_hint(n, fallback=2)


@torch.library.custom_op("torchcells::fused_backward", mutates_args=())
def fused_backward(handle: int, x: Tensor, state: list[Tensor], params: list[Tensor], lengths: Optional[Tensor],
                   all_states: bool, grads: list[Optional[Tensor]]) -> list[Tensor]:
    """Gradients ``[dx, *dstate, *dparams]`` (zeros where none flows) from those of
    :func:`fused_forward`'s outputs: the eager fused path's training forward recomputed and its
    backward run (``SequenceNode``: the executor's reverse loop, batched weight products)."""
    inputs = [x, *state, *params]
    with _eager(), torch.enable_grad():
        leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
        found = _grads(handle, leaves, len(state), lengths, all_states, grads, create_graph=False)
    return _plain([g if g is not None else torch.zeros_like(t) for g, t in zip(found, inputs)], inputs)


def _grads(handle: int, inputs: list[Tensor], n_state: int, lengths: Optional[Tensor], all_states: bool,
           grads: list[Optional[Tensor]], *, create_graph: bool) -> list[Optional[Tensor]]:
    """Gradients of ``inputs`` (``[x, *state, *params]``, those that require one) through the eager
    fused path, ``None`` where none flows; with ``create_graph`` its backward is itself
    differentiable (:mod:`.executors.second_order`: the loop's second-order gradients)."""
    from .fused import fused_call

    x, state, params = inputs[0], inputs[1:1 + n_state], inputs[1 + n_state:]
    call, ordered = _call(handle, x, state, params, lengths, all_states)
    ys, final, states = fused_call(call, params=ordered)
    outputs = [ys, *tree_flatten(final)[0]] + (tree_flatten(states)[0] if all_states else [])
    pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
    wanted = [i for i, t in enumerate(inputs) if t.requires_grad]
    found: list[Optional[Tensor]] = [None] * len(inputs)
    if pairs and wanted:
        got = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wanted], [g for _, g in pairs],
                                  create_graph=create_graph, allow_unused=True)
        for i, g in zip(wanted, got):
            found[i] = g
    return found


def _setup(ctx: Any, inputs: tuple, output: list[Tensor]) -> None:
    handle, x, state, params, lengths, all_states = inputs
    ctx.handle, ctx.all_states, ctx.n_state = handle, all_states, len(state)
    ctx.has_lengths = lengths is not None
    ctx.save_for_backward(x, *state, *params, *([lengths] if lengths is not None else []))


def _backward(ctx: Any, grads: list[Optional[Tensor]]) -> tuple:
    saved = list(ctx.saved_tensors)
    lengths = saved.pop() if ctx.has_lengths else None
    n = ctx.n_state
    if torch.is_grad_enabled() and not functorch_active():  # create_graph=True: a differentiable backward
        found = _grads(ctx.handle, saved, n, lengths, ctx.all_states, list(grads), create_graph=True)
    else:
        found = fused_backward(ctx.handle, saved[0], saved[1:1 + n], saved[1 + n:], lengths, ctx.all_states,
                               list(grads))
    return None, found[0], list(found[1:1 + n]), list(found[1 + n:]), None, None


fused_forward.register_autograd(_backward, setup_context=_setup)


@fused_backward.register_fake
def _fused_backward_fake(handle: int, x: Tensor, state: list[Tensor], params: list[Tensor],
                         lengths: Optional[Tensor], all_states: bool, grads: list[Optional[Tensor]]) -> list[Tensor]:
    return [torch.empty_like(t) for t in (x, *state, *params)]


def _no_second_order(ctx: Any, grads: list[Optional[Tensor]]) -> tuple:
    raise RuntimeError("torchcells.fused_backward: second-order gradients of the fused path under torch.func "
                       "(grad of grad) are not supported; use torch.autograd.grad(create_graph=True) eagerly, "
                       "or engine='loop'")


fused_backward.register_autograd(_no_second_order, setup_context=lambda ctx, inputs, output: None)


class _FuncSequence(torch.autograd.Function):
    """The operators for ``torch.func``: an operator with tensor-list arguments has an autograd
    formula that functorch's transforms refuse (no ``setup_context``), so under them the fused path
    calls the operators through this Function, which has one, and a vmap rule (by slices)."""

    @staticmethod
    def forward(handle: int, n_state: int, lengths: Optional[Tensor], all_states: bool, x: Tensor,
                *rest: Tensor) -> tuple[Tensor, ...]:
        return tuple(fused_forward(handle, x, list(rest[:n_state]), list(rest[n_state:]), lengths, all_states))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        handle, n_state, lengths, all_states, x, *rest = inputs
        ctx.args = (handle, n_state, lengths, all_states)
        ctx.out_meta = [(o.shape, o.dtype) for o in output]
        ctx.save_for_backward(x, *rest)

    @staticmethod
    def backward(ctx: Any, *grads: Optional[Tensor]) -> tuple:
        x, *rest = ctx.saved_tensors
        given = [g if g is not None else torch.zeros(s, dtype=d, device=x.device)  # zeros add nothing
                 for g, (s, d) in zip(grads, ctx.out_meta)]
        found = _FuncBackward.apply(*ctx.args, len(given), x, *rest, *given)
        return (None, None, None, None, *found)

    @staticmethod
    def vmap(info: Any, in_dims: tuple, *args: Any) -> tuple[tuple[Tensor, ...], tuple[int, ...]]:
        return _slices(_FuncSequence, info, in_dims, args)


class _FuncBackward(torch.autograd.Function):
    """:func:`fused_backward` for ``torch.func`` (``jacrev`` maps it over the cotangents: a vmap
    rule by slices); its own gradient (grad of grad) is refused with a reason."""

    @staticmethod
    def forward(handle: int, n_state: int, lengths: Optional[Tensor], all_states: bool, n_grads: int, x: Tensor,
                *rest: Tensor) -> tuple[Tensor, ...]:
        inputs, grads = rest[:len(rest) - n_grads], rest[len(rest) - n_grads:]
        return tuple(fused_backward(handle, x, list(inputs[:n_state]), list(inputs[n_state:]), lengths, all_states,
                                    list(grads)))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, *grads: Optional[Tensor]) -> tuple:
        return _no_second_order(ctx, list(grads))

    @staticmethod
    def vmap(info: Any, in_dims: tuple, *args: Any) -> tuple[tuple[Tensor, ...], tuple[int, ...]]:
        return _slices(_FuncBackward, info, in_dims, args)


def _slices(function: Any, info: Any, in_dims: tuple, args: tuple) -> tuple[tuple[Tensor, ...], tuple[int, ...]]:
    """A vmap rule: ``function`` once per slice of the mapped dim, the results stacked (exact for any
    cell, one that mixes batch rows too, at one call per slice)."""
    def pick(t: Any, dim: Optional[int], i: int) -> Any:
        return t.select(dim, i) if dim is not None and isinstance(t, Tensor) else t
    slices = [function.apply(*[pick(a, d, i) for a, d in zip(args, in_dims)]) for i in range(info.batch_size)]
    stacked = tuple(torch.stack(parts) for parts in zip(*slices))
    return stacked, (0,) * len(stacked)


def run_ops(call: Call, handle: Optional[int] = None) -> Result:
    """The fused path through the operators (under torch.compile, and through :class:`_FuncSequence`
    under torch.func)."""
    if handle is None:
        handle = handle_of(call.cell)
    leaves, spec = tree_flatten(call.state)
    n = len(leaves)
    params = _named(call.cell)
    if not torch.compiler.is_compiling() and functorch_active():  # (dynamo cannot answer the latter)
        out = list(_FuncSequence.apply(handle, n, call.lengths, call.all_states, call.raw_x, *leaves, *params))
    else:
        out = fused_forward(handle, call.raw_x, leaves, params, call.lengths, call.all_states)
    states = tree_unflatten(list(out[1 + n:]), spec) if call.all_states else None
    return out[0], tree_unflatten(list(out[1:1 + n]), spec), states
