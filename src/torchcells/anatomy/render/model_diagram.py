"""The model diagram (input → layers → output) and the inside of one neuron or kernel.

Each layer shows its cells in the sense that fits: neurons side by side across
width for a dense layer, kernels swept across positions for a convolution, one
cell repeated across time for a recurrent layer (two rows, opposite arrows, for
the two directions of a bidirectional layer). Layers of one recurrent container
(``nn.LSTM``, ``Stack``, a drop-in) sit inside one dashed outline.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..kinds import LayerKind
from .svg import COLORS, Canvas, text_width
from .text import fmt, layer_count, shape_text
from .unrolled import recurrent_blocks, shown_steps

if TYPE_CHECKING:
    from ..records import Anatomy, Layer

__all__ = ["model_svg", "neuron_svg"]

_W = 620.0  # layer box width
_X = 40.0


def _items(anatomy: Anatomy) -> list[list[Layer]]:
    """Layers in forward order, a bidirectional pair as one item."""
    blocks = {id(b[0]): b for b in recurrent_blocks(anatomy)}
    members = {id(la) for b in blocks.values() for la in b}
    out = []
    for la in anatomy.layers:
        if id(la) in blocks:
            out.append(blocks[id(la)])
        elif id(la) not in members:
            out.append([la])
    return out


def _height(item: list[Layer]) -> float:
    kind = item[0].kind
    if kind.in_time:
        return 58.0 + 22 * (len(item) - 1)
    if kind.in_width:
        return 58.0
    return 34.0


def model_svg(anatomy: Anatomy) -> str:
    """Input → layers → output, top to bottom, with each layer's cells drawn in its own sense."""
    items = _items(anatomy)
    gap = 34.0
    heights = [_height(i) for i in items]
    width = _X * 2 + _W + 220
    height = 86 + 40 + sum(heights) + (gap + 16) * (len(items) + 1) + 20
    title = f"{anatomy.model}: {fmt(anatomy.total_parameters)} parameters in {layer_count(anatomy)}"
    c = Canvas(width, height, title=title)
    c.text(16, 18, title, size=14, anchor="start", weight="bold")
    c.text(16, 36, "data flows down; numbers on the right = parameters; yellow = learned cells:", size=11,
           anchor="start", color=COLORS["muted"])
    c.text(16, 51, "○ neurons and □ kernels: units side by side, each with weights of its own; "
           "boxes t1 → t2 → …: time steps, one cell applied again with the same weights", size=11, anchor="start",
           color=COLORS["muted"])
    y = 76.0
    _io(c, y, f"input {shape_text(anatomy.input_shape)}")
    y += 13
    groups: dict[str, list[float]] = {}
    previous = None
    for item, h in zip(items, heights):
        la = item[0]
        extra = 16.0 if la.group and la.group != previous and la.kind is LayerKind.RECURRENT else 0.0
        previous = la.group
        c.line(_X + _W / 2, y + 2, _X + _W / 2, y + gap + extra - 2, arrow=True)
        y += gap + extra
        if la.kind is LayerKind.RECURRENT and la.group:
            span = groups.setdefault(la.group, [y, y + h])
            span[1] = y + h
        _layer(c, item, y, h)
        y += h
    c.line(_X + _W / 2, y + 2, _X + _W / 2, y + gap - 2, arrow=True)
    y += gap
    _io(c, y + 13, f"output {shape_text(anatomy.output_shape)}")
    c.height = y + 44
    for name, (top, bottom) in groups.items():
        members = [la for la in anatomy.layers if la.group == name]
        if len({la.block for la in members}) < 2 and len(members) < 2:
            continue
        c.rect(_X - 10, top - 24, _W + 20, bottom - top + 32, fill="none", stroke=COLORS["muted"], dash=True)
        what = members[0].module if members[0].module.startswith("nn.") else "recurrent layers"
        c.text(_X + _W - 4, top - 12, f"{name}: {what}, {len({la.block for la in members})} layers deep, "
               f"{fmt(sum(la.parameters for la in members))} parameters", size=10, anchor="end", color=COLORS["muted"])
    return c.svg(element_id="model-diagram")


def _io(c: Canvas, y: float, label: str) -> None:
    w = text_width(label, 12) + 24
    c.rect(_X + _W / 2 - w / 2, y - 13, w, 26, fill=COLORS["io"], stroke=COLORS["io_edge"], rx=13)
    c.text(_X + _W / 2, y, label, size=12)


def _layer(c: Canvas, item: list[Layer], y: float, h: float) -> None:
    la = item[0]
    learned = la.kind.learned
    fill = "#fffdf3" if learned else COLORS["band"]
    c.rect(_X, y, _W, h, fill=fill, stroke=COLORS["learned_edge"] if learned else COLORS["band_edge"], rx=6)
    params = sum(x.parameters for x in item)
    shared = sum(x.shared_parameters for x in item)
    right = fmt(params) + (f" (+{fmt(shared)} shared)" if shared else "")
    c.text(_X + _W + 22, y + h / 2, right, size=12, anchor="start", mono=True)
    name = (la.block or la.name) if la.kind is LayerKind.RECURRENT and len(item) == 2 else la.name
    if not learned:
        c.text(_X + 12, y + h / 2, f"{name}", size=12, anchor="start", weight="bold")
        c.text(_X + 20 + text_width(name, 12), y + h / 2, f"{la.kind.value}: {la.step_function}", size=11, anchor="start",
               color=COLORS["muted"])
        return
    c.text(_X + 12, y + 15, name, size=12, anchor="start", weight="bold")
    if la.kind.in_time:
        what = "bidirectional recurrent layer" if len(item) == 2 else (
            "recurrent layer" if la.kind is LayerKind.RECURRENT else "cell called step by step")
        c.text(_X + 12, y + 32, what, size=11, anchor="start", color=COLORS["muted"])
        c.text(_X + 12, y + 48, f"{la.step_function} · {la.units} units", size=11, anchor="start")
        _time_row(c, item, y)
    elif la.kind is LayerKind.DENSE:
        c.text(_X + 12, y + 32, "dense layer", size=11, anchor="start", color=COLORS["muted"])
        times = f", applied {fmt(la.applications)}×" if la.applications > 1 else ""
        c.text(_X + 12, y + 48, f"{la.units} neurons × {la.input_size} inputs{times}", size=11, anchor="start")
        _width_row(c, la, y + 30, circles=True)
    else:
        c.text(_X + 12, y + 32, "convolution layer", size=11, anchor="start", color=COLORS["muted"])
        c.text(_X + 12, y + 48, f"{la.units} kernels × {fmt(la.applications)} positions", size=11, anchor="start")
        _width_row(c, la, y + 30, circles=False)


