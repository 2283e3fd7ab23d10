"""``Bidirectional(layer)``: a layer and its time-reversed twin, outputs merged."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor, nn

from ..cell import State, cell_name
from ..engine.lengths import Lengths
from .recurrent import reversed_copy


class BidirectionalState(NamedTuple):
    """The two directions' states.

    Attributes:
        forward: the state of the layer that reads time forwards.
        backward: the state of the layer that reads time backwards.
    """

    forward: State
    backward: State


Merge = Union[str, Callable[[Tensor, Tensor], Tensor]]
_MERGES = {
    "concat": lambda a, b: torch.cat([a, b], dim=-1),
    "sum": lambda a, b: a + b,
    "mean": lambda a, b: (a + b) / 2,
}


class Bidirectional(nn.Module):
    """Run ``layer`` forwards and a reversed copy backwards, then merge their outputs.

    Args:
        layer: a ``Recurrent`` (or a ``Stack`` of them) read forwards.
        merge: ``"concat"`` (features side by side, forward first -- nn.LSTM's layout),
            ``"sum"``, ``"mean"``, or a callable ``merge(forward_out, backward_out)``.
        backward: the backward layer; by default a copy of ``layer`` reading time
            the other way, with its own weights, freshly initialized by each module's
            ``reset_parameters()`` (parameters of a module without one are copied,
            with a warning).

    State: ``BidirectionalState(forward, backward)``. With ``lengths``, the
    backward direction starts each sequence at its own last valid step.

    Returns:
        ``forward(x, state=None, *, lengths=None, all_states=False)`` returns ``(outputs, final_state)``
        (``+ (states,)`` with ``all_states``): ``outputs`` the two directions' outputs merged
        step by step, each state a ``BidirectionalState``.

    Example::

        >>> bi = Bidirectional(Recurrent(GRUCell(8, 16)))
        >>> out, (h_fwd, h_bwd) = bi(torch.randn(10, 4, 8))
        >>> out.shape
        torch.Size([10, 4, 32])
    """

    def __init__(self, layer: nn.Module, *, merge: Merge = "concat",
                 backward: Optional[nn.Module] = None) -> None:
        super().__init__()
        if isinstance(merge, str):
            if merge not in _MERGES:
                raise ValueError(f"Bidirectional: merge should be one of {sorted(_MERGES)} or a callable, "
                                 f"got {merge!r}")
        elif not callable(merge):
            raise TypeError(f"Bidirectional: merge should be a string or a callable, got {type(merge).__name__}")
        self.merge = merge
        self.forward_layer = layer
        self.backward_layer = reversed_copy(layer) if backward is None else backward
        if getattr(layer, "batch_first", False) != getattr(self.backward_layer, "batch_first", False):
            raise ValueError("Bidirectional: both directions should have the same batch_first")

    @property
    def batch_first(self) -> bool:
        return bool(getattr(self.forward_layer, "batch_first", False))

    def short_name(self) -> str:
        return f"Bidirectional({cell_name(self.forward_layer)})"

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> BidirectionalState:
        fwd: Any = self.forward_layer
        bwd: Any = self.backward_layer
        return BidirectionalState(fwd.init_state(batch_size, device=device, dtype=dtype),
                                  bwd.init_state(batch_size, device=device, dtype=dtype))

    def forward(self, x: Tensor, state: Optional[State] = None, *, lengths: Optional[Lengths] = None,
                all_states: bool = False):
        if state is None:
            state = (None, None)
        elif not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(f"{self.short_name()}: state should be a pair (forward, backward), "
                            f"got {type(state).__name__}")
        fwd = self.forward_layer(x, state[0], lengths=lengths, all_states=all_states)
        bwd = self.backward_layer(x, state[1], lengths=lengths, all_states=all_states)
        merge = _MERGES[self.merge] if isinstance(self.merge, str) else self.merge
        out = merge(fwd[0], bwd[0])
        if not isinstance(out, Tensor) or out.shape[:-1] != fwd[0].shape[:-1]:
            got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
            raise (ValueError if isinstance(out, Tensor) else TypeError)(
                f"{self.short_name()}: merge should return a tensor of shape {tuple(fwd[0].shape[:-1])} + "
                f"(features,) from the two directions' outputs {tuple(fwd[0].shape)}, got {got}")
        final = BidirectionalState(fwd[1], bwd[1])
        if all_states:
            return out, final, BidirectionalState(fwd[2], bwd[2])
        return out, final

    def extra_repr(self) -> str:
        return f"merge={self.merge!r}" if isinstance(self.merge, str) else "merge=<callable>"
