"""What an :class:`~torchcells.anatomy.Anatomy` looks like: free functions over its records.

* :mod:`.text` -- the terminal table, the account in words, and the shared formatters;
* :mod:`.svg` -- the canvas every diagram draws on (hand-written SVG, no fonts needed);
* :mod:`.cell_diagram` -- a cell's inside, from its traced step;
* :mod:`.unrolled` -- the recurrent layers over time;
* :mod:`.model_diagram` -- input → layers → output, and one neuron or kernel;
* :mod:`.diagrams` -- the three diagrams by name;
* :mod:`.html` -- one self-contained page of all of it.

This module writes them to files (whole or not at all, :func:`torchcells.files.write_atomic`).
``Anatomy.to_text()``, ``to_svg()``, ``save_html()``, ... call these functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Union

from ...files import write_atomic
from .diagrams import SVG_KINDS, svg_kinds, to_svg
from .html import anatomy_html
from .text import account, anatomy_text

if TYPE_CHECKING:
    from ..records import Anatomy

__all__ = ["SVG_KINDS", "account", "anatomy_html", "anatomy_text", "save_html", "save_svg", "svg_kinds", "to_svg"]


def save_svg(anatomy: Anatomy, directory: Union[str, Path]) -> list[Path]:
    """Write ``cell.svg``, ``unrolled.svg`` and ``model.svg`` (those in :func:`svg_kinds`) into
    ``directory``; return the paths."""
    folder = Path(directory)
    return [write_atomic(folder / f"{kind}.svg", to_svg(anatomy, kind)) for kind in svg_kinds(anatomy)]


def save_html(anatomy: Anatomy, path: Union[str, Path]) -> Path:
    """Write the page of ``anatomy`` (:func:`anatomy_html`) to ``path``; return the path."""
    return write_atomic(Path(path), anatomy_html(anatomy))
