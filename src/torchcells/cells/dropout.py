"""Dropout for recurrent cells: one mask per sequence (variational, recurrent) and DropConnect.

A cell sees one step at a time, but these regularizers need one random mask for a
whole sequence (Gal & Ghahramani 2016: dropping different units at every step
destroys the memory). So :class:`VariationalDropout` and :class:`RecurrentDropout`
keep their masks **in the state**: ``init_state`` draws them (once per sequence:
every layer call that starts from a fresh state), ``forward`` only multiplies by
them and passes them on unchanged. Nothing random happens inside a step, so the
wrapped cell still runs on every engine (fused included), each sequence of a batch
has its own mask, padded steps and lengths behave as for any state, a
``Bidirectional`` pair or a ``Stack`` draws one mask per direction and layer, and a
state handed back to a layer (truncated backpropagation through time) continues its
sequence with the same mask. Masks are scaled by ``1/(1−p)`` (inverted dropout) and
``B``-first like every state tensor.

:class:`WeightDrop` drops weights, not units (DropConnect, Wan et al. 2013), as the
AWD-LSTM does (Merity et al. 2017): one mask on the recurrent weight matrix, shared by
the whole batch and every step. A mask per sequence would be a weight matrix per
sequence, so this mask is not in the state: it is a (non-persistent) buffer of the
wrapper, drawn anew whenever ``init_state`` makes a fresh state, or by
:meth:`WeightDrop.resample`. Buffers are inputs of the fused engine's trace, never
baked into it, so every engine reads the current mask. The dropped weight is passed to
the wrapped cell for the call (``torch.func.functional_call``); the parameter itself
is never replaced, so none of torch's "weights are not part of a single contiguous
chunk of memory" warnings arise.

In eval mode every wrapper is the wrapped cell exactly: no mask is applied.

.. math::
    \\text{VariationalDropout:}\\quad y_t &= m^{\\text{out}} \\odot F(m^{\\text{in}} \\odot x_t, s_{t-1})_y \\\\
    \\text{RecurrentDropout:}\\quad (y_t, s_t) &= F(x_t, s_{t-1} \\text{ with } h_{t-1} \\to m^h \\odot h_{t-1}) \\\\
    \\text{WeightDrop:}\\quad (y_t, s_t) &= F_{W_{hh} \\to M \\odot W_{hh}}(x_t, s_{t-1})

with masks :math:`m \\sim \\mathrm{Bernoulli}(1-p)/(1-p)`, drawn once per sequence
(``m`` per sequence and unit; ``M`` per weight, shared by the batch).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ._common import CellWrapper, cell_name, check_probability, get_path, h_path, set_path

__all__ = ["MaskedState", "RecurrentDropout", "VariationalDropout", "WeightDrop"]

Probability = Union[float, Sequence[float]]


class MaskedState(NamedTuple):
    """A wrapped cell's state and the masks drawn for its sequence."""

    cell: Any
    masks: tuple


def _mask(shape: tuple[int, ...], p: float, training: bool, device: Any, dtype: Any) -> Tensor:
    """``Bernoulli(1−p)/(1−p)`` of ``shape`` in training, ones otherwise (or where ``p = 0``)."""
    ones = torch.ones(shape, device=device, dtype=dtype)
    if not training or p == 0.0:
        return ones
    return ones.bernoulli_(1.0 - p).div_(1.0 - p)


def _broadcastable(features: int, batch_size: int, step_rank: int) -> tuple[int, ...]:
    """A mask shape per sequence and feature (channel), broadcast over any spatial dims."""
    return (batch_size, features) + (1,) * (step_rank - 1)


class VariationalDropout(CellWrapper):
    """One dropout mask per sequence on the cell's inputs and one on its outputs.

    Args:
        cell: the cell to wrap.
        p: drop probability of both masks, or ``(p_in, p_out)``.

    State: ``MaskedState(cell=<the cell's state>, masks=(m_in (B, I), m_out (B, O)))``
    (for a convolutional cell the masks are ``(B, C, 1, 1)``: whole channels drop).
    """

    def __init__(self, cell: nn.Module, p: Probability = 0.5) -> None:
        super().__init__(cell)
        pair = tuple(p) if isinstance(p, (tuple, list)) else (p, p)
        if len(pair) != 2:
            raise ValueError(f"VariationalDropout: p should be a probability or (p_in, p_out), got {p!r}")
        self.p_in = check_probability("VariationalDropout", "p_in", pair[0])
        self.p_out = check_probability("VariationalDropout", "p_out", pair[1])
        if self.input_size is None or self.output_size is None:
            raise ValueError(f"VariationalDropout: the cell should have input_size and hidden_size, "
                             f"got {self.input_size!r}, {self.output_size!r}")

    def _masks(self, batch_size: int, device: Any, dtype: Any, training: bool) -> tuple[Tensor, Tensor]:
        assert self.input_size is not None and self.output_size is not None
        return (_mask(_broadcastable(self.input_size, batch_size, self.step_rank), self.p_in, training, device, dtype),
                _mask(_broadcastable(self.output_size, batch_size, self.step_rank), self.p_out, training, device,
                      dtype))

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> MaskedState:
        return MaskedState(self.cell.init_state(batch_size, device=device, dtype=dtype),
                           self._masks(batch_size, device, dtype, self.training))

    def state_template(self, batch_size: int, dtype: Optional[torch.dtype]) -> MaskedState:
        return MaskedState(super().state_template(batch_size, dtype), self._masks(batch_size, "meta", dtype, False))

    def step(self, x: Tensor, state: MaskedState) -> tuple[Tensor, MaskedState]:
        inner, (m_in, m_out) = state
        if self.training:
            x = x * m_in
        y, inner = self.cell(x, inner)
        if self.training:
            y = y * m_out
        return y, MaskedState(inner, (m_in, m_out))

    def extra_repr(self) -> str:
        return f"p=({self.p_in}, {self.p_out})"


