"""Convolutional LSTM and GRU cells: kernels inside a recurrent cell, the state a feature map.

ConvLSTM (Shi et al. 2015), with ``*`` a 2-D convolution (stride 1, "same" padding):

.. math::
    (i, f, g, o)_t &= W_{ih} * x_t + b_{ih} + W_{hh} * h_{t-1} + b_{hh} \\\\
    c_t &= \\sigma(f_t) \\odot c_{t-1} + \\sigma(i_t) \\odot \\tanh(g_t), \\qquad
    h_t = \\sigma(o_t) \\odot \\tanh(c_t)

ConvGRU (Ballas et al. 2016; the reset gate before the recurrent convolution, as there):

.. math::
    r_t &= \\sigma(W_{ir} * x_t + b_{ir} + W_{hr} * h_{t-1} + b_{hr}), \\qquad
    z_t = \\sigma(W_{iz} * x_t + b_{iz} + W_{hz} * h_{t-1} + b_{hz}) \\\\
    n_t &= \\tanh(W_{in} * x_t + b_{in} + W_{hn} * (r_t \\odot h_{t-1}) + b_{hn}), \\qquad
    h_t = (1 - z_t) \\odot n_t + z_t \\odot h_{t-1}

Each unit is a map of ``H`` channels at every pixel; the gates are convolutions
instead of products, so a pixel's state reads its neighbours'. Parameters as
torch's cells but with kernels: ``weight_ih`` ``(G·C_h, C_in, k, k)``, ``weight_hh``
``(G·C_h, C_h, k, k)``, ``bias_ih``, ``bias_hh`` ``(G·C_h,)``, gate ``j`` in output
channels ``j·C_h … (j+1)·C_h − 1`` (``GATES``), uniform in ``±1/√(C_h k²)``. With
``kernel_size=1`` and a 1×1 image they are ``nn.LSTMCell`` / a reset-before GRU.
Departure from Shi et al.: no peephole terms ``W_c ∘ c``.

``input_size`` is ``C_in`` and ``hidden_size`` is ``C_h``; the image size is fixed at
construction (``spatial_size=(height, width)``) because ``init_state(B)`` must shape the
state; ``kernel_size`` is odd. ``Bidirectional`` over these cells needs
``merge="sum"``/``"mean"`` or a callable (``"concat"`` joins the last dimension, width).

Shapes: ``x`` ``(B, C_in, height, width)``; state ``LSTMState(h, c)`` or ``h``, each
``(B, C_h, height, width)``; output ``h``. A layer reads ``(T, B, C_in, height, width)``.

Example::

    >>> cell = ConvLSTMCell(2, 4, kernel_size=3, spatial_size=(8, 8))
    >>> y, (h, c) = cell(torch.randn(5, 2, 8, 8))
    >>> y.shape
    torch.Size([5, 4, 8, 8])
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import StepCell, check_size, optional_parameter
from .lstm import LSTMState

__all__ = ["ConvGRUCell", "ConvLSTMCell"]


class _ConvCell(StepCell):
    GATES: tuple[str, ...] = ()
    step_rank = 3
    input_size: int
    hidden_size: int
    bias_ih: Optional[Tensor]
    bias_hh: Optional[Tensor]

    def __init__(self, input_size: int, hidden_size: int, *, spatial_size: Sequence[int], kernel_size: int = 3,
                 bias: bool = True, device: Optional[torch.device | str] = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        name = type(self).__name__
        check_size(name, "input_size", input_size)
        check_size(name, "hidden_size", hidden_size)
        k = check_size(name, "kernel_size", kernel_size)
        if k % 2 == 0:
            raise ValueError(f"{name}: kernel_size should be odd (for 'same' padding), got {k}")
        if not isinstance(spatial_size, (tuple, list)) or len(spatial_size) != 2:
            raise ValueError(f"{name}: spatial_size should be (height, width), got {spatial_size!r}")
        sizes = tuple(check_size(name, "spatial_size", s) for s in spatial_size)
        super().__init__(input_size, hidden_size)
        self.kernel_size, self.spatial_size, self.bias = k, sizes, bool(bias)
        rows = len(self.GATES) * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size, k, k, device=device, dtype=dtype))
        self.weight_hh = nn.Parameter(torch.empty(rows, hidden_size, k, k, device=device, dtype=dtype))
        for name_ in ("bias_ih", "bias_hh"):
            optional_parameter(self, name_, (rows,), bool(bias), device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size * self.kernel_size ** 2)
        with torch.no_grad():
            for p in self.parameters(recurse=False):
                p.uniform_(-bound, bound)

    def _map(self, batch_size: int, device: Any, dtype: Any) -> Tensor:
        return torch.zeros(batch_size, self.hidden_size, *self.spatial_size, device=device, dtype=dtype)

    def check_step_input(self, x: Tensor) -> None:
        super().check_step_input(x)
        if tuple(x.shape[-2:]) != self.spatial_size:
            raise ValueError(f"{self.short_name()}: input has spatial size {tuple(x.shape[-2:])}, "
                             f"expected {self.spatial_size} (spatial_size)")

    def _conv(self, v: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        return F.conv2d(v, weight, bias, padding=self.kernel_size // 2)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, kernel_size={self.kernel_size}, spatial_size={self.spatial_size}"
        return s if self.bias else s + ", bias=False"


class ConvLSTMCell(_ConvCell):
    """One ConvLSTM step (Shi et al. 2015, without peepholes).

    Equations: the module's (``GATES = ("i", "f", "g", "o")``, gate ``j`` in output channels
    ``j·C_h … (j+1)·C_h − 1``; ``g`` is the candidate, ``CANDIDATES = ("g",)``).

    Args:
        input_size: ``C_in``, channels of ``x_t``.
        hidden_size: ``C_h``, channels of ``h`` and ``c`` (the number of units at each pixel).
        spatial_size: ``(height, width)`` of every input image and of the state's maps.
        kernel_size: odd width ``k`` of the square kernels (``"same"`` padding, stride 1).
        bias: with the biases ``bias_ih`` and ``bias_hh`` ``(4·C_h,)``.
        device: where the parameters are made.
        dtype: the parameters' dtype.

    Returns:
        ``forward(x, state)`` returns ``(h_t, LSTMState(h_t, c_t))``: ``x`` ``(B, C_in, height, width)``,
        ``h`` and ``c`` ``(B, C_h, height, width)``.
    """

    GATES = ("i", "f", "g", "o")
    CANDIDATES = ("g",)
    STATE_ROLE_NAMES = ("hidden", "memory")

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> LSTMState:
        return LSTMState(self._map(batch_size, device, dtype), self._map(batch_size, device, dtype))

    def step(self, x: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        h, c = state
        gates = self._conv(x, self.weight_ih, self.bias_ih) + self._conv(h, self.weight_hh, self.bias_hh)
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, LSTMState(h, c)


class ConvGRUCell(_ConvCell):
    """One ConvGRU step (Ballas et al. 2016: reset before the recurrent convolution).

    Equations: the module's (``GATES = ("r", "z", "n")``, gate ``j`` in output channels
    ``j·C_h … (j+1)·C_h − 1``; ``n`` is the candidate, ``CANDIDATES = ("n",)``).

    Args:
        input_size: ``C_in``, channels of ``x_t``.
        hidden_size: ``C_h``, channels of ``h`` (the number of units at each pixel).
        spatial_size: ``(height, width)`` of every input image and of the state's map.
        kernel_size: odd width ``k`` of the square kernels (``"same"`` padding, stride 1).
        bias: with the biases ``bias_ih`` and ``bias_hh`` ``(3·C_h,)``.
        device: where the parameters are made.
        dtype: the parameters' dtype.

    Returns:
        ``forward(x, h)`` returns ``(h_t, h_t)``: ``x`` ``(B, C_in, height, width)``, ``h``
        ``(B, C_h, height, width)``.
    """

    GATES = ("r", "z", "n")
    CANDIDATES = ("n",)
    STATE_ROLE_NAMES = ("memory",)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> Tensor:
        return self._map(batch_size, device, dtype)

    def step(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return self.feedback_step(x, h, h)

    def feedback_step(self, x: Tensor, h: Tensor, fed: Tensor) -> tuple[Tensor, Tensor]:
        """The step with the recurrent convolutions reading ``fed``; ``h_t`` mixes in the state's ``h``."""
        C = self.hidden_size
        w, b = self.weight_hh, self.bias_hh
        i_r, i_z, i_n = self._conv(x, self.weight_ih, self.bias_ih).chunk(3, 1)
        h_r, h_z = self._conv(fed, w[:2 * C], None if b is None else b[:2 * C]).chunk(2, 1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + self._conv(r * fed, w[2 * C:], None if b is None else b[2 * C:]))
        h = n + z * (h - n)
        return h, h
