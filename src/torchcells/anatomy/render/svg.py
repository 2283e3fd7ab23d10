"""SVG written by hand: a canvas that collects shapes and knows its size.

Text widths are estimated from the character count (the diagrams use one font
stack and leave room), so no font metrics or system binaries are needed.
Labels may carry subscripts as ``h_{t−1}``.
"""

from __future__ import annotations

import re
from html import escape
from typing import Optional

FONT = "DejaVu Sans, Verdana, Arial, Helvetica, sans-serif"
MONO = "DejaVu Sans Mono, Menlo, Consolas, monospace"

#: the palette: learned things are yellow, pointwise operations pink, state blue.
COLORS = {
    "learned": "#ffe08a", "learned_edge": "#b08900", "op": "#f7c1cc", "op_edge": "#b0485e",
    "state": "#2f6db5", "io": "#e8eef7", "io_edge": "#6b7f99", "line": "#555555", "text": "#1d1d1d",
    "muted": "#6a6a6a", "neuron": "#fff4c9", "band": "#f6f6f6", "band_edge": "#c9c9c9", "backward": "#b5532f",
}

_SUB = re.compile(r"_\{([^}]*)\}")


def text_width(text: str, size: float, *, mono: bool = False) -> float:
    """A generous estimate of the rendered width of ``text`` (subscripts count smaller)."""
    plain = _SUB.sub(lambda m: m.group(1), text)
    subs = sum(len(m) for m in _SUB.findall(text))
    per = 0.62 if mono else 0.6
    wide = sum(1 for ch in plain if ch.isupper() or ch in "mwMW⊙σ—…")
    return size * per * (len(plain) - 0.3 * subs) + size * 0.15 * wide


class Canvas:
    """Shapes in drawing order; ``svg()`` wraps them with a viewBox fitting ``width × height``."""

    def __init__(self, width: float, height: float, *, title: str = "") -> None:
        self.width = width
        self.height = height
        self.title = title
        self.parts: list[str] = []

    def rect(self, x: float, y: float, w: float, h: float, *, fill: str, stroke: str, rx: float = 4,
             dash: bool = False, width: float = 1.2, cls: str = "") -> None:
        extra = ' stroke-dasharray="5 3"' if dash else ""
        extra += f' class="{cls}"' if cls else ""
        self.parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="{rx}" '
                          f'fill="{fill}" stroke="{stroke}" stroke-width="{width}"{extra}/>')

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, *, fill: str, stroke: str, cls: str = "") -> None:
        extra = f' class="{cls}"' if cls else ""
        self.parts.append(f'<ellipse cx="{cx:.1f}" cy="{cy:.1f}" rx="{rx:.1f}" ry="{ry:.1f}" fill="{fill}" '
                          f'stroke="{stroke}" stroke-width="1.2"{extra}/>')

    def line(self, x1: float, y1: float, x2: float, y2: float, *, color: str = COLORS["line"],
             width: float = 1.2, arrow: bool = False, dash: bool = False) -> None:
        extra = f' marker-end="url(#{self.marker(color)})"' if arrow else ""
        extra += ' stroke-dasharray="4 3"' if dash else ""
        self.parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}" '
                          f'stroke-width="{width}"{extra}/>')

    def path(self, d: str, *, color: str = COLORS["line"], width: float = 1.2, arrow: bool = True,
             dash: bool = False) -> None:
        extra = f' marker-end="url(#{self.marker(color)})"' if arrow else ""
        extra += ' stroke-dasharray="4 3"' if dash else ""
        self.parts.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="{width}"{extra}/>')

    def text(self, x: float, y: float, text: str, *, size: float = 12, anchor: str = "middle",
             weight: str = "normal", color: str = COLORS["text"], mono: bool = False, italic: bool = False) -> None:
        """``text`` centred (or anchored) at ``x`` with its baseline placed so ``y`` is its middle."""
        style = ' font-style="italic"' if italic else ""
        family = MONO if mono else FONT
        body = _markup(text)
        self.parts.append(f'<text x="{x:.1f}" y="{y + size * 0.35:.1f}" font-family="{family}" font-size="{size}" '
                          f'text-anchor="{anchor}" font-weight="{weight}" fill="{color}"{style}>{body}</text>')

    def marker(self, color: str) -> str:
        return "arrow-" + color.lstrip("#")

    def svg(self, *, element_id: Optional[str] = None) -> str:
        colors = sorted({m for m in re.findall(r"url\(#arrow-([0-9a-fA-F]+)\)", "".join(self.parts))})
        defs = "".join(
            f'<marker id="arrow-{c}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="9" markerHeight="9" '
            f'markerUnits="userSpaceOnUse" '
            f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#{c}"/></marker>' for c in colors)
        ident = f' id="{element_id}"' if element_id else ""
        title = f"<title>{escape(self.title)}</title>" if self.title else ""
        w, h = int(self.width + 0.999), int(self.height + 0.999)
        return (f'<svg xmlns="http://www.w3.org/2000/svg"{ident} width="{w}" height="{h}" '
                f'viewBox="0 0 {w} {h}" role="img">{title}<defs>{defs}</defs>'
                f'<rect width="100%" height="100%" fill="#ffffff"/>' + "\n".join(self.parts) + "</svg>\n")


def _markup(text: str) -> str:
    """Escape ``text``; ``a_{b}`` becomes ``a`` with a subscript ``b``."""
    out = []
    pos = 0
    for m in _SUB.finditer(text):
        out.append(escape(text[pos:m.start()]))
        out.append(f'<tspan baseline-shift="sub" font-size="75%">{escape(m.group(1))}</tspan>')
        pos = m.end()
    out.append(escape(text[pos:]))
    return "".join(out)
