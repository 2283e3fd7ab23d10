"""What :func:`~torchcells.explain` finds: one :class:`Layer` per layer, in an :class:`Anatomy`.

Plain data: the readers (:mod:`.explain`) fill these records and the renderers
(:mod:`.render`) draw them; ``Anatomy``'s ``to_text``, ``to_svg``, ``save_html``, ...
hand the records to those functions and hold no drawing of their own.

Counts follow the three senses of "cell" (README.md, "What 'cell' means: three senses"):

* ``cell`` -- what the layer repeats: ``"neuron"``, ``"kernel"``, ``"pool window"``, or a
  recurrent cell's kind (``"LSTM"``, ``"GRU"``, a user cell's class; a wrapped cell is its inner
  cell's kind); ``""`` for a layer not made of cells (activation, reshape, dropout,
  normalization, embedding, opaque);
* ``units`` -- how many copies of the cell work side by side in one application, each making
  one output feature: hidden units of a recurrent cell (the 1997 paper's "memory cells"),
  neurons of a dense layer, kernels of a convolution, one pool window per channel; 0 where
  there is no cell;
* ``step_function`` -- the function the layer applies (``LSTMCell(10→20)``,
  ``Neuron(64→1) ×10``): "the cell" in PyTorch's and Keras' sense;
* ``applications`` -- how often that function runs for one example: time steps for
  a recurrent layer (one direction per row), output positions for a convolution,
  1 for a dense layer applied once.

``macs_per_application × applications = macs``: multiply-adds of the learned
products (matrix and convolution products; pointwise operations are not counted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from .kinds import LayerKind

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Anatomy", "Gate", "Layer", "LayerKind", "WeightRows"]


@dataclass(frozen=True)
class WeightRows:
    """Rows ``start … stop − 1`` of one parameter (named as in ``state_dict()``)."""

    name: str
    start: int
    stop: int
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rows": [self.start, self.stop], "shape": list(self.shape), "numel": self.numel}


@dataclass(frozen=True)
class Gate:
    """One block of a cell's stacked rows: a dense layer of ``H`` neurons, i.e. the same rows of
    every weight it reads -- a gate, or with ``candidate`` the candidate (the new content a step
    writes: an LSTM's ``g``, a GRU's ``n``; the cell's ``CANDIDATES``), which gates nothing.

    ``activation`` is the pointwise function applied to it (``"σ"``, ``"tanh"``, ``""``
    when not known); the pseudo-gate ``"projection"`` of a projected LSTM has none.
    """

    name: str
    activation: str
    parts: tuple[WeightRows, ...]
    candidate: bool = False

    @property
    def parameters(self) -> int:
        return sum(p.numel for p in self.parts)

    def to_dict(self) -> dict[str, Any]:
        return {"gate": self.name, "candidate": self.candidate, "activation": self.activation,
                "parameters": self.parameters, "weights": [p.to_dict() for p in self.parts]}


@dataclass
class Layer:
    """One layer: a cell repeated -- across time, positions or width (a direction of a recurrent layer is a layer).

    ``kind`` is a :class:`~.kinds.LayerKind` (a plain string such as ``"dense"`` is turned
    into one). ``parameters`` counts each parameter once in the whole model: a parameter shared
    with a layer listed earlier counts there and appears here in ``shared_parameters``.
    """

    name: str
    cell: str
    kind: LayerKind
    step_function: str
    units: int
    applications: int
    parameters: int
    module: str = ""
    shared_parameters: int = 0
    weights: tuple[tuple[str, tuple[int, ...]], ...] = ()
    gates: tuple[Gate, ...] = ()
    state: tuple[tuple[str, int], ...] = ()
    macs_per_application: int = 0
    input_shape: Optional[tuple[int, ...]] = None
    output_shape: Optional[tuple[int, ...]] = None
    steps: Optional[int] = None
    direction: Optional[str] = None
    group: Optional[str] = None
    block: Optional[str] = None
    input_size: Optional[int] = None
    order: float = float("inf")
    #: a cell module to trace for the inside diagram (not serialized).
    trace_cell: Optional[nn.Module] = field(default=None, repr=False, compare=False)
    #: shape of one step's input without the batch, for tracing.
    step_shape: Optional[tuple[int, ...]] = None

    def __post_init__(self) -> None:
        self.kind = LayerKind(self.kind)

    @property
    def macs(self) -> int:
        return self.macs_per_application * self.applications

    def local_name(self, full: str) -> str:
        """A parameter's name inside this layer: ``rnn.weight_ih_l0`` → ``weight_ih_l0``,
        ``stack.layers.0.forward_layer.cell.weight_ih`` → ``weight_ih``."""
        for prefix in (self.name + ".", (self.group or "") + "."):
            if full.startswith(prefix):
                full = full[len(prefix):]
                break
        return full[5:] if full.startswith("cell.") else full

    @property
    def recurrent(self) -> bool:
        return self.kind is LayerKind.RECURRENT

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "cell": self.cell, "kind": self.kind.value, "module": self.module,
            "step_function": self.step_function, "units": self.units, "applications": self.applications,
            "parameters": self.parameters, "shared_parameters": self.shared_parameters,
            "weights": [{"name": n, "shape": list(s)} for n, s in self.weights],
            "gates": [g.to_dict() for g in self.gates],
            "state": {n: s for n, s in self.state},
            "macs_per_application": self.macs_per_application, "macs": self.macs,
            "steps": self.steps, "direction": self.direction, "group": self.group, "block": self.block,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "output_shape": None if self.output_shape is None else list(self.output_shape),
        }


@dataclass
class Anatomy:
    """Where the cells are in one model: its layers, in the order the forward ran them.

    ``total_parameters`` equals ``sum(p.numel() for p in model.parameters())`` and the
    sum of the layers' ``parameters`` (containers add nothing of their own).

    Attributes:
        model: the model's class name.
        total_parameters: ``sum(p.numel() for p in model.parameters())``, each shared tensor once.
        layers: one :class:`Layer` per layer and direction, in the order the forward ran them.
        batch_size: the example input's batch; counts are per example.
        input_shape: the example input's shape (its first tensor), if it has one.
        output_shape: the model's output's shape (its first tensor), if it has one.
    """

    model: str
    total_parameters: int
    layers: list[Layer]
    batch_size: int
    input_shape: Optional[tuple[int, ...]] = None
    output_shape: Optional[tuple[int, ...]] = None

    @property
    def macs(self) -> int:
        """Multiply-adds for one example (one sequence)."""
        return sum(layer.macs for layer in self.layers)

    def layer(self, name: str) -> Layer:
        """The layer called ``name`` (``KeyError`` listing the names otherwise)."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r}; the layers are {[la.name for la in self.layers]}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable summary: totals and one entry per layer."""
        return {
            "model": self.model, "total_parameters": self.total_parameters, "macs": self.macs,
            "batch_size": self.batch_size,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "output_shape": None if self.output_shape is None else list(self.output_shape),
            "layers": [layer.to_dict() for layer in self.layers],
        }

    # -- conveniences: each hands the records to a function of .render -------------------

    def to_text(self, *, gates: bool = True, words: bool = True) -> str:
        """A terminal table of the layers, a key to its columns, each recurrent layer's gates, then
        the model in plain words (:meth:`account`; ``words=False`` leaves them out)."""
        from .render.text import anatomy_text
        return anatomy_text(self, gates=gates, words=words)

    def account(self, *, sequence: Optional[str] = None, examples: int = 0) -> str:
        """The model in plain words: how many step functions, units and applications, which repeats
        share weights, and what that means for the parameter count; the words ``to_text()`` ends with
        and the HTML page shows (``sequence`` names one example, e.g. ``"image"``, default
        ``"sequence"`` or ``"example"``; ``examples`` adds a total over that many)."""
        from .render.text import account
        return account(self, sequence=sequence, examples=examples)

    def to_svg(self, kind: str, *, layer: Optional[str] = None) -> str:
        """A standalone SVG: ``"cell"`` (a cell's inside, traced from its forward),
        ``"unrolled"`` (the recurrent layers over time) or ``"model"`` (input → layers → output).

        ``layer`` names the layer whose cell is drawn (default: the first recurrent
        layer, else the first dense or convolution layer).
        """
        from .render.diagrams import to_svg
        return to_svg(self, kind, layer=layer)

    def svg_kinds(self) -> list[str]:
        """The diagrams this model has: ``"unrolled"`` only with a recurrent layer, ``"cell"`` only with
        a recurrent, dense or convolution layer."""
        from .render.diagrams import svg_kinds
        return svg_kinds(self)

    def to_html(self) -> str:
        """One self-contained page (diagrams, tables, glossary) as a string."""
        from .render.html import anatomy_html
        return anatomy_html(self)

    def save_svg(self, directory: Union[str, Path]) -> list[Path]:
        """Write ``cell.svg``, ``unrolled.svg`` and ``model.svg`` (those in :meth:`svg_kinds`) into
        ``directory``; return the paths."""
        from .render import save_svg
        return save_svg(self, directory)

    def save_html(self, path: Union[str, Path]) -> Path:
        """Write one self-contained page (diagrams, tables, glossary); return its path."""
        from .render import save_html
        return save_html(self, path)