class RecurrentDropout(CellWrapper):
    """Dropout on the hidden state fed back, one mask per sequence (Gal & Ghahramani 2016).

    At each step the cell reads ``m ⊙ h_{t−1}`` instead of ``h_{t−1}`` (``h`` is the state's
    field ``h``, or the state itself when it is one tensor; in a nested state, such as a
    wrapped cell's, the ``h`` found by following ``h`` fields, else first parts); the state it returns, and
    hence the final state, is unmasked. Only ``h`` is masked: an LSTM's memory ``c`` is
    not (dropping it would erase memories; Semeniuta et al. 2016).

    State: ``MaskedState(cell=<the cell's state>, masks=(m_h,))``, ``m_h`` shaped like ``h``.
    """

    def __init__(self, cell: nn.Module, p: float = 0.25) -> None:
        super().__init__(cell)
        self.p = check_probability("RecurrentDropout", "p", p)

    def _h_mask(self, inner: Any, training: bool) -> Tensor:
        h = get_path(inner, h_path(inner))
        return _mask(tuple(h.shape), self.p, training, h.device, h.dtype)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> MaskedState:
        inner = self.cell.init_state(batch_size, device=device, dtype=dtype)
        return MaskedState(inner, (self._h_mask(inner, self.training),))

    def state_template(self, batch_size: int, dtype: Optional[torch.dtype]) -> MaskedState:
        inner = super().state_template(batch_size, dtype)
        return MaskedState(inner, (self._h_mask(inner, False),))

    def step(self, x: Tensor, state: MaskedState) -> tuple[Tensor, MaskedState]:
        inner, masks = state
        if self.training:
            path = h_path(inner)
            inner = set_path(inner, path, get_path(inner, path) * masks[0])
        y, inner = self.cell(x, inner)
        return y, MaskedState(inner, masks)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class WeightDrop(CellWrapper):
    """DropConnect on the cell's recurrent weights: one mask per weight, per sequence, shared by the batch.

    Args:
        cell: the cell to wrap.
        p: drop probability of each weight.
        weights: names of the cell's parameters to drop (default ``("weight_hh",)``).

    A new mask is drawn whenever ``init_state`` makes a fresh state in training mode
    (so once per layer call that starts from zeros), by :meth:`resample`, or on the
    first training step if none was drawn. The state is the wrapped cell's.
    """

    def __init__(self, cell: nn.Module, p: float = 0.5, *, weights: Sequence[str] = ("weight_hh",)) -> None:
        super().__init__(cell)
        self.p = check_probability("WeightDrop", "p", p)
        own = dict(cell.named_parameters())
        names = tuple(weights)
        for name in names:
            if name not in own:
                raise ValueError(f"WeightDrop: {cell_name(cell)} has no parameter {name!r}; "
                                 f"it has {sorted(own)}")
        self.weights = names
        for name in names:
            self.register_buffer(self._mask_name(name), None, persistent=False)

    @staticmethod
    def _mask_name(name: str) -> str:
        return "mask_" + name.replace(".", "_")

    def resample(self) -> None:
        """Draw new masks for the dropped weights (``Bernoulli(1−p)/(1−p)``, the weights' shapes)."""
        params = dict(self.cell.named_parameters())
        for name in self.weights:
            w = params[name]
            setattr(self, self._mask_name(name), _mask(tuple(w.shape), self.p, True, w.device, w.dtype))

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> Any:
        if self.training and (device is None or torch.device(device).type != "meta"):
            self.resample()
        return self.cell.init_state(batch_size, device=device, dtype=dtype)

    def step(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        if not self.training or self.p == 0.0:
            return self.cell(x, state)
        params = dict(self.cell.named_parameters())
        masks = [getattr(self, self._mask_name(n)) for n in self.weights]
        if any(m is None or m.shape != params[n].shape or m.device != params[n].device or m.dtype != params[n].dtype
               for m, n in zip(masks, self.weights)):
            self.resample()
            masks = [getattr(self, self._mask_name(n)) for n in self.weights]
        dropped = {n: params[n] * m for n, m in zip(self.weights, masks)}
        return torch.func.functional_call(self.cell, dropped, (x, state))

    def extra_repr(self) -> str:
        return f"p={self.p}" + ("" if self.weights == ("weight_hh",) else f", weights={list(self.weights)}")
