"""Drop-in ``LSTM``, ``GRU`` and ``RNN``: torch.nn's signatures, built from cells.

Each is a :class:`Stack` of :class:`Recurrent` layers (wrapped in
:class:`Bidirectional` when ``bidirectional=True``) over ``LSTMCell``, ``GRUCell`` or
``ElmanCell``. Only this module speaks torch.nn's flat conventions:

* states ``h_0``/``h_n`` (and ``c_0``/``c_n``) of shape ``(num_layers·D, B, H_out)``,
  entry ``l·D + d`` for layer ``l``, direction ``d`` (0 forward, 1 backward);
* parameter names ``weight_ih_l{l}``, ``weight_hh_l{l}``, ``bias_ih_l{l}``, ``bias_hh_l{l}``
  (``weight_hr_l{l}`` with ``proj_size``), with the suffix ``_reverse`` for the backward
  direction, in torch.nn's order (``_flat_weights_names``). The drop-in registers each
  cell's Parameter under that name, so ``named_parameters()``, ``parameters()``,
  ``state_dict()``, ``load_state_dict``, ``get_parameter``, ``lstm.weight_hh_l0 = ...`` and
  ``del`` are torch.nn's, and so is everything that works by name: ``prune``,
  ``weight_norm`` (old and ``parametrizations``), ``parametrizations.orthogonal``, init
  loops over ``named_parameters()``, optimizer groups by name, ``torch.func.functional_call``.
  A pruned or parametrized weight is computed once per forward and the cells run with it
  (on every engine path; gradients reach what it is computed from).
  ``lstm.torch_parameter_names()`` maps each name to the same parameter's path inside
  (``stack.layers.0.cell.weight_ih``), where the cells hold it while it is a plain Parameter.

``torch.jit.script`` raises an error naming what works instead: ``torch.export``, ONNX
(through torch.export) and ``torch.jit.trace``, which records torch's kernel.

Departures from torch.nn, all additions: ``forward`` also takes ``lengths=`` for padded
input (outputs are zero past each length, as after ``pad_packed_sequence``); a
zero-step input returns empty outputs and the initial state where torch.nn raises.
``GRU`` on a CPU runs the fused engine (faster than torch's kernel); a backward with
``create_graph=True`` (a gradient penalty) recomputes the sequence under autograd there,
so second-order gradients equal nn.GRU's. ``LSTM`` and ``RNN`` run torch's kernel.

Where the configuration is torch.nn's own (cells in torch's form, the composed layers as built,
no hook on an inner module, no dropout to apply) and it is the faster, a call skips the
composed layers and runs as nn.LSTM runs -- one call of torch's multi-layer kernel on the flat
weights and states, results equal to nn.LSTM's bit for bit (:mod:`.direct_kernel`): every call
of an ``LSTM`` or ``RNN`` (but an LSTM's short call without gradients on large weights, where the
reference loop is faster), a ``GRU``'s short calls without gradients on a CPU. Under
``torch.jit.trace``, ``torch.compile``, ``torch.export``, ``torch.func`` and autocast the
composed layers run.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..cell import Cell, autocast_casts, check_input
from ..engine import check_lengths
from ..cells import ElmanCell, GRUCell, LSTMCell, LSTMState
from .bidirectional import Bidirectional, BidirectionalState
from .direct_kernel import plain_kind, prefers_direct, run_direct, run_direct_packed
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
        # (torch name, cell, the cell's name for it, shape) in torch.nn's order; the drop-in registers
        # each cell's Parameter under the torch name, so the two names hold one object.
        ties: list[tuple[str, nn.Module, str, tuple[int, ...]]] = []
        self._torch_names: dict[str, str] = {}
        for layer in range(num_layers):
            for d in range(directions):
                path = f"stack.layers.{layer}" + ((".forward_layer", ".backward_layer")[d] if bidirectional else "")
                cell = self._cell_at(layer, d)
                cell.register_load_state_dict_pre_hook(_load_tied)
                for pname, p in cell.named_parameters(recurse=False):
                    torch_name = f"{pname}_l{layer}{'_reverse' if d else ''}"
                    self._torch_names[torch_name] = f"{path}.cell.{pname}"
                    ties.append((torch_name, cell, pname, tuple(p.shape)))
        self._ties = tuple(ties)
        self._tied_cells = tuple(dict.fromkeys(t[1] for t in ties))  # one per layer and direction, in order
        self._tie_of = {t[0]: t for t in ties}
        for torch_name, tied, pname, _ in ties:
            nn.Module.register_parameter(self, torch_name, tied._parameters[pname])
        self.register_state_dict_post_hook(_drop_cell_keys)

    # -- construction --------------------------------------------------------------
    def _make_cell(self, input_size: int, *, device, dtype) -> Cell:  # pragma: no cover
        raise NotImplementedError

    def _cell_at(self, layer: int, direction: int) -> Any:
        block: Any = self.stack.layers[layer]
        if isinstance(block, Bidirectional):
            block = (block.forward_layer, block.backward_layer)[direction]
        return block.cell

    # -- torch.nn's parameter surface -----------------------------------------------
    # The drop-in registers every cell's Parameter under torch.nn's name, in torch.nn's order, so
    # named_parameters(), parameters(), state_dict(), get_parameter and every tool that works by
    # name (prune, weight_norm, parametrizations, init loops, parameter groups) see torch.nn's
    # module. The cell holds the same object while the drop-in's entry is a Parameter ("tied");
    # when a tool replaces the entry by something computed (a pruned or parametrized weight),
    # the cell's slot is emptied, so no stale Parameter stays visible from a parent model, and
    # each forward runs the cells with the drop-in's current tensors (see _resolved_stack).
    def register_parameter(self, name: str, param: Optional[nn.Parameter]) -> None:
        super().register_parameter(name, param)
        self._sync(name)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        self._sync(name)

    def __delattr__(self, name: str) -> None:
        super().__delattr__(name)
        self._sync(name)

    def _sync(self, name: str) -> None:
        """Tie the cell's slot for torch name ``name`` to the drop-in's entry if that is a Parameter of
        the cell's shape; else empty it (the forward then reads the entry, or says what is wrong with it)."""
        tie = self.__dict__.get("_tie_of", {}).get(name)
        if tie is not None:
            own = self._parameters.get(name)
            fits = isinstance(own, nn.Parameter) and tuple(own.shape) == tie[3]
            tie[1]._parameters[tie[2]] = own if fits else None

    def _apply(self, fn, recurse=True):
        """Convert each tied Parameter once (through the drop-in's entry), then tie the cells again:
        a conversion that makes new Parameter objects leaves the cells holding the new ones."""
        for _, cell, pname, _ in self._ties:
            cell._parameters[pname] = None
        try:
            return super()._apply(fn, recurse)
        finally:
            for name in self._tie_of:
                self._sync(name)

    @property
    def _flat_weights_names(self) -> list[str]:
        return list(self._torch_names)

    @property
    def _flat_weights(self) -> list[Optional[Tensor]]:
        return [getattr(self, n, None) for n in self._torch_names]

    @property
    def all_weights(self) -> list[list[Tensor]]:
        """The weights per layer and direction, in torch.nn's order (as ``getattr`` gives them)."""
        groups: list[list[Tensor]] = []
        last = None
        for name, cell, _, _ in self._ties:  # one cell per layer and direction, in torch's order
            if cell is not last:
                groups.append([])
                last = cell
            groups[-1].append(getattr(self, name))
        return groups

    def torch_parameter_names(self) -> dict[str, str]:
        """torch.nn's parameter names, in torch.nn's order, each mapped to where the parameter lives here.

        The keys are the names ``state_dict()`` writes and ``torch.nn.LSTM`` uses (``weight_ih_l0``,
        ``bias_hh_l1_reverse``, ``weight_hr_l0``, ...), in the order of torch.nn's
        ``_flat_weights_names``; each value is the parameter's path inside this module, for
        ``get_parameter``: ``LSTM(10, 20).torch_parameter_names()["weight_ih_l0"]`` is
        ``"stack.layers.0.cell.weight_ih"``. A new dict each call.
        """
        return dict(self._torch_names)

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` asks this first: refuse with the ways that work. Each call chooses its
        engine path in Python (registry, per-call checks, the native runtime), which TorchScript
        cannot compile; PyTorch 2's exporters trace the forward instead."""
        raise TypeError(f"{self.short_name()}: torch.jit.script cannot compile torchcells' drop-ins (each call "
                        f"chooses its engine path in Python). Use torch.export.export(module, (x,)) or "
                        f"torch.onnx.export(module, (x,), dynamo=True), or torch.jit.trace(module, x), which "
                        f"records torch's kernel (the layers' engine 'auto' or 'torch') for every length")

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
            x, batched = input.data.unsqueeze(1), True  # (N, 1, I): checked as steps of one sequence
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
        stack, weights = self._resolved_stack(owner)
        if x.dtype != weights[0].dtype:
            raise TypeError(f"{owner}: input has dtype {x.dtype} but the weights are {weights[0].dtype}; "
                            f"convert one of them (input.to({weights[0].dtype}) or module.to({x.dtype}))")
        kind = plain_kind(self, x)
        if packed:
            if kind is not None and prefers_direct(kind, x, int(input.batch_sizes.shape[0]), weights):
                return self._packed_direct(owner, kind, input, hx, weights)
            x, lengths = pad_packed_sequence(input)
        else:
            lengths = check_lengths(owner, lengths, x.shape[0], x.shape[1])
        flat = None if hx is None else self._checked_hx(owner, hx, x, batched)
        if (kind is not None and prefers_direct(kind, x, x.shape[0], weights) and x.shape[0] > 0 and x.shape[1] > 0
                and (lengths is None or int(lengths.min()) > 0)):
            out, hn = run_direct(kind, x, flat, weights, has_bias=self.bias, num_layers=self.num_layers,
                                 bidirectional=self.bidirectional, sizes=self._state_sizes(), lengths=lengths)
        else:
            out, finals = stack(x, None if flat is None else self._per_layer(flat), lengths=lengths)
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

    def _packed_direct(self, owner: str, kind: str, input: PackedSequence, hx, weights: list[Tensor]):
        """nn.LSTM's own call on a PackedSequence (:func:`~.direct_kernel.run_direct_packed`)."""
        batch = int(input.batch_sizes[0])
        like = input.data[:1].unsqueeze(0).expand(1, batch, -1)  # (1, B, I): what hx is checked against
        flat = None if hx is None else self._checked_hx(owner, hx, like, True)
        out, hn = run_direct_packed(kind, input, flat, weights, has_bias=self.bias, num_layers=self.num_layers,
                                    bidirectional=self.bidirectional, sizes=self._state_sizes())
        return out, (hn if self.mode == "LSTM" else hn[0])

    def _resolved_stack(self, owner: str) -> tuple[Stack, list[Tensor]]:
        """The stack to run and the weights it runs with, in torch.nn's flat order (``_flat_weights``).

        Where every torch name holds the cell's own Parameter, the live stack (the usual case:
        a few dictionary lookups per call). Where one holds something else -- a pruned or
        parametrized weight (``getattr`` computes it, once per forward, like torch.nn's
        ``_flat_weights``), a plain tensor set by hand, a tensor ``torch.func.functional_call``
        put in -- a per-call twin of the stack whose cells hold those tensors: the live modules
        are never swapped, so threads running the drop-in see only their own tensors, and
        gradients flow through the tensors to what they were computed from.
        """
        params = self._parameters
        given: Optional[dict[nn.Module, dict[str, Tensor]]] = None
        weights: list[Tensor] = []
        for name, cell, pname, shape in self._ties:
            tied = params.get(name)
            if tied is not None and tied is cell._parameters.get(pname):
                weights.append(tied)
                continue
            current = self._current(owner, name, shape)
            given = {} if given is None else given
            given.setdefault(cell, {})[pname] = current
            weights.append(current)
        return (self.stack if given is None else _twin(self.stack, given)), weights

    def _current(self, owner: str, name: str, shape: tuple[int, ...]) -> Tensor:
        try:
            value = getattr(self, name)
        except AttributeError as e:
            raise AttributeError(f"{owner}: {name} is missing (deleted?); set it again "
                                 f"(module.{name} = nn.Parameter(...)) with shape {shape}") from e
        if not isinstance(value, Tensor):
            raise TypeError(f"{owner}: {name} should be a tensor of shape {shape}, got {type(value).__name__}")
        if tuple(value.shape) != shape:
            raise ValueError(f"{owner}: {name} should have shape {shape}, got {tuple(value.shape)}")
        return value

    def _state_names(self) -> tuple[str, ...]:
        return ("h_0",)

    def _state_sizes(self) -> tuple[int, ...]:
        return (self.hidden_size,)

    def _checked_hx(self, owner: str, hx, x: Tensor, batched: bool) -> list[Tensor]:
        """``hx`` checked against time-major ``x`` ``(T, B, I)``: its tensors ``(L·D, B, ·)`` (a batch axis
        added to an unbatched call's)."""
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
        return flat

    def _per_layer(self, flat: list[Tensor]) -> tuple:
        """The checked flat states as the stack takes them: one state per layer (a pair per direction)."""
        directions = 2 if self.bidirectional else 1
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


def _twin(module: Any, given: dict[nn.Module, dict[str, Tensor]]) -> Any:
    """``module`` for one call with the tensors ``given`` (cell -> {parameter name: tensor}) in
    place of those cells' parameters: a shallow copy of each module on the way down to such a
    cell, the rest shared. Nothing of the live modules changes."""
    children = {name: _twin(child, given) for name, child in module._modules.items()}
    own = given.get(module)
    if own is None and all(children[n] is c for n, c in module._modules.items()):
        return module
    twin = object.__new__(type(module))
    twin.__dict__.update(module.__dict__)
    twin.__dict__["_modules"] = children
    if own is not None:
        twin.__dict__["_parameters"] = {**module._parameters, **own}
    return twin


def _drop_cell_keys(module: _TorchStyleRNN, state_dict, prefix: str, local_metadata) -> None:
    """state_dict post-hook: the cells' keys name the drop-in's own entries a second time; drop them."""
    for inner in module._torch_names.values():
        state_dict.pop(prefix + inner, None)


def _load_tied(cell: nn.Module, state_dict, prefix: str, local_metadata, strict, missing_keys, unexpected_keys,
               error_msgs) -> None:
    """load_state_dict pre-hook of a drop-in's cell: its parameters are the drop-in's, loaded
    just before under torch.nn's names; give the cell its own tensors back, so it loads nothing
    and reports nothing (run at the cell's turn, so it sees what an ``assign=True`` load put there)."""
    for name, p in cell._parameters.items():
        if p is not None:
            state_dict[prefix + name] = p


class LSTM(_TorchStyleRNN):
    """torch.nn.LSTM's interface over a stack of ``Recurrent(LSTMCell)`` layers.

    ``LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None)``;
    ``forward(input, (h_0, c_0)=None) -> (output, (h_n, c_n))`` with torch.nn's shapes,
    PackedSequence in and out, unbatched ``(T, I)`` input. See the module docstring
    for the layout of states and state-dict keys.

    Args:
        input_size: features of each step of the input.
        hidden_size: units per layer and direction.
        num_layers: recurrent layers, stacked.
        bias: with the biases ``bias_ih_l*`` and ``bias_hh_l*``.
        batch_first: input and output are ``(B, T, ...)``.
        dropout: dropout on each layer's outputs but the last, in training.
        bidirectional: each layer also reads the sequence backwards.
        proj_size: ``P > 0`` projects each layer's ``h`` to ``P`` features.
        device: where the parameters are made.
        dtype: the parameters' dtype.

    Returns:
        ``forward`` returns ``(output, (h_n, c_n))``, with torch.nn's shapes.

    Example::

        >>> ours, theirs = LSTM(10, 20, num_layers=2), torch.nn.LSTM(10, 20, num_layers=2)
        >>> ours.load_state_dict(theirs.state_dict())
        <All keys matched successfully>

    Its parameters have torch.nn's names, so tools that work by name act as on nn.LSTM::

        >>> [name for name, _ in ours.named_parameters()][:3]
        ['weight_ih_l0', 'weight_hh_l0', 'bias_ih_l0']
        >>> from torch.nn.utils import prune
        >>> _ = prune.l1_unstructured(ours, "weight_hh_l0", amount=0.3)
        >>> [name for name, _ in ours.named_parameters()][-1]
        'weight_hh_l0_orig'
        >>> int((ours.weight_hh_l0 == 0).sum())  # 30 % of 80·20: the forward runs with this tensor
        480
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

    Args:
        input_size: features of each step of the input.
        hidden_size: units per layer and direction.
        num_layers: recurrent layers, stacked.
        bias: with the biases ``bias_ih_l*`` and ``bias_hh_l*``.
        batch_first: input and output are ``(B, T, ...)``.
        dropout: dropout on each layer's outputs but the last, in training.
        bidirectional: each layer also reads the sequence backwards.
        device: where the parameters are made.
        dtype: the parameters' dtype.

    Returns:
        ``forward`` returns ``(output, h_n)``, with torch.nn's shapes.
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

    Args:
        input_size: features of each step of the input.
        hidden_size: units per layer and direction.
        num_layers: recurrent layers, stacked.
        nonlinearity: ``"tanh"`` or ``"relu"``.
        bias: with the biases ``bias_ih_l*`` and ``bias_hh_l*``.
        batch_first: input and output are ``(B, T, ...)``.
        dropout: dropout on each layer's outputs but the last, in training.
        bidirectional: each layer also reads the sequence backwards.
        device: where the parameters are made.
        dtype: the parameters' dtype.

    Returns:
        ``forward`` returns ``(output, h_n)``, with torch.nn's shapes.
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
