"""Drop-in ``LSTM``, ``GRU`` and ``RNN``: torch.nn's signatures, built from cells.

Each is a :class:`Stack` of :class:`Recurrent` layers (wrapped in
:class:`Bidirectional` when ``bidirectional=True``) over ``LSTMCell``, ``GRUCell`` or
``ElmanCell``. Only this module speaks torch.nn's flat conventions:

* states ``h_0``/``h_n`` (and ``c_0``/``c_n``) of shape ``(num_layers·D, B, H_out)``,
  entry ``l·D + d`` for layer ``l``, direction ``d`` (0 forward, 1 backward);
* state-dict keys ``weight_ih_l{l}``, ``weight_hh_l{l}``, ``bias_ih_l{l}``, ``bias_hh_l{l}``
  (``weight_hr_l{l}`` with ``proj_size``), with the suffix ``_reverse`` for the backward
  direction. ``state_dict()`` writes these keys, ``load_state_dict`` reads them,
  ``lstm.weight_ih_l0`` is the parameter of layer 0's forward cell, and
  ``lstm.torch_parameter_names()`` maps each of these names, in torch.nn's order, to the
  parameter's path inside the drop-in (``stack.layers.0.cell.weight_ih``).

Departures from torch.nn, all additions: ``forward`` also takes ``lengths=`` for padded
input (outputs are zero past each length, as after ``pad_packed_sequence``); a
zero-step input returns empty outputs and the initial state where torch.nn raises.
``GRU`` on a CPU runs the fused engine (faster than torch's kernel); a backward with
``create_graph=True`` (a gradient penalty) recomputes the sequence under autograd there,
so second-order gradients equal nn.GRU's. ``LSTM`` and ``RNN`` run torch's kernel.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..cell import Cell, autocast_casts, check_input
from ..engine import check_lengths
from ..cells import ElmanCell, GRUCell, LSTMCell, LSTMState
from .bidirectional import Bidirectional, BidirectionalState
from .recurrent import Recurrent
from .stack import Stack

__all__ = ["LSTM", "GRU", "RNN"]


class _TorchStyleRNN(nn.Module):
    """Shared machinery of the three drop-ins (not public)."""

    mode: str = ""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None) -> None:
        super().__init__()
        name = type(self).__name__
        _check_sizes(name, input_size, hidden_size, num_layers)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ValueError(f"{name}: dropout should be a number in [0, 1], got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"{name}: dropout={dropout} acts between layers and num_layers=1, so it does nothing",
                          stacklevel=2)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.proj_size = proj_size
        directions = 2 if bidirectional else 1
        out_size = proj_size or hidden_size
        layers = []
        for layer in range(num_layers):
            cell = self._make_cell(input_size if layer == 0 else out_size * directions,
                                   device=device, dtype=dtype)
            rec = Recurrent(cell)
            layers.append(Bidirectional(rec) if bidirectional else rec)
        self.stack = Stack(layers, dropout=dropout)
        # torch name -> (internal name, parameter owner path), in torch's order.
        self._torch_names: dict[str, str] = {}
        for layer in range(num_layers):
            for d in range(directions):
                path = f"stack.layers.{layer}" + ((".forward_layer", ".backward_layer")[d] if bidirectional else "")
                for pname, _ in self._cell_at(layer, d).named_parameters(recurse=False):
                    torch_name = f"{pname}_l{layer}{'_reverse' if d else ''}"
                    self._torch_names[torch_name] = f"{path}.cell.{pname}"
        self._internal_names = {v: k for k, v in self._torch_names.items()}
        self.register_state_dict_post_hook(_save_torch_names)
        self.register_load_state_dict_pre_hook(_load_torch_names)
        self.register_load_state_dict_post_hook(_report_torch_names)

    # -- construction --------------------------------------------------------------
    def _make_cell(self, input_size: int, *, device, dtype) -> Cell:  # pragma: no cover
        raise NotImplementedError

    def _cell_at(self, layer: int, direction: int) -> Any:
        block: Any = self.stack.layers[layer]
        if isinstance(block, Bidirectional):
            block = (block.forward_layer, block.backward_layer)[direction]
        return block.cell

    # -- torch.nn's attribute surface ----------------------------------------------
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            names = self.__dict__.get("_torch_names")
            if names and name in names:
                return self.get_parameter(names[name])
            raise

    @property
    def _flat_weights_names(self) -> list[str]:
        return list(self._torch_names)

    @property
    def _flat_weights(self) -> list[Tensor]:
        return [getattr(self, n) for n in self._torch_names]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """Parameters per layer and direction, in torch.nn's order."""
        directions = 2 if self.bidirectional else 1
        return [list(self._cell_at(l, d).parameters(recurse=False))
                for l in range(self.num_layers) for d in range(directions)]

    def torch_parameter_names(self) -> dict[str, str]:
        """torch.nn's parameter names, in torch.nn's order, each mapped to where the parameter lives here.

        The keys are the names ``state_dict()`` writes and ``torch.nn.LSTM`` uses (``weight_ih_l0``,
        ``bias_hh_l1_reverse``, ``weight_hr_l0``, ...), in the order of torch.nn's
        ``_flat_weights_names``; each value is the parameter's path inside this module, for
        ``get_parameter``: ``LSTM(10, 20).torch_parameter_names()["weight_ih_l0"]`` is
        ``"stack.layers.0.cell.weight_ih"``. A new dict each call.
        """
        return dict(self._torch_names)

    def flatten_parameters(self) -> None:
        """No-op, for code written for cuDNN's nn.LSTM."""

    def short_name(self) -> str:
        return f"{type(self).__name__}({self.input_size}, {self.hidden_size})"

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for key, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, key) != default:
                s += f", {key}={getattr(self, key)}"
        return s

    # -- forward ---------------------------------------------------------------------
    def forward(self, input, hx=None, *, lengths=None):
        owner = self.short_name()
        packed = isinstance(input, PackedSequence)
        if packed:
            if lengths is not None:
                raise ValueError(f"{owner}: lengths is given by the PackedSequence; do not pass it too")
            x, lengths = pad_packed_sequence(input)
            batched = True
        else:
            check_input(owner, input, ranks=(3, 2), features=None,
                        layout=" (T, B, I), (B, T, I) with batch_first, or (T, I) unbatched")
            batched = input.dim() == 3
            x = input if not batched else (input.transpose(0, 1) if self.batch_first else input)
            if not batched:
                x = x.unsqueeze(1)
                if lengths is not None:
                    raise ValueError(f"{owner}: lengths is for batched input; an unbatched input is one sequence")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{owner}: input has {x.shape[-1]} features per step, expected {self.input_size}")
        weight = self._cell_at(0, 0).weight_ih
        if x.dtype != weight.dtype:
            raise TypeError(f"{owner}: input has dtype {x.dtype} but the weights are {weight.dtype}; "
                            f"convert one of them (input.to({weight.dtype}) or module.to({x.dtype}))")
        if not packed:
            lengths = check_lengths(owner, lengths, x.shape[0], x.shape[1])
        state = None if hx is None else self._unflatten_hx(owner, hx, x, batched)
        out, finals = self.stack(x, state, lengths=lengths)
        hn = self._flatten_state(finals)
        if packed:
            sorted_idx = input.sorted_indices
            ordered = out if sorted_idx is None else out.index_select(1, sorted_idx)
            lens = lengths if sorted_idx is None else lengths.index_select(0, sorted_idx.cpu())
            repacked = pack_padded_sequence(ordered, lens, enforce_sorted=True)
            out = PackedSequence(repacked.data, repacked.batch_sizes, input.sorted_indices, input.unsorted_indices)
        elif not batched:
            out = out.squeeze(1)
            hn = tuple(h.squeeze(1) for h in hn)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, (hn if self.mode == "LSTM" else hn[0])

    def _state_names(self) -> tuple[str, ...]:
        return ("h_0",)

    def _state_sizes(self) -> tuple[int, ...]:
        return (self.hidden_size,)

    def _unflatten_hx(self, owner: str, hx, x: Tensor, batched: bool):
        names, sizes = self._state_names(), self._state_sizes()
        parts = (hx,) if len(names) == 1 else hx
        if len(names) == 1 and not isinstance(hx, Tensor):
            raise TypeError(f"{owner}: hx should be a tensor h_0, got {type(hx).__name__}")
        if len(names) > 1 and (not isinstance(hx, (tuple, list)) or len(hx) != len(names)):
            raise TypeError(f"{owner}: hx should be a tuple ({', '.join(names)}), got {type(hx).__name__}")
        directions = 2 if self.bidirectional else 1
        flat = []
        for name, size, h in zip(names, sizes, parts):
            if not isinstance(h, Tensor):
                raise TypeError(f"{owner}: {name} should be a tensor, got {type(h).__name__}")
            want = (self.num_layers * directions, x.shape[1], size) if batched else (self.num_layers * directions, size)
            if tuple(h.shape) != want:
                what = "(num_layers·num_directions, batch, size)" if batched else "(num_layers·num_directions, size) for unbatched input"
                raise ValueError(f"{owner}: {name} should have shape {want} = {what}, got {tuple(h.shape)}")
            if h.dtype != x.dtype and not autocast_casts(x, h):
                raise TypeError(f"{owner}: {name} has dtype {h.dtype}, expected {x.dtype} like the input")
            if h.device != x.device:
                raise ValueError(f"{owner}: {name} is on {h.device}, expected {x.device} like the input")
            flat.append(h if batched else h.unsqueeze(1))
        layers = []
        for layer in range(self.num_layers):
            per_dir = [self._cell_state([f[layer * directions + d] for f in flat]) for d in range(directions)]
            layers.append(BidirectionalState(*per_dir) if self.bidirectional else per_dir[0])
        return tuple(layers)

    def _cell_state(self, tensors: list[Tensor]):
        return tensors[0]

    def _flatten_state(self, finals: tuple) -> tuple[Tensor, ...]:
        per_entry: list[Any] = []
        for final in finals:
            per_entry.extend(final if self.bidirectional else (final,))
        leaves = [s if isinstance(s, tuple) else (s,) for s in per_entry]
        return tuple(torch.stack([entry[k] for entry in leaves]) for k in range(len(leaves[0])))


