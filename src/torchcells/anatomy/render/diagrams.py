"""The three diagrams by name: ``"cell"`` (:mod:`.cell_diagram`), ``"unrolled"`` (:mod:`.unrolled`)
and ``"model"`` (:mod:`.model_diagram`), and which of them a model has."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .cell_diagram import cell_svg
from .model_diagram import model_svg
from .unrolled import unrolled_svg

if TYPE_CHECKING:
    from ..records import Anatomy

__all__ = ["SVG_KINDS", "svg_kinds", "to_svg"]

SVG_KINDS = ("cell", "unrolled", "model")


def svg_kinds(anatomy: Anatomy) -> list[str]:
    """The diagrams ``anatomy`` has: ``"unrolled"`` only with a recurrent layer, ``"cell"`` only with
    a recurrent, dense or convolution layer; ``"model"`` always."""
    has = {"model": True, "unrolled": any(la.kind.in_time for la in anatomy.layers),
           "cell": any(la.kind.learned for la in anatomy.layers)}
    return [k for k in SVG_KINDS if has[k]]


def to_svg(anatomy: Anatomy, kind: str, *, layer: Optional[str] = None) -> str:
    """The standalone SVG of one diagram of ``anatomy`` (``layer``: the layer whose cell ``"cell"`` draws)."""
    if kind not in SVG_KINDS:
        raise ValueError(f"Anatomy.to_svg: kind should be one of {', '.join(map(repr, SVG_KINDS))}, got {kind!r}")
    if kind == "cell":
        return cell_svg(anatomy, layer)
    return unrolled_svg(anatomy) if kind == "unrolled" else model_svg(anatomy)
