"""sLSTM (Beck et al. 2024, xLSTM): an LSTM with exponential gating, a normalizer and a stabilizer.

.. math::
    \\tilde\\imath_t, \\tilde f_t, \\tilde z_t, \\tilde o_t &= W_{ih} x_t + W_{hh} h_{t-1} + b
        \\quad(\\text{rows of the gates } i, f, z, o) \\\\
    z_t &= \\tanh(\\tilde z_t), \\qquad o_t = \\sigma(\\tilde o_t), \\qquad
    \\log f_t = \\log\\sigma(\\tilde f_t) \\;(\\text{or } \\tilde f_t \\text{ with } f_t = e^{\\tilde f_t}) \\\\
    m_t &= \\max(\\log f_t + m_{t-1},\\; \\tilde\\imath_t)
        \\qquad(\\text{stabilizer}) \\\\
    i'_t &= e^{\\tilde\\imath_t - m_t}, \\qquad f'_t = e^{\\log f_t + m_{t-1} - m_t} \\\\
    c_t &= f'_t \\odot c_{t-1} + i'_t \\odot z_t, \\qquad
    n_t = f'_t \\odot n_{t-1} + i'_t \\qquad(\\text{normalizer}) \\\\
    h_t &= o_t \\odot c_t / n_t

The input gate is exponential, :math:`i_t = e^{\\tilde\\imath_t}`, so it can open far wider
than a sigmoid; the memory ``c`` and the normalizer ``n`` (the sum of all input gates,
decayed) grow alike and their ratio stays bounded. Both are kept scaled by
:math:`e^{-m_t}`, which changes neither ``h_t`` nor the unscaled
:math:`c_t = f_t c_{t-1} + i_t z_t`, :math:`n_t = f_t n_{t-1} + i_t` (``c/n`` is the same) but
keeps every exponential at most 1, so nothing overflows.

Gates in xLSTM's order ``GATES = ("i", "f", "z", "o")``: rows ``k·H … (k+1)·H − 1`` of
``weight_ih`` ``(4H, I)``, ``weight_hh`` ``(4H, H)`` and ``bias`` ``(4H,)``. Weights are
uniform in ``±1/√H``; the bias too, plus ``forget_bias`` (default 1) on the forget rows.
``forget="sigmoid"`` (default) or ``"exp"`` picks the forget gate's activation (the paper
allows both). The rows ``z`` are the cell input (the candidate), not a gate.

Initialization against the reference implementation (NX-AI's ``xlstm``,
``xlstm/blocks/slstm/cell.py``, ``sLSTMCellBase.reset_parameters``): there the recurrent
weights start at zeros or uniform ``±1/√H`` (``recurrent_weight_init``), the input gate's,
cell input's and output gate's biases at 0, and the forget gate's bias by ``bias_init``:
``"powerlaw_blockdependent"`` (the setting of their language-model examples) spreads the
units of a head from ``+5`` down to ``−7`` (``5 − 12·(k/(d−1))^{0.3+1.3r}`` for unit ``k`` of
``d``, ``r`` the block's depth), ``"small_init"`` from 3 to 6 (linspace); their input
projections are separate layers with a "small init" (normal, std ``√(2/(5·d))``). Here all
weights and biases are uniform ``±1/√H`` with ``forget_bias`` (default 1) added to every
forget row: one cell, not a block stack, so no depth-dependent schedule; set
``cell.bias.data[H:2H]`` to reproduce one. Departures from the paper: one head (a full ``W_hh``; xLSTM's sLSTM
makes it block-diagonal over heads) and no output projection or layer around it.

The initial state is ``h = c = n = 0`` and ``m = −∞``: ``m`` is the log of the largest
input-gate contribution held so far (``n = 0`` holds none, ``log 0 = −∞``), so the first
step sets ``m_1 = ĩ_1`` and ``n_1 = 1``. From there ``n_t ≥ 1`` at every step (either
``i'_t = 1`` or ``f'_t = 1``), so ``c/n`` is never ``0/0``. (With ``m_0 = 0`` instead, a
first input gate far below 1 underflows to ``n_1 = 0`` and ``h_1 = NaN``.)

Shapes: ``x`` ``(B, I)``; state ``SLSTMState(h, c, n, m)``, each ``(B, H)``; output ``h``.

Example::

    >>> cell = SLSTMCell(3, 5)
    >>> y, state = cell(torch.randn(2, 3), cell.init_state(2))
    >>> state._fields
    ('h', 'c', 'n', 'm')
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import StepCell, check_size

__all__ = ["SLSTMCell", "SLSTMState"]


class SLSTMState(NamedTuple):
    """An sLSTM's state: hidden ``h``, memory ``c``, normalizer ``n`` and stabilizer ``m``.

    Attributes:
        h: ``(B, H)``, the output ``h_t = o_t ⊙ c_t / n_t``, fed back to the gates.
        c: ``(B, H)``, the memory, scaled by ``e^{−m_t}``.
        n: ``(B, H)``, the normalizer (the input gates summed, decayed), scaled by ``e^{−m_t}``.
        m: ``(B, H)``, the stabilizer: the log of that scale (``−∞`` before the first input).
    """

    h: Tensor
    c: Tensor
    n: Tensor
    m: Tensor


class SLSTMCell(StepCell):
    """One sLSTM step: exponential input gate, normalized and stabilized memory.

    Equations: the module's (``GATES = ("i", "f", "z", "o")``; ``z`` is the cell input, the
    candidate: ``CANDIDATES = ("z",)``).

    Args:
        input_size: ``I``, features of ``x_t``.
        hidden_size: ``H``, the number of units.
        forget: the forget gate's activation: ``"sigmoid"`` (default) or ``"exp"``.
        forget_bias: added to the forget rows of ``bias`` at initialization.
        device: where the parameters are made.
        dtype: the parameters' dtype.

    Returns:
        ``forward(x, state)`` returns ``(h_t, SLSTMState(h_t, c_t, n_t, m_t))``: ``x`` ``(B, I)``, each
        state tensor ``(B, H)``.
    """

    GATES = ("i", "f", "z", "o")
    CANDIDATES = ("z",)
    STATE_ROLE_NAMES = ("hidden", "memory", "normalizer", "stabilizer")
    input_size: int
    hidden_size: int

    def __init__(self, input_size: int, hidden_size: int, *, forget: str = "sigmoid", forget_bias: float = 1.0,
                 device: Optional[torch.device | str] = None, dtype: Optional[torch.dtype] = None) -> None:
        check_size("SLSTMCell", "input_size", input_size)
        check_size("SLSTMCell", "hidden_size", hidden_size)
        if forget not in ("sigmoid", "exp"):
            raise ValueError(f"SLSTMCell: forget should be 'sigmoid' or 'exp', got {forget!r}")
        super().__init__(input_size, hidden_size)
        self.forget = forget
        self.forget_bias = float(forget_bias)
        rows = 4 * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size, device=device, dtype=dtype))
        self.weight_hh = nn.Parameter(torch.empty(rows, hidden_size, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(rows, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        H = self.hidden_size
        with torch.no_grad():
            for p in (self.weight_ih, self.weight_hh, self.bias):
                p.uniform_(-bound, bound)
            self.bias[H:2 * H] += self.forget_bias

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> SLSTMState:
        def zeros() -> Tensor:
            return torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        no_input_yet = torch.full((batch_size, self.hidden_size), -math.inf, device=device, dtype=dtype)
        return SLSTMState(zeros(), zeros(), zeros(), no_input_yet)

    def step(self, x: Tensor, state: SLSTMState) -> tuple[Tensor, SLSTMState]:
        return self._step(x, state, None)

    def candidate_step(self, x: Tensor, state: SLSTMState, drop: Callable[[Tensor], Tensor]
                       ) -> tuple[Tensor, SLSTMState]:
        """The step with ``drop`` on the cell input: ``c_t = f'_t ⊙ c_{t−1} + i'_t ⊙ drop(z_t)``
        (the normalizer still counts the input gate: a dropped input writes zero)."""
        return self._step(x, state, drop)

    def _step(self, x: Tensor, state: SLSTMState, drop: Optional[Callable[[Tensor], Tensor]]
              ) -> tuple[Tensor, SLSTMState]:
        h, c, n, m = state
        gates = F.linear(x, self.weight_ih, self.bias) + F.linear(h, self.weight_hh)
        i_pre, f_pre, z_pre, o_pre = gates.chunk(4, -1)
        log_f = F.logsigmoid(f_pre) if self.forget == "sigmoid" else f_pre
        decayed = log_f + m
        m_new = torch.where(decayed > i_pre, decayed, i_pre)  # max (torch.maximum's backward works in place)
        i = torch.exp(i_pre - m_new)
        f = torch.exp(decayed - m_new)
        c = f * c + i * (torch.tanh(z_pre) if drop is None else drop(torch.tanh(z_pre)))
        n = f * n + i
        h = torch.sigmoid(o_pre) * (c / n)
        return h, SLSTMState(h, c, n, m_new)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.forget != "sigmoid":
            s += f", forget={self.forget!r}"
        return s if self.forget_bias == 1.0 else s + f", forget_bias={self.forget_bias}"
