"""Plain-text views of an :class:`~torchcells.anatomy.Anatomy`: a table, a key to its columns, and the
account in words (:mod:`.words`); and the small formatters the diagrams and the page share (numbers,
shapes, the layer count)."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Optional

from ..kinds import LayerKind
from .words import COLUMNS, block_name, block_role, blocks_phrase, fmt, words_text

if TYPE_CHECKING:
    from ..records import Anatomy, Layer

__all__ = ["account", "anatomy_text", "block_name", "fmt", "gate_table", "key", "layer_count", "shape_text", "table"]

_ARROWS = {"forward": "→", "backward": "←"}


def shape_text(shape: object) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join(str(s) for s in shape) + ")"  # type: ignore[attr-defined]


def layer_count(a: Anatomy) -> str:
    """``"2 layers (4 counting each direction)"``: the two directions of a bidirectional layer are one layer."""
    rows = len(a.layers)
    blocks = len({block_name(la) for la in a.layers})
    out = f"{blocks} layer{'s' if blocks != 1 else ''}"
    return out + (f" ({rows} counting each direction)" if rows != blocks else "")


def _state(layer: Layer) -> str:
    return ", ".join(f"{n} {s}" for n, s in layer.state) or "-"


def table(headers: list[str], rows: list[list[str]], *, right: set[int]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def anatomy_text(a: Anatomy, *, gates: bool = True, words: bool = True) -> str:
    """The layer table (one row per layer and direction), totals, a key to the columns, the tables of gates,
    then the model in plain words (:func:`account`)."""
    head = (f"{a.model}: input {shape_text(a.input_shape)} -> output {shape_text(a.output_shape)}; "
            f"{fmt(a.total_parameters)} parameters in {layer_count(a)}, {fmt(a.macs)} multiply-adds per example "
            f"(batch of {a.batch_size} in the example)")
    rows = []
    for la in a.layers:
        name = la.name + (f" {_ARROWS[la.direction]}" if la.direction and la.kind is LayerKind.RECURRENT else "")
        params = fmt(la.parameters) + (f" (+{fmt(la.shared_parameters)} shared)" if la.shared_parameters else "")
        rows.append([name, la.cell or "–", la.kind.value, la.step_function, fmt(la.units) if la.cell else "–",
                     fmt(la.applications), _state(la), params, fmt(la.macs_per_application), fmt(la.macs)])
    recurrent = [la.applications for la in a.layers if la.kind.in_time]
    rows.append(["total", "", "", "", "", f"{fmt(sum(recurrent))} (recurrent)" if recurrent else "", "",
                 fmt(a.total_parameters), "", fmt(a.macs)])
    out = [head, "", table(["layer", "cell", "kind", "step function", "units", "applications", "state",
                            "parameters", "MACs/app", "MACs"], rows, right={4, 5, 7, 8, 9})]
    out += ["", key()]
    if gates:
        for la in a.layers:
            if la.gates:
                blocks = blocks_phrase(la.gates) or "each block"
                out += ["", f"{la.name}: {la.step_function}; {blocks}, each the same rows of each weight",
                        gate_table(la)]
    if words:
        out += ["", account(a)]
    return "\n".join(out)


def key() -> str:
    """What the columns ``cell``, ``units`` and ``applications`` mean (:data:`.words.COLUMNS`)."""
    return "\n".join(line for name, meaning in COLUMNS
                     for line in textwrap.wrap(f"{name}: {meaning}", 100, subsequent_indent="    "))


def gate_table(layer: Layer) -> str:
    """One line per block of rows (a gate or the candidate): its rows and the weights (named inside the
    layer) they are rows of."""
    rows = []
    for g in layer.gates:
        spans = {(p.start, p.stop) for p in g.parts}
        where = f"{g.parts[0].start}:{g.parts[0].stop}" if len(spans) == 1 else "various"
        names = ", ".join(layer.local_name(p.name) for p in g.parts)
        rows.append([g.name, block_role(g, layer.gates), g.activation or "-", where, fmt(g.parameters), names])
    return table(["block", "role", "activation", "rows", "parameters", "of weights"], rows, right={4})


def account(a: Anatomy, *, sequence: Optional[str] = None, examples: int = 0) -> str:
    """The model's cells in plain words (:func:`.words.words_text`): the words ``to_text()`` ends with."""
    return words_text(a, sequence=sequence, examples=examples)
