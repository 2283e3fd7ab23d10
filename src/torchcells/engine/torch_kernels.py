"""torch's own fused kernels, for the built-in cells only.

``ElmanCell``, ``LSTMCell`` and ``GRUCell`` have torch.nn's parameters, so one layer of
them can run on the kernel behind nn.RNN/nn.LSTM/nn.GRU (oneDNN on CPU, cuDNN on
CUDA). This path is an engine choice like the others: same contract as
:func:`.unroll.unroll`, tested equal to it. It is used where it applies (exactly
these classes, no every-step states, no zero-length sequence) and the cells also
run on the generic paths.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, _VF
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..cells import ElmanCell, GRUCell, LSTMCell, LSTMState
from .lengths import reverse_padded

__all__ = ["has_torch_kernel", "run_torch_kernel"]


def has_torch_kernel(cell: Any, x: Tensor, lengths: Optional[Tensor], all_states: bool) -> bool:
    """Whether :func:`run_torch_kernel` can run this call."""
    if type(cell) not in (ElmanCell, LSTMCell, GRUCell) or all_states or x.dim() != 3:
        return False
    if not getattr(cell, "torch_form", True):  # peepholes, a coupled gate, GRU's reset-before form
        return False
    if lengths is not None and int(lengths.min()) == 0:
        return False  # packed sequences cannot hold an empty sequence
    return True


def run_torch_kernel(cell: Any, x: Tensor, state: Any, *, lengths: Optional[Tensor] = None,
                     reverse: bool = False, all_states: bool = False) -> tuple[Tensor, Any, Optional[Any]]:
    """One layer of ``cell`` over time-major ``x`` on torch's fused kernel."""
    if all_states:
        raise ValueError("torch's kernels do not return every step's state")
    weights = [cell.weight_ih, cell.weight_hh]
    if cell.bias:
        weights += [cell.bias_ih, cell.bias_hh]
    if isinstance(cell, LSTMCell) and cell.weight_hr is not None:
        weights.append(cell.weight_hr)
    kernel: Any
    if isinstance(cell, LSTMCell):
        kernel = _VF.lstm
        hx: Any = (state.h.unsqueeze(0), state.c.unsqueeze(0))
    elif isinstance(cell, GRUCell):
        kernel, hx = _VF.gru, state.unsqueeze(0)
    else:
        kernel = _VF.rnn_tanh if cell.nonlinearity == "tanh" else _VF.rnn_relu
        hx = state.unsqueeze(0)
    if reverse:
        x = reverse_padded(x, lengths)
    if lengths is None:
        result: tuple[Tensor, ...] = tuple(kernel(x, hx, weights, cell.bias, 1, 0.0, cell.training, False, False))
        outputs = result[0]
    else:
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        order, unorder = packed.sorted_indices, packed.unsorted_indices
        assert order is not None and unorder is not None  # enforce_sorted=False always sets them
        hx = tuple(h.index_select(1, order) for h in hx) if isinstance(hx, tuple) else hx.index_select(1, order)
        result = tuple(kernel(packed.data, packed.batch_sizes, hx, weights, cell.bias, 1, 0.0, cell.training, False))
        out_packed = packed._replace(data=result[0])
        outputs, _ = pad_packed_sequence(out_packed, total_length=x.shape[0])
        result = (result[0],) + tuple(h.index_select(1, unorder) for h in result[1:])
    if reverse:
        outputs = reverse_padded(outputs, lengths)
    if isinstance(cell, LSTMCell):
        final: Any = LSTMState(result[1][0], result[2][0])
    else:
        final = result[1][0]
    return outputs, final, None
