"""Convolution and pooling as cells: a kernel that slides by remembering its window.

A kernel of width ``k`` applied at position ``t`` reads inputs ``t−k+1 … t``. As a
cell, it keeps the last ``k−1`` inputs as its state (a shift register), so applying
the cell once per position, ``Recurrent(KernelCell(C, O, kernel_size=k))`` over a
sequence of positions ``(L, B, C)`` -- a row of pixels, samples of a signal, the time
axis -- is a causal 1-D convolution (``nn.Conv1d`` on the input padded with ``k−1``
zeros on the left), and ``PoolCell`` is a sliding max or average pool. Across space
the positions are the "time" of the layer; a ``Bidirectional`` pair looks both ways.

.. math::
    w_t &= (x_{t-k+1}, \\ldots, x_t) \\qquad(\\text{the window; } x_{s<0} = 0) \\\\
    \\text{KernelCell:}\\quad y_t &= b + \\textstyle\\sum_{j=0}^{k-1} W_{:,:,j}\\, x_{t-k+1+j} \\\\
    \\text{PoolCell:}\\quad y_t &= \\max_j w_{t,j} \\;\\text{ or }\\; \\tfrac1k \\textstyle\\sum_j w_{t,j}

``KernelCell``'s parameters are ``nn.Conv1d(C, O, k)``'s (``weight`` ``(O, C, k)``,
``bias`` ``(O,)``, same initialization and random draws); ``PoolCell`` has none (it is
``F.max_pool1d``/``F.avg_pool1d`` with stride 1; max pooling pads with ``−∞``, so its
initial window is ``−∞``, average pooling counts the zero padding, as
``count_include_pad=True``). For a stride ``s``, keep every ``s``-th output.

Shapes: ``x`` ``(B, C)``; state: the window ``(B, C, k−1)``, oldest input first;
output ``(B, O)`` (``PoolCell``: ``(B, C)``).

Example::

    >>> conv = Recurrent(KernelCell(2, 4, kernel_size=3), batch_first=True)
    >>> out, window = conv(torch.randn(8, 16, 2))       # (B, L, C): 16 positions
    >>> out.shape, window.shape
    (torch.Size([8, 16, 4]), torch.Size([8, 2, 2]))
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import StepCell, check_size, optional_parameter

__all__ = ["KernelCell", "PoolCell"]


class _WindowCell(StepCell):
    STATE_ROLE_NAMES: tuple[str, ...] = ("other",)  # the last inputs, not a memory
    input_size: int
    kernel_size: int
    _fill = 0.0

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> Tensor:
        return torch.full((batch_size, self.input_size, self.kernel_size - 1), self._fill, device=device, dtype=dtype)

    def _window(self, x: Tensor, window: Tensor) -> Tensor:
        return torch.cat([window, x.unsqueeze(-1)], -1)


class KernelCell(_WindowCell):
    """A convolution kernel over the last ``kernel_size`` inputs: ``nn.Conv1d``'s parameters.

    Args:
        input_size: ``C``, features (channels) of ``x`` at one position.
        hidden_size: ``O``, output channels (the number of kernels).
        kernel_size: ``k``, how many positions each output reads.
        bias: with the bias ``(O,)``.
        device: where the parameters are made.
        dtype: the parameters' dtype.

    Returns:
        ``forward(x, window)`` returns ``(y, window_t)``: ``x`` ``(B, C)``, ``y`` ``(B, O)``, the window
        ``(B, C, k−1)`` of the last inputs, oldest first.
    """

    hidden_size: int
    bias: Optional[Tensor]

    def __init__(self, input_size: int, hidden_size: int, *, kernel_size: int = 3, bias: bool = True,
                 device: Optional[torch.device | str] = None, dtype: Optional[torch.dtype] = None) -> None:
        check_size("KernelCell", "input_size", input_size)
        check_size("KernelCell", "hidden_size", hidden_size)
        self.kernel_size = check_size("KernelCell", "kernel_size", kernel_size)
        super().__init__(input_size, hidden_size)
        self.weight = nn.Parameter(torch.empty(hidden_size, input_size, kernel_size, device=device, dtype=dtype))
        optional_parameter(self, "bias", (hidden_size,), bias, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Conv1d's: Kaiming-uniform weights (``a = √5``), bias uniform in ``±1/√(C·k)``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.input_size * self.kernel_size)
            nn.init.uniform_(self.bias, -bound, bound)

    def step(self, x: Tensor, window: Tensor) -> tuple[Tensor, Tensor]:
        full = self._window(x, window)
        y = F.linear(full.flatten(1), self.weight.flatten(1), self.bias)
        return y, full[:, :, 1:]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, kernel_size={self.kernel_size}"
        return s if self.bias is not None else s + ", bias=False"


class PoolCell(_WindowCell):
    """Max or average over the last ``kernel_size`` inputs, per feature.

    Args:
        input_size: ``C``, features (channels) of ``x`` at one position (and of the output).
        kernel_size: ``k``, how many positions each output reads.
        mode: ``"max"`` or ``"avg"``.

    Returns:
        ``forward(x, window)`` returns ``(y, window_t)``: ``x`` and ``y`` ``(B, C)``, the window
        ``(B, C, k−1)`` of the last inputs, oldest first.
    """

    def __init__(self, input_size: int, *, kernel_size: int = 2, mode: str = "max") -> None:
        check_size("PoolCell", "input_size", input_size)
        self.kernel_size = check_size("PoolCell", "kernel_size", kernel_size)
        if mode not in ("max", "avg"):
            raise ValueError(f"PoolCell: mode should be 'max' or 'avg', got {mode!r}")
        super().__init__(input_size, input_size)
        self.mode = mode
        self._fill = -math.inf if mode == "max" else 0.0

    def step(self, x: Tensor, window: Tensor) -> tuple[Tensor, Tensor]:
        full = self._window(x, window)
        y = full.amax(-1) if self.mode == "max" else full.mean(-1)
        return y, full[:, :, 1:]

    def extra_repr(self) -> str:
        return f"{self.input_size}, kernel_size={self.kernel_size}, mode={self.mode!r}"
