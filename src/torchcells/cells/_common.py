"""Shared plumbing of the zoo cells: argument checks and one checked ``forward``.

:class:`StepCell` gives a cell a ``forward(x, state=None)`` that checks one step's
input and state (errors name the cell, the argument, what was expected and what
came), fills a missing state with ``init_state``, accepts an unbatched step
``(I,)`` with an unbatched state, and then calls ``step(x, state)`` on a batch.
A subclass writes ``init_state`` and ``step`` only.
"""

from __future__ import annotations

import numbers
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..cell import Cell, cell_name, check_state, map_state

__all__ = ["StepCell", "cell_name", "check_probability", "check_size", "optional_parameter", "output_size",
           "roles_of", "state_template_of"]


def check_size(owner: str, name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum`` (bools refused), else a ValueError naming ``owner`` and ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{owner}: {name} should be {kind}, got {value!r}")
    return int(value)


def check_probability(owner: str, name: str, value: Any) -> float:
    """``value`` as a float in ``[0, 1)`` (a drop probability), else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{owner}: {name} should be a probability in [0, 1), got {value!r}")
    return float(value)


def optional_parameter(module: nn.Module, name: str, shape: tuple[int, ...], present: bool, *,
                       device: Optional[torch.device | str] = None, dtype: Optional[torch.dtype] = None) -> None:
    """Register ``name`` on ``module``: an empty parameter of ``shape`` (``reset_parameters`` fills
    it) when ``present``, else ``None`` (as torch.nn does for ``bias=False``)."""
    value = nn.Parameter(torch.empty(shape, device=device, dtype=dtype)) if present else None
    module.register_parameter(name, value)


def output_size(cell: nn.Module) -> Optional[int]:
    """Features of a cell's output ``y``: ``output_size`` if it has one, else ``hidden_size``."""
    size = getattr(cell, "output_size", None)
    return size if size is not None else getattr(cell, "hidden_size", None)


def roles_of(cell: Any) -> Optional[tuple[str, ...]]:
    """The roles ``cell`` declares for its state tensors (``state_roles()``), or ``None``."""
    declared = getattr(cell, "state_roles", None)
    return tuple(declared()) if callable(declared) and declared() is not None else None


def state_template_of(cell: Any, batch_size: int = 1) -> Any:
    """``cell``'s state structure and shapes on the meta device (no memory, no random draws)."""
    template = getattr(cell, "state_template", None)
    if callable(template):
        return template(batch_size, None)
    return cell.init_state(batch_size, device="meta")


def begin_call_of(cell: Any) -> None:
    """Tell ``cell`` (any module) that a layer call starts: its ``begin_call()``, if it has one."""
    hook = getattr(cell, "begin_call", None)
    if callable(hook):
        hook()


class StepCell(Cell):
    """A cell whose ``forward`` checks its arguments and then runs ``step`` on a batch."""

    def state_template(self, batch_size: int, dtype: Optional[torch.dtype]) -> Any:
        """The state's structure and shapes for checks (no memory, no random draws): ``init_state`` on meta."""
        return self.init_state(batch_size, device="meta", dtype=dtype)

    def step(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        self.check_step_input(x)
        unbatched = x.dim() == self.step_rank
        batch = 1 if unbatched else x.shape[0]
        if state is None:
            state = self.init_state(batch, device=x.device, dtype=x.dtype)
        else:
            expected = self.state_template(batch, x.dtype)
            if unbatched:
                expected = map_state(lambda s: s[0], expected)
            state = check_state(self.short_name(), expected, state, dtype=x.dtype)
            if unbatched:
                state = map_state(lambda s: s.unsqueeze(0), state)
        if unbatched:
            x = x.unsqueeze(0)
        y, new = self.step(x, state)
        if unbatched:
            return y[0], map_state(lambda s: s[0], new)
        return y, new


class CellWrapper(StepCell):
    """Base of the wrappers (cell → cell): sizes, step rank and names come from the wrapped cell."""

    cell: Any  # a Cell, or any module with forward(x, state) and init_state(batch_size)

    def __init__(self, cell: nn.Module) -> None:
        name = type(self).__name__
        if not isinstance(cell, nn.Module) or not callable(getattr(cell, "init_state", None)):
            raise TypeError(f"{name}: cell should be a torchcells.Cell (a module with forward(x, state) and "
                            f"init_state(batch_size)), got {type(cell).__name__}")
        super().__init__(getattr(cell, "input_size", None), getattr(cell, "hidden_size", None))
        self.cell = cell
        self.step_rank = getattr(cell, "step_rank", 1)

    @property  # type: ignore[misc]  # computed from the cell: not settable
    def output_size(self) -> Optional[int]:
        return output_size(self.cell)

    def short_name(self) -> str:
        return f"{type(self).__name__}({cell_name(self.cell)})"

    def state_roles(self) -> Optional[tuple[str, ...]]:
        """The wrapped cell's roles (a wrapper whose state is the cell's)."""
        return roles_of(self.cell)

    def begin_call(self) -> None:
        begin_call_of(self.cell)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> Any:
        return self.cell.init_state(batch_size, device=device, dtype=dtype)

    def state_template(self, batch_size: int, dtype: Optional[torch.dtype]) -> Any:
        inner = getattr(self.cell, "state_template", None)
        if callable(inner):
            return inner(batch_size, dtype)
        return self.cell.init_state(batch_size, device="meta", dtype=dtype)


def h_index(state: Any) -> int:
    """Which part of a state holds the hidden ``h`` fed back: the field ``h``, else the first."""
    fields = getattr(type(state), "_fields", None)
    if fields and "h" in fields:
        return list(fields).index("h")
    return 0


def h_path(state: Any) -> tuple[int, ...]:
    """Indices leading to the hidden ``h`` in a (nested) state: the field ``h`` at each level,
    else the first part (a wrapper's state holds its cell's state first)."""
    path: list[int] = []
    while not isinstance(state, Tensor):
        if len(state) == 0:
            raise ValueError("the state has no tensor to hold h")
        k = h_index(state)
        path.append(k)
        state = state[k]
    return tuple(path)


def leaf_paths(state: Any, prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    """The index path of every tensor of a (nested) state, in ``state_leaves`` order."""
    if isinstance(state, Tensor):
        return [prefix]
    return [p for i, part in enumerate(state) for p in leaf_paths(part, prefix + (i,))]


def get_path(state: Any, path: tuple[int, ...]) -> Tensor:
    for k in path:
        state = state[k]
    return state


def set_path(state: Any, path: tuple[int, ...], value: Tensor) -> Any:
    """``state`` with the tensor at ``path`` replaced (types of NamedTuples kept)."""
    if not path:
        return value
    parts = list(state)
    parts[path[0]] = set_path(parts[path[0]], path[1:], value)
    return type(state)(*parts) if hasattr(type(state), "_fields") else tuple(parts)
