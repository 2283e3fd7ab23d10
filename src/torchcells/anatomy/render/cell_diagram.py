"""Draw a cell's inside (read by :mod:`torchcells.anatomy.trace_graph`) as a layered left-to-right diagram.

Layout: each node's column is its longest distance from the inputs (outputs in
the last column); edges that skip columns pass through invisible waypoints;
the order within each column is improved by barycentre sweeps, and rows are
then pulled towards their neighbours without overlapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from ...graph import TraceError
from ..kinds import gate_names
from ..trace_graph import CellGraph, DNode, cell_graph
from .model_diagram import neuron_svg
from .svg import COLORS, Canvas, text_width
from .text import fmt

if TYPE_CHECKING:
    from ..records import Anatomy, Layer

__all__ = ["CellLayout", "cell_svg", "draw_cell_graph", "layout", "pick_layer"]

_GAP_X, _GAP_Y, _TOP = 46, 18, 64


def pick_layer(anatomy: Anatomy, name: Optional[str]) -> Layer:
    """The named layer, else the first recurrent (or step) layer, else the first dense or conv layer."""
    if name is not None:
        return anatomy.layer(name)
    found = next((la for la in anatomy.layers if la.kind.in_time), None) \
        or next((la for la in anatomy.layers if la.kind.in_width), None)
    if found is not None:
        return found
    raise ValueError(f"Anatomy.to_svg('cell'): {anatomy.model} has no recurrent, dense or convolution layer "
                     f"to draw; its layers are {[la.name for la in anatomy.layers]}")


def cell_svg(anatomy: Anatomy, name: Optional[str] = None) -> str:
    """The inside of one application of a layer's cell, traced from its ``forward``."""
    layer = pick_layer(anatomy, name)
    if layer.kind.in_width:
        return neuron_svg(layer)
    if layer.trace_cell is None or layer.step_shape is None:
        raise ValueError(f"Anatomy.to_svg('cell'): the cell of {layer.name} cannot be traced (no cell module "
                         f"or no step shape was recorded)")
    labels = _param_labels(layer)
    try:
        gates = tuple(g.name for g in layer.gates if g.name != "projection") or gate_names(layer.trace_cell)
        graph = cell_graph(layer.trace_cell, layer.step_shape, gates=gates, param_labels=labels)
    except TraceError as e:
        raise ValueError(f"Anatomy.to_svg('cell'): the step of {layer.step_function} (layer {layer.name}) cannot be "
                         f"traced, so its inside cannot be drawn: {e}") from e
    title = f"Inside one application of {layer.step_function} — layer {layer.name}"
    note = (f"traced from {type(layer.trace_cell).__name__}.forward; one of {fmt(layer.applications)} applications, "
            f"all sharing {fmt(layer.parameters + layer.shared_parameters)} parameters")
    return draw_cell_graph(graph, title=title, note=note)


def _param_labels(layer: Layer) -> dict[str, str]:
    """Trace parameter names → the names the model's ``state_dict()`` uses, minus the layer's prefix."""
    cell = layer.trace_cell
    if cell is None:
        return {}
    inner = [n for n, _ in cell.named_parameters()]
    if len(inner) != len(layer.weights):
        return {}
    return {local: layer.local_name(full) for local, (full, _) in zip(inner, layer.weights)}


def _node_size(node: DNode) -> tuple[float, float]:
    if node.kind == "proj":
        lines = node.detail.split("\n")
        w = max(text_width(node.label, 15), text_width(node.sub, 11), *(text_width(t, 10, mono=True) for t in lines))
        return max(w + 20, 86), 44 + 13 * len(lines)
    if node.kind == "op":
        w = text_width(node.label, 14)
        return (34, 34) if w <= 22 else (w + 22, 32)
    if node.kind == "param":
        return max(text_width(node.label, 13), text_width(node.sub, 10)) + 20, 40
    return max(text_width(node.label, 15), text_width(f"{node.size} features", 10)) + 20, 42


@dataclass
class CellLayout:
    """Where :func:`layout` puts a cell graph: each node's centre, each column's width, the nodes of
    each column top to bottom (waypoints included), each edge's waypoints, each node's size."""

    pos: dict[str, tuple[float, float]]
    widths: list[float]
    cols: list[list[str]]
    chains: dict[tuple[str, str], list[str]]
    sizes: dict[str, tuple[float, float]]


def layout(graph: CellGraph) -> CellLayout:
    """A layered left-to-right layout of ``graph`` (see the module docstring)."""
    return _Layout(graph).run()


