"""Zoneout (Krueger et al. 2016): each unit keeps its previous value with probability ``p``.

.. math::
    d_t &\\sim \\mathrm{Bernoulli}(p) \\text{ per unit and step} \\\\
    h_t &= d^h_t \\odot h_{t-1} + (1 - d^h_t) \\odot \\tilde h_t, \\qquad
    c_t = d^c_t \\odot c_{t-1} + (1 - d^c_t) \\odot \\tilde c_t \\quad(\\text{training}) \\\\
    h_t &= p_h\\, h_{t-1} + (1 - p_h)\\, \\tilde h_t, \\qquad
    c_t = p_c\\, c_{t-1} + (1 - p_c)\\, \\tilde c_t \\quad(\\text{eval: the expectation})

where :math:`\\tilde h_t, \\tilde c_t` is the wrapped cell's new state. Like dropout it
trains an ensemble, but a zoned-out unit passes its value (and its gradient) through
time unchanged instead of being zeroed. The paper zones out ``h`` and ``c`` with
separate rates (``p=(p_h, p_c)``; one number sets both).

Which state tensors it touches, the cell declares (``state_roles()``, see
:data:`torchcells.cell.STATE_ROLES`): the state's ``h`` (its field ``h``, or the state
when it is one tensor; in a nested state the ``h`` found by following ``h`` fields, else
first parts) gets ``p_h``; every other ``"hidden"``, ``"memory"`` or ``"normalizer"`` tensor
gets ``p_c``, all with one mask where their shapes agree; tensors of role ``"other"``
(a wrapper's masks, a window of inputs) are never touched. A **stabilizer** (an sLSTM's
``m``: its true memory and normalizer are ``c·e^m`` and ``n·e^m``) is never averaged: in
training it is kept or updated with its memories (one mask: the unit keeps its whole
memory or takes the new one, exactly); in eval the expectation is taken of the true
memories, :math:`p\\,c_{t-1}e^{m_{t-1}} + (1-p)\\,\\tilde c_t e^{\\tilde m_t}`, stored
against the new stabilizer :math:`m_t = \\max(m_{t-1}, \\tilde m_t)` (averaging ``m``
itself with its initial ``−∞`` would leave it at ``−∞`` and the cell would forget
everything at every step). A cell that declares no roles has every tensor treated as a
memory (except one it passes on unchanged). When the cell's output is its new ``h``
(LSTM, GRU, ...), the output is the zoned-out ``h``; otherwise the cell's output is
passed on as it is.

The masks are drawn at every step (the paper's rule), a random operation: in training
a layer of this wrapper runs on the reference loop (with a one-time warning); in eval
it has no randomness and runs on the fused engine. The state is the wrapped cell's.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..cell import map_state, state_leaves
from ._common import CellWrapper, check_probability, h_path, leaf_paths, roles_of, state_template_of

__all__ = ["Zoneout"]


def _plan(cell: nn.Module) -> tuple[int, list[str], list[Optional[int]]]:
    """For each leaf of ``cell``'s state: ``"h"`` (rate ``p_h``), ``"c"`` (``p_c``), ``"stabilizer"``
    or ``"skip"``, and the index of the stabilizer beside a memory (``None``: none); plus the
    index of ``h``."""
    template = state_template_of(cell)
    paths = leaf_paths(template)
    if not paths:
        return -1, [], []
    k = paths.index(h_path(template))
    roles = roles_of(cell)
    if roles is None:
        kinds = ["h" if i == k else "c" for i in range(len(paths))]
    else:
        kinds = ["skip" if r == "other" else "stabilizer" if r == "stabilizer" else "h" if i == k else "c"
                 for i, r in enumerate(roles)]
    stabilizers: list[Optional[int]] = []
    for i, path in enumerate(paths):
        beside = [j for j, q in enumerate(paths) if kinds[j] == "stabilizer" and q[:-1] == path[:-1]]
        stabilizers.append(beside[0] if beside and kinds[i] == "c" else None)
    return k, kinds, stabilizers


class Zoneout(CellWrapper):
    """Keep each unit's previous state with probability ``p_h`` (``h``) or ``p_c`` (the memories).

    Args:
        cell: the cell to wrap.
        p: one probability for every state tensor, or ``(p_h, p_c)``.

    Returns:
        ``forward(x, state)`` returns ``(y_t, state_t)``: the wrapped cell's new state with each unit
        kept or updated (training) or their expectation (eval); ``y_t`` is the zoned-out ``h`` when the
        cell outputs its ``h``, else the cell's output.
    """

    def __init__(self, cell: nn.Module, p: Union[float, Sequence[float]] = 0.1) -> None:
        super().__init__(cell)
        pair = tuple(p) if isinstance(p, (tuple, list)) else (p, p)
        if len(pair) != 2:
            raise ValueError(f"Zoneout: p should be a probability or (p_h, p_c), got {p!r}")
        self.p_h = check_probability("Zoneout", "p_h", pair[0])
        self.p_c = check_probability("Zoneout", "p_c", pair[1])
        self._k, self._kinds, self._stabilizers = _plan(cell)

    def state_roles(self) -> Optional[tuple[str, ...]]:
        """The cell's roles, with a ``"hidden"`` h now carried on (a zoned-out unit keeps it)."""
        inner = roles_of(self.cell)
        return None if inner is None else tuple("memory" if r == "hidden" else r for r in inner)

    def step(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        y, new = self.cell(x, state)
        old_leaves, new_leaves = state_leaves(state), state_leaves(new)
        if not new_leaves:  # a cell without state: nothing to zone out
            return y, new
        y_is_h = y is new_leaves[self._k]
        if self.training:
            mixed = self._keep_or_update(old_leaves, new_leaves)
        else:
            mixed = self._expectation(old_leaves, new_leaves)
        parts = iter(mixed)
        return (mixed[self._k] if y_is_h else y), map_state(lambda _: next(parts), new)

    def _rate(self, i: int, old: Tensor, fresh: Tensor) -> float:
        """``p`` for leaf ``i``; 0 where nothing is to be done (a leaf passed on unchanged, a skipped one)."""
        if self._kinds[i] == "skip" or fresh is old:
            return 0.0
        return self.p_h if self._kinds[i] == "h" else self.p_c

    def _keep_or_update(self, old_leaves: list[Tensor], new_leaves: list[Tensor]) -> list[Tensor]:
        """Training: each unit keeps its old value or takes the new one; the memories (and their
        stabilizer) of one shape share a mask."""
        shared: dict[tuple[int, ...], Tensor] = {}
        mixed = []
        for i, (old, fresh) in enumerate(zip(old_leaves, new_leaves)):
            p = self._rate(i, old, fresh)
            if p == 0.0:
                mixed.append(fresh)
                continue
            shape = tuple(fresh.shape)
            if self._kinds[i] == "h":
                keep = torch.rand_like(fresh) < p
            else:
                if shape not in shared:
                    shared[shape] = torch.rand_like(fresh) < p
                keep = shared[shape]
            mixed.append(torch.where(keep, old, fresh))
        return mixed

    def _expectation(self, old_leaves: list[Tensor], new_leaves: list[Tensor]) -> list[Tensor]:
        """Eval: ``p·old + (1 − p)·new``, for a stabilized memory in its true scale (see the module)."""
        mixed = []
        for i, (old, fresh) in enumerate(zip(old_leaves, new_leaves)):
            p = self._rate(i, old, fresh)
            j = self._stabilizers[i]
            if p == 0.0:
                mixed.append(fresh)
            elif self._kinds[i] == "stabilizer":
                mixed.append(torch.where(old > fresh, old, fresh))
            elif j is None:
                mixed.append(fresh + p * (old - fresh))
            else:
                m_old, m_new = old_leaves[j], new_leaves[j]
                top = torch.where(m_old > m_new, m_old, m_new)
                top = torch.where(top > -math.inf, top, torch.zeros_like(top))  # both −∞: nothing held
                mixed.append(p * torch.exp(m_old - top) * old + (1 - p) * torch.exp(m_new - top) * fresh)
        return mixed

    def extra_repr(self) -> str:
        return f"p=({self.p_h}, {self.p_c})"
