"""What a layer is (:class:`LayerKind`) and the one table of known cells (:data:`CELL_KINDS`).

Plain data, no torch: the rows of :mod:`.records` name a kind from here, the readers
(:mod:`.mappers`, :mod:`.rnn_rows`) choose it, the renderers (:mod:`.render`) draw by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional

__all__ = ["CELL_KINDS", "CellKind", "LayerKind", "candidate_kind", "candidate_names", "cell_kind_name",
           "gate_activations", "gate_names", "innermost", "kind_of_class", "torch_twin"]


class LayerKind(str, Enum):
    """What one row of an anatomy is. A ``str`` (``LayerKind.RECURRENT == "recurrent"``), so
    ``to_dict()`` and comparisons with plain strings keep working."""

    RECURRENT = "recurrent"          #: a recurrent layer: its cell applied once per time step
    STEP = "step"                    #: a cell called directly, step by step (a hand-written loop)
    DENSE = "dense"                  #: neurons side by side (``nn.Linear``)
    CONV = "conv"                    #: kernels applied across positions (a convolution)
    POOL = "pool"
    EMBEDDING = "embedding"
    NORMALIZATION = "normalization"
    DROPOUT = "dropout"
    RESHAPE = "reshape"
    ACTIVATION = "activation"
    OPAQUE = "opaque"                #: a module torchcells cannot see into: parameters and calls only

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def in_time(self) -> bool:
        """Applied once per time step: a recurrent layer, or a cell called step by step."""
        return self in (LayerKind.RECURRENT, LayerKind.STEP)

    @property
    def in_width(self) -> bool:
        """Cells side by side: the neurons of a dense layer, the kernels of a convolution."""
        return self in (LayerKind.DENSE, LayerKind.CONV)

    @property
    def learned(self) -> bool:
        """Made of learned cells that the diagrams draw one by one (in time or in width)."""
        return self.in_time or self.in_width


@dataclass(frozen=True)
class CellKind:
    """A cell torchcells knows by name, whichever library it comes from.

    ``gates`` and ``activations`` are in torch.nn's gate order (gate ``k`` is rows
    ``k·H … (k+1)·H − 1`` of each weight); ``torch_cell`` is torch.nn's cell of the same step
    (``"nn.LSTMCell"``; ``""`` when torch.nn has none) and ``torchcells_cell`` the name of
    torchcells' class in :mod:`torchcells.cells` that steps like it; ``classes`` are the class
    names (torch.nn's and torchcells') that are this kind; ``candidates`` the names in ``gates``
    that are a candidate, not a gate (as a cell's ``CANDIDATES``).
    """

    name: str
    gates: tuple[str, ...]
    activations: tuple[str, ...]
    classes: tuple[str, ...]
    torch_cell: str = ""
    torchcells_cell: str = ""
    candidates: tuple[str, ...] = ()


CELL_KINDS: dict[str, CellKind] = {k.name: k for k in (
    CellKind("LSTM", ("i", "f", "g", "o"), ("σ", "σ", "tanh", "σ"), ("LSTMCell", "LSTM"),
             torch_cell="nn.LSTMCell", torchcells_cell="LSTMCell", candidates=("g",)),
    CellKind("GRU", ("r", "z", "n"), ("σ", "σ", "tanh"), ("GRUCell", "GRU"),
             torch_cell="nn.GRUCell", torchcells_cell="GRUCell", candidates=("n",)),
    CellKind("Elman", ("h",), ("tanh",), ("ElmanCell", "RNNCell", "RNN"),
             torch_cell="nn.RNNCell", torchcells_cell="ElmanCell"),
    CellKind("minGRU", ("z", "h"), ("σ", "g"), ("MinGRUCell",), candidates=("h",)),
    CellKind("minLSTM", ("f", "i", "h"), ("σ", "σ", "g"), ("MinLSTMCell",), candidates=("h",)),
)}

_BY_CLASS = {cls: kind.name for kind in CELL_KINDS.values() for cls in kind.classes}
#: torch.nn.RNNBase's ``mode`` → kind, for subclasses of nn.LSTM/GRU/RNN with names of their own.
_BY_MODE = {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "Elman", "RNN_RELU": "Elman"}


def kind_of_class(class_name: str, module_name: str) -> str:
    """``"LSTM"``, ``"GRU"``, ``"Elman"``, ... for the cells of torch.nn and torchcells (by class
    name and the module defining the class); the class name for any other class."""
    if module_name.startswith(("torch.nn", "torchcells.cells")):
        return _BY_CLASS.get(class_name, class_name)
    return class_name


def cell_kind_name(class_name: str, mode: str) -> str:
    """The kind of a torch.nn recurrent layer (``nn.LSTM``, ...) from its class name, else its ``mode``."""
    return _BY_CLASS.get(class_name) or _BY_MODE.get(mode, "Elman")


def torch_twin(kind: str) -> str:
    """torch.nn's cell with the step of a cell of ``kind`` (``"nn.LSTMCell"``); ``""`` if torch.nn has none."""
    row: Optional[CellKind] = CELL_KINDS.get(kind)
    return row.torch_cell if row is not None else ""


def gate_activations(kind: str, count: int) -> tuple[str, ...]:
    """The activations of the ``count`` gates of a cell of ``kind`` (``""`` each where not known)."""
    row: Optional[CellKind] = CELL_KINDS.get(kind)
    return row.activations if row is not None else ("",) * count


def _is_cell(obj: Any) -> bool:
    return callable(getattr(obj, "init_state", None)) and callable(obj)


def innermost(cell: Any) -> Any:
    """The cell inside a chain of wrappers (``Zoneout(WeightDrop(LSTMCell))`` → the ``LSTMCell``): a wrapper
    is a cell holding one cell as ``.cell`` (torchcells' ``CellWrapper``); any other cell is itself."""
    seen = {id(cell)}
    inner = getattr(cell, "cell", None)
    while _is_cell(inner) and id(inner) not in seen:
        cell, inner = inner, getattr(inner, "cell", None)
        seen.add(id(cell))
    return cell


def gate_names(cell: Any) -> tuple[str, ...]:
    """The gates of ``cell`` or of the cell it wraps (``GATES``, else its known kind's); for a cell made of
    several cells (``StackedCell.cells``), theirs when all name the same gates; ``()`` when none is known."""
    inner = innermost(cell)
    cls = type(inner)
    names = tuple(getattr(inner, "GATES", None) or ())
    if not names:
        row = CELL_KINDS.get(kind_of_class(cls.__name__, cls.__module__))
        names = row.gates if row is not None else ()
    parts = getattr(inner, "cells", None)
    if not names and parts is not None and not _is_cell(parts):
        each = {gate_names(part) for part in parts if _is_cell(part)}
        names = next(iter(each)) if len(each) == 1 else ()
    return names


def candidate_kind(kind: str) -> tuple[str, ...]:
    """The candidates of a cell of ``kind`` (:data:`CELL_KINDS`); ``()`` where none is known."""
    row: Optional[CellKind] = CELL_KINDS.get(kind)
    return row.candidates if row is not None else ()


def candidate_names(cell: Any) -> tuple[str, ...]:
    """Which of :func:`gate_names` are candidates, not gates: ``CANDIDATES`` of ``cell`` or of the cell
    it wraps, else its known kind's; for a cell made of several cells, theirs when all agree."""
    inner = innermost(cell)
    if getattr(inner, "GATES", None):
        return tuple(getattr(inner, "CANDIDATES", None) or ())
    cls = type(inner)
    names = candidate_kind(kind_of_class(cls.__name__, cls.__module__))
    parts = getattr(inner, "cells", None)
    if not names and parts is not None and not _is_cell(parts):
        each = {candidate_names(part) for part in parts if _is_cell(part)}
        names = next(iter(each)) if len(each) == 1 else ()
    return names