def _check_sizes(name: str, input_size, hidden_size, num_layers) -> None:
    for arg, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}: {arg} should be a positive int, got {value!r}")


def _save_torch_names(module: _TorchStyleRNN, state_dict, prefix: str, local_metadata) -> None:
    """state_dict post-hook: internal keys -> torch.nn's flat keys, in torch's order."""
    internal = module._internal_names
    moved = {}
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        if rest in internal:
            moved[prefix + internal[rest]] = state_dict.pop(key)
    for torch_name in module._torch_names:
        if prefix + torch_name in moved:
            state_dict[prefix + torch_name] = moved[prefix + torch_name]


def _load_torch_names(module: _TorchStyleRNN, state_dict, prefix: str, local_metadata, strict,
                      missing_keys, unexpected_keys, error_msgs) -> None:
    """load_state_dict pre-hook: torch.nn's flat keys -> internal keys.

    A size mismatch is reported here, by the torch name, and the entry replaced by
    the current value so the inner cell does not report it again by its inner name.
    """
    for torch_name, internal in module._torch_names.items():
        key = prefix + torch_name
        if key not in state_dict:
            continue
        value = state_dict.pop(key)
        current = module.get_parameter(internal)
        if isinstance(value, Tensor) and value.shape != current.shape:
            error_msgs.append(f"size mismatch for {key}: copying a param with shape {value.shape} from checkpoint, "
                              f"the shape in current model is {current.shape}.")
            value = current.detach()
        state_dict[prefix + internal] = value


