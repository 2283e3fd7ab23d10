"""Layer-normalized LSTM and GRU cells (Ba, Kiros & Hinton 2016).

Layer normalization over a vector ``v`` of ``n`` features, with a gain ``α`` and a
shift ``β`` per feature:
:math:`\\mathrm{LN}(v; α, β) = α \\odot (v - μ) / \\sqrt{σ^2 + ε} + β`, ``μ``, ``σ²`` the
mean and variance of ``v``'s ``n`` features (``ε = 1e-5``; ``nn.LayerNorm``).

LSTM (the paper's equations 20–22; ``GATES = ("i", "f", "g", "o")``, rows as in
:class:`~torchcells.LSTMCell`):

.. math::
    (i, f, g, o)_t &= \\mathrm{LN}(W_{ih} x_t; α_1, β_1) + \\mathrm{LN}(W_{hh} h_{t-1}; α_2, β_2) \\\\
    c_t &= \\sigma(f_t) \\odot c_{t-1} + \\sigma(i_t) \\odot \\tanh(g_t) \\\\
    h_t &= \\sigma(o_t) \\odot \\tanh(\\mathrm{LN}(c_t; α_3, β_3))

GRU (the same recipe on torch's reset-after GRU; ``GATES = ("r", "z", "n")``):

.. math::
    (a^r, a^z, a^n)_t &= \\mathrm{LN}(W_{ih} x_t; α_1, β_1), \\qquad
    (b^r, b^z, b^n)_t = \\mathrm{LN}(W_{hh} h_{t-1}; α_2, β_2) \\\\
    r_t &= \\sigma(a^r_t + b^r_t), \\qquad z_t = \\sigma(a^z_t + b^z_t) \\\\
    n_t &= \\tanh(a^n_t + r_t \\odot b^n_t), \\qquad h_t = (1 - z_t) \\odot n_t + z_t \\odot h_{t-1}

Each ``LN`` normalizes all ``4H`` (``3H``) pre-activations together, as in the paper,
not gate by gate. Parameters: ``weight_ih`` ``(GH, I)``, ``weight_hh`` ``(GH, H)``
(uniform in ``±1/√H``), and ``norm_ih``, ``norm_hh`` (``nn.LayerNorm(GH)``; the LSTM
also ``norm_c``, ``nn.LayerNorm(H)``), gains 1 and shifts 0 at the start. Departure
from the paper: no separate bias ``b``; the shifts ``β_1 + β_2`` are that bias.

Defaults against the reference implementation (haste's ``LayerNormLSTM``, LMNT,
``frameworks/pytorch/layer_norm_lstm.py``): haste adds a forget-gate bias of ``1.0`` by
default (``forget_bias=1.0``), initializes each gate's input kernel Glorot-uniform and each
gate's recurrent kernel orthogonal, with a separate bias (zeros) after the norms and no
shifts inside them. Here the forget shift starts at ``0`` and the weights are torch's
uniform ``±1/√H``, so the cell starts as torch's cells do; for haste's start, add the forget
bias to ``cell.norm_ih.bias[H:2H]`` (the forget rows) and re-initialize the weights with
``nn.init.xavier_uniform_`` / ``nn.init.orthogonal_`` per gate block.

Shapes: ``x`` ``(B, I)``; state ``LSTMState(h, c)`` ``(B, H)`` each, or ``h`` ``(B, H)``
for the GRU; output ``h``.

Example::

    >>> cell = LayerNormLSTMCell(3, 5)
    >>> y, (h, c) = cell(torch.randn(2, 3), cell.init_state(2))
    >>> y.shape
    torch.Size([2, 5])
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._gated import GatedCell, HiddenStateCell
from .lstm import LSTMState, _candidate

__all__ = ["LayerNormGRUCell", "LayerNormLSTMCell"]


class _LayerNormCell(GatedCell):
    """Weights ``weight_ih``, ``weight_hh`` (no biases) and a layer norm on each product."""

    def __init__(self, input_size: int, hidden_size: int, *, device: Optional[torch.device | str] = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(input_size, hidden_size, bias=False, device=device, dtype=dtype)
        rows = len(self.GATES) * hidden_size
        self.norm_ih = nn.LayerNorm(rows, device=device, dtype=dtype)
        self.norm_hh = nn.LayerNorm(rows, device=device, dtype=dtype)

    def _normalized(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return self.norm_ih(F.linear(x, self.weight_ih)), self.norm_hh(F.linear(h, self.weight_hh))

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


class LayerNormLSTMCell(_LayerNormCell):
    """One layer-normalized LSTM step (Ba et al. 2016, equations 20–22).

    Equations: the module's (``GATES = ("i", "f", "g", "o")``; ``g`` is the candidate,
    ``CANDIDATES = ("g",)``).

    Args:
        input_size: ``I``, features of ``x_t``.
        hidden_size: ``H``, the number of units.
        device: where the parameters are made.
        dtype: the parameters' dtype.

    Returns:
        ``forward(x, state)`` returns ``(h_t, LSTMState(h_t, c_t))``: ``x`` ``(B, I)``, ``h`` and ``c``
        ``(B, H)``.
    """

    GATES = ("i", "f", "g", "o")
    CANDIDATES = ("g",)
    STATE_FIELDS = ("h", "c")
    STATE_ROLE_NAMES = ("hidden", "memory")

    def __init__(self, input_size: int, hidden_size: int, *, device: Optional[torch.device | str] = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(input_size, hidden_size, device=device, dtype=dtype)
        self.norm_c = nn.LayerNorm(hidden_size, device=device, dtype=dtype)
        self.reset_parameters()

    def _state_sizes(self) -> tuple[int, ...]:
        return (self.hidden_size, self.hidden_size)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> LSTMState:
        return LSTMState(torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype),
                         torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype))

    def forward(self, x: Tensor, state: Optional[LSTMState] = None) -> tuple[Tensor, LSTMState]:
        h, c = self._prepare(x, state)
        return self._step(x, h, c, None)

    def candidate_step(self, x: Tensor, state: LSTMState, drop: Callable[[Tensor], Tensor]
                       ) -> tuple[Tensor, LSTMState]:
        """The step with ``drop`` on the candidate: ``c_t = σ(f_t) ⊙ c_{t−1} + σ(i_t) ⊙ drop(tanh g_t)``."""
        return self._step(x, state[0], state[1], drop)

    def _step(self, x: Tensor, h: Tensor, c: Tensor, drop: Optional[Callable[[Tensor], Tensor]]
              ) -> tuple[Tensor, LSTMState]:
        a, b = self._normalized(x, h)
        i, f, g, o = (a + b).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * _candidate(g, drop)
        h = torch.sigmoid(o) * torch.tanh(self.norm_c(c))
        return h, LSTMState(h, c)


class LayerNormGRUCell(_LayerNormCell, HiddenStateCell):
    """One layer-normalized GRU step (reset-after, as torch's GRU).

    Equations: the module's (``GATES = ("r", "z", "n")``; ``n`` is the candidate,
    ``CANDIDATES = ("n",)``).

    Args:
        input_size: ``I``, features of ``x_t``.
        hidden_size: ``H``, the number of units.
        device: where the parameters are made.
        dtype: the parameters' dtype.

    Returns:
        ``forward(x, h)`` returns ``(h_t, h_t)``: ``x`` ``(B, I)``, ``h`` ``(B, H)``.
    """

    GATES = ("r", "z", "n")
    CANDIDATES = ("n",)
    STATE_ROLE_NAMES = ("memory",)

    def __init__(self, input_size: int, hidden_size: int, *, device: Optional[torch.device | str] = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(input_size, hidden_size, device=device, dtype=dtype)
        self.reset_parameters()

    def _step(self, x: Tensor, h: Tensor, fed: Tensor, drop: Optional[Callable[[Tensor], Tensor]]
              ) -> tuple[Tensor, Tensor]:
        """One step (see :class:`~._gated.HiddenStateCell`), ``drop`` on the candidate ``n_t``."""
        a, b = self._normalized(x, fed)
        a_r, a_z, a_n = a.chunk(3, -1)
        b_r, b_z, b_n = b.chunk(3, -1)
        r = torch.sigmoid(a_r + b_r)
        z = torch.sigmoid(a_z + b_z)
        n = torch.tanh(a_n + r * b_n)
        if drop is not None:
            n = drop(n)
        h = n + z * (h - n)
        return h, h
