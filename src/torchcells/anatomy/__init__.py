"""Where the cells are: ``explain(model, example_input)`` for any model, with tables and diagrams."""

from .census import LayerCensus, census, describe_census
from .explain import explain
from .records import Anatomy, Gate, Layer, WeightRows

__all__ = ["Anatomy", "Gate", "Layer", "LayerCensus", "WeightRows", "census", "describe_census", "explain"]
