"""The ordered registry of paths: how a call is matched to a way of running it.

Each path (:class:`~torchcells.engine.call.Path`) has a ``name``, says whether it
accepts a call (``accepts(call) -> None | reason``) and runs the calls it accepts.
``engine="<name>"`` runs one path by name and raises a TypeError with its reason when it
declines; ``engine="auto"`` walks the registry in order and runs the first path that
accepts (and does not :meth:`~torchcells.engine.call.Path.defer`). The order, fastest
first where it applies:

1. ``scan``  -- cells that declare ``scan_coefficients`` (:mod:`.scan`);
2. ``torch`` -- torch's fused kernel, for cells that declare ``torch_kernel()``
   (:mod:`.torch_kernel`); in auto, a GRU on CPU defers to the fused path when the
   native runtime is built (faster there);
3. ``fused`` -- any cell whose step traces (:mod:`.fused`);
4. ``export`` -- the cell's step under torch's ``scan`` operator (:mod:`.graph_scan`); in
   auto only under ``torch.export``, where it is the one path that runs (the others are
   not :attr:`~torchcells.engine.call.Path.exportable` and decline, saying why);
5. ``loop``  -- the reference loop, any cell (:mod:`.loop`). Auto reaching it after the
   fused path declined warns once per cell, saying why.

Short calls without gradients (a streaming step: ``T = 1``, ``B = 1`` in reinforcement
learning or real-time use) cost the set-up of a fast path -- a trace-cache look-up, hoisting,
packing for torch's kernel, a native plan -- which pays off only over many steps. In auto, a
path whose :attr:`~torchcells.engine.call.Path.short_steps` is at least the call's ``T`` is not
asked about such a call (:func:`short_call`: no gradient, no recording mode): scan at ``T <= 4``,
torch's kernel at ``T <= 2``, fused at ``T <= 8``, where the loop measured faster (the cell's own
step costs tens of microseconds; a fast path's set-up, hundreds).

Adding a path is one new file with a :class:`~torchcells.engine.call.Path` subclass
and one ``register(MyPath())`` call (by default it goes before the loop, the last
resort; ``before=`` places it elsewhere). Built-in paths are registered at the end of
this module; ``unregister(name)`` takes one out.
"""

from __future__ import annotations

from typing import Optional

import torch

from ...cell import cell_name
from .. import ops
from ..call import Call, Path, exporting, jit_tracing
from ..modes import is_exporting
from .fused import FusedPath
from .graph_scan import GraphScanPath
from .loop import LoopPath
from .scan import ScanPath
from .torch_kernel import TorchKernelPath

__all__ = ["Path", "choose", "engines", "get", "loop_runs_short", "paths", "register", "short_call", "unregister"]

_REGISTRY: list[Path] = []


def register(path: Path, *, before: Optional[str] = "loop") -> Path:
    """Add ``path`` to the registry, just before the path named ``before`` (at the end if
    ``None``). Returns ``path``. ``before`` must name a registered path: a path put after
    the loop (which accepts every call) would never run in ``engine="auto"``."""
    if not path.name or path.name == "auto":
        raise ValueError(f"register: a path needs a name other than 'auto', got {path.name!r}")
    if any(p.name == path.name for p in _REGISTRY):
        raise ValueError(f"register: a path named {path.name!r} is already registered")
    names = [p.name for p in _REGISTRY]
    if before is not None and before not in names:
        raise ValueError(f"register: before should name a registered path, one of {tuple(names)}, got {before!r}")
    _REGISTRY.insert(names.index(before) if before is not None else len(names), path)
    return path


def unregister(name: str) -> Path:
    """Take the path named ``name`` out of the registry; returns it."""
    found = [p for p in _REGISTRY if p.name == name]
    if not found:
        raise ValueError(f"unregister: no path named {name!r} is registered (registered: "
                         f"{tuple(p.name for p in _REGISTRY)})")
    _REGISTRY.remove(found[0])
    return found[0]


def paths() -> tuple[Path, ...]:
    """The registered paths, in the order ``engine="auto"`` tries them."""
    return tuple(_REGISTRY)


def engines() -> tuple[str, ...]:
    """The values ``engine=`` takes: ``"auto"`` and every registered path's name."""
    return ("auto",) + tuple(p.name for p in _REGISTRY)


