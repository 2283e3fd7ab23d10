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
separate rates (``p=(p_h, p_c)``; one number sets both). The state's field ``h`` (or
the state, when it is one tensor; in a nested state the ``h`` found by following ``h``
fields, else first parts) gets ``p_h``; every other state tensor gets ``p_c`` (a tensor
the cell passes on unchanged, such as a wrapper's mask, is left alone),
all with one mask where their shapes agree (so an sLSTM's ``c``, ``n``, ``m`` are kept or
updated together). When the cell's output is its new ``h`` (LSTM, GRU, ...), the output
is the zoned-out ``h``; otherwise the cell's output is passed on as it is.

The masks are drawn at every step (the paper's rule), a random operation: in training
a layer of this wrapper runs on the reference loop (with a one-time warning); in eval
it has no randomness and runs on the fused engine. The state is the wrapped cell's.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import torch
from torch import Tensor, nn

from ..cell import map_state, state_leaves
from ._common import CellWrapper, check_probability, h_path, leaf_paths

__all__ = ["Zoneout"]


class Zoneout(CellWrapper):
    """Keep each unit's previous state with probability ``p_h`` (``h``) or ``p_c`` (the rest).

    Args:
        cell: the cell to wrap.
        p: one probability for every state tensor, or ``(p_h, p_c)``.
    """

    def __init__(self, cell: nn.Module, p: Union[float, Sequence[float]] = 0.1) -> None:
        super().__init__(cell)
        pair = tuple(p) if isinstance(p, (tuple, list)) else (p, p)
        if len(pair) != 2:
            raise ValueError(f"Zoneout: p should be a probability or (p_h, p_c), got {p!r}")
        self.p_h = check_probability("Zoneout", "p_h", pair[0])
        self.p_c = check_probability("Zoneout", "p_c", pair[1])

    def step(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        y, new = self.cell(x, state)
        old_leaves, new_leaves = state_leaves(state), state_leaves(new)
        if not new_leaves:  # a cell without state: nothing to zone out
            return y, new
        k = leaf_paths(state).index(h_path(state))
        y_is_h = y is new_leaves[k]
        shared: dict[tuple[int, ...], Tensor] = {}
        mixed = []
        for i, (old, fresh) in enumerate(zip(old_leaves, new_leaves)):
            p = self.p_h if i == k else self.p_c
            if p == 0.0 or fresh is old:  # nothing to do; a tensor passed on unchanged (a wrapper's mask)
                mixed.append(fresh)
            elif not self.training:
                mixed.append(fresh + p * (old - fresh))
            else:
                if i == k or tuple(fresh.shape) not in shared:
                    keep = torch.rand_like(fresh) < p
                    if i != k:
                        shared[tuple(fresh.shape)] = keep
                else:
                    keep = shared[tuple(fresh.shape)]
                mixed.append(torch.where(keep, old, fresh))
        parts = iter(mixed)
        return (mixed[k] if y_is_h else y), map_state(lambda _: next(parts), new)

    def extra_repr(self) -> str:
        return f"p=({self.p_h}, {self.p_c})"