class _Layout:
    """The passes of :func:`layout`, run in this order: columns, waypoints, order within columns, coordinates."""

    def __init__(self, graph: CellGraph) -> None:
        self.nodes, self.edges = graph.nodes, graph.edges
        self.succ: dict[str, list[str]] = {n: [] for n in self.nodes}
        self.pred: dict[str, list[str]] = {n: [] for n in self.nodes}
        for s, d in self.edges:
            self.succ[s].append(d)
            self.pred[d].append(s)
        self.order = _topo(self.nodes, self.succ, self.pred)
        self.col: dict[str, int] = {}
        self.last = 0
        self.cols: list[list[str]] = []
        self.sizes: dict[str, tuple[float, float]] = {}
        self.chains: dict[tuple[str, str], list[str]] = {}
        self.up: dict[str, list[str]] = {}
        self.down: dict[str, list[str]] = {}

    def run(self) -> CellLayout:
        self.assign_columns()
        self.add_waypoints()
        self.order_columns()
        return self.place()

    def assign_columns(self) -> None:
        """Each node's column: its longest distance from the inputs; outputs in the last column."""
        nodes, col = self.nodes, self.col
        for n in self.order:
            col[n] = 0 if nodes[n].kind in ("input", "state_in") else max((col[p] + 1 for p in self.pred[n]), default=0)
        self.last = max(col.values(), default=0) + 1
        for n, node in nodes.items():
            if node.kind in ("output", "state_out"):
                col[n] = self.last
        # pointwise operations move right, next to what reads them (shorter edges, straight state lines)
        for n in reversed(self.order):
            if nodes[n].kind in ("op", "param") and self.succ[n]:
                col[n] = max(col[n], min(col[m] for m in self.succ[n]) - 1)

    def add_waypoints(self) -> None:
        """Fill the columns; an edge spanning several columns passes through a waypoint in each."""
        self.cols = [[] for _ in range(self.last + 1)]
        for n in self.order:
            self.cols[self.col[n]].append(n)
        self.sizes = {n: _node_size(d) for n, d in self.nodes.items()}
        for s, d in self.edges:
            chain = []
            for c in range(self.col[s] + 1, self.col[d]):
                w = f"~{s}>{d}@{c}"
                self.cols[c].append(w)
                self.sizes[w] = (8, 10)
                chain.append(w)
            self.chains[(s, d)] = chain
        for (s, d), chain in self.chains.items():
            path = [s, *chain, d]
            for a, b in zip(path, path[1:]):
                self.down.setdefault(a, []).append(b)
                self.up.setdefault(b, []).append(a)

    def _rank0(self, n: str) -> int:
        """First column, top to bottom: state that no projection reads (the LSTM's c "conveyor belt"),
        then state read by projections, then the input -- the order of the textbook figures."""
        if n not in self.nodes:
            return 3
        if self.nodes[n].kind == "state_in":
            return 1 if any(self.nodes[m].kind == "proj" for m in self.succ[n]) else 0
        return 2

    def order_columns(self) -> None:
        """The order within each column: barycentre sweeps; new state in the order of the old state."""
        cols, last = self.cols, self.last
        cols[0].sort(key=self._rank0)
        for _ in range(6):
            for c in range(1, last):
                _sort_by(cols[c], self.up, cols[c - 1])
            for c in range(last - 1, 0, -1):
                _sort_by(cols[c], self.down, cols[c + 1])
        # last column: new state in the order of the old state in the first, then the output
        first = {n.split(":", 1)[-1]: i for i, n in enumerate(cols[0])}
        cols[last].sort(key=lambda n: (first.get(n.split(":", 1)[-1], len(first))
                                       if self.nodes[n].kind == "state_out" else len(first) + 1))
        for c in range(last - 1, 0, -1):
            _sort_by(cols[c], self.down, cols[c + 1])

    def place(self) -> CellLayout:
        """Coordinates: columns side by side; rows stacked, then pulled towards their neighbours."""
        cols, sizes = self.cols, self.sizes
        widths = [max((sizes[n][0] for n in column), default=10) for column in cols]
        xs, left = [], 24.0
        for width in widths:
            xs.append(left + width / 2)
            left += width + _GAP_X
        y_of: dict[str, float] = {}
        for column in cols:
            y = float(_TOP)
            for n in column:
                y_of[n] = y + sizes[n][1] / 2
                y += sizes[n][1] + _GAP_Y
        self._pull_rows(y_of)
        low = min(y_of[n] - sizes[n][1] / 2 for n in y_of)
        for n in y_of:
            y_of[n] += _TOP - low
        pos = {n: (xs[col_of], y_of[n]) for col_of, column in enumerate(cols) for n in column}
        return CellLayout(pos, widths, cols, self.chains, sizes)

    def _pull_rows(self, y_of: dict[str, float]) -> None:
        """Move each node to the median height of its neighbours, sweeping both ways, without overlaps."""
        cols = self.cols
        sweeps = [(range(1, len(cols)), self.up), (range(len(cols) - 2, -1, -1), self.down)] * 4 \
            + [(range(1, len(cols)), self.up)]
        for columns, nbrs in sweeps:
            for c in columns:
                for n in cols[c]:
                    ys = sorted(y_of[m] for m in nbrs.get(n, []))
                    if ys:
                        y_of[n] = (ys[(len(ys) - 1) // 2] + ys[len(ys) // 2]) / 2
                _separate(cols[c], y_of, self.sizes)


def _topo(nodes: dict[str, DNode], succ: dict[str, list[str]], pred: dict[str, list[str]]) -> list[str]:
    indeg = {n: len(pred[n]) for n in nodes}
    ready = [n for n in nodes if indeg[n] == 0]
    out = []
    while ready:
        n = ready.pop(0)
        out.append(n)
        for m in succ[n]:
            indeg[m] -= 1
            if indeg[m] == 0:
                ready.append(m)
    return out + [n for n in nodes if n not in out]


def _sort_by(column: list[str], nbrs: dict[str, list[str]], other: list[str]) -> None:
    """Order ``column`` by the mean position of each node's neighbours in ``other`` (barycentre)."""
    index = {n: i for i, n in enumerate(other)}
    before = {n: i for i, n in enumerate(column)}  # (list.sort empties the list while it sorts)

    def key(n: str) -> float:
        ns = [index[m] for m in nbrs.get(n, []) if m in index]
        return sum(ns) / len(ns) if ns else float(before[n])
    column.sort(key=key)


def _separate(column: list[str], y_of: dict[str, float], sizes: dict[str, tuple[float, float]]) -> None:
    """Push nodes apart (keeping their order) so none overlap."""
    for a, b in zip(column, column[1:]):
        need = (sizes[a][1] + sizes[b][1]) / 2 + _GAP_Y
        if y_of[b] - y_of[a] < need:
            y_of[b] = y_of[a] + need
    for a, b in reversed(list(zip(column, column[1:]))):
        need = (sizes[a][1] + sizes[b][1]) / 2 + _GAP_Y
        if y_of[b] - y_of[a] < need:
            y_of[a] = y_of[b] - need


def draw_cell_graph(graph: CellGraph, *, title: str, note: str = "") -> str:
    """The SVG of ``graph``: projections as yellow boxes, pointwise operations as pink discs."""
    placed = layout(graph)
    pos, widths, cols, chains, sizes = placed.pos, placed.widths, placed.cols, placed.chains, placed.sizes
    nodes = graph.nodes
    col_of = {n: i for i, column in enumerate(cols) for n in column}
    right = max(x + sizes[n][0] / 2 for n, (x, _) in pos.items()) + 24
    bottom = max(y + sizes[n][1] / 2 for n, (_, y) in pos.items()) + 24
    legend_y = bottom + 6
    kernels = any(d.kind == "proj" and d.sub.endswith("kernels") for d in nodes.values())
    width = max(right, text_width(title, 14) + 40, _legend_width(kernels) + 16, 700)
    c = Canvas(width, legend_y + 44, title=title)
    c.text(16, 18, title, size=14, anchor="start", weight="bold")
    if note:
        c.text(16, 38, note, size=11, anchor="start", color=COLORS["muted"])
    state_ids = {n for n, d in nodes.items() if d.kind in ("state_in", "state_out")}
    noted = {d for _, d in graph.notes}
    for (s, d), chain in chains.items():
        # waypoints run straight across their column; curves only in the gaps between columns
        pts = [(pos[s][0] + sizes[s][0] / 2, pos[s][1])]
        for w in chain:
            x, y = pos[w]
            half = widths[col_of[w]] / 2
            pts += [(x - half, y), (x + half, y)]
        # into a − b or a ÷ b the two operands arrive apart, the second one marked
        shift = 0.0
        if d in noted:
            shift = 7.0 if (s, d) in graph.notes else -7.0
        pts.append((pos[d][0] - sizes[d][0] / 2 + (2 if shift else -1), pos[d][1] + shift))
        dpath = f"M{pts[0][0]:.1f},{pts[0][1]:.1f}"
        for (ax, ay), (bx, by) in zip(pts, pts[1:]):
            if abs(ay - by) < 0.5:
                dpath += f" L{bx:.1f},{by:.1f}"
            else:
                mid = (bx - ax) / 2
                dpath += f" C{ax + mid:.1f},{ay:.1f} {bx - mid:.1f},{by:.1f} {bx:.1f},{by:.1f}"
        is_state = s in state_ids or d in state_ids
        c.path(dpath, color=COLORS["state"] if is_state else COLORS["line"], width=2.2 if is_state else 1.3)
        mark = graph.notes.get((s, d))
        if mark:  # the subtracted (or dividing) operand, marked where it arrives
            c.text(pts[-1][0] - 12, pts[-1][1] + 11, mark, size=13, weight="bold", color=COLORS["op_edge"])
    for n, node in nodes.items():
        _draw_node(c, node, pos[n], sizes[n])
    _legend(c, legend_y, kernels=kernels)
    return c.svg(element_id="cell-diagram")


def _draw_node(c: Canvas, d: DNode, at: tuple[float, float], size: tuple[float, float]) -> None:
    x, y = at
    w, h = size
    if d.kind == "proj":
        c.rect(x - w / 2, y - h / 2, w, h, fill=COLORS["learned"], stroke=COLORS["learned_edge"], cls="proj")
        top = y - h / 2
        c.text(x, top + 13, d.label, size=15, weight="bold")
        c.text(x, top + 30, d.sub, size=11)
        for i, line in enumerate(d.detail.split("\n")):
            c.text(x, top + 45 + 13 * i, line, size=10, mono=True, color=COLORS["muted"])
    elif d.kind == "op":
        if w == h:
            c.ellipse(x, y, w / 2, h / 2, fill=COLORS["op"], stroke=COLORS["op_edge"], cls="op")
        else:
            c.rect(x - w / 2, y - h / 2, w, h, fill=COLORS["op"], stroke=COLORS["op_edge"], rx=h / 2, cls="op")
        c.text(x, y, d.label, size=14)
    elif d.kind == "param":
        c.rect(x - w / 2, y - h / 2, w, h, fill=COLORS["learned"], stroke=COLORS["learned_edge"], dash=True)
        c.text(x, y - 7, d.label, size=13, weight="bold")
        c.text(x, y + 10, d.sub, size=10)
    else:
        state = d.kind in ("state_in", "state_out")
        c.rect(x - w / 2, y - h / 2, w, h, fill=COLORS["io"], stroke=COLORS["state"] if state else COLORS["io_edge"],
               width=2 if state else 1.2, cls="io")
        c.text(x, y - 7, d.label, size=15, weight="bold", color=COLORS["state"] if state else COLORS["text"])
        c.text(x, y + 11, f"{d.size} features", size=10, color=COLORS["muted"])


_POINTWISE = "pointwise operation (no weights)"


def _learned_label(kernels: bool) -> str:
    return ("learned projection: a convolution of that many kernels (a gate or the candidate)" if kernels
            else "learned projection: a dense layer of that many neurons (a gate or the candidate)")


def _legend_width(kernels: bool) -> float:
    """How far the legend's first line reaches (the diagram is at least that wide)."""
    return 16 + 28 + text_width(_learned_label(kernels), 11) + 18 + 22 + text_width(_POINTWISE, 11)


def _legend(c: Canvas, y: float, kernels: bool = False) -> None:
    x = 16.0
    c.rect(x, y, 22, 14, fill=COLORS["learned"], stroke=COLORS["learned_edge"], rx=2)
    label = _learned_label(kernels)
    c.text(x + 28, y + 7, label, size=11, anchor="start")
    x += 28 + text_width(label, 11) + 18
    c.ellipse(x + 8, y + 7, 8, 8, fill=COLORS["op"], stroke=COLORS["op_edge"])
    c.text(x + 22, y + 7, _POINTWISE, size=11, anchor="start")
    x2 = 16.0
    c.line(x2, y + 27, x2 + 22, y + 27, color=COLORS["state"], width=2.2)
    c.text(x2 + 28, y + 27, "state carried from the previous step to the next", size=11, anchor="start")
