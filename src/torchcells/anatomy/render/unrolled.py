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


def unrolled_svg(anatomy: Anatomy) -> str:
    """The recurrent layers unrolled over time: inputs at the bottom, one band per layer, outputs on top."""
    blocks = recurrent_blocks(anatomy)
    if not blocks:
        raise ValueError(f"Anatomy.to_svg('unrolled'): {anatomy.model} has no recurrent layer to unroll; its layers "
                         f"are {[(la.name, la.kind.value) for la in anatomy.layers]}")
    steps = max(la.steps or 0 for b in blocks for la in b)
    cols = shown_steps(steps)
    left, col_w, box_w = 250.0, 164.0, 104.0
    heights = [74.0 if len(b) == 2 else 48.0 for b in blocks]
    gap = 44.0
    top = 78.0
    height = top + 26 + sum(heights) + gap * len(blocks) + 36
    width = left + col_w * len(cols) + 60
    title = f"{anatomy.model} unrolled over {fmt(steps)} steps"
    c = Canvas(width, height, title=title)
    c.text(16, 18, title, size=14, anchor="start", weight="bold")
    c.text(16, 38, "each box is one application of a layer's step function; boxes in a row share one set of "
           "weights (same W); arrows along a row carry the state", size=11, anchor="start", color=COLORS["muted"])
    xs = [left + col_w * i + col_w / 2 for i in range(len(cols))]
    y = top
    for x, t in zip(xs, cols):  # outputs
        c.text(x, y, "⋯" if t is None else f"y_{{{t}}}", size=14, weight="bold")
    y += 26
    tags = {la.name: f"W_{{{i + 1}}}" for i, la in enumerate(la for b in blocks for la in b)}
    band_tops = []
    for block, h in zip(reversed(blocks), reversed(heights)):
        band_tops.append(y)
        y += h + gap
    band_tops.reverse()
    for k, (block, h, band_top) in enumerate(zip(blocks, heights, band_tops)):
        _band(c, block, band_top, h, xs, cols, box_w, steps, tags)
        # data flow upwards: out of this band into the band above (or to the outputs)
        end = band_tops[k + 1] + heights[k + 1] + 3 if k + 1 < len(blocks) else top + 14
        for x, t in zip(xs, cols):
            if t is not None:
                c.line(x, band_top - 1, x, end, arrow=True)
    y_in = band_tops[0] + heights[0] + gap - 4
    for x, t in zip(xs, cols):
        c.text(x, y_in + 12, "⋯" if t is None else f"x_{{{t}}}", size=14, weight="bold")
        if t is not None:
            c.line(x, y_in, x, band_tops[0] + heights[0] + 2, arrow=True)
    return c.svg(element_id="unrolled-diagram")


def _band(c: Canvas, block: list[Layer], top: float, h: float, xs: list[float], cols: list[Optional[int]],
          box_w: float, steps: int, tags: dict[str, str]) -> None:
    """One layer (both directions of a bidirectional one) across the drawn steps."""
    first = block[0]
    label = first.block or first.name
    c.text(16, top + 10, label, size=12, anchor="start", weight="bold")
    c.text(16, top + 27, first.step_function + (" ×2 directions" if len(block) == 2 else ""), size=11,
           anchor="start")
    for i, la in enumerate(block):
        c.text(16, top + 44 + 15 * i, f"{tags[la.name]} = {fmt(la.parameters + la.shared_parameters)} weights, "
               f"{la.applications} steps", size=10, anchor="start", color=COLORS["muted"])
    rows = len(block)
    row_h = h / rows
    for r, la in enumerate(block):
        backward = la.direction == "backward"
        color = COLORS["backward"] if backward else COLORS["state"]
        y0 = top + r * row_h
        mid = y0 + row_h / 2
        for x, t in zip(xs, cols):
            if t is None:
                c.text(x, mid, "⋯", size=20, weight="bold", color=COLORS["muted"])
                continue
            c.rect(x - box_w / 2, y0 + 2, box_w, row_h - 4, fill=COLORS["learned"], stroke=COLORS["learned_edge"],
                   rx=5, cls="application")
            arrow = "← " if backward else ("→ " if rows == 2 else "")
            c.text(x - 8, mid, f"{arrow}{la.cell}", size=12, weight="bold")
            c.text(x + box_w / 2 - 16, mid + (row_h - 4) / 2 - 9, tags[la.name], size=10, color=COLORS["muted"])
        # state arrows between consecutive drawn steps, the other way round for a backward row
        for (xa, ta), (xb, tb) in zip(zip(xs, cols), zip(xs[1:], cols[1:])):
            a, b = xa + box_w / 2, xb - box_w / 2
            if ta is None:
                a = xa + 22
            if tb is None:
                b = xb - 22
            if backward:
                a, b = b, a
            c.line(a, mid, b, mid, color=color, width=2, arrow=True, dash=ta is None or tb is None)
        first_x, last_x = xs[0] - box_w / 2, xs[-1] + box_w / 2
        # the initial state comes in where the direction starts; the final state leaves where it ends
        if backward:
            arrows = [(last_x + 56, last_x + 2, "0"), (first_x - 2, first_x - 56, "n")]
        else:
            arrows = [(first_x - 56, first_x - 2, "0"), (last_x + 2, last_x + 56, "n")]
        for a, b, when in arrows:
            c.line(a, mid, b, mid, color=color, width=2, arrow=True)
            c.text((a + b) / 2, mid - 9, _state_label(la, when), size=10, color=color)
