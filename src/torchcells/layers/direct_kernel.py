"""The drop-ins' direct kernel: a plain ``LSTM``/``GRU``/``RNN`` in one call of torch's multi-layer kernel.

A drop-in is a :class:`~.stack.Stack` of :class:`~.recurrent.Recurrent` layers; each call runs
every layer through the engine's registry and converts ``h_0``/``c_0`` into per-layer states and
back. Where the configuration is torch.nn's own -- every cell declares its torch form
(``torch_kernel()``) of the drop-in's kind, the composed pieces are as the drop-in built them
(engine ``auto`` or ``torch``, no checkpointing, concatenated directions), no hook on any inner
module, no dropout to apply -- the whole drop-in is nn.LSTM's computation, and this module runs
it as nn.LSTM does: ``torch._VF.lstm/gru/rnn_tanh/rnn_relu`` over the flat weight list
(``_flat_weights`` order: per layer and direction ``weight_ih``, ``weight_hh``, ``bias_ih``,
``bias_hh``, ``weight_hr``), the flat ``(L·D, B, H)`` states as they come. Its results are
nn.LSTM's, bit for bit.

It is used where it is the faster (:func:`prefers_direct`): a GRU on a CPU with the native runtime
runs the fused path for all but short calls without gradients (the fused path is faster there),
the others always. It is never used while something records or transforms the call
(``torch.jit.trace``, ``torch.compile``, ``torch.export``, ``torch.func``) nor under autocast:
there the composed layers run, with their own rules for those modes.
"""

from __future__ import annotations

import operator
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, _VF, nn
from torch.nn.modules import module as _torch_module
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..cell import declares
from ..engine import ops
from ..engine.modes import is_exporting
from .bidirectional import Bidirectional
from .recurrent import Recurrent
from .stack import Stack

__all__ = ["LSTM_LOOP_WEIGHTS", "SHORT_GRU_STEPS", "plain_kind", "prefers_direct", "run_direct", "run_direct_packed"]

#: a GRU on a CPU with the native runtime: the direct kernel for calls of at most this many steps
#: without gradients, the fused path beyond. Measured (1 thread, no grad): the fused path costs a
#: fixed ~0.6 ms a call, nn.GRU's kernel ~10-70 µs a step; at T=32 they cross at B=32, H=256
#: (0.98×), at T=64 the fused path is 0.89× there but still 1.34× at B=1, H=64
SHORT_GRU_STEPS = 32
#: an LSTM on a CPU: a short call without gradients leaves a first layer of this many weights
#: (``weight_ih`` and ``weight_hh``) or more to the composed layers (crossing near I=64, H=160)
LSTM_LOOP_WEIGHTS = 150_000

_KINDS = {"LSTM": ("lstm",), "GRU": ("gru",), "RNN": ("rnn_tanh", "rnn_relu")}


def plain_kind(drop: Any, x: Tensor) -> Optional[str]:
    """torch's kernel name (``"lstm"``, ``"gru"``, ``"rnn_tanh"``, ``"rnn_relu"``) if the drop-in
    ``drop`` may run a call on input ``x`` through it, else ``None`` (see the module docstring).
    Read at every call (a few dictionary look-ups per layer; modules are reached through their
    ``_modules`` dictionaries, not ``getattr``): anything may have changed since the last."""
    if (torch.jit.is_tracing() or torch.compiler.is_compiling() or is_exporting() or ops.functorch_active()
            or torch.is_autocast_enabled("cpu" if x.is_cpu else x.device.type) or _global_hooks()):
        return None
    stack: Any = drop._modules["stack"]
    if type(stack) is not Stack or _hooked(stack):
        return None
    layers: Any = stack._modules["layers"]
    blocks = list(layers._modules.values())
    if len(blocks) != drop.num_layers or _hooked(layers) or (stack.training and stack.dropout and len(blocks) > 1):
        return None
    kind: Optional[str] = None
    tied = drop._tied_cells  # the cells holding the drop-in's parameters, in torch's order
    seen = drop.__dict__.setdefault("_declared_kinds", {})
    at = 0
    for block in blocks:
        for rec, reverse in _directions(block, drop.bidirectional):
            if (type(rec) is not Recurrent or rec.reverse is not reverse or rec.batch_first
                    or rec.engine not in ("auto", "torch") or rec.checkpoint_steps is not None or _hooked(rec)):
                return None
            cell: Any = rec._modules["cell"]
            if at >= len(tied) or cell is not tied[at] or _hooked(cell) or (cell._modules and _hooked_tree(cell)):
                return None
            found = declared_kind(cell, seen)
            if found is None or (kind is not None and found != kind):
                return None
            kind, at = found, at + 1
    return kind if at == len(tied) and kind in _KINDS[drop.mode] else None


def declared_kind(cell: Any, seen: dict[int, tuple[Any, tuple, Optional[str]]]) -> Optional[str]:
    """The kind of the torch form ``cell.torch_kernel()`` declares, or ``None``. Asking builds the
    form (microseconds: a good part of a short call's budget), so the answer is kept in ``seen``
    (the drop-in's, by cell) with the cell's type and the very objects its attributes held
    (``peepholes``, ``reset_after``, ``nonlinearity``, ``bias``, ... and the parameter
    dictionary): setting any attribute puts a new object there, and the cell is asked again."""
    values = tuple(cell.__dict__.values())
    known = seen.get(id(cell))
    if (known is not None and known[0] is type(cell) and len(known[1]) == len(values)
            and all(map(operator.is_, known[1], values))):
        return known[2]
    form = cell.torch_kernel() if declares(cell, "torch_kernel") else None
    kind = None if form is None or form.has_bias is not getattr(cell, "bias", None) else form.kind
    seen[id(cell)] = (type(cell), values, kind)
    return kind


