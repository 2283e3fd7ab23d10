"""Dropout for recurrent cells: one mask per sequence (variational, recurrent) and DropConnect per call.

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
the whole batch and every step of a call. A mask per sequence would be a weight matrix
per sequence, so this mask is not in the state: it is a (non-persistent) buffer of the
wrapper, drawn anew at every layer call in training (AWD-LSTM's rule: a state carried
across batches gets a new mask with each batch), or by :meth:`WeightDrop.resample`. Buffers are inputs of the fused engine's trace, never
baked into it, so every engine reads the current mask. The dropped weight is passed to
the wrapped cell for the call (``torch.func.functional_call``); the parameter itself
is never replaced, so none of torch's "weights are not part of a single contiguous
chunk of memory" warnings arise.

In eval mode every wrapper is the wrapped cell exactly: no mask is applied.

.. math::
    \\text{VariationalDropout:}\\quad y_t &= m^{\\text{out}} \\odot F(m^{\\text{in}} \\odot x_t, s_{t-1})_y \\\\
    \\text{RecurrentDropout:}\\quad (y_t, s_t) &= F(x_t, s_{t-1})
        \\text{ with its recurrent products reading } m^h \\odot h_{t-1} \\\\
    \\text{WeightDrop:}\\quad (y_t, s_t) &= F_{W_{hh} \\to M \\odot W_{hh}}(x_t, s_{t-1})

with masks :math:`m \\sim \\mathrm{Bernoulli}(1-p)/(1-p)`: ``m`` once per sequence and
unit, ``M`` once per layer call and weight, shared by the batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..cell import declares
from ._common import (CellWrapper, cell_name, check_probability, get_path, h_path, leaf_paths, roles_of, set_path,
                      state_template_of)

__all__ = ["MaskedState", "RecurrentDropout", "VariationalDropout", "WeightDrop"]

Probability = Union[float, Sequence[float]]


class MaskedState(NamedTuple):
    """A wrapped cell's state and the masks drawn for its sequence.

    Attributes:
        cell: the wrapped cell's state, as its ``init_state`` makes it.
        masks: the wrapper's masks, each ``B``-first: ``(m_in, m_out)`` for
            :class:`VariationalDropout`, ``(m_h,)`` for :class:`RecurrentDropout`.
    """

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

    Returns:
        ``forward(x, state)`` returns ``(m_out ⊙ y_t, MaskedState(s_t, masks))`` in training, with
        ``(y_t, s_t)`` the wrapped cell's on ``m_in ⊙ x_t``; the masks pass on unchanged.
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

    def state_roles(self) -> Optional[tuple[str, ...]]:
        inner = roles_of(self.cell)
        return None if inner is None else inner + ("other", "other")

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
    """Dropout on what feeds the recurrent products, one mask per sequence (Gal & Ghahramani 2016).

    Gal & Ghahramani's variational RNN drops units of ``h_{t−1}`` where they enter the
    recurrent weights, with one mask for the whole sequence; Keras's ``recurrent_dropout``
    is this method. Only the products read the masked ``m ⊙ h_{t−1}``: what the cell
    carries on from step to step is never masked (masking it would erase a dropped unit's
    memory for the whole sequence and scale a kept one by ``1/(1−p)`` at every step):

    * a cell whose ``h`` feeds only its products (LSTM, sLSTM, Elman, layer-normalized
      and convolutional LSTM; its ``state_roles()`` says ``"hidden"``) reads a state whose
      ``h`` is masked; its memory ``c`` is not touched;
    * a cell that also carries ``h`` on (GRU, MGU, layer-normalized and convolutional
      GRU) declares ``feedback_step(x, state, fed)``: its products read ``fed = m ⊙ h``,
      its update ``h_t = … + z_t ⊙ h_{t−1}`` the unmasked ``h``;
    * any other cell is refused (ValueError): an IndRNN (its only recurrence is each
      unit's own memory), minGRU/minLSTM (no recurrent product), a cell without state or
      without declared roles.

    ``h`` is the state's field ``h``, or the state itself when it is one tensor (in a
    nested state the ``h`` found by following ``h`` fields, else first parts). The state
    returned, and hence the final state, is unmasked; the mask, drawn by ``init_state``
    once per sequence, rides in the state so that every engine runs the wrapper (nothing
    random happens inside a step). This is not Semeniuta et al.'s "recurrent dropout
    without memory loss", which drops the candidate at every step: see
    :class:`~torchcells.CandidateDropout`.

    State: ``MaskedState(cell=<the cell's state>, masks=(m_h,))``, ``m_h`` shaped like ``h``.

    Args:
        cell: the cell to wrap: one whose ``h`` only feeds its recurrent products (declared
            ``"hidden"`` in ``state_roles()``) or one that declares ``feedback_step``.
        p: drop probability of each unit of ``h`` (one mask per sequence).

    Returns:
        ``forward(x, state)`` returns ``(y_t, MaskedState(s_t, (m_h,)))`` with ``(y_t, s_t)`` the wrapped
        cell's step whose recurrent products read ``m_h ⊙ h_{t−1}`` (in training); ``s_t`` unmasked.
    """

    def __init__(self, cell: nn.Module, p: float = 0.25) -> None:
        super().__init__(cell)
        self.p = check_probability("RecurrentDropout", "p", p)
        self.through_hook = _feedback_route(cell)

    def _h_mask(self, inner: Any, training: bool) -> Tensor:
        h = get_path(inner, h_path(inner))
        return _mask(tuple(h.shape), self.p, training, h.device, h.dtype)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> MaskedState:
        inner = self.cell.init_state(batch_size, device=device, dtype=dtype)
        return MaskedState(inner, (self._h_mask(inner, self.training),))

    def state_template(self, batch_size: int, dtype: Optional[torch.dtype]) -> MaskedState:
        inner = super().state_template(batch_size, dtype)
        return MaskedState(inner, (self._h_mask(inner, False),))

    def state_roles(self) -> Optional[tuple[str, ...]]:
        inner = roles_of(self.cell)
        return None if inner is None else inner + ("other",)

    def step(self, x: Tensor, state: MaskedState) -> tuple[Tensor, MaskedState]:
        inner, masks = state
        if not self.training:
            y, inner = self.cell(x, inner)
        elif self.through_hook:
            y, inner = self.cell.feedback_step(x, inner, get_path(inner, h_path(inner)) * masks[0])
        else:  # h feeds only the products: mask it in the state the cell reads
            path = h_path(inner)
            y, inner = self.cell(x, set_path(inner, path, get_path(inner, path) * masks[0]))
        return y, MaskedState(inner, masks)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _feedback_route(cell: nn.Module) -> bool:
    """How recurrent dropout reaches ``cell``'s products: ``True`` through its ``feedback_step``,
    ``False`` by masking its ``h`` in the state (declared ``"hidden"``); else a ValueError."""
    template = state_template_of(cell)
    paths = leaf_paths(template)
    name = cell_name(cell)
    if not paths:
        raise ValueError(f"RecurrentDropout: {name} has no state, so nothing is fed back to mask")
    if declares(cell, "feedback_step"):
        return True
    roles = roles_of(cell)
    if roles is None:
        raise ValueError(f"RecurrentDropout: {name} does not declare what its state tensors are (state_roles()), "
                         f"so which of them only feed the recurrent products is unknown; declare "
                         f"STATE_ROLE_NAMES (an h read only by the products is 'hidden') or feedback_step()")
    role = roles[paths.index(h_path(template))]
    if role != "hidden":
        raise ValueError(f"RecurrentDropout: {name} carries its h on from step to step (state role {role!r}) and "
                         f"declares no feedback_step(): masking h would erase memories (Gal & Ghahramani mask "
                         f"only what feeds the recurrent weights); expected a cell whose h only feeds its "
                         f"recurrent products (LSTM, sLSTM, Elman) or one with feedback_step() (GRU, MGU); for "
                         f"a wrapper, wrap the cell inside it instead")
    return False


class WeightDrop(CellWrapper):
    """DropConnect on the cell's recurrent weights: one mask per weight and layer call, shared by the batch.

    Args:
        cell: the cell to wrap.
        p: drop probability of each weight.
        weights: names of the cell's parameters to drop (default ``("weight_hh",)``).

    A new mask is drawn at every layer call in training (``Recurrent`` calls
    :meth:`begin_call` before the first step), whether the call starts from a fresh state
    or continues one (truncated backpropagation through time, a state carried across
    batches): as AWD-LSTM's ``WeightDrop``, which drops the weights anew at every forward
    call of the wrapped LSTM (Merity et al. 2017, ``weight_drop.py``). All steps and all
    sequences of one call share the mask. Stepping the cell by hand, call
    :meth:`resample` where a call would start (a first training step without a mask draws
    one). The state is the wrapped cell's.

    Returns:
        ``forward(x, state)`` returns the wrapped cell's ``(y_t, state_t)``, computed in training with
        ``M ⊙ W`` for each dropped weight ``W``.
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

    def begin_call(self) -> None:
        """A layer call starts: in training, draw new masks (:meth:`resample`)."""
        if self.training and self.p > 0.0:
            self.resample()
        super().begin_call()

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