def get(name: str) -> Path:
    """The registered path named ``name``."""
    for path in _REGISTRY:
        if path.name == name:
            return path
    raise ValueError(f"engine should be one of {engines()}, got {name!r}")


def choose(call: Call, engine: str = "auto") -> Path:
    """The path that runs ``call``: the one named ``engine``, or the first in order that
    accepts it for ``"auto"``. An empty call (``T = 0`` or ``B = 0``) runs on the loop."""
    named = get(engine) if engine != "auto" else None  # an unknown name is an error, even for an empty call
    if call.steps == 0 or call.batch == 0:  # nothing to speed up
        return get("loop")
    if named is not None:
        reason = _accepts(named, call)
        if reason is not None:
            raise TypeError(f"{cell_name(call.cell)} cannot run on the {named.name} engine: {reason}")
        return named
    declined: list[tuple[Path, str]] = []  # refused the call (explained if the loop runs it)
    passed: list[tuple[Path, str]] = []    # accepted it, or was not asked, and left it to a later path
    short = call.steps if short_call(call) else 0
    for path in _REGISTRY:
        if short and short <= path.short_steps:
            passed.append((path, _SHORT))
            continue
        reason = path.defer_unasked(call)
        if reason is not None:
            passed.append((path, reason))
            continue
        reason = _accepts(path, call)
        if reason is not None:
            declined.append((path, reason))
            continue
        reason = path.defer(call)
        if reason is None:
            if path.name == "loop":
                for other, why in declined:
                    other.explain(call, why)
            return path
        passed.append((path, reason))
    raise TypeError(f"{cell_name(call.cell)}: no registered path accepts this call: "
                    + "; ".join(f"{p.name}: {why}" for p, why in declined + passed))


_SHORT = "a call of so few steps without gradients runs faster on the loop"


def short_call(call: Call) -> bool:
    """Whether ``engine="auto"`` may leave ``call`` to the reference loop for its few steps (each
    path's :attr:`~torchcells.engine.call.Path.short_steps`): no gradient to compute, and no
    recording mode in which the loop would not be the path that records it (``torch.jit.trace``,
    ``torch.export``, ``torch.compile``: each has its paths) nor a ``torch.func`` transform (whose
    operators run on the fused path). The loop defines every path's results: such a call gets the
    reference results themselves."""
    if call.needs_grad or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return not (is_exporting() or ops.functorch_active())


def loop_runs_short(engine: str, steps: int) -> bool:
    """Whether a call of ``steps`` steps with ``engine``, made without gradients, runs on the
    reference loop whatever else it holds: ``engine="loop"``, or ``"auto"`` with every path before
    the loop leaving so short a call to it (:func:`short_call`'s other conditions hold too), the
    registered ``"loop"`` being the reference loop itself (:class:`LoopPath`, not a subclass or a path
    registered in its place). A layer's streaming step asks this instead of opening the call
    (:meth:`~torchcells.Recurrent.step`)."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or is_exporting() or ops.functorch_active():
        return False
    if engine not in ("auto", "loop"):
        return False
    for path in _REGISTRY:
        if path.name == "loop":  # the reference loop itself, not a path registered in its place
            return type(path) is LoopPath
        if engine == "auto" and steps > path.short_steps:
            return False
    return False


def _accepts(path: Path, call: Call) -> Optional[str]:
    """``path.accepts(call)``; an error inside it names the path (a registered path's bug
    would otherwise surface as a bare error from every layer call)."""
    if not path.jit_traceable:
        tracing = jit_tracing()
        if tracing is not None:
            return tracing
    if not path.exportable:
        export = exporting()
        if export is not None:
            return export
    try:
        return path.accepts(call)
    except Exception as error:
        message = f"engine path {path.name!r} could not decide on {cell_name(call.cell)}: {error}"
        if isinstance(error, (TypeError, ValueError)):  # the cell's fault (a bad hook): keep its kind
            raise type(error)(message) from error
        raise RuntimeError(f"{message} ({type(error).__name__})") from error


for _path in (ScanPath(), TorchKernelPath(), FusedPath(), GraphScanPath(), LoopPath()):
    register(_path, before=None)
