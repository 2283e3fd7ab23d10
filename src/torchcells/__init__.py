"""torchcells: write a cell, get a layer.

A *cell* is one step function ``(x_t, state) -> (y_t, state)``; a *layer* applies
it across time. See ``ARCHITECTURE`` in the README for the three senses of "cell".
"""

from .cell import Cell, PairState, State, map_state
from .cells import ElmanCell, GRUCell, LSTMCell, LSTMState, MinGRUCell, MinLSTMCell
from .engine import unroll
from .cells import (ConvGRUCell, ConvLSTMCell, GaussianCell, IndRNNCell, KernelCell, LayerNormGRUCell,
                    LayerNormLSTMCell, LIFCell, MaskedState, MGUCell, Neuron, NoisyInput, PoolCell, RecurrentDropout,
                    Residual, SLSTMCell, SLSTMState, StackedCell, VariationalDropout, WeightDrop, Zoneout)
from .layers import GRU, LSTM, RNN, Bidirectional, BidirectionalState, Recurrent, Stack

__version__ = "0.1.0"

__all__ = [
    "Bidirectional", "BidirectionalState", "Cell", "ElmanCell", "GRU", "GRUCell", "LSTM", "LSTMCell",
    "LSTMState", "MinGRUCell", "MinLSTMCell", "PairState", "RNN", "Recurrent", "Stack", "State", "map_state", "unroll", "__version__",
]
__all__ += [
    "ConvGRUCell", "ConvLSTMCell", "GaussianCell", "IndRNNCell", "KernelCell", "LIFCell", "LayerNormGRUCell",
    "LayerNormLSTMCell", "MGUCell", "MaskedState", "Neuron", "NoisyInput", "PoolCell", "RecurrentDropout", "Residual",
    "SLSTMCell", "SLSTMState", "StackedCell", "VariationalDropout", "WeightDrop", "Zoneout",
]
