"""Elman cell: the simple recurrent cell of nn.RNN / nn.RNNCell.

.. math::
    h_t = \\phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}),\\qquad y_t = h_t

with :math:`\\phi` = tanh (default) or relu. One gate (``GATES = ("h",)``):
all ``H`` rows of ``weight_ih`` ``(H, I)`` and ``weight_hh`` ``(H, H)``.

Shapes: ``x`` ``(B, I)``, state ``h`` ``(B, H)``, output ``(B, H)``.

Example::

    >>> cell = ElmanCell(3, 5)
    >>> y, h = cell(torch.randn(2, 3), cell.init_state(2))
    >>> y.shape
    torch.Size([2, 5])
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
import torch.nn.functional as F

from ..cell import TorchKernelForm
from ._gated import GatedCell


class ElmanCell(GatedCell):
    """``h_t = tanh|relu(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``; torch.nn.RNNCell's parameters.

    Args:
        input_size: ``I``, features of ``x_t``.
        hidden_size: ``H``, the number of units.
        bias: with the biases ``bias_ih`` and ``bias_hh``.
        device: where the parameters are made.
        dtype: the parameters' dtype.
        nonlinearity: ``"tanh"`` or ``"relu"``.

    Returns:
        ``forward(x, h)`` returns ``(h_t, h_t)``: ``x`` ``(B, I)``, ``h`` ``(B, H)``.
    """

    GATES = ("h",)
    STATE_ROLE_NAMES = ("hidden",)  # h_{t−1} only feeds W_hh h_{t−1}

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True,
                 nonlinearity: str = "tanh", device=None, dtype=None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"ElmanCell: nonlinearity should be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        self.nonlinearity = nonlinearity
        self.reset_parameters()

    def torch_kernel(self) -> Optional[TorchKernelForm]:
        """nn.RNN's recurrence, ``rnn_tanh`` or ``rnn_relu`` (not for a subclass: it may change the step)."""
        return self._kernel_form(f"rnn_{self.nonlinearity}") if type(self) is ElmanCell else None

    def forward(self, x: Tensor, state: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        h = self._prepare(x, state)
        pre = F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)
        h = torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre)
        return h, h

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.nonlinearity == "tanh" else s + ", nonlinearity='relu'"
