"""LSTM memory cell (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000).

.. math::
    i_t &= \\sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \\\\
    f_t &= \\sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\\\
    g_t &= \\tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\\\
    o_t &= \\sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\\\
    c_t &= f_t \\odot c_{t-1} + i_t \\odot g_t \\\\
    h_t &= o_t \\odot \\tanh(c_t) \\quad(\\text{projected: } h_t = W_{hr}(o_t \\odot \\tanh(c_t)))

Gates in torch's order ``GATES = ("i", "f", "g", "o")``: gate ``k`` is rows
``k·H … (k+1)·H − 1`` of ``weight_ih`` ``(4H, I)``, ``weight_hh`` ``(4H, R)`` and both
biases. Each of the ``H`` units ("memory cells" in the 1997 paper) has four gate
neurons. With ``proj_size = P > 0`` (Sak et al. 2014, as in nn.LSTM) the output and
``h`` have ``P`` features, ``weight_hr`` is ``(P, H)`` and ``R = P``; otherwise ``R = H``.

Shapes: ``x`` ``(B, I)``; state ``LSTMState(h (B, R), c (B, H))``; output ``h``.

Example::

    >>> cell = LSTMCell(3, 5)
    >>> y, (h, c) = cell(torch.randn(2, 3), cell.init_state(2))
    >>> c.shape
    torch.Size([2, 5])
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from ._gated import GatedCell


class LSTMState(NamedTuple):
    """An LSTM's state in torch's order: hidden ``h`` then memory ``c``."""

    h: Tensor
    c: Tensor


class LSTMCell(GatedCell):
    """One LSTM step; torch.nn.LSTMCell's parameters (plus nn.LSTM's ``proj_size``)."""

    GATES = ("i", "f", "g", "o")
    STATE_FIELDS = ("h", "c")

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True,
                 proj_size: int = 0, device=None, dtype=None) -> None:
        if not isinstance(proj_size, int) or proj_size < 0 or (proj_size and proj_size >= hidden_size):
            raise ValueError(f"LSTMCell: proj_size should be an int in [0, hidden_size={hidden_size}), "
                             f"got {proj_size!r}")
        super().__init__(input_size, hidden_size, bias=bias, recurrent_size=proj_size or hidden_size,
                         device=device, dtype=dtype)
        self.proj_size = proj_size
        if proj_size:
            self.weight_hr = nn.Parameter(torch.empty(proj_size, hidden_size, device=device, dtype=dtype))
        else:
            self.register_parameter("weight_hr", None)
        self.reset_parameters()

    @property
    def output_size(self) -> int:
        return self.proj_size or self.hidden_size

    def _state_sizes(self) -> tuple[int, ...]:
        return (self.output_size, self.hidden_size)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> LSTMState:
        return LSTMState(torch.zeros(batch_size, self.output_size, device=device, dtype=dtype),
                         torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype))

    def forward(self, x: Tensor, state: Optional[LSTMState] = None) -> tuple[Tensor, LSTMState]:
        h, c = self._prepare(x, state)
        gates = F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)
        i, f, g, o = gates.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        if self.weight_hr is not None:
            h = F.linear(h, self.weight_hr)
        return h, LSTMState(h, c)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + f", proj_size={self.proj_size}" if self.proj_size else s
