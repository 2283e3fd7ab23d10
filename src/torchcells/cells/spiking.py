"""Leaky integrate-and-fire cell: a spiking hidden cell with a membrane state.

.. math::
    r_t &= \\Theta(v_{t-1} - \\vartheta) \\qquad(\\text{the unit fired at the last step: reset}) \\\\
    v_t &= \\beta \\odot v_{t-1} + W_{ih} x_t + b_{ih} - \\vartheta\\, r_t \\\\
    s_t &= \\Theta(v_t - \\vartheta), \\qquad y_t = s_t

with :math:`\\Theta` the Heaviside step, ``ϑ`` the threshold (``threshold=1.0``) and
:math:`\\beta = \\sigma(\\lambda)` a learned leak per unit (``leak`` ``λ`` ``(H,)``, started so
that ``β = beta=0.9``). The membrane ``v`` integrates its input, leaks towards 0 and
loses ``ϑ`` after each spike ("reset by subtraction").

**Surrogate gradient.** ``Θ`` has derivative 0 almost everywhere, so nothing could be
learned through the spikes. The backward pass uses instead the derivative of the
fast sigmoid (SuperSpike, Zenke & Ganguli 2018),
:math:`\\partial s_t / \\partial v_t := 1 / (1 + k |v_t - \\vartheta|)^2` (``slope`` ``k = 5``);
the forward pass is exactly ``Θ``. The reset ``r_t`` is a comparison and carries no
gradient (as snnTorch's default). ``v``'s own gradient is the true one.

Parameters: ``weight_ih`` ``(H, I)``, ``bias_ih`` ``(H,)`` uniform in ``±1/√I``, ``leak``
``(H,)``. Shapes: ``x`` ``(B, I)``, state ``v`` ``(B, H)``, output spikes ``s`` ``(B, H)``
(0. or 1.).

Example::

    >>> cell = LIFCell(3, 5)
    >>> spikes, v = cell(torch.randn(2, 3) * 4, cell.init_state(2))
    >>> bool(((spikes == 0) | (spikes == 1)).all())
    True
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import StepCell, check_size, optional_parameter

__all__ = ["LIFCell", "spike"]


def spike(u: Tensor, slope: float) -> Tensor:
    """``Θ(u)`` forwards, with the fast sigmoid's derivative ``1 / (1 + k|u|)²`` backwards.

    ``φ(u) = u / (1 + k|u|)`` has that derivative; ``Θ(u) + φ(u) − stopgrad(φ(u))`` has
    ``Θ``'s value (the last two terms cancel exactly) and ``φ``'s gradient.
    """
    smooth = u / (1 + slope * u.abs())
    return (u > 0).to(u.dtype) + (smooth - smooth.detach())


class LIFCell(StepCell):
    """One leaky integrate-and-fire step: spikes out, membrane potential as the state.

    Args:
        input_size: ``I``, features of ``x_t``.
        hidden_size: ``H``, the number of units.
        bias: with the bias ``bias_ih`` ``(H,)``.
        threshold: ``ϑ``, the membrane potential at which a unit fires.
        beta: ``β``, the leak each unit starts with, in ``(0, 1)`` (learned through ``leak``).
        slope: ``k``, the steepness of the surrogate gradient.
        device: where the parameters are made.
        dtype: the parameters' dtype.

    Returns:
        ``forward(x, v)`` returns ``(s_t, v_t)``: ``x`` ``(B, I)``, spikes ``s`` (0. or 1.) and membrane
        ``v`` ``(B, H)``.
    """
    STATE_ROLE_NAMES: tuple[str, ...] = ("memory",)  # the membrane potential, carried on

    input_size: int
    hidden_size: int
    bias_ih: Optional[Tensor]

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True, threshold: float = 1.0,
                 beta: float = 0.9, slope: float = 5.0, device: Optional[torch.device | str] = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        check_size("LIFCell", "input_size", input_size)
        check_size("LIFCell", "hidden_size", hidden_size)
        if not 0.0 < beta < 1.0:
            raise ValueError(f"LIFCell: beta should be in (0, 1), got {beta!r}")
        if not threshold > 0 or not slope > 0:
            raise ValueError(f"LIFCell: threshold and slope should be positive, got {threshold!r}, {slope!r}")
        super().__init__(input_size, hidden_size)
        self.threshold, self.beta, self.slope, self.bias = float(threshold), float(beta), float(slope), bool(bias)
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size, device=device, dtype=dtype))
        optional_parameter(self, "bias_ih", (hidden_size,), bias, device=device, dtype=dtype)
        self.leak = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.input_size)
        with torch.no_grad():
            self.weight_ih.uniform_(-bound, bound)
            if self.bias_ih is not None:
                self.bias_ih.uniform_(-bound, bound)
            self.leak.fill_(math.log(self.beta / (1 - self.beta)))

    def step(self, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        reset = (v > self.threshold).to(v.dtype)
        v = torch.sigmoid(self.leak) * v + F.linear(x, self.weight_ih, self.bias_ih) - self.threshold * reset
        return spike(v - self.threshold, self.slope), v

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        return s + f", threshold={self.threshold}, beta={self.beta}"
