"""The unrolled diagram: the recurrent layers over time, one box per application.

Long sequences are elided (the first steps, ``⋯``, the last), so a diagram's size
does not depend on ``T``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Union

from .svg import COLORS, Canvas
from .text import fmt

if TYPE_CHECKING:
    from ..records import Anatomy, Layer

__all__ = ["recurrent_blocks", "shown_steps", "unrolled_svg"]

#: steps drawn before the ellipsis when a sequence is longer than ``_SHOW + 2``.
_SHOW = 3


def shown_steps(steps: int) -> list[Optional[int]]:
    """The steps to draw, ``None`` standing for the elided ones: ``[1, 2, 3, None, T]`` for long ``T``."""
    if steps <= _SHOW + 2:
        return list(range(1, steps + 1))
    return [*range(1, _SHOW + 1), None, steps]


def recurrent_blocks(anatomy: Anatomy) -> list[list[Layer]]:
    """Recurrent (and step) layers grouped by block: one entry per depth, one or two directions each."""
    blocks: dict[str, list[Layer]] = {}
    for layer in anatomy.layers:
        if layer.kind.in_time:
            blocks.setdefault(layer.block or layer.name, []).append(layer)
    return [sorted(b, key=lambda la: la.direction == "backward") for b in blocks.values()]


def _state_label(layer: Layer, when: Union[int, str]) -> str:
    return ", ".join(f"{n}_{{{when}}}" for n, _ in layer.state) or f"h_{{{when}}}"


#: in a bidirectional band the two directions' boxes are shifted apart by this much, so that
#: the arrow into (and out of) each box passes beside the other one: both read x_t, both feed y_t.
_SHIFT = 24.0

#: one direction's box at one step: centre x, top, width, height, and the x where arrows meet it.
Box = tuple[float, float, float, float, float]


def _boxes(block: list[Layer], top: float, h: float, x: float, box_w: float) -> list[Box]:
    """Each direction's box at column ``x``: one row, or two rows (forward above, backward below)
    shifted left and right of each other, each met by its arrows on its outer half."""
    rows = len(block)
    row_h = h / rows
    if rows == 1:
        return [(x, top + 2, box_w, row_h - 4, x)]
    w = box_w - 2 * _SHIFT
    out = []
    for r, la in enumerate(block):
        side = 1.0 if la.direction == "backward" else -1.0
        out.append((x + side * _SHIFT, top + r * row_h + 2, w, row_h - 4, x + side * 2 * _SHIFT))
    return out


def unrolled_svg(anatomy: Anatomy) -> str:
    """The recurrent layers unrolled over time: inputs at the bottom, one band per layer, outputs on top.
    Every box reads its step's input from below and hands its output up: in a bidirectional band both
    directions visibly read ``x_t`` and feed ``y_t`` (their outputs meet at a dot: they are joined)."""
    blocks = recurrent_blocks(anatomy)
    if not blocks:
        raise ValueError(f"Anatomy.to_svg('unrolled'): {anatomy.model} has no recurrent layer to unroll; its layers "
                         f"are {[(la.name, la.kind.value) for la in anatomy.layers]}")
    steps = max(la.steps or 0 for b in blocks for la in b)
    cols = shown_steps(steps)
    left, col_w, box_w = 250.0, 164.0, 124.0
    heights = [74.0 if len(b) == 2 else 48.0 for b in blocks]
    gap, top = 52.0, 78.0
    height = top + 26 + sum(heights) + gap * len(blocks) + 36
    title = f"{anatomy.model} unrolled over {fmt(steps)} steps"
    c = Canvas(left + col_w * len(cols) + 60, height, title=title)
    c.text(16, 18, title, size=14, anchor="start", weight="bold")
    c.text(16, 38, "each box is one application of a layer's step function; boxes in a row share one set of "
           "weights (same W); arrows along a row carry the state", size=11, anchor="start", color=COLORS["muted"])
    xs = [left + col_w * i + col_w / 2 for i in range(len(cols))]
    for x, t in zip(xs, cols):  # outputs
        c.text(x, top, "⋯" if t is None else f"y_{{{t}}}", size=14, weight="bold")
    tags = {la.name: f"W_{{{i + 1}}}" for i, la in enumerate(la for b in blocks for la in b)}
    band_tops, y = [], top + 26
    for h in reversed(heights):
        band_tops.append(y)
        y += h + gap
    band_tops.reverse()
    y_in = band_tops[0] + heights[0] + gap - 4
    for x, t in zip(xs, cols):
        c.text(x, y_in + 12, "⋯" if t is None else f"x_{{{t}}}", size=14, weight="bold")
    for k, (block, h, band_top) in enumerate(zip(blocks, heights, band_tops)):
        _band(c, block, band_top, h, xs, cols, box_w, tags)
        below = y_in if k == 0 else band_tops[k - 1] - gap / 2  # where this band's input comes from
        above = band_tops[k + 1] + heights[k + 1] + gap / 2 if k + 1 < len(blocks) else top + 14
        for x, t in zip(xs, cols):
            if t is not None:
                boxes = _boxes(block, band_top, h, x, box_w)
                _wire(c, [(b[4], b[1] + b[3] + 1) for b in boxes], (x, below), into=True)
                _wire(c, [(b[4], b[1] - 1) for b in boxes], (x, above), into=False)
    return c.svg(element_id="unrolled-diagram")


def _wire(c: Canvas, ports: list[tuple[float, float]], hub: tuple[float, float], *, into: bool) -> None:
    """Arrows between a hub (an input below, the next band or an output above) and each box's port:
    into the boxes from below (``into``), or out of them up to the hub; a dot where two meet."""
    hx, hy = hub
    for px, py in ports:
        bend = hy + (-8 if into else 8)
        if into:
            d = f"M{hx:.1f},{hy:.1f} L{px:.1f},{bend:.1f} L{px:.1f},{py:.1f}" if px != hx else \
                f"M{hx:.1f},{hy:.1f} L{px:.1f},{py:.1f}"
        else:
            d = f"M{px:.1f},{py:.1f} L{px:.1f},{bend:.1f} L{hx:.1f},{hy:.1f}" if px != hx else \
                f"M{px:.1f},{py:.1f} L{hx:.1f},{hy:.1f}"
        c.path(d, arrow=into or len(ports) == 1)
    if len(ports) > 1:
        c.ellipse(hx, hy, 3, 3, fill=COLORS["line"], stroke=COLORS["line"])
        if not into:  # the joined output goes on up from the dot
            c.path(f"M{hx:.1f},{hy:.1f} L{hx:.1f},{hy - 1:.1f}")


def _band(c: Canvas, block: list[Layer], top: float, h: float, xs: list[float], cols: list[Optional[int]],
          box_w: float, tags: dict[str, str]) -> None:
    """One layer (both directions of a bidirectional one) across the drawn steps."""
    first = block[0]
    c.text(16, top + 10, first.block or first.name, size=12, anchor="start", weight="bold")
    c.text(16, top + 27, first.step_function + (" ×2 directions" if len(block) == 2 else ""), size=11,
           anchor="start")
    for i, la in enumerate(block):
        c.text(16, top + 44 + 15 * i, f"{tags[la.name]} = {fmt(la.parameters + la.shared_parameters)} weights, "
               f"{la.applications} steps", size=10, anchor="start", color=COLORS["muted"])
    rows = len(block)
    for r, la in enumerate(block):
        backward = la.direction == "backward"
        color = COLORS["backward"] if backward else COLORS["state"]
        spans = []
        for x, t in zip(xs, cols):
            cx, y0, w, bh, _ = _boxes(block, top, h, x, box_w)[r]
            mid = y0 + bh / 2
            spans.append((cx - w / 2, cx + w / 2))
            if t is None:
                c.text(x, mid, "⋯", size=20, weight="bold", color=COLORS["muted"])
                continue
            c.rect(cx - w / 2, y0, w, bh, fill=COLORS["learned"], stroke=COLORS["learned_edge"], rx=5,
                   cls="application")
            arrow = "← " if backward else ("→ " if rows == 2 else "")
            c.text(cx - 6, mid, f"{arrow}{la.cell}", size=12, weight="bold")
            c.text(cx + w / 2 - 13, y0 + bh - 9, tags[la.name], size=10, color=COLORS["muted"])
        _state_arrows(c, la, spans, cols, mid, color)


def _state_arrows(c: Canvas, la: Layer, spans: list[tuple[float, float]], cols: list[Optional[int]], mid: float,
                  color: str) -> None:
    """The state along a row between consecutive drawn steps (the other way round for a backward row),
    coming in where the direction starts and leaving where it ends."""
    backward = la.direction == "backward"
    for (sa, ta), (sb, tb) in zip(zip(spans, cols), zip(spans[1:], cols[1:])):
        a, b = sa[1], sb[0]
        if ta is None:
            a = (sa[0] + sa[1]) / 2 + 22
        if tb is None:
            b = (sb[0] + sb[1]) / 2 - 22
        if backward:
            a, b = b, a
        c.line(a, mid, b, mid, color=color, width=2, arrow=True, dash=ta is None or tb is None)
    first_x, last_x = spans[0][0], spans[-1][1]
    if backward:
        arrows = [(last_x + 56, last_x + 2, "0"), (first_x - 2, first_x - 56, "n")]
    else:
        arrows = [(first_x - 56, first_x - 2, "0"), (last_x + 2, last_x + 56, "n")]
    for a, b, when in arrows:
        c.line(a, mid, b, mid, color=color, width=2, arrow=True)
        c.text((a + b) / 2, mid - 9, _state_label(la, when), size=10, color=color)
