"""The cell zoo: one family per file."""

from .elman import ElmanCell
from .gru import GRUCell
from .lstm import LSTMCell, LSTMState
from .minimal import MinGRUCell, MinLSTMCell

__all__ = ["ElmanCell", "GRUCell", "LSTMCell", "LSTMState", "MinGRUCell", "MinLSTMCell"]
