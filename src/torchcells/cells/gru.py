"""GRU cell (Cho et al. 2014) in torch's reset-after form.

.. math::
    r_t &= \\sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\\\
    z_t &= \\sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\\\
    n_t &= \\tanh(W_{in} x_t + b_{in} + r_t \\odot (W_{hn} h_{t-1} + b_{hn})) \\\\
    h_t &= (1 - z_t) \\odot n_t + z_t \\odot h_{t-1}

Gates in torch's order ``GATES = ("r", "z", "n")``: rows ``k·H … (k+1)·H − 1`` of
``weight_ih`` ``(3H, I)``, ``weight_hh`` ``(3H, H)`` and both biases.

Note: by default this is torch.nn.GRU's form, not the paper's. Cho et al. apply the reset
gate before the recurrent product, :math:`n_t = \\tanh(W_{in} x_t + W_{hn}(r_t \\odot
h_{t-1}) + b_n)`; torch (like cuDNN) applies it after, which keeps ``b_hn``
inside the reset product and lets all three recurrent products run as one.
``GRUCell(I, H, reset_after=False)`` is the paper's reset-before form, with the same
parameters (as Keras' ``reset_after=False``):

.. math::
    n_t = \\tanh(W_{in} x_t + b_{in} + W_{hn} (r_t \\odot h_{t-1}) + b_{hn})

Shapes: ``x`` ``(B, I)``, state ``h`` ``(B, H)``, output ``h``.

Example::

    >>> cell = GRUCell(3, 5)
    >>> y, h = cell(torch.randn(2, 3), cell.init_state(2))
    >>> h.shape
    torch.Size([2, 5])
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor
import torch.nn.functional as F

from ..cell import TorchKernelForm
from ._gated import HiddenStateCell


class GRUCell(HiddenStateCell):
    """One GRU step (reset-after, torch.nn.GRUCell's parameters).

    Equations: docs/zoo/gru.md (``GATES = ("r", "z", "n")``).

    Args:
        input_size: ``I``, features of ``x_t``.
        hidden_size: ``H``, the number of units.
        bias: with the biases ``bias_ih`` and ``bias_hh``.
        device: where the parameters are made.
        dtype: the parameters' dtype.
        reset_after: ``True`` (torch's, cuDNN's) applies the reset gate after the recurrent product;
            ``False`` before it, as Cho et al. 2014.

    Returns:
        ``forward(x, h)`` returns ``(h_t, h_t)``: ``x`` ``(B, I)``, ``h`` ``(B, H)``.
    """

    GATES = ("r", "z", "n")
    CANDIDATES = ("n",)
    STATE_ROLE_NAMES = ("memory",)  # h is fed back and carried on (h_t mixes in h_{t−1})

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True,
                 reset_after: bool = True, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        self.reset_after = bool(reset_after)
        self.reset_parameters()

    def torch_kernel(self) -> Optional[TorchKernelForm]:
        """nn.GRU's recurrence: reset after only (not for a subclass: it may change the step)."""
        return self._kernel_form("gru") if self.reset_after and type(self) is GRUCell else None

    def _step(self, x: Tensor, h: Tensor, fed: Tensor, drop: Optional[Callable[[Tensor], Tensor]]
              ) -> tuple[Tensor, Tensor]:
        """One step: ``fed`` (``h`` unless recurrent dropout masks it) into the recurrent products,
        ``drop`` (if any) on the candidate ``n``, the state's ``h`` in the update:
        ``h_t = (1 − z_t) ⊙ drop(n_t) + z_t ⊙ h_{t−1}``."""
        if not self.reset_after:
            return self._reset_before(x, h, fed, drop)
        gi = F.linear(x, self.weight_ih, self.bias_ih)
        gh = F.linear(fed, self.weight_hh, self.bias_hh)
        i_r, i_z, i_n = gi.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        if drop is not None:
            n = drop(n)
        h = n + z * (h - n)
        return h, h

    def _reset_before(self, x: Tensor, h: Tensor, fed: Tensor, drop: Optional[Callable[[Tensor], Tensor]]
                      ) -> tuple[Tensor, Tensor]:
        """Cho et al.'s form: the reset gate scales ``h`` before the candidate's recurrent product."""
        H = self.hidden_size
        gi = F.linear(x, self.weight_ih, self.bias_ih)
        w_hh, b_hh = self.weight_hh, self.bias_hh
        gh = F.linear(fed, w_hh[:2 * H], None if b_hh is None else b_hh[:2 * H])
        i_r, i_z, i_n = gi.chunk(3, -1)
        h_r, h_z = gh.chunk(2, -1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + F.linear(r * fed, w_hh[2 * H:], None if b_hh is None else b_hh[2 * H:]))
        if drop is not None:
            n = drop(n)
        h = n + z * (h - n)
        return h, h

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.reset_after else s + ", reset_after=False"