def _time_row(c: Canvas, item: list[Layer], y: float) -> None:
    """The applications across time: wide boxes labelled with their step (``t1``, ``t2``, …; never the
    circles and squares that stand for units), arrows along them; two rows when bidirectional."""
    la = item[0]
    steps = shown_steps(min(la.steps or 0, 10_000_000))
    x0 = _X + 300
    for r, layer in enumerate(item):
        backward = layer.direction == "backward"
        cy = y + 22 + 22 * r
        color = COLORS["backward"] if backward else COLORS["state"]
        xs = [x0 + i * 52 for i in range(len(steps))]
        for x, t in zip(xs, steps):
            if t is None:
                c.text(x + 16, cy, "⋯", size=13, color=COLORS["muted"])
            else:
                c.rect(x, cy - 8, 32, 16, fill=COLORS["learned"], stroke=color, rx=8, cls="step")
                c.text(x + 16, cy, f"t{t}", size=9, color=color)
        for xa, xb in zip(xs, xs[1:]):
            a, b = xa + 33, xb - 1
            if backward:
                a, b = b, a
            c.line(a, cy, b, cy, color=color, width=1.5, arrow=True)
        label = f"{'←' if backward else '→'} ×{layer.applications}"
        c.text(xs[-1] + 40, cy, label, size=11, anchor="start", color=color)


def _width_row(c: Canvas, la: Layer, cy: float, *, circles: bool) -> None:
    """Neurons (circles) or kernels (squares) side by side; ``⋯`` when there are many."""
    n = la.units
    shown = list(range(min(n, 8))) if n <= 9 else [0, 1, 2, 3, 4, 5, None, n - 1]
    x0 = _X + 300
    for i, k in enumerate(shown):
        x = x0 + i * 26
        if k is None:
            c.text(x + 8, cy, "⋯", size=13, color=COLORS["muted"])
        elif circles:
            c.ellipse(x + 8, cy, 8, 8, fill=COLORS["learned"], stroke=COLORS["learned_edge"], cls="unit")
        else:
            c.rect(x, cy - 8, 16, 16, fill=COLORS["learned"], stroke=COLORS["learned_edge"], rx=2, cls="unit")
    c.text(x0 + len(shown) * 26 + 8, cy, f"×{n}", size=11, anchor="start")


def neuron_svg(la: Layer) -> str:
    """One neuron (dense layer) or one kernel (convolution): a weighted sum of its inputs plus a bias."""
    dense = la.kind is LayerKind.DENSE
    fan_in = la.input_size if dense else la.macs_per_application // max(la.units, 1)
    what = "neuron" if dense else "kernel"
    title = f"One {what} of {la.name}: {fan_in} weights + bias, one of {la.units}"
    inputs = shown_steps(int(fan_in or 1))
    top, row = 70.0, 34.0
    cy = top + row * (len(inputs) - 1) / 2
    c = Canvas(max(640, text_width(title, 14) + 40), top + row * len(inputs) + 20, title=title)
    c.text(16, 18, title, size=14, anchor="start", weight="bold")
    times = "once per example" if la.applications == 1 else f"{fmt(la.applications)} times per example"
    note = (f"the layer is {la.units} such neurons side by side, applied {times}" if dense else
            f"the layer is {la.units} such kernels; each is applied at all {fmt(la.applications)} output positions")
    c.text(16, 38, note, size=11, anchor="start", color=COLORS["muted"])
    cx, r = 380.0, 30.0
    for i, k in enumerate(inputs):
        yy = top + i * row
        if k is None:
            c.text(70, yy, "⋮", size=16, color=COLORS["muted"])
            continue
        c.rect(40, yy - 12, 60, 24, fill=COLORS["io"], stroke=COLORS["io_edge"])
        c.text(70, yy, f"x_{{{k}}}", size=12)
        dx, dy = cx - 100, cy - yy
        n = math.hypot(dx, dy)
        c.line(100, yy, cx - r * dx / n - 2, cy - r * dy / n, arrow=True)
        c.text(100 + dx * 0.22, yy + dy * 0.22 - 9, f"w_{{{k}}}", size=11, color=COLORS["learned_edge"])
    c.ellipse(cx, cy, r, r, fill=COLORS["learned"], stroke=COLORS["learned_edge"])
    c.text(cx, cy, "Σ + b", size=13, weight="bold")
    c.line(cx + r, cy, cx + 100, cy, arrow=True)
    c.rect(cx + 102, cy - 14, 110, 28, fill=COLORS["io"], stroke=COLORS["io_edge"])
    c.text(cx + 157, cy, "1 output", size=12)
    return c.svg(element_id="cell-diagram")
