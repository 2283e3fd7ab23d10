"""LSTM memory cell (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000).

.. math::
    i_t &= \\sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \\\\
    f_t &= \\sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\\\
    g_t &= \\tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\\\
    o_t &= \\sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\\\
    c_t &= f_t \\odot c_{t-1} + i_t \\odot g_t \\\\
    h_t &= o_t \\odot \\tanh(c_t) \\quad(\\text{projected: } h_t = W_{hr}(o_t \\odot \\tanh(c_t)))

Rows in torch's order ``GATES = ("i", "f", "g", "o")``: the input, forget and output
gates and the candidate ``g`` (the cell input, a ``tanh`` unit, not a gate); block ``k`` is
rows ``k·H … (k+1)·H − 1`` of ``weight_ih`` ``(4H, I)``, ``weight_hh`` ``(4H, R)`` and both
biases. Each of the ``H`` units ("memory cells" in the 1997 paper) has three gate neurons
and one candidate neuron. The 1997 cell had the input and output gates only; the forget
gate is Gers et al.'s (2000), and torch's LSTM (this default) has it. With ``proj_size = P > 0`` (Sak et al. 2014, as in nn.LSTM) the output and
``h`` have ``P`` features, ``weight_hr`` is ``(P, H)`` and ``R = P``; otherwise ``R = H``.

Options (keyword-only; the defaults are torch.nn.LSTMCell exactly, same parameters,
same initialization, same random draws):

* ``peepholes=True`` (Gers & Schmidhuber 2000): the gates also see the memory,
  through one weight per unit: ``weight_ci``, ``weight_cf``, ``weight_co`` ``(H,)``:

  .. math::
      i_t = \\sigma(\\ldots + w_{ci} \\odot c_{t-1}),\\quad
      f_t = \\sigma(\\ldots + w_{cf} \\odot c_{t-1}),\\quad
      o_t = \\sigma(\\ldots + w_{co} \\odot c_t)

  (the output gate looks at the new memory ``c_t``, as in the paper).
* ``coupled=True`` (CIFG, Greff et al. 2017): no input gate; :math:`i_t = 1 - f_t`,
  ``GATES = ("f", "g", "o")`` and the weights have ``3H`` rows.
* ``forget_bias=b``: added to the forget gate's rows of ``bias_ih`` after the uniform
  initialization (Gers et al. 2000; Jozefowicz et al. 2015 recommend ``1.0``), so the
  gate starts mostly open. Re-applied by ``reset_parameters()``.

With ``peepholes`` or ``coupled`` the cell no longer has torch's form, so torch's
kernel never runs it (``torch_kernel()`` is None); the generic engines do.

Shapes: ``x`` ``(B, I)``; state ``LSTMState(h (B, R), c (B, H))``; output ``h``.

Example::

    >>> cell = LSTMCell(3, 5)
    >>> y, (h, c) = cell(torch.randn(2, 3), cell.init_state(2))
    >>> c.shape
    torch.Size([2, 5])
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor
import torch.nn.functional as F

from ..cell import TorchKernelForm
from ._common import optional_parameter
from ._gated import GatedCell


def _candidate(g: Tensor, drop: Optional[Callable[[Tensor], Tensor]]) -> Tensor:
    """``tanh(g)``, with ``drop`` applied if given (candidate dropout)."""
    return torch.tanh(g) if drop is None else drop(torch.tanh(g))


class LSTMState(NamedTuple):
    """An LSTM's state in torch's order: hidden ``h`` then memory ``c``.

    Attributes:
        h: ``(B, H)`` (``(B, P)`` projected), the output, fed back to the gates.
        c: ``(B, H)``, the memory.
    """

    h: Tensor
    c: Tensor


class LSTMCell(GatedCell):
    """One LSTM step; torch.nn.LSTMCell's parameters (plus nn.LSTM's ``proj_size``).

    Equations, the options' papers and the gate rows: docs/zoo/lstm.md (``GATES = ("i", "f", "g", "o")``,
    gate ``j`` is rows ``j·H … (j+1)·H − 1`` of ``weight_ih``, ``weight_hh`` and both biases).

    Args:
        input_size: ``I``, features of ``x_t``.
        hidden_size: ``H``, the number of units.
        bias: with the biases ``bias_ih`` and ``bias_hh``.
        device: where the parameters are made.
        dtype: the parameters' dtype.
        proj_size: ``P > 0`` projects ``h`` to ``P`` features (``weight_hr``), as nn.LSTM.
        peepholes: the gates also read ``c`` (Gers & Schmidhuber 2000).
        coupled: no input gate, ``i_t = 1 − f_t`` (CIFG, Greff et al. 2017).
        forget_bias: added to the forget rows of ``bias_ih`` at initialization.

    Returns:
        ``forward(x, state)`` returns ``(h_t, LSTMState(h_t, c_t))``: ``x`` ``(B, I)``, ``h`` ``(B, H)``
        (``(B, P)`` projected), ``c`` ``(B, H)``.
    """

    GATES = ("i", "f", "g", "o")
    CANDIDATES = ("g",)
    STATE_FIELDS = ("h", "c")
    STATE_ROLE_NAMES = ("hidden", "memory")  # h_{t−1} only feeds the recurrent products
    weight_hr: Optional[Tensor]
    weight_ci: Optional[Tensor]
    weight_cf: Optional[Tensor]
    weight_co: Optional[Tensor]

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True,
                 proj_size: int = 0, peepholes: bool = False, coupled: bool = False,
                 forget_bias: float = 0.0, device=None, dtype=None) -> None:
        if not isinstance(proj_size, int) or proj_size < 0 or (proj_size and proj_size >= hidden_size):
            raise ValueError(f"LSTMCell: proj_size should be an int in [0, hidden_size={hidden_size}), "
                             f"got {proj_size!r}")
        if isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float)):
            raise ValueError(f"LSTMCell: forget_bias should be a number, got {forget_bias!r}")
        if forget_bias and not bias:
            raise ValueError(f"LSTMCell: forget_bias={forget_bias!r} needs bias=True")
        # Per instance (a coupled cell has no input gate); set first, as it sizes the weights.
        setattr(self, "GATES", ("f", "g", "o") if coupled else ("i", "f", "g", "o"))
        super().__init__(input_size, hidden_size, bias=bias, recurrent_size=proj_size or hidden_size,
                         device=device, dtype=dtype)
        self.proj_size = proj_size
        self.peepholes = bool(peepholes)
        self.coupled = bool(coupled)
        self.forget_bias = float(forget_bias)
        optional_parameter(self, "weight_hr", (proj_size, hidden_size), bool(proj_size), device=device, dtype=dtype)
        for gate in ("i", "f", "o"):
            optional_parameter(self, f"weight_c{gate}", (hidden_size,), self.peepholes and gate in self.GATES,
                               device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn's initialization (uniform in ``±1/√H``), then ``forget_bias`` on the forget rows."""
        super().reset_parameters()
        if self.forget_bias and self.bias_ih is not None:
            with torch.no_grad():
                self.bias_ih[self.gate_rows()["f"]] += self.forget_bias

    def torch_kernel(self) -> Optional[TorchKernelForm]:
        """nn.LSTM's recurrence (with ``proj_size``): not with peepholes or a coupled gate, and
        not for a subclass (it may change the step)."""
        if self.peepholes or self.coupled or type(self) is not LSTMCell:
            return None
        projection = () if self.weight_hr is None else (self.weight_hr,)
        return self._kernel_form("lstm", *projection, to_hx=tuple, from_hx=LSTMState._make)

    @property  # type: ignore[misc]  # computed from the cell: not settable
    def output_size(self) -> int:
        return self.proj_size or self.hidden_size

    def _state_sizes(self) -> tuple[int, ...]:
        return (self.output_size, self.hidden_size)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> LSTMState:
        return LSTMState(torch.zeros(batch_size, self.output_size, device=device, dtype=dtype),
                         torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype))

    def forward(self, x: Tensor, state: Optional[LSTMState] = None) -> tuple[Tensor, LSTMState]:
        h, c = self._prepare(x, state)
        return self._step(x, h, c, None)

    def candidate_step(self, x: Tensor, state: LSTMState, drop: Callable[[Tensor], Tensor]
                       ) -> tuple[Tensor, LSTMState]:
        """The step with ``drop`` on the candidate: ``c_t = f_t ⊙ c_{t−1} + i_t ⊙ drop(g_t)``."""
        return self._step(x, state[0], state[1], drop)

    def _step(self, x: Tensor, h: Tensor, c: Tensor, drop: Optional[Callable[[Tensor], Tensor]]
              ) -> tuple[Tensor, LSTMState]:
        gates = F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)
        if not (self.peepholes or self.coupled):
            i, f, g, o = gates.chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * _candidate(g, drop)
            h = torch.sigmoid(o) * torch.tanh(c)
        else:
            h, c = self._variant_step(gates, c, drop)
        if self.weight_hr is not None:
            h = F.linear(h, self.weight_hr)
        return h, LSTMState(h, c)

    def _variant_step(self, gates: Tensor, c: Tensor, drop: Optional[Callable[[Tensor], Tensor]]
                      ) -> tuple[Tensor, Tensor]:
        """The step with peepholes and/or a coupled input gate (``h`` before projection, ``c``)."""
        if self.coupled:
            f, g, o = gates.chunk(3, -1)
        else:
            i, f, g, o = gates.chunk(4, -1)
        if self.weight_cf is not None:
            f = f + self.weight_cf * c
        f = torch.sigmoid(f)
        if self.coupled:
            gate_in = 1 - f
        else:
            gate_in = torch.sigmoid(i + self.weight_ci * c if self.weight_ci is not None else i)
        c = f * c + gate_in * _candidate(g, drop)
        if self.weight_co is not None:
            o = o + self.weight_co * c
        return torch.sigmoid(o) * torch.tanh(c), c

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        for flag in ("peepholes", "coupled"):
            if getattr(self, flag):
                s += f", {flag}=True"
        if self.forget_bias:
            s += f", forget_bias={self.forget_bias}"
        return s
