"""Layers: a cell applied across time, stacked, in both directions; torch.nn drop-ins."""

from .bidirectional import Bidirectional, BidirectionalState
from .recurrent import Recurrent, reversed_copy
from .stack import Stack
from .torch_compat import GRU, LSTM, RNN

__all__ = ["Bidirectional", "BidirectionalState", "GRU", "LSTM", "RNN", "Recurrent", "Stack", "reversed_copy"]
