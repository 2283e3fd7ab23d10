"""The cell zoo: one family per file."""

from .elman import ElmanCell
from .gru import GRUCell
from .lstm import LSTMCell, LSTMState
from .minimal import MinGRUCell, MinLSTMCell
from .candidate import CandidateDropout
from .compose import Residual, StackedCell
from .conv import ConvGRUCell, ConvLSTMCell
from .dropout import MaskedState, RecurrentDropout, VariationalDropout, WeightDrop
from .feedforward import Neuron, NoisyInput
from .gaussian import GaussianCell
from .indrnn import IndRNNCell
from .kernel import KernelCell, PoolCell
from .layernorm import LayerNormGRUCell, LayerNormLSTMCell
from .mgu import MGUCell
from .slstm import SLSTMCell, SLSTMState
from .spiking import LIFCell
from .zoneout import Zoneout

__all__ = ["ElmanCell", "GRUCell", "LSTMCell", "LSTMState", "MinGRUCell", "MinLSTMCell"]
__all__ += ["CandidateDropout", "ConvGRUCell", "ConvLSTMCell", "GaussianCell", "IndRNNCell", "KernelCell", "LIFCell",
            "LayerNormGRUCell", "LayerNormLSTMCell", "MGUCell", "MaskedState", "Neuron", "NoisyInput", "PoolCell",
            "RecurrentDropout", "Residual", "SLSTMCell", "SLSTMState", "StackedCell", "VariationalDropout",
            "WeightDrop", "Zoneout"]
