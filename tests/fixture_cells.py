"""Cells written for the tests, as a user would write them (not imported from the package).

``from fixture_cells import UserLSTMCell`` works from every test folder (tests/conftest.py
puts this folder on ``sys.path``).
"""

from __future__ import annotations

import torch
from torch import nn

from torchcells import Cell, LSTMState


class UserLSTMCell(Cell):
    """An LSTM cell as a user would write it: two ``nn.Linear`` (gate rows i, f, g, o) and the equations.

    ``c_t = σ(f) ⊙ c_{t−1} + σ(i) ⊙ tanh(g)``, ``h_t = σ(o) ⊙ tanh(c_t)``, with
    ``[i, f, g, o] = W_ih x_t + b_ih + W_hh h_{t−1} + b_hh``; the state is ``LSTMState(h, c)``.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.ih = nn.Linear(input_size, 4 * hidden_size)
        self.hh = nn.Linear(hidden_size, 4 * hidden_size)

    def init_state(self, batch_size, *, device=None, dtype=None):
        zeros = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return LSTMState(zeros, zeros)

    def forward(self, x, state):
        h, c = state
        i, f, g, o = (self.ih(x) + self.hh(h)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, LSTMState(h, c)


class TwoWidthCell(Cell):
    """A user cell whose state has two leaves of different widths: ``(h, m)``, ``h`` of ``H`` units and a
    memory ``m`` of ``2H``: ``m_t = tanh(A x_t + B h_{t−1}) ⊙ σ(m_{t−1})``, ``h_t = tanh(W m_t + U h_{t−1})``."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.a = nn.Linear(input_size, 2 * hidden_size)
        self.b = nn.Linear(hidden_size, 2 * hidden_size, bias=False)
        self.w = nn.Linear(2 * hidden_size, hidden_size)
        self.u = nn.Linear(hidden_size, hidden_size, bias=False)

    def init_state(self, batch_size, *, device=None, dtype=None):
        return (torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype),
                torch.zeros(batch_size, 2 * self.hidden_size, device=device, dtype=dtype))

    def forward(self, x, state):
        h, m = state
        m = torch.tanh(self.a(x) + self.b(h)) * torch.sigmoid(m)
        h = torch.tanh(self.w(m) + self.u(h))
        return h, (h, m)


class Annealed(Cell):
    """An Elman-like cell whose step reads a public float the user may set between calls (a
    temperature annealed during training): a Python value a trace would bake in."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.lin = nn.Linear(input_size + hidden_size, hidden_size)
        self.temperature = 1.0

    def forward(self, x, h):
        h = torch.tanh(self.lin(torch.cat([x, h], -1)) / self.temperature)
        return h, h
