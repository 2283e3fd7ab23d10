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
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import Tensor, nn

from ..cell import Cell, TorchKernelForm, autocast_casts, map_state
from ._common import optional_parameter


class GatedCell(Cell):
    """Base of cells whose gates are rows of ``weight_ih`` / ``weight_hh`` (named by ``GATES``)."""

    input_size: int
    hidden_size: int
    # None where absent (bias=False; weight_hh and bias_hh without recurrence), typed as torch.nn
    # types its own optional weights: the cells read them only where they exist.
    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor
    bias_hh: Tensor

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True,
                 recurrent_size: Optional[int] = None, recurrent: bool = True,
                 device: Optional[torch.device | str] = None, dtype: Optional[torch.dtype] = None) -> None:
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{type(self).__name__}: {name} should be a positive int, got {value!r}")
        super().__init__(input_size, hidden_size)
        self.bias = bool(bias)
        rows = len(self.GATES) * hidden_size
        rec = hidden_size if recurrent_size is None else recurrent_size
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size, device=device, dtype=dtype))
        # without recurrence: gates that read the input only (the minimal cells)
        optional_parameter(self, "weight_hh", (rows, rec), recurrent, device=device, dtype=dtype)
        optional_parameter(self, "bias_ih", (rows,), self.bias, device=device, dtype=dtype)
        optional_parameter(self, "bias_hh", (rows,), self.bias and recurrent, device=device, dtype=dtype)

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

    def _kernel_form(self, kind: str, *extra: Tensor, to_hx: Optional[Callable[[Any], tuple[Tensor, ...]]] = None,
                     from_hx: Optional[Callable[[tuple[Tensor, ...]], Any]] = None) -> TorchKernelForm:
        """This cell as torch's kernel ``kind`` takes it (:class:`~torchcells.cell.TorchKernelForm`):
        torch's weight order with ``extra`` weights last; the state converters default to a
        state that is one tensor ``h``."""
        weights = (self.weight_ih, self.weight_hh) + ((self.bias_ih, self.bias_hh) if self.bias else ()) + extra
        return TorchKernelForm(kind, weights, self.bias, to_hx=to_hx or _one_hx, from_hx=from_hx or _from_one_hx)

    #: names of the state's tensors, in order (one name: the state is a bare tensor).
    STATE_FIELDS: ClassVar[tuple[str, ...]] = ("h",)

    def _state_sizes(self) -> tuple[int, ...]:
        """Features of each state tensor, in ``STATE_FIELDS`` order."""
        return (self.hidden_size,)

    def _prepare(self, x: Tensor, state: Any) -> Any:
        """Check one step's input and state (cheaply: this runs at every step); fill a missing state."""
        self.check_step_input(x)
        lead = tuple(x.shape[:-1])
        if state is None:
            state = self.init_state(lead[0] if lead else 1, device=x.device, dtype=x.dtype)
            return state if lead else map_state(lambda s: s[0], state)
        single = len(self.STATE_FIELDS) == 1
        leaves = (state,) if single else state
        if (not single and (not isinstance(state, tuple) or len(state) != len(self.STATE_FIELDS))) \
                or not all(isinstance(t, Tensor) for t in leaves):
            want = "a tensor" if single else f"a tuple ({', '.join(self.STATE_FIELDS)}) of tensors"
            raise TypeError(f"{self.short_name()}: state should be {want}, got {type(state).__name__}")
        for name, leaf, size in zip(self.STATE_FIELDS, leaves, self._state_sizes()):
            arg = "state" if single else f"state.{name}"
            if tuple(leaf.shape) != lead + (size,):
                raise ValueError(f"{self.short_name()}: {arg} should have shape {lead + (size,)} "
                                 f"for input of shape {tuple(x.shape)}, got {tuple(leaf.shape)}")
            # under autocast a step's state may come back in autocast's dtype (an Elman cell's
            # h = tanh(product)), as it does in nn.RNNCell: autocast casts it for the products
            if leaf.dtype != x.dtype and not autocast_casts(leaf, x):
                raise TypeError(f"{self.short_name()}: {arg} has dtype {leaf.dtype}, expected {x.dtype} like the input")
        return state

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        return s


def _one_hx(h: Tensor) -> tuple[Tensor]:
    return (h,)


def _from_one_hx(hx: tuple[Tensor, ...]) -> Tensor:
    return hx[0]


class HiddenStateCell(GatedCell):
    """A gated cell whose state is its output ``h`` (GRU, layer-normalized GRU, MGU): its step,
    its :meth:`~torchcells.Cell.feedback_step` (recurrent dropout) and its
    :meth:`~torchcells.Cell.candidate_step` (candidate dropout) are one ``_step(x, h, fed, drop)``:
    ``fed`` (``h`` unless recurrent dropout masks it) is what the recurrent products read, ``drop``
    (if any) is applied to the candidate, and the update mixes in the state's own ``h``."""

    def forward(self, x: Tensor, state: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        h = self._prepare(x, state)
        return self._step(x, h, h, None)

    def feedback_step(self, x: Tensor, h: Tensor, fed: Tensor) -> tuple[Tensor, Tensor]:
        """The step with the recurrent products reading ``fed``; ``h_t`` mixes in the state's ``h``."""
        return self._step(x, h, fed, None)

    def candidate_step(self, x: Tensor, h: Tensor, drop: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        """The step with ``drop`` on the candidate (the cell's docstring gives its equation)."""
        return self._step(x, h, h, drop)

    def _step(self, x: Tensor, h: Tensor, fed: Tensor, drop: Optional[Callable[[Tensor], Tensor]]
              ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError
