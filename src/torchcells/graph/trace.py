"""Tracing a cell's step into a graph of aten operations.

:func:`trace_step` traces the plain ``forward`` once (``make_fx`` with fake tensors, so
nothing is computed and data-dependent Python control flow is detected rather than
baked in). The engine splits the result into regions (:mod:`.regions`); anatomy reads
it as a diagram.

Tracing never touches the module a user holds: it runs on a structural copy whose
parameters and buffers are empty ``meta`` tensors (``functional_call`` swaps tensors in
the module it is given, which, on the live module, another thread running it eagerly
would see -- or keep, if two traces interleave). ``make_fx`` itself is not safe to run
from two threads at once, so every trace in the package holds :data:`TRACING`.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.utils._pytree import TreeSpec, tree_flatten, tree_unflatten

from ..cell import cell_name, check_step, step_pair

__all__ = ["RANDOM_OPS", "TRACING", "StateDtypeChange", "TraceError", "as_traced", "batch_guards", "op_name",
           "trace_step"]

#: held around every ``make_fx`` trace of the package (tracing is not thread-safe).
TRACING = threading.RLock()

# Operations whose results differ from call to call: never hoisted or fused.
RANDOM_OPS = {"bernoulli", "native_dropout", "rand", "randn", "rand_like", "randn_like", "randint",
           "normal", "uniform", "multinomial", "randperm", "exponential", "geometric", "cauchy",
           "log_normal", "poisson", "dropout"}


def as_traced(device_type: str) -> Any:
    """The context to run a traced graph in: autocast off. A trace made under autocast holds its
    casts (``_to_copy`` nodes, products in the lower dtype); running it under autocast again would
    also cast what the cell kept out of autocast (a product inside ``torch.autocast(enabled=False)``).
    For a graph traced without autocast, off is what it was traced with."""
    try:
        return torch.autocast(device_type, enabled=False)
    except RuntimeError:  # a device type without autocast
        import contextlib
        return contextlib.nullcontext()


class TraceError(RuntimeError):
    """The cell's step cannot be split (why is in the message); the reference loop runs instead."""


def op_name(node: fx.Node) -> str:
    """The operator's base name (``aten.add_.Tensor`` -> ``add``)."""
    target = node.target
    name = getattr(target, "__name__", str(target))
    packet = getattr(target, "overloadpacket", None)
    if packet is not None:
        name = getattr(packet, "__name__", name)
    return name.split(".")[0].rstrip("_")


