"""What a path runs: one layer call, read forwards, and the bracket around it.

Direction and padding are handled once, here, around whichever path runs the call
(as flax's ``RNN`` does around its scan):

* :func:`open_call` reverses each sequence within its length when asked, so a path
  always reads step 0 first; the :class:`Call` it returns zeroes padded steps of ``x``
  when a path first reads :attr:`Call.x`;
* a path keeps the state unchanged and ``y`` zero at padded steps (nothing else about
  padding); :func:`close_call` then zeroes every-step states at padded steps and
  reverses outputs and states back.

A path is an object with a ``name``, ``accepts(call) -> None | reason`` and
``run(call) -> Result`` (:class:`Path`); :mod:`.paths` keeps them in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Optional, TypeVar

import torch
from torch import Tensor

from ..cell import map_state, state_leaves
from .lengths import reverse_padded, step_mask
from .modes import is_exporting

__all__ = ["Call", "Path", "Result", "bracket", "close_call", "exporting", "jit_tracing", "open_call"]

#: ``(outputs (T, B, ...), final_state, every-step states or None)``, as :func:`.unroll.unroll` returns.
Result = tuple[Tensor, Any, Optional[Any]]
_T = TypeVar("_T")


@dataclass(frozen=True, eq=False)
class Call:
    """One layer call as a path sees it: time-major, validated, read forwards.

    Attributes:
        cell: the cell (a :class:`~torchcells.Cell`, or any module with ``forward(x, state)``).
        raw_x: ``(T, B, ...)`` in reading order, padded steps as the caller left them
            (for a path that never reads them; the others read :attr:`x`).
        state: the initial state, each tensor ``(B, ...)``.
        lengths: ``(B,)`` int64 valid lengths (any order, 0 allowed), or ``None``: all full.
        all_states: return every step's state too.
    """

    cell: Any
    raw_x: Tensor
    state: Any
    lengths: Optional[Tensor] = None
    all_states: bool = False
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def memo(self, key: Hashable, compute: Callable[[], _T]) -> _T:
        """``compute()``, once per call under ``key``: for what a path's ``accepts`` finds and
        its ``run`` needs again (torch's kernel form, the traced step). Exceptions are not kept."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @property
    def valid(self) -> Optional[Tensor]:
        """``(T, B)`` bool on ``x``'s device, ``True`` at valid steps; ``None`` without lengths."""
        lengths = self.lengths
        if lengths is None:
            return None
        return self.memo("valid", lambda: step_mask(lengths, self.steps, self.raw_x.device))

    @property
    def x(self) -> Tensor:
        """``(T, B, ...)`` in reading order with padded steps zeroed, made on first use:
        garbage there (NaN, inf) reaches no result and no gradient. ``raw_x`` itself
        without lengths."""
        valid = self.valid
        if valid is None:
            return self.raw_x
        return self.memo("x", lambda: self.raw_x.masked_fill(~expand(valid, self.raw_x), 0))

    @property
    def steps(self) -> int:
        return self.raw_x.shape[0]

    @property
    def batch(self) -> int:
        return self.raw_x.shape[1]

    @property
    def needs_grad(self) -> bool:
        """Whether autograd is on and anything the call reads requires a gradient (found once per call)."""
        if not torch.is_grad_enabled():
            return False
        return self.memo("needs_grad", self._reads_grad)

    def _reads_grad(self) -> bool:
        if self.raw_x.requires_grad or any(p.requires_grad for p in self.cell.parameters()):
            return True
        return any(t.requires_grad for t in state_leaves(self.state))


def jit_tracing() -> Optional[str]:
    """Why a path that loops in Python must not run under ``torch.jit.trace`` (and the legacy
    ONNX exporter, which uses it), or ``None`` outside it. Such a trace would record the loop
    for this input's number of steps only: at any other length it would silently give wrong
    results (or, for the native runtime's opaque calls, crash)."""
    if not torch.jit.is_tracing():
        return None
    return ("torch.jit.trace (and the legacy ONNX exporter) would record this layer's time loop for this "
            "input's length only, and give wrong results at any other; a layer on torch's own kernel "
            "(the drop-ins LSTM/GRU/RNN, or a cell in torch's form with engine='torch') traces for every length")


def exporting() -> Optional[str]:
    """Why a path that is not :attr:`Path.exportable` must not run under ``torch.export`` (and
    the ONNX exporter built on it, ``torch.onnx.export(..., dynamo=True)``), or ``None`` outside
    it. A Python loop over time would be recorded for the example's number of steps (or make
    the export fail on its symbolic length), the native runtime cannot read the exporter's
    fake tensors, and the parallel scan chooses its chunks from the data."""
    if not is_exporting():
        return None
    return ("torch.export (and torch.onnx.export with dynamo=True) records only the 'export' path, whose "
            "time loop is one torch scan operator valid for every length; this path would fix the graph to "
            "the example's length or fail on it (engine='auto' or 'export' exports)")


class Path:
    """One way to run a :class:`Call`. Subclass it, set ``name``, write ``accepts`` and ``run``.

    ``run`` gets a call its ``accepts`` took and returns a :data:`Result`: outputs zero
    and the state unchanged at padded steps; every-step states as the state was after
    each step (the bracket zeroes them at padded steps).
    """

    name: str = ""
    #: whether ``torch.jit.trace`` records this path correctly for every length (one torch op
    #: over the whole sequence); paths that loop in Python do not, and the registry declines
    #: them while tracing (:func:`jit_tracing`)
    jit_traceable: bool = False
    #: whether ``torch.export`` records this path correctly for every length and batch; the
    #: registry declines the others while exporting (:func:`exporting`)
    exportable: bool = False
    #: for ``engine="auto"``: a call without gradients of at most this many steps is left to the
    #: reference loop without asking :meth:`accepts` (this path's set-up -- tracing, hoisting,
    #: packing, a native plan -- costs more than it saves over so few steps: a streaming step);
    #: 0: never (:func:`.paths.short_call`)
    short_steps: int = 0

    def accepts(self, call: Call) -> Optional[str]:
        """``None`` if this path can run ``call``, else why not (a phrase that follows "cannot run on ...: ")."""
        raise NotImplementedError

    def run(self, call: Call) -> Result:
        raise NotImplementedError

    def defer(self, call: Call) -> Optional[str]:
        """For ``engine="auto"`` only: why to leave an accepted call to a later path (one
        that is faster for it), or ``None`` to take it."""
        return None

    def defer_unasked(self, call: Call) -> Optional[str]:
        """For ``engine="auto"`` only, asked before :meth:`accepts`: why to leave ``call`` to a later
        path without the cost of accepting it (for the fused path, a derivation), or ``None``."""
        return None

    def explain(self, call: Call, reason: str) -> None:
        """Called when ``engine="auto"`` falls back to the reference loop after this path
        declined ``call`` for ``reason``: tell the user, if it matters. Default: silent."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def open_call(cell: Any, x: Tensor, state: Any, *, lengths: Optional[Tensor] = None, reverse: bool = False,
              all_states: bool = False) -> Call:
    """The call a path reads forwards: with ``reverse``, each sequence reversed within its length."""
    return Call(cell, reverse_padded(x, lengths) if reverse else x, state, lengths, all_states)


def close_call(call: Call, result: Result, *, reverse: bool = False) -> Result:
    """A path's result in the caller's terms: every-step states zero at padded steps, and
    outputs and states reversed back with ``reverse``."""
    outputs, final, states = result
    valid = call.valid
    if states is not None and valid is not None:
        states = map_state(lambda s: s.masked_fill(~expand(valid, s), 0), states)
    if reverse:
        outputs = reverse_padded(outputs, call.lengths)
        if states is not None:
            states = map_state(lambda s: reverse_padded(s, call.lengths), states)
    return outputs, final, states


def bracket(run: Callable[[Call], Result], cell: Any, x: Tensor, state: Any, *, lengths: Optional[Tensor] = None,
            reverse: bool = False, all_states: bool = False) -> Result:
    """``run`` (a path's, over a forward call) with :func:`.unroll.unroll`'s contract."""
    call = open_call(cell, x, state, lengths=lengths, reverse=reverse, all_states=all_states)
    return close_call(call, run(call), reverse=reverse)


def expand(valid: Tensor, like: Tensor) -> Tensor:
    """``valid`` ``(T, B)`` or ``(B,)`` with trailing dims of size 1, to broadcast against ``like``."""
    return valid.reshape(valid.shape + (1,) * (like.dim() - valid.dim()))
