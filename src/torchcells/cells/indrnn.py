"""Independently recurrent cell, IndRNN (Li et al. 2018).

.. math::
    h_t = \\phi(W_{ih} x_t + b_{ih} + u \\odot h_{t-1})

Each unit reads only its own past: the recurrent weight is a vector ``u`` (stored as
``weight_hh`` ``(H,)``), not a matrix, so units are independent across time and
can be stacked deep with relu (``φ`` = relu by default, or tanh). ``weight_ih``
``(H, I)`` and ``bias_ih`` ``(H,)`` are uniform in ``±1/√H`` (torch's rule);
``weight_hh`` is uniform in ``[0, 1]`` so that relu units neither explode nor forget
at once. Departure from the paper: no clipping of ``|u|`` (the paper bounds it by
``γ^{1/T}`` for a chosen ``γ``); clip ``cell.weight_hh`` yourself after each update
if you need that.

Shapes: ``x`` ``(B, I)``, state ``h`` ``(B, H)``, output ``h``.

Example::

    >>> cell = IndRNNCell(3, 5)
    >>> y, h = cell(torch.randn(2, 3), cell.init_state(2))
    >>> cell.weight_hh.shape
    torch.Size([5])
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import StepCell, check_size, optional_parameter

__all__ = ["IndRNNCell"]


class IndRNNCell(StepCell):
    """One IndRNN step: ``h_t = relu|tanh(W_ih x_t + b_ih + u ⊙ h_{t−1})``.

    Args:
        input_size: ``I``, features of ``x_t``.
        hidden_size: ``H``, the number of units.
        bias: with the bias ``bias_ih`` ``(H,)``.
        nonlinearity: ``φ``: ``"relu"`` (default, the paper's) or ``"tanh"``.
        device: where the parameters are made.
        dtype: the parameters' dtype.

    Returns:
        ``forward(x, h)`` returns ``(h_t, h_t)``: ``x`` ``(B, I)``, ``h`` ``(B, H)``.
    """

    GATES = ("h",)
    STATE_ROLE_NAMES = ("memory",)  # h_{t−1} only feeds u ⊙ h_{t−1}: the unit's own memory
    input_size: int
    hidden_size: int
    bias_ih: Optional[Tensor]

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True, nonlinearity: str = "relu",
                 device: Optional[torch.device | str] = None, dtype: Optional[torch.dtype] = None) -> None:
        check_size("IndRNNCell", "input_size", input_size)
        check_size("IndRNNCell", "hidden_size", hidden_size)
        if nonlinearity not in ("relu", "tanh"):
            raise ValueError(f"IndRNNCell: nonlinearity should be 'relu' or 'tanh', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size)
        self.nonlinearity = nonlinearity
        self.bias = bool(bias)
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size, device=device, dtype=dtype))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        optional_parameter(self, "bias_ih", (hidden_size,), bias, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            self.weight_ih.uniform_(-bound, bound)
            self.weight_hh.uniform_(0.0, 1.0)
            if self.bias_ih is not None:
                self.bias_ih.uniform_(-bound, bound)

    def step(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        pre = F.linear(x, self.weight_ih, self.bias_ih) + self.weight_hh * h
        h = torch.relu(pre) if self.nonlinearity == "relu" else torch.tanh(pre)
        return h, h

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        return s if self.nonlinearity == "relu" else s + ", nonlinearity='tanh'"
