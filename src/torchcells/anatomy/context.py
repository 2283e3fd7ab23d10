"""What the readers share while they walk a model: the calls the hooks saw, and a :class:`Context`.

:func:`~.explain.explain` records :class:`Calls` per module in one forward, then the
readers (:mod:`.mappers`, :mod:`.rnn_rows`) turn modules into rows through one
:class:`Context`: the batch size, each parameter's name, and which parameters an
earlier row already counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["Calls", "Context", "has_torch_names"]


@dataclass
class Calls:
    """What the hooks saw of one module: ``order`` of its first call, shapes per call."""

    order: int
    inputs: list[Any] = field(default_factory=list)
    input_kinds: list[str] = field(default_factory=list)
    kwargs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.inputs)


def has_torch_names(module: nn.Module) -> bool:
    """Whether ``module`` names its parameters as torch.nn does (torchcells' drop-in ``LSTM``/``GRU``/``RNN``:
    their public ``torch_parameter_names()``)."""
    return callable(getattr(module, "torch_parameter_names", None))


class Context:
    """The walk's shared state: calls, batch size, parameter names, parameters already counted."""

    def __init__(self, model: nn.Module, calls: dict[nn.Module, Calls], batch: int) -> None:
        self.model = model
        self.calls = calls
        self.batch = batch
        self.seen: set[int] = set()
        self.names: dict[int, str] = {}
        for name, p in model.named_parameters():
            self.names.setdefault(id(p), name)
        # torchcells' drop-ins save their parameters under torch.nn's names (weight_ih_l0, ...).
        for path, module in model.named_modules():
            if has_torch_names(module):
                for torch_name, inner in module.torch_parameter_names().items():
                    try:
                        p = module.get_parameter(inner)
                    except AttributeError:  # a path that holds no parameter (any more)
                        continue
                    self.names[id(p)] = f"{path}.{torch_name}" if path else torch_name
        self.parents: dict[str, tuple[str, nn.Module]] = {}
        for path, module in model.named_modules():
            for name, child in module.named_children():
                self.parents[f"{path}.{name}" if path else name] = (path, module)

    def name(self, p: nn.Parameter) -> str:
        return self.names.get(id(p), "?")

    def count(self, params: list[nn.Parameter]) -> tuple[int, int]:
        """``(new, shared)``: elements of ``params`` counted here for the first time, and already counted."""
        new = shared = 0
        for p in params:
            if id(p) in self.seen:
                shared += p.numel()
            else:
                self.seen.add(id(p))
                new += p.numel()
        return new, shared

    def order(self, module: nn.Module) -> float:
        rec = self.calls.get(module)
        return float(rec.order) if rec else float("inf")

    def per_example(self, shape: Any) -> int:
        """Elements of one example in a recorded shape (the batch divided out)."""
        if not shape or shape[0] == "packed":
            return 0
        return max(1, math.prod(shape) // max(self.batch, 1)) if len(shape) > 1 else math.prod(shape)
