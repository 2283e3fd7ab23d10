"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?").

.. math::
    \\text{minGRU:}\\quad
    z_t &= \\sigma(W_z x_t + b_z), \\qquad \\tilde h_t = g(W_h x_t + b_h), \\\\
    h_t &= (1 - z_t) \\odot h_{t-1} + z_t \\odot \\tilde h_t \\\\[6pt]
    \\text{minLSTM:}\\quad
    f_t &= \\sigma(W_f x_t + b_f), \\qquad i_t = \\sigma(W_i x_t + b_i), \\qquad
    \\tilde h_t = g(W_h x_t + b_h), \\\\
    f'_t &= \\frac{f_t}{f_t + i_t}, \\qquad i'_t = \\frac{i_t}{f_t + i_t}, \\\\
    h_t &= f'_t \\odot h_{t-1} + i'_t \\odot \\tilde h_t

with :math:`g(v) = v + 0.5` for :math:`v \\ge 0` and :math:`\\sigma(v)` for :math:`v < 0`
(the paper's continuous, positive activation). The output is ``y_t = h_t``.

**The gates read only the input** ``x_t``, never ``h_{t−1}``. So each step is linear in
the state, ``h_t = a_t ⊙ h_{t−1} + b_t`` with ``a_t, b_t > 0`` known from the inputs
alone (minGRU: ``a = 1 − z``, ``b = z ⊙ h̃``; minLSTM: ``a = f'``, ``b = i' ⊙ h̃``), and a
whole sequence can be computed by a parallel scan over time
(:func:`torchcells.engine.scan.scan_linear`) instead of a loop. Each cell declares
that structure with ``scan_coefficients(x) -> (log a, log b)``, computed in log space
and in at least float32 (in bfloat16, rounding ``log b`` by ``|log b|·2⁻⁸`` made the
scan's error three times the loop's; the products themselves stay in the mode's dtype),
and with ``scan_gates()``, which names that gating of one product (``"min_gru"``,
``"min_lstm"``, :class:`~torchcells.cell.ScanGateForm`) so that on a CPU the engine runs the
coefficients and the recurrence in one native pass.

Parameters, gate ``k`` in rows ``k·H … (k+1)·H − 1`` (``gate_rows()``):

=============  =================  =====================
cell           ``weight_ih``      ``GATES``
=============  =================  =====================
MinGRUCell     ``(2H, I)``        ``("z", "h")``
MinLSTMCell    ``(3H, I)``        ``("f", "i", "h")``
=============  =================  =====================

``bias_ih`` ``(2H,)`` / ``(3H,)`` has the same rows; there is no ``weight_hh`` /
``bias_hh``, since nothing reads ``h``. Initialization is torch's: uniform in ``±1/√H``.

Departures from the paper: its minGRU/minLSTM map ``x_t`` through separate ``Linear``
layers per gate; here the gates are stacked rows of one ``weight_ih``, as in torch's
cells. Its log-space code takes ``log h_0`` and so needs ``h_0 > 0``; here ``h_0`` may be
any real tensor (the scan keeps the ``h_0`` term linear).

Shapes: ``x`` ``(B, I)`` (or ``(I,)`` unbatched), state ``h`` ``(B, H)``, output ``h``.

Example::

    >>> cell = MinGRUCell(3, 5)
    >>> y, h = cell(torch.randn(2, 3), cell.init_state(2))
    >>> y.shape
    torch.Size([2, 5])
    >>> from torchcells.engine.scan import scan_linear
    >>> outputs, h, _ = scan_linear(cell, torch.randn(7, 2, 3), cell.init_state(2))  # (T, B, I)
    >>> outputs.shape
    torch.Size([7, 2, 5])
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor
import torch.nn.functional as F

from ..cell import ScanGateForm, at_least_float32
from ._gated import GatedCell

__all__ = ["MinGRUCell", "MinLSTMCell"]


def g(v: Tensor) -> Tensor:
    """The paper's activation: ``v + 0.5`` for ``v ≥ 0``, ``σ(v)`` for ``v < 0`` (positive, continuous)."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def log_g(v: Tensor) -> Tensor:
    """``log g(v)``: ``log(v + 0.5)`` for ``v ≥ 0``, ``log σ(v)`` for ``v < 0``; finite, with finite gradients.

    Written as ``log σ(min(v, 0)) + log(1 + 2 max(v, 0))``: each term is the wanted branch
    on its side of 0 and a constant (``−log 2``, resp. 0) on the other, and both are finite
    for every finite ``v``, so no unselected branch can send inf or NaN into a gradient
    (and there is no ``where`` to pay for twice in the backward pass).
    """
    positive = torch.relu(v)
    return F.logsigmoid(v - positive) + torch.log1p(positive * 2)


def min_gru_coefficients(k: Tensor) -> tuple[Tensor, Tensor]:
    """minGRU's ``(log a, log b)`` ``(..., H)`` from its pre-activations ``k = [k_z, k_h]`` ``(..., 2H)``."""
    k_z, k_h = at_least_float32(k).chunk(2, -1)
    return _min_gru_log(-k_z, k_h)


def _min_gru_log(minus_k_z: Tensor, k_h: Tensor) -> tuple[Tensor, Tensor]:
    """``log a = log(1 − z) = log σ(−k_z)``, ``log b = log z + log g(k_h)`` with
    ``log z = log σ(k_z) = k_z + log σ(−k_z)`` (as ``σ(k) = e^k σ(−k)``), which reuses
    ``log a`` instead of a second pass of ``log σ``: finite for every finite input."""
    log_a = F.logsigmoid(minus_k_z)
    return log_a, log_a - minus_k_z + log_g(k_h)


def min_lstm_coefficients(k: Tensor) -> tuple[Tensor, Tensor]:
    """minLSTM's ``(log a, log b)`` ``(..., H)`` from its pre-activations ``k = [k_f, k_i, k_h]`` ``(..., 3H)``.

    With ``d = log f − log i = log σ(k_f) − log σ(k_i)`` (``log σ(k) = −softplus(−k)``):
    ``log f' = log σ(d)`` (as ``f' = f / (f + i) = σ(d)``), ``log i' = log σ(−d)``,
    ``log b = log i' + log g(k_h)``. This is the paper's
    ``−softplus(softplus(−k_f) − softplus(−k_i))`` without its four negations.
    """
    k_f, k_i, k_h = at_least_float32(k).chunk(3, -1)
    d = F.logsigmoid(k_f) - F.logsigmoid(k_i)
    log_a = F.logsigmoid(d)
    return log_a, log_a - d + log_g(k_h)  # log σ(−d) = log σ(d) − d


class _MinimalCell(GatedCell):
    """Shared layout of the minimal cells: one stacked ``weight_ih`` (and ``bias_ih``), state ``h``."""

    STATE_ROLE_NAMES = ("memory",)  # carried on; nothing reads it through a product

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True,
                 device: Optional[torch.device | str] = None, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(input_size, hidden_size, bias=bias, recurrent=False, device=device, dtype=dtype)
        self.reset_parameters()


class MinGRUCell(_MinimalCell):
    """One minGRU step: ``h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ g(W_h x_t + b_h)``, ``z_t = σ(W_z x_t + b_z)``.

    Gates ``("z", "h")``: rows ``0 … H−1`` of ``weight_ih`` ``(2H, I)`` and ``bias_ih``
    are the update gate, rows ``H … 2H−1`` the candidate (``CANDIDATES = ("h",)``). The gates read
    only ``x_t``.

    Args:
        input_size: ``I``, features of ``x_t``.
        hidden_size: ``H``, the number of units.
        bias: with the bias ``bias_ih`` (there is no ``bias_hh``: nothing reads ``h`` through a product).
        device: where the parameters are made.
        dtype: the parameters' dtype.

    Returns:
        ``forward(x, h)`` returns ``(h_t, h_t)``: ``x`` ``(B, I)``, ``h`` ``(B, H)``.
    """

    GATES = ("z", "h")
    CANDIDATES = ("h",)

    def forward(self, x: Tensor, state: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        h = self._prepare(x, state)
        k_z, k_h = F.linear(x, self.weight_ih, self.bias_ih).chunk(2, -1)
        z = torch.sigmoid(k_z)
        h = (1 - z) * h + z * g(k_h)
        return h, h

    def candidate_step(self, x: Tensor, h: Tensor, drop: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        """The step with ``drop`` on the candidate: ``h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ drop(h̃_t)``."""
        k_z, k_h = F.linear(x, self.weight_ih, self.bias_ih).chunk(2, -1)
        z = torch.sigmoid(k_z)
        h = (1 - z) * h + z * drop(g(k_h))
        return h, h

    def scan_coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(log a, log b)`` ``(..., H)`` with ``h_t = a_t ⊙ h_{t−1} + b_t`` for inputs ``x`` ``(..., I)``
        (:func:`min_gru_coefficients` of the step's products)."""
        # Two products over weight slices rather than one split afterwards: the split's
        # backward would concatenate two sequence-sized gradients; the slices' backward
        # touches only the small weight. The update gate's product is taken with negated
        # weights (-k_z directly), which saves a pass negating a sequence-sized tensor.
        H = self.hidden_size
        w, b = self.weight_ih, self.bias_ih
        minus_k_z = at_least_float32(F.linear(x, -w[:H], None if b is None else -b[:H]))
        k_h = at_least_float32(F.linear(x, w[H:], None if b is None else b[H:]))
        return _min_gru_log(minus_k_z, k_h)

    def scan_gates(self) -> ScanGateForm:
        """``scan_coefficients`` as the ``"min_gru"`` gating of ``k = x W_ihᵀ + b_ih`` (:class:`ScanGateForm`)."""
        return ScanGateForm("min_gru", self.weight_ih, self.bias_ih, min_gru_coefficients)


class MinLSTMCell(_MinimalCell):
    """One minLSTM step: ``h_t = f'_t ⊙ h_{t−1} + i'_t ⊙ g(W_h x_t + b_h)``, ``f', i'`` = ``f, i`` over ``f + i``.

    Gates ``("f", "i", "h")``: rows ``0 … H−1`` of ``weight_ih`` ``(3H, I)`` and
    ``bias_ih`` are the forget gate, ``H … 2H−1`` the input gate, ``2H … 3H−1`` the
    candidate (``CANDIDATES = ("h",)``). The gates read only ``x_t``.

    Args:
        input_size: ``I``, features of ``x_t``.
        hidden_size: ``H``, the number of units.
        bias: with the bias ``bias_ih`` (there is no ``bias_hh``: nothing reads ``h`` through a product).
        device: where the parameters are made.
        dtype: the parameters' dtype.

    Returns:
        ``forward(x, h)`` returns ``(h_t, h_t)``: ``x`` ``(B, I)``, ``h`` ``(B, H)``.
    """

    GATES = ("f", "i", "h")
    CANDIDATES = ("h",)

    def forward(self, x: Tensor, state: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        h = self._prepare(x, state)
        k_f, k_i, k_h = F.linear(x, self.weight_ih, self.bias_ih).chunk(3, -1)
        # f' = f / (f + i) = σ(d), i' = σ(−d) with d = log σ(k_f) − log σ(k_i): the same numbers,
        # without the 0/0 that f / (f + i) reaches when both σ underflow (k ≤ −90 in float32)
        d = F.logsigmoid(k_f) - F.logsigmoid(k_i)
        h = torch.sigmoid(d) * h + torch.sigmoid(-d) * g(k_h)
        return h, h

    def candidate_step(self, x: Tensor, h: Tensor, drop: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        """The step with ``drop`` on the candidate: ``h_t = f'_t ⊙ h_{t−1} + i'_t ⊙ drop(h̃_t)``."""
        k_f, k_i, k_h = F.linear(x, self.weight_ih, self.bias_ih).chunk(3, -1)
        d = F.logsigmoid(k_f) - F.logsigmoid(k_i)
        h = torch.sigmoid(d) * h + torch.sigmoid(-d) * drop(g(k_h))
        return h, h

    def scan_coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(log a, log b)`` ``(..., H)`` with ``h_t = a_t ⊙ h_{t−1} + b_t`` for inputs ``x`` ``(..., I)``
        (:func:`min_lstm_coefficients` of the step's products)."""
        return min_lstm_coefficients(F.linear(x, self.weight_ih, self.bias_ih))

    def scan_gates(self) -> ScanGateForm:
        """``scan_coefficients`` as the ``"min_lstm"`` gating of ``k = x W_ihᵀ + b_ih`` (:class:`ScanGateForm`)."""
        return ScanGateForm("min_lstm", self.weight_ih, self.bias_ih, min_lstm_coefficients)
