"""Composing cells: a residual connection around a cell, and a stack of cells that is a cell.

.. math::
    \\text{Residual:}\\quad y_t &= x_t + F(x_t, s_{t-1})_y, \\qquad s_t = F(x_t, s_{t-1})_s \\\\
    \\text{StackedCell:}\\quad y^{(0)}_t &= x_t, \\qquad
    (y^{(l)}_t, s^{(l)}_t) = F_l(y^{(l-1)}_t, s^{(l)}_{t-1}), \\qquad y_t = y^{(L)}_t

``StackedCell([a, b, c])`` runs its cells one after another *within one step* (haiku's
``DeepRNN``): its state is the tuple of theirs, and as a cell it runs on any engine
and in any layer -- a whole stack traced and fused as one step function. (``Stack`` of
``Recurrent`` layers runs each layer over the whole sequence instead; the results are
the same, the order of work differs.) ``Residual`` needs the cell's output size to
equal its input size.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
from torch import Tensor, nn

from ._common import CellWrapper, StepCell, begin_call_of, cell_name, output_size, roles_of

__all__ = ["Residual", "StackedCell"]


class Residual(CellWrapper):
    """``y_t = x_t + cell(x_t, s_{t−1})``; the state is the cell's.

    Args:
        cell: the cell to wrap; its output has as many features as its input.

    Returns:
        ``forward(x, state)`` returns ``(x_t + y_t, state_t)`` with ``(y_t, state_t)`` the wrapped
        cell's: ``x`` and the output ``(B, I)``.
    """

    def __init__(self, cell: nn.Module) -> None:
        super().__init__(cell)
        if self.input_size is None or self.input_size != self.output_size:
            raise ValueError(f"Residual: {cell_name(cell)} should output as many features as it reads "
                             f"(input_size {self.input_size}, output {self.output_size})")

    def step(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        y, state = self.cell(x, state)
        return x + y, state


class StackedCell(StepCell):
    """Cells applied one after another in each step; the state is the tuple of their states.

    Args:
        cells: at least one cell; each reads as many features as the one before it outputs.

    Returns:
        ``forward(x, state)`` returns ``(y_t, (s_1, …, s_L))``: the last cell's output and each
        cell's new state, in order.
    """

    cells: Any  # nn.ModuleList of cells

    def __init__(self, cells: Iterable[nn.Module]) -> None:
        cells = list(cells)
        if not cells:
            raise ValueError("StackedCell: cells should hold at least one cell, got none")
        for i, (a, b) in enumerate(zip(cells, cells[1:])):
            out, inp = output_size(a), getattr(b, "input_size", None)
            if out is not None and inp is not None and out != inp:
                raise ValueError(f"StackedCell: cell {i} ({cell_name(a)}) outputs {out} features but cell {i + 1} "
                                 f"({cell_name(b)}) reads {inp}")
        super().__init__(getattr(cells[0], "input_size", None), getattr(cells[-1], "hidden_size", None))
        self.cells = nn.ModuleList(cells)
        self.step_rank = getattr(cells[0], "step_rank", 1)

    @property  # type: ignore[misc]  # computed from the cell: not settable
    def output_size(self) -> Optional[int]:
        return output_size(self.cells[-1])

    def short_name(self) -> str:
        return f"StackedCell({', '.join(cell_name(c) for c in self.cells)})"

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> tuple:
        return tuple(c.init_state(batch_size, device=device, dtype=dtype) for c in self.cells)

    def state_roles(self) -> Optional[tuple[str, ...]]:
        """The cells' roles one after another (``None`` if one cell declares none)."""
        parts = [roles_of(c) for c in self.cells]
        return None if any(p is None for p in parts) else tuple(r for p in parts for r in (p or ()))

    def begin_call(self) -> None:
        for c in self.cells:
            begin_call_of(c)

    def state_template(self, batch_size: int, dtype: Optional[torch.dtype]) -> tuple:
        parts = []
        for c in self.cells:
            template = getattr(c, "state_template", None)
            parts.append(template(batch_size, dtype) if callable(template)
                         else c.init_state(batch_size, device="meta", dtype=dtype))
        return tuple(parts)

    def step(self, x: Tensor, state: tuple) -> tuple[Tensor, tuple]:
        new = []
        for cell, s in zip(self.cells, state):
            x, s = cell(x, s)
            new.append(s)
        return x, tuple(new)