def prefers_direct(kind: str, x: Tensor, steps: int, weights: Sequence[Tensor]) -> bool:
    """Whether the direct kernel is the faster way for a call of ``steps`` steps on ``x``'s device
    (measured on a CPU, 1 thread, against the composed layers):

    * a GRU on a CPU with the native runtime: only for a short call without gradients (at most
      :data:`SHORT_GRU_STEPS` steps); the fused path beyond (0.6-0.9× nn.GRU);
    * an LSTM on a CPU, a short call without gradients (``T <= 2``, where the composed layers run
      the reference loop) whose first layer holds :data:`LSTM_LOOP_WEIGHTS` weights or more: not
      (torch's CPU LSTM reorders its weights for oneDNN at every call, which a step of the loop
      does not pay: at I=64, H=256, B=1 the loop takes 0.8× nn.LSTM);
    * everything else: always.
    """
    if x.device.type != "cpu":
        return True
    no_grad = not torch.is_grad_enabled()
    if kind == "lstm":
        return not (no_grad and steps <= 2 and weights[0].numel() + weights[1].numel() >= LSTM_LOOP_WEIGHTS)
    if kind != "gru" or (no_grad and steps <= SHORT_GRU_STEPS):
        return True
    from ..engine.native import library
    return library() is None


def run_direct(kind: str, x: Tensor, flat_hx: Optional[Sequence[Tensor]], weights: list[Tensor], *,
               has_bias: bool, num_layers: int, bidirectional: bool, sizes: Sequence[int],
               lengths: Optional[Tensor]) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One call of torch's kernel ``kind`` over time-major ``x`` ``(T, B, I)``: ``(outputs, finals)``
    with ``finals`` the flat ``(L·D, B, ·)`` states (``(h_n, c_n)`` for an LSTM, ``(h_n,)`` else).
    ``flat_hx``: the checked ``h_0`` (and ``c_0``), ``None`` for zeros of ``sizes``. ``lengths``
    (each ≥ 1): packed as nn.LSTM packs, outputs zero past each length."""
    entries = num_layers * (2 if bidirectional else 1)
    hx = _initial(flat_hx, entries, x.shape[1], sizes, x)
    kernel = getattr(_VF, kind)
    if lengths is None:
        result = kernel(x, hx if kind == "lstm" else hx[0], weights, has_bias, num_layers, 0.0, False,
                        bidirectional, False)
        return result[0], tuple(result[1:])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, finals = _packed_call(kind, packed, hx, weights, has_bias, num_layers, bidirectional)
    outputs, _ = pad_packed_sequence(packed._replace(data=out), total_length=x.shape[0])
    return outputs, finals


def run_direct_packed(kind: str, packed: PackedSequence, flat_hx: Optional[Sequence[Tensor]],
                      weights: list[Tensor], *, has_bias: bool, num_layers: int, bidirectional: bool,
                      sizes: Sequence[int]) -> tuple[PackedSequence, tuple[Tensor, ...]]:
    """nn.LSTM's call on a PackedSequence: the kernel over its data, states in the caller's order."""
    entries = num_layers * (2 if bidirectional else 1)
    batch = int(packed.batch_sizes[0])
    hx = _initial(flat_hx, entries, batch, sizes, packed.data)
    out, finals = _packed_call(kind, packed, hx, weights, has_bias, num_layers, bidirectional)
    return PackedSequence(out, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices), finals


def _packed_call(kind: str, packed: PackedSequence, hx: tuple[Tensor, ...], weights: list[Tensor],
                 has_bias: bool, num_layers: int, bidirectional: bool) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The kernel over ``packed``'s data; ``hx`` and the finals in the caller's batch order."""
    order, unorder = packed.sorted_indices, packed.unsorted_indices
    if order is not None:
        hx = tuple(h.index_select(1, order) for h in hx)
    result = getattr(_VF, kind)(packed.data, packed.batch_sizes, hx if kind == "lstm" else hx[0], weights,
                                has_bias, num_layers, 0.0, False, bidirectional)
    finals = tuple(result[1:])
    if unorder is not None:
        finals = tuple(h.index_select(1, unorder) for h in finals)
    return result[0], finals


def _initial(flat_hx: Optional[Sequence[Tensor]], entries: int, batch: int, sizes: Sequence[int],
             like: Tensor) -> tuple[Tensor, ...]:
    if flat_hx is not None:
        return tuple(flat_hx)
    return tuple(torch.zeros(entries, batch, size, dtype=like.dtype, device=like.device) for size in sizes)


def _directions(block: nn.Module, bidirectional: bool) -> tuple[tuple[Any, bool], ...]:
    """``block``'s recurrent layers with the reverse flag each should have; ``None`` in place of a
    layer (never plain) where ``block`` is not as the drop-in built it."""
    if not bidirectional:
        return ((block, False),)
    if type(block) is not Bidirectional or block.merge != "concat" or _hooked(block):
        return ((None, False),)
    inner = block._modules
    return ((inner["forward_layer"], False), (inner["backward_layer"], True))


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def _hooked_tree(module: Any) -> bool:
    return _hooked(module) or any(_hooked_tree(m) for m in module._modules.values() if m is not None)


def _global_hooks() -> bool:
    """Whether a hook is registered for every module (``register_module_forward_hook`` and kin)."""
    m = _torch_module
    return bool(m._global_forward_hooks or m._global_forward_pre_hooks or m._global_backward_hooks
                or m._global_backward_pre_hooks)