def trace_step(cell: nn.Module, x: Tensor, state: Any, *,
               batch_generic: bool = False) -> tuple[fx.GraphModule, list[str], TreeSpec]:
    """The whole step as one aten graph, unsplit: ``(graph_module, param_names, state_spec)``.

    The graph's placeholders are the parameters and buffers (``param_names`` order),
    ``x_t``, then the state's leaves; its output is ``(y_t, *new_state_leaves)``.
    ``batch_generic``: the batch size is one symbol (:func:`_symbolic_inputs`), so the graph
    serves every ``B >= 2`` unless the trace guarded on it (:func:`batch_guards` says).
    Raises :class:`TraceError` as :func:`trace_cell` does.
    """
    from torch.func import functional_call
    from torch.fx.experimental.proxy_tensor import make_fx

    from .light import fake_mode_trace

    named = list(cell.named_parameters()) + list(cell.named_buffers())
    names = [n for n, _ in named]
    tensors = [t for _, t in named]
    leaves, spec = tree_flatten(state)
    if not all(isinstance(t, Tensor) for t in leaves):
        raise TraceError("the state is not made of tensors only")

    stand_in = _structural_copy(cell, tensors)

    def step(params: list[Tensor], x_t: Tensor, *state_leaves: Tensor):
        given = tree_unflatten(list(state_leaves), spec)
        returned = functional_call(stand_in, dict(zip(names, params)), (x_t, given))
        try:
            y, new = step_pair(cell_name(cell), returned)
            check_step(cell_name(cell), x_t, given, y, new)
        except (TypeError, ValueError) as e:
            raise TraceError(str(e)) from None
        new_leaves, new_spec = tree_flatten(new)
        if new_spec != spec:
            raise TraceError(f"the new state's structure {new_spec} differs from the old {spec}")
        _check_state_dtypes(state_leaves, new_leaves)
        return (y, *new_leaves)

    try:
        with TRACING, torch.no_grad():
            if batch_generic:
                mode, inputs = _symbolic_inputs(tensors, x, leaves)
                with mode:
                    gm = make_fx(step)(*inputs)
            else:
                gm = fake_mode_trace(step, [t.detach() for t in tensors], x.detach(), *[t.detach() for t in leaves],
                                     passthrough=(TraceError,))
    except TraceError:
        raise
    except Exception as e:  # data-dependent control flow, unsupported ops, ...
        raise TraceError(f"tracing {type(cell).__name__}.forward failed: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from e
    return gm, names, spec


def _symbolic_inputs(tensors: list[Tensor], x: Tensor, leaves: list[Tensor]) -> tuple[Any, list]:
    """Fake inputs whose batch dim is one symbol ``B`` (dim 0 of ``x`` and of each leaf whose dim 0 is
    ``x``'s), everything else static. One symbol for all: separate ones would collect guards that
    they are equal (the cell's shape checks). No duck shaping: a hidden size equal to ``B`` stays a
    number. Sizes 0 and 1 are specialized by torch, so ``B`` ranges over ``[2, inf)``: the engine
    traces generically only at ``B >= 2`` and uses the graph only there."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    mode = FakeTensorMode(shape_env=ShapeEnv(duck_shape=False))

    def fake(t: Tensor, dynamic: bool) -> Tensor:
        sizes = [DimDynamic.DYNAMIC if dynamic and i == 0 else DimDynamic.STATIC for i in range(t.dim())]
        return mode.from_tensor(t.detach(), symbolic_context=StatelessSymbolicContext(dynamic_sizes=sizes))

    fake_x = fake(x, True)
    batch = fake_x.shape[0]
    fake_leaves = []
    with mode:
        for t in leaves:
            if t.dim() and t.shape[0] == x.shape[0]:
                fake_leaves.append(torch.empty((batch, *t.shape[1:]), dtype=t.dtype, device=t.device))
            else:
                fake_leaves.append(fake(t, False))
    return mode, [[fake(t, False) for t in tensors], fake_x, *fake_leaves]


def batch_guards(shape_env: Any) -> list[str]:
    """The guards a batch-generic trace put on its batch symbol (``shape_env`` is its fake mode's):
    Python that branched on ``B`` (``if x.shape[0] % 2``). Empty: the graphs hold for every ``B >= 2``."""
    found = [str(g.expr) for g in shape_env.guards]
    return found + [str(a.expr) for asserts in shape_env.deferred_runtime_asserts.values() for a in asserts]


class StateDtypeChange(TraceError):
    """Under autocast the step returned its state in other dtypes (``dtypes``, one per leaf) than it was given."""

    def __init__(self, message: str, dtypes: list[torch.dtype]) -> None:
        super().__init__(message)
        self.dtypes = dtypes


def _check_state_dtypes(given: tuple, new: list) -> None:
    """A traced step is one program for every step, so its state must come back in the dtypes it
    was given. Under autocast a step may return a leaf in autocast's dtype (an Elman cell's
    ``h = tanh(product)``); the loop then runs its later steps on that dtype, a trace made for
    the first step's dtype would not (it crashed in a product of mixed dtypes). Raises
    :class:`StateDtypeChange`: the engine may trace again from a state in the returned dtypes."""
    changed = [(i, old.dtype, leaf.dtype) for i, (old, leaf) in enumerate(zip(given, new)) if leaf.dtype != old.dtype]
    if changed:
        i, was, now = changed[0]
        raise StateDtypeChange(f"under autocast its step returns state leaf {i} in {now} where it was given {was}; "
                               f"a traced step needs a state that keeps its dtype (pass the initial state in "
                               f"{now}, or run engine='loop')", [leaf.dtype for leaf in new])


def _structural_copy(cell: nn.Module, tensors: list[Tensor]) -> nn.Module:
    """``cell`` deep-copied with every parameter and buffer an empty ``meta`` tensor: the same
    modules and Python attributes, no data, nothing shared with the live module to swap."""
    memo: dict[int, Any] = {}
    for t in tensors:
        empty = torch.empty(t.shape, dtype=t.dtype, device="meta")
        memo[id(t)] = nn.Parameter(empty, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else empty
    try:
        return copy.deepcopy(cell, memo)
    except Exception as e:
        raise TraceError(f"{type(cell).__name__} cannot be copied for tracing (tracing never swaps the "
                         f"parameters of the live module): {type(e).__name__}: {e}") from e
