"""Where the cells are: ``explain(model, example_input)`` for any model, with tables and diagrams.

Reading a model: :mod:`.explain` (one forward with hooks, then a walk of the module tree),
:mod:`.mappers` and :mod:`.rnn_rows` (module → rows), :mod:`.context` (what the walk shares),
:mod:`.trace_graph` (a cell's traced step as a graph). The result is plain data:
:mod:`.records` (:class:`Anatomy`, :class:`Layer`, ...) and :mod:`.kinds` (:class:`LayerKind`,
the table of known cells). Drawing it: :mod:`.render` (text, SVG diagrams, the HTML page).
"""

from .explain import explain
from .kinds import LayerKind
from .records import Anatomy, Gate, Layer, WeightRows

__all__ = ["Anatomy", "Gate", "Layer", "LayerKind", "WeightRows", "explain"]
