"""``Stack([...])``: layers in depth, each reading the previous one's outputs."""

from __future__ import annotations

import inspect
from typing import Any, Iterable, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.lengths import Lengths


def _takes_lengths(layer: nn.Module) -> bool:
    """``layer.forward`` accepts the keywords ``lengths`` and ``all_states`` (or any keyword)."""
    try:
        params = inspect.signature(layer.forward).parameters.values()
    except (TypeError, ValueError):
        return True                      # no signature to read: let the call decide
    names = {p.name for p in params}
    return any(p.kind is p.VAR_KEYWORD for p in params) or {"lengths", "all_states"} <= names


class Stack(nn.Module):
    """Layers applied one after another over the whole sequence.

    Args:
        layers: recurrent layers (``Recurrent``, ``Bidirectional``, ``Stack``, or any
            module with the same ``forward(x, state, *, lengths, all_states)``); all with
            the same ``batch_first``.
        dropout: dropout on the outputs of every layer but the last, in training
            only (torch.nn.LSTM's ``dropout``).

    The state is a tuple with one entry per layer (``None`` for "start from zeros");
    ``forward`` returns ``(outputs, states_tuple)`` or, with ``all_states=True``,
    ``(outputs, final_states, every_step_states)``, both tuples over layers.
    ``lengths`` is passed to every layer.

    Returns:
        ``forward(x, state=None, *, lengths=None, all_states=False)`` returns ``(outputs, final_states)``
        (``+ (states,)`` with ``all_states``): the last layer's outputs and one state per layer.

    Example::

        >>> net = Stack([Recurrent(LSTMCell(8, 16)), Recurrent(LSTMCell(16, 16))], dropout=0.2)
        >>> out, ((h0, c0), (h1, c1)) = net(torch.randn(10, 4, 8))
    """

    def __init__(self, layers: Iterable[nn.Module], *, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        if len(self.layers) == 0:
            raise ValueError("Stack: layers should hold at least one layer, got none")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout <= 1.0:
            raise ValueError(f"Stack: dropout should be a number in [0, 1], got {dropout!r}")
        self.dropout = float(dropout)
        for i, layer in enumerate(self.layers):
            if not _takes_lengths(layer):
                raise TypeError(f"Stack: layers[{i}] should be a recurrent layer (Recurrent, Bidirectional, Stack, or a "
                                f"module with forward(x, state, *, lengths, all_states)), got {type(layer).__name__}")
        firsts = {bool(getattr(layer, "batch_first", False)) for layer in self.layers}
        if len(firsts) > 1:
            raise ValueError("Stack: every layer should have the same batch_first, got a mix")

    @property
    def batch_first(self) -> bool:
        return bool(getattr(self.layers[0], "batch_first", False))

    def short_name(self) -> str:
        return f"Stack({len(self.layers)} layers)"

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> tuple:
        layers: list[Any] = list(self.layers)
        return tuple(layer.init_state(batch_size, device=device, dtype=dtype) for layer in layers)

    def forward(self, x: Tensor, state: Optional[tuple] = None, *, lengths: Optional[Lengths] = None,
                all_states: bool = False):
        n = len(self.layers)
        if state is None:
            state = (None,) * n
        elif not isinstance(state, (tuple, list)) or len(state) != n:
            got = f"{type(state).__name__} of {len(state)}" if isinstance(state, (tuple, list)) \
                else type(state).__name__
            raise TypeError(f"{self.short_name()}: state should be a tuple with one state per layer "
                            f"({n}), got {got}")
        finals, histories = [], []
        for i, (layer, s) in enumerate(zip(self.layers, state)):
            result = layer(x, s, lengths=lengths, all_states=all_states)
            x = result[0]
            finals.append(result[1])
            if all_states:
                histories.append(result[2])
            if self.dropout and self.training and i < n - 1:
                x = F.dropout(x, self.dropout, training=True)
        if all_states:
            return x, tuple(finals), tuple(histories)
        return x, tuple(finals)

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}" if self.dropout else ""