def _report_torch_names(module: _TorchStyleRNN, incompatible) -> None:
    """load_state_dict post-hook: report missing keys by their torch.nn names."""
    internal = module._internal_names
    for i, key in enumerate(incompatible.missing_keys):
        for inner, torch_name in internal.items():
            if key.endswith(inner) and (len(key) == len(inner) or key[-len(inner) - 1] == "."):
                incompatible.missing_keys[i] = key[: len(key) - len(inner)] + torch_name
                break


class LSTM(_TorchStyleRNN):
    """torch.nn.LSTM's interface over a stack of ``Recurrent(LSTMCell)`` layers.

    ``LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None)``;
    ``forward(input, (h_0, c_0)=None) -> (output, (h_n, c_n))`` with torch.nn's shapes,
    PackedSequence in and out, unbatched ``(T, I)`` input. See the module docstring
    for the layout of states and state-dict keys.

    Example::

        >>> ours, theirs = LSTM(10, 20, num_layers=2), torch.nn.LSTM(10, 20, num_layers=2)
        >>> ours.load_state_dict(theirs.state_dict())
        <All keys matched successfully>
    """

    mode = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None) -> None:
        _check_sizes("LSTM", input_size, hidden_size, num_layers)
        if isinstance(proj_size, bool) or not isinstance(proj_size, int) or proj_size < 0:
            raise ValueError(f"LSTM: proj_size should be a positive int or zero to disable projections, "
                             f"got {proj_size!r}")
        if proj_size >= hidden_size:
            raise ValueError(f"LSTM: proj_size should be smaller than hidden_size ({hidden_size}), got {proj_size}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device=device, dtype=dtype)

    def _make_cell(self, input_size, *, device, dtype):
        return LSTMCell(input_size, self.hidden_size, bias=self.bias, proj_size=self.proj_size,
                        device=device, dtype=dtype)

    def _state_names(self):
        return ("h_0", "c_0")

    def _state_sizes(self):
        return (self.proj_size or self.hidden_size, self.hidden_size)

    def _cell_state(self, tensors):
        return LSTMState(*tensors)


class GRU(_TorchStyleRNN):
    """torch.nn.GRU's interface over a stack of ``Recurrent(GRUCell)`` layers.

    ``GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, device=None, dtype=None)``;
    ``forward(input, h_0=None) -> (output, h_n)``.
    """

    mode = "GRU"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device=device, dtype=dtype)

    def _make_cell(self, input_size, *, device, dtype):
        return GRUCell(input_size, self.hidden_size, bias=self.bias, device=device, dtype=dtype)


class RNN(_TorchStyleRNN):
    """torch.nn.RNN's interface over a stack of ``Recurrent(ElmanCell)`` layers.

    ``RNN(input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None)``;
    ``forward(input, h_0=None) -> (output, h_n)``.
    """

    mode = "RNN"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device=None, dtype=None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity should be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device=device, dtype=dtype)

    def _make_cell(self, input_size, *, device, dtype):
        return ElmanCell(input_size, self.hidden_size, bias=self.bias, nonlinearity=self.nonlinearity,
                         device=device, dtype=dtype)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.nonlinearity == "tanh" else s + f", nonlinearity={self.nonlinearity!r}"
