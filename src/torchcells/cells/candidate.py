"""Recurrent dropout without memory loss (Semeniuta, Severyn & Barth 2016): drop the candidate.

Dropout on the new content a step writes into the memory, never on the memory itself:

.. math::
    \\text{LSTM:}\\quad c_t &= f_t \\odot c_{t-1} + i_t \\odot d(g_t) \\\\
    \\text{GRU:}\\quad h_t &= (1 - z_t) \\odot d(n_t) + z_t \\odot h_{t-1} \\\\
    d(v) &= m_t \\odot v, \\qquad m_t \\sim \\mathrm{Bernoulli}(1-p)/(1-p)
        \\text{ per unit and step}

What a unit holds is carried on whole; only what it would add this step may be dropped,
so memories survive any number of steps (dropping ``h`` or ``c`` itself erases them:
Semeniuta et al. §3). The paper finds per-step and per-sequence masks work alike for
this form; this wrapper draws a new mask at every step, as the paper's main method. The
mask is scaled by ``1/(1−p)`` (inverted dropout, as ``torch.nn.Dropout``), so in eval the
wrapper is the wrapped cell exactly.

A cell opts in by declaring ``candidate_step(x, state, drop)`` (LSTM and its variants,
GRU, MGU, the layer-normalized cells, sLSTM's cell input ``z``, minGRU, minLSTM); other
cells are refused with a ValueError. The masks are drawn inside the step, a random
operation: in training a layer of this wrapper runs on the reference loop (with a
one-time warning); in eval it runs on any engine. The state is the wrapped cell's.

Compare :class:`~torchcells.RecurrentDropout` (Gal & Ghahramani 2016): one mask per
sequence on what feeds the recurrent products.

Example::

    >>> cell = CandidateDropout(LSTMCell(3, 5), p=0.25)
    >>> y, (h, c) = cell(torch.randn(2, 3))
    >>> c.shape
    torch.Size([2, 5])
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..cell import declares
from ._common import CellWrapper, cell_name, check_probability

__all__ = ["CandidateDropout"]


class CandidateDropout(CellWrapper):
    """Dropout on the candidate update at every step (Semeniuta et al. 2016).

    Args:
        cell: the cell to wrap; it declares ``candidate_step``.
        p: drop probability of each unit's candidate at each step.

    Returns:
        ``forward(x, state)`` returns what the wrapped cell's returns, ``(y_t, state_t)``, with the
        candidate dropped in training; the state is the wrapped cell's.
    """

    def __init__(self, cell: nn.Module, p: float = 0.25) -> None:
        super().__init__(cell)
        self.p = check_probability("CandidateDropout", "p", p)
        if not declares(cell, "candidate_step"):
            raise ValueError(f"CandidateDropout: {cell_name(cell)} does not declare candidate_step(x, state, drop), "
                             f"so its candidate (the new content of its memory) is unknown; expected a cell with a "
                             f"candidate: LSTM, GRU, MGU, LayerNormLSTM/GRU, sLSTM, minGRU, minLSTM")

    def _drop(self, candidate: Tensor) -> Tensor:
        return F.dropout(candidate, self.p, training=True)

    def step(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        if not self.training or self.p == 0.0:
            return self.cell(x, state)
        return self.cell.candidate_step(x, state, self._drop)

    def extra_repr(self) -> str:
        return f"p={self.p}"
