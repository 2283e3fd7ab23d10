"""Probabilistic hidden cell: a Gaussian with a learned mean and log-variance (as in a VAE).

.. math::
    \\mu_t &= W_{\\mu} x_t + b_{\\mu}, \\qquad \\ell_t = W_{\\ell} x_t + b_{\\ell}
        \\quad(\\ell = \\log\\sigma^2) \\\\
    z_t &= \\mu_t + e^{\\ell_t / 2} \\odot \\varepsilon_t,\\quad \\varepsilon_t \\sim \\mathcal N(0, I)
        \\qquad(\\text{training; } z_t = \\mu_t \\text{ in eval}) \\\\
    \\mathrm{KL}_t &= \\tfrac12 \\textstyle\\sum_j \\big(\\mu_{tj}^2 + e^{\\ell_{tj}} - \\ell_{tj} - 1\\big)
        = D_{\\mathrm{KL}}\\big(\\mathcal N(\\mu_t, \\sigma_t^2) \\,\\|\\, \\mathcal N(0, I)\\big) \\\\
    k_t &= k_{t-1} + \\mathrm{KL}_t, \\qquad y_t = z_t

The sample ``z`` is written as the mean plus scaled noise (the reparameterization
trick, Kingma & Welling 2014), so gradients reach ``μ`` and ``σ`` through it. The KL
term is exposed two ways: :meth:`GaussianCell.kl` for one step's ``(μ, ℓ)``, and the
state ``k`` ``(B,)``, the KL summed over the steps taken so far, so that
``Recurrent(GaussianCell(I, H))`` returns each sequence's total KL (over its valid
steps, with lengths) as its final state: add ``β·k.mean()`` to the loss.

Parameters: ``weight`` ``(2H, I)``, ``bias`` ``(2H,)``; rows ``0 … H−1`` are the mean
(``GATES = ("mean", "logvar")``), ``H … 2H−1`` the log-variance; uniform in ``±1/√I``.
The noise is drawn at every step (a random operation: in training a layer of this
cell runs on the reference loop; in eval on the fused one).

Shapes: ``x`` ``(B, I)``, state ``k`` ``(B,)``, output ``z`` ``(B, H)``.

Example::

    >>> cell = GaussianCell(6, 2)
    >>> z, kl = cell(torch.randn(4, 6))
    >>> z.shape, kl.shape
    (torch.Size([4, 2]), torch.Size([4]))
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import StepCell, check_size, optional_parameter

__all__ = ["GaussianCell"]


class GaussianCell(StepCell):
    """A sample ``z = μ + σ ε`` of a Gaussian whose ``μ``, ``log σ²`` are linear in the input.

    Args:
        input_size: ``I``, features of ``x_t``.
        hidden_size: ``H``, features of the sample ``z_t``.
        bias: with the bias ``(2H,)`` (mean rows, then log-variance rows).
        device: where the parameters are made.
        dtype: the parameters' dtype.

    Returns:
        ``forward(x, k)`` returns ``(z_t, k_t)``: ``x`` ``(B, I)``, ``z`` ``(B, H)`` and ``k`` ``(B,)``, the KL
        terms summed over the steps so far.
    """

    GATES = ("mean", "logvar")
    STATE_ROLE_NAMES: tuple[str, ...] = ("other",)  # a running sum of KL terms
    input_size: int
    hidden_size: int
    bias: Optional[Tensor]

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True,
                 device: Optional[torch.device | str] = None, dtype: Optional[torch.dtype] = None) -> None:
        check_size("GaussianCell", "input_size", input_size)
        check_size("GaussianCell", "hidden_size", hidden_size)
        super().__init__(input_size, hidden_size)
        self.weight = nn.Parameter(torch.empty(2 * hidden_size, input_size, device=device, dtype=dtype))
        optional_parameter(self, "bias", (2 * hidden_size,), bias, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.input_size)
        with torch.no_grad():
            for p in self.parameters(recurse=False):
                p.uniform_(-bound, bound)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> Tensor:
        return torch.zeros(batch_size, device=device, dtype=dtype)

    def distribution(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(μ, log σ²)``, each ``(..., H)``, for inputs ``x`` ``(..., I)``."""
        mean, logvar = F.linear(x, self.weight, self.bias).chunk(2, -1)
        return mean, logvar

    @staticmethod
    def kl(mean: Tensor, logvar: Tensor) -> Tensor:
        """``KL(N(μ, σ²) ‖ N(0, I))`` summed over the last dimension: ``½ Σ (μ² + σ² − log σ² − 1)``."""
        return 0.5 * (mean.square() + logvar.exp() - logvar - 1).sum(-1)

    def step(self, x: Tensor, total: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.distribution(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if self.training else mean
        return z, total + self.kl(mean, logvar)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias is not None else ", bias=False")
