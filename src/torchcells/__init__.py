"""torchcells: write a cell, get a layer.

A *cell* is one step function ``(x_t, state) -> (y_t, state)``; a *layer* applies
it across time. The README's "three senses" section says what "cell" means; docs/architecture.md
how the package is built.
"""

from .anatomy import Anatomy, explain
from .cell import Cell, PairState, State, map_state
from .cells import (CandidateDropout, ConvGRUCell, ConvLSTMCell, ElmanCell, GaussianCell, GRUCell, IndRNNCell, KernelCell,
                    LayerNormGRUCell, LayerNormLSTMCell, LIFCell, LSTMCell, LSTMState, MaskedState, MGUCell,
                    MinGRUCell, MinLSTMCell, Neuron, NoisyInput, PoolCell, RecurrentDropout, Residual, SLSTMCell,
                    SLSTMState, StackedCell, VariationalDropout, WeightDrop, Zoneout)
from .engine import unroll
from .export import export_onnx
from .layers import GRU, LSTM, RNN, Bidirectional, BidirectionalState, Recurrent, Stack

__version__ = "0.1.0"

__all__ = [
    "Anatomy", "Bidirectional", "BidirectionalState", "CandidateDropout", "Cell", "ConvGRUCell", "ConvLSTMCell", "ElmanCell", "GRU",
    "GRUCell", "GaussianCell", "IndRNNCell", "KernelCell", "LIFCell", "LSTM", "LSTMCell", "LSTMState",
    "LayerNormGRUCell", "LayerNormLSTMCell", "MGUCell", "MaskedState", "MinGRUCell", "MinLSTMCell", "Neuron",
    "NoisyInput", "PairState", "PoolCell", "RNN", "Recurrent", "RecurrentDropout", "Residual", "SLSTMCell",
    "SLSTMState", "Stack", "StackedCell", "State", "VariationalDropout", "WeightDrop", "Zoneout", "explain",
    "export_onnx", "map_state", "unroll", "__version__",
]
