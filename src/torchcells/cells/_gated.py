"""Shared parameter layout of the torch-style cells (Elman, LSTM, GRU).

Each gate is a dense layer of ``H`` neurons reading the input and the recurrent
state; torch stacks the gates' rows into one matrix per source:
``weight_ih`` ``(G·H, I)``, ``weight_hh`` ``(G·H, R)``, ``bias_ih``/``bias_hh``
``(G·H,)``, with gate ``k`` in rows ``k·H … (k+1)·H − 1``. ``R`` is ``H`` except for a
projected LSTM. Names, shapes, order and initialization (uniform in
``±1/√H``) are torch.nn's, so state dicts load either way.
"""

from __future__ import annotations

import math
from typing import ClassVar, Optional

import torch
from torch import Tensor, nn

from ..cell import Cell, map_state


class GatedCell(Cell):
    """Base of cells whose gates are rows of ``weight_ih`` / ``weight_hh``."""

    GATES: ClassVar[tuple[str, ...]] = ()

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True,
                 recurrent_size: Optional[int] = None,
                 device: Optional[torch.device | str] = None, dtype: Optional[torch.dtype] = None) -> None:
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{type(self).__name__}: {name} should be a positive int, got {value!r}")
        super().__init__(input_size, hidden_size)
        self.bias = bool(bias)
        rows = len(self.GATES) * hidden_size
        rec = hidden_size if recurrent_size is None else recurrent_size
        kw = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size, **kw))
        self.weight_hh = nn.Parameter(torch.empty(rows, rec, **kw))
        if self.bias:
            self.bias_ih = nn.Parameter(torch.empty(rows, **kw))
            self.bias_hh = nn.Parameter(torch.empty(rows, **kw))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)

    def reset_parameters(self) -> None:
        """torch.nn's initialization: every parameter uniform in ``±1/√H``."""
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size else 0.0
        with torch.no_grad():
            for p in self.parameters(recurse=False):
                p.uniform_(-bound, bound)

    def gate_rows(self) -> dict[str, slice]:
        """Which rows of ``weight_ih``/``weight_hh``/biases belong to which gate."""
        H = self.hidden_size
        return {g: slice(k * H, (k + 1) * H) for k, g in enumerate(self.GATES)}

    def _prepare(self, x: Tensor, state):
        self.check_step_input(x)
        if state is None:
            batch = x.shape[0] if x.dim() == 2 else None
            state = self.init_state(1 if batch is None else batch, device=x.device, dtype=x.dtype)
            if batch is None:
                state = map_state(lambda s: s[0], state)
        return state

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        return s
