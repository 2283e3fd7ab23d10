"""Where the cells are: counts in the three senses of "cell"."""

from .census import LayerCensus, census, describe_census

__all__ = ["LayerCensus", "census", "describe_census"]
