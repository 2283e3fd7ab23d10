"""Cells without memory: the input cell, the noisy input cell, the neuron.

These are the Neural Network Zoo's input, noisy input, hidden and output cells. They
keep no state (``init_state`` returns the empty tuple ``()``), so across time they
apply the same function at every step (``Recurrent(Neuron(I, H))`` is a dense layer
applied to each step, with lengths and padding handled as for any cell), and across
width ``Neuron(I, H)`` is ``H`` neurons side by side.

.. math::
    \\text{Neuron:}\\qquad y &= \\phi(W x + b) \\\\
    \\text{NoisyInput:}\\qquad y &= x + \\sigma \\varepsilon,\\quad
        \\varepsilon \\sim \\mathcal N(0, I) \\text{ in training; } y = x \\text{ in eval}

``Neuron``'s parameters are ``nn.Linear``'s (``weight`` ``(H, I)``, ``bias`` ``(H,)``, same
initialization and random draws, so a state dict loads either way); ``φ`` is one of
``"identity"``, ``"tanh"`` (default), ``"sigmoid"``, ``"relu"``. ``NoisyInput`` has no
parameters; its noise is drawn afresh at every step (it is a random operation, so a
layer of it runs on the reference loop in training).

Shapes: ``x`` ``(B, I)``, state ``()``, output ``(B, H)`` (``NoisyInput``: ``(B, I)``).

Example::

    >>> cell = Neuron(3, 2, activation="sigmoid")
    >>> y, state = cell(torch.randn(4, 3))
    >>> y.shape, state
    (torch.Size([4, 2]), ())
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import StepCell, check_size, optional_parameter

__all__ = ["Neuron", "NoisyInput"]

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda v: v, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu,
}


class _Stateless(StepCell):
    STATE_ROLE_NAMES: tuple[str, ...] = ()  # no state
    def init_state(self, batch_size: int, *, device=None, dtype=None) -> tuple:
        return ()


class Neuron(_Stateless):
    """``H`` neurons side by side: ``y = φ(W x + b)``; nn.Linear's parameters.

    Args:
        input_size: ``I``, features of ``x``.
        hidden_size: ``H``, the number of neurons.
        activation: ``φ``: ``"identity"``, ``"tanh"``, ``"sigmoid"`` or ``"relu"``.
        bias: with the bias ``b`` ``(H,)``.
        device: where the parameters are made.
        dtype: the parameters' dtype.

    Returns:
        ``forward(x, ())`` returns ``(y, ())``: ``x`` ``(B, I)``, ``y`` ``(B, H)``.
    """

    input_size: int
    hidden_size: int
    bias: Optional[Tensor]

    def __init__(self, input_size: int, hidden_size: int = 1, *, activation: str = "tanh", bias: bool = True,
                 device: Optional[torch.device | str] = None, dtype: Optional[torch.dtype] = None) -> None:
        check_size("Neuron", "input_size", input_size)
        check_size("Neuron", "hidden_size", hidden_size)
        if activation not in ACTIVATIONS:
            raise ValueError(f"Neuron: activation should be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        super().__init__(input_size, hidden_size)
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(hidden_size, input_size, device=device, dtype=dtype))
        optional_parameter(self, "bias", (hidden_size,), bias, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's: Kaiming-uniform weights (``a = √5``), bias uniform in ``±1/√I``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.input_size)
            nn.init.uniform_(self.bias, -bound, bound)

    def step(self, x: Tensor, state: tuple) -> tuple[Tensor, tuple]:
        return ACTIVATIONS[self.activation](F.linear(x, self.weight, self.bias)), state

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, activation={self.activation!r}"
        return s if self.bias is not None else s + ", bias=False"


class NoisyInput(_Stateless):
    """The input plus Gaussian noise of standard deviation ``std``, in training only.

    Args:
        input_size: ``I``, features of ``x`` (and of the output).
        std: ``σ``, the noise's standard deviation (``0`` passes the input through).

    Returns:
        ``forward(x, ())`` returns ``(x + σ ε, ())`` in training, ``(x, ())`` in eval: ``x`` ``(B, I)``.
    """

    input_size: int

    def __init__(self, input_size: int, *, std: float = 0.1) -> None:
        check_size("NoisyInput", "input_size", input_size)
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not std >= 0:
            raise ValueError(f"NoisyInput: std should be a number >= 0, got {std!r}")
        super().__init__(input_size, input_size)
        self.std = float(std)

    def step(self, x: Tensor, state: tuple) -> tuple[Tensor, tuple]:
        if self.training and self.std:
            return x + self.std * torch.randn_like(x), state
        return x, state

    def extra_repr(self) -> str:
        return f"{self.input_size}, std={self.std}"
