"""Plain-text views of an :class:`~torchcells.anatomy.Anatomy`: a table, and an account in words;
and the small formatters the diagrams and the page share (numbers, shapes, the layer count)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..kinds import LayerKind, torch_twin

if TYPE_CHECKING:
    from ..records import Anatomy, Layer

__all__ = ["account", "anatomy_text", "block_name", "fmt", "gate_table", "layer_count", "shape_text", "table"]

_ARROWS = {"forward": "→", "backward": "←"}


def fmt(n: int) -> str:
    """``15040`` → ``15,040``."""
    return f"{n:,}"


def shape_text(shape: object) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join(str(s) for s in shape) + ")"  # type: ignore[attr-defined]


def block_name(layer: Layer) -> str:
    """The name of the layer ``layer`` belongs to: a recurrent layer's block (both directions of a
    bidirectional layer are one), else its own name."""
    return layer.block if layer.kind is LayerKind.RECURRENT and layer.block else layer.name


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


def anatomy_text(a: Anatomy, *, gates: bool = True) -> str:
    """The layer table (one row per layer and direction), totals, then the gate tables."""
    head = (f"{a.model}: input {shape_text(a.input_shape)} -> output {shape_text(a.output_shape)}; "
            f"{fmt(a.total_parameters)} parameters in {layer_count(a)}, {fmt(a.macs)} multiply-adds per example "
            f"(batch of {a.batch_size} in the example)")
    rows = []
    for la in a.layers:
        name = la.name + (f" {_ARROWS[la.direction]}" if la.direction and la.kind is LayerKind.RECURRENT else "")
        params = fmt(la.parameters) + (f" (+{fmt(la.shared_parameters)} shared)" if la.shared_parameters else "")
        rows.append([name, la.cell, la.kind.value, la.step_function, fmt(la.units), fmt(la.applications), _state(la),
                     params, fmt(la.macs_per_application), fmt(la.macs)])
    recurrent = [la.applications for la in a.layers if la.kind.in_time]
    rows.append(["total", "", "", "", "", f"{fmt(sum(recurrent))} (recurrent)" if recurrent else "", "",
                 fmt(a.total_parameters), "", fmt(a.macs)])
    out = [head, "", table(["layer", "cell", "kind", "step function", "units", "applications", "state",
                            "parameters", "MACs/app", "MACs"], rows, right={4, 5, 7, 8, 9})]
    if gates:
        for la in a.layers:
            if la.gates:
                out += ["", f"{la.name}: {la.step_function}; each gate is the same rows of each weight",
                        gate_table(la)]
    return "\n".join(out)


def gate_table(layer: Layer) -> str:
    """One line per gate: its rows and the weights (named inside the layer) they are rows of."""
    rows = []
    for g in layer.gates:
        spans = {(p.start, p.stop) for p in g.parts}
        where = f"{g.parts[0].start}:{g.parts[0].stop}" if len(spans) == 1 else "various"
        names = ", ".join(layer.local_name(p.name) for p in g.parts)
        rows.append([g.name, g.activation or "-", where, fmt(g.parameters), names])
    return table(["gate", "activation", "rows", "parameters", "of weights"], rows, right={3})


def account(a: Anatomy, *, sequence: str = "sequence", examples: int = 0) -> str:
    """Each layer's cells in the three senses of the word, with this model's numbers."""
    lines: list[str] = []
    recurrent_apps = 0
    for la in a.layers:
        if la.kind is LayerKind.RECURRENT:
            recurrent_apps += la.applications
            twin = torch_twin(la.cell)
            gates = [g for g in la.gates if g.name != "projection"]
            units = (f"{la.units}, each with {len(gates)} gate neurons ({', '.join(g.name for g in gates)})"
                     if len(gates) > 1 else f"{la.units} recurrent neurons")
            if la.cell == "LSTM":
                units += " -- the 1997 paper's 'memory cells'"
            lines += [
                f"{la.name}  recurrent layer" + (", backward direction (reads time from the end)"
                                                 if la.direction == "backward" else ""),
                f"    step function : 1 {la.step_function} -- 'the cell' of PyTorch/Keras" + (f" ({twin})" if twin else ""),
                f"    units         : {units}",
                f"    applications  : {la.applications} per {sequence}, one per time step, all sharing the same "
                f"{fmt(la.parameters + la.shared_parameters)} parameters -- the boxes of an unrolled diagram",
            ]
        elif la.kind is LayerKind.DENSE:
            lines += [
                f"{la.name}  dense layer",
                f"    units         : {la.units} neuron cells side by side, each a weighted sum of "
                f"{la.input_size} inputs plus a bias",
                f"    applications  : {la.applications} per {sequence} ({fmt(la.parameters)} parameters)",
            ]
        elif la.kind is LayerKind.CONV:
            lines += [
                f"{la.name}  convolution layer",
                f"    units         : {la.units} kernel cells ({la.step_function})",
                f"    applications  : {fmt(la.applications)} output positions per {sequence}, the same "
                f"{fmt(la.parameters)} parameters at each",
            ]
    if examples and recurrent_apps:
        lines.append(f"Running {fmt(examples)} {sequence}s applied the recurrent step functions "
                     f"{fmt(examples * recurrent_apps)} times; each is still one function with one set of weights.")
    return "\n".join(lines)
