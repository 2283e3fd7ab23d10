"""Minimal gated unit (Zhou et al. 2016): a GRU with one gate doing both jobs.

.. math::
    f_t &= \\sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\\\
    \\tilde h_t &= \\tanh(W_{ih} x_t + b_{ih} + W_{hh} (f_t \\odot h_{t-1}) + b_{hh}) \\\\
    h_t &= (1 - f_t) \\odot h_{t-1} + f_t \\odot \\tilde h_t

The forget gate ``f`` plays the GRU's reset and update gates at once. Gates
``GATES = ("f", "h")``: rows ``0 … H−1`` of ``weight_ih`` ``(2H, I)``, ``weight_hh``
``(2H, H)`` and both biases are the gate, rows ``H … 2H−1`` the candidate.
Initialization is torch's (uniform in ``±1/√H``). Departure from the paper: two
biases per gate (torch's layout, so the weights copy from a GRU's layout), where
the paper has one; the sum is what counts.

Shapes: ``x`` ``(B, I)``, state ``h`` ``(B, H)``, output ``h``.

Example::

    >>> cell = MGUCell(3, 5)
    >>> y, h = cell(torch.randn(2, 3), cell.init_state(2))
    >>> y.shape
    torch.Size([2, 5])
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._gated import HiddenStateCell

__all__ = ["MGUCell"]


class MGUCell(HiddenStateCell):
    """One MGU step: ``h_t = (1 − f_t) ⊙ h_{t−1} + f_t ⊙ tanh(W_ih x_t + W_hh (f_t ⊙ h_{t−1}) + b)``.

    Equations and rows: docs/zoo/gru.md (``GATES = ("f", "h")``: the forget gate ``f``, then the
    candidate ``h̃``; ``CANDIDATES = ("h",)``).

    Args:
        input_size: ``I``, features of ``x_t``.
        hidden_size: ``H``, the number of units.
        bias: with the biases ``bias_ih`` and ``bias_hh`` ``(2H,)``.
        device: where the parameters are made.
        dtype: the parameters' dtype.

    Returns:
        ``forward(x, h)`` returns ``(h_t, h_t)``: ``x`` ``(B, I)``, ``h`` ``(B, H)``.
    """

    GATES = ("f", "h")
    CANDIDATES = ("h",)
    STATE_ROLE_NAMES = ("memory",)  # h is fed back and carried on

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True,
                 device: Optional[torch.device | str] = None, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        self.reset_parameters()

    def _step(self, x: Tensor, h: Tensor, fed: Tensor, drop: Optional[Callable[[Tensor], Tensor]]
              ) -> tuple[Tensor, Tensor]:
        """One step (see :class:`~._gated.HiddenStateCell`): ``h_t = (1 − f_t) ⊙ h_{t−1} + f_t ⊙ drop(h̃_t)``."""
        H = self.hidden_size
        w_hh, b_hh = self.weight_hh, self.bias_hh
        i_f, i_h = F.linear(x, self.weight_ih, self.bias_ih).chunk(2, -1)
        f = torch.sigmoid(i_f + F.linear(fed, w_hh[:H], None if b_hh is None else b_hh[:H]))
        candidate = torch.tanh(i_h + F.linear(f * fed, w_hh[H:], None if b_hh is None else b_hh[H:]))
        if drop is not None:
            candidate = drop(candidate)
        h = h + f * (candidate - h)
        return h, h
