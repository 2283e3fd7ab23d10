"""The ``torch`` path: torch's own fused kernels, for cells that declare their torch form.

A cell whose ``torch_kernel()`` returns a :class:`~torchcells.cell.TorchKernelForm`
(``ElmanCell``, ``LSTMCell``, ``GRUCell`` in torch's form) has torch.nn's parameters and
function, so one layer of it can run on the kernel behind nn.RNN/nn.LSTM/nn.GRU (oneDNN on
CPU, cuDNN on CUDA). Same contract as the reference loop, tested equal to it. Not for
every-step states (the kernels return the last state only) nor a sequence of length 0
(a packed batch cannot hold one); those calls run on the other paths. Under torch.compile it
runs the cell through the fused path's operator (:mod:`..ops`): AOT autograd decomposes torch's
kernel into a graph per number of steps, so every new ``T`` would compile again.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import _VF
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ...cell import TorchKernelForm, cell_name, declares
from .. import ops
from ..call import Call, Path, Result


class TorchKernelPath(Path):
    name = "torch"
    short_steps = 2  # no grad, T <= 2: the loop costs less than the kernel's set-up
    jit_traceable = True  # one torch kernel call over the whole sequence

    def accepts(self, call: Call) -> Optional[str]:
        if _form(call) is None:
            return ("engine='torch' runs only cells in torch's own form, which declare torch_kernel() "
                    "(ElmanCell, LSTMCell and GRUCell without peepholes, a coupled gate or reset-before)")
        if call.raw_x.dim() != 3:
            return f"engine='torch' runs only inputs (T, B, I), got {call.raw_x.dim()} dimensions"
        if call.all_states:
            return "engine='torch' runs only without every-step states (torch's kernels return the last state)"
        if ops.compiling():  # run() takes the fused operator, which runs any lengths
            return ops.compile_check(call.cell, call.lengths is not None, call.raw_x.dtype, call.raw_x.device)[1]
        if ops.vmap_active():
            return ("under torch.func.vmap torch's kernel cannot run (torch has no batching rule for "
                    "its RNN kernels); the fused path runs")
        if call.lengths is not None and int(call.lengths.min()) == 0:
            return "engine='torch' runs only sequences of length 1 or more (a packed batch holds no empty sequence)"
        return None

    def defer(self, call: Call) -> Optional[str]:
        """A GRU on CPU: the native runtime beats torch's kernel (BENCHMARKS.md); LSTM and Elman: it doesn't.
        Under torch.compile every cell: AOT autograd decomposes torch's kernel into one graph per
        number of steps (each new ``T`` compiles again), the fused path's operator holds for all."""
        if ops.compiling():
            return ("under torch.compile torch's kernel is decomposed into a graph per number of steps; "
                    "the fused path's operator holds for every length")
        form = _form(call)
        if form is not None and form.kind == "gru" and call.raw_x.device.type == "cpu" and not torch.jit.is_tracing():
            from ..native import library
            if library() is not None:
                return "a GRU on CPU runs faster on the fused path, in the native runtime"
        return None

    def run(self, call: Call) -> Result:
        if ops.compiling():
            # AOT autograd decomposes torch's kernel into a graph per number of steps (and packing
            # reads the lengths' values): the fused operator computes the same cell for every T
            handle = ops.compile_check(call.cell, call.lengths is not None, call.raw_x.dtype, call.raw_x.device)[0]
            return ops.run_ops(call, handle)
        form = _form(call)
        assert form is not None  # accepts() checked
        kernel = getattr(_VF, form.kind)
        pair = form.kind == "lstm"  # the LSTM kernel takes (h, c); the others h
        hx = tuple(h.unsqueeze(0) for h in form.to_hx(call.state))
        weights, x, train = list(form.weights), call.raw_x, call.cell.training  # packing never reads padded steps
        if call.lengths is None:
            result = kernel(x, hx if pair else hx[0], weights, form.has_bias, 1, 0.0, train, False, False)
            outputs, last = result[0], result[1:]
        else:
            packed = pack_padded_sequence(x, call.lengths, enforce_sorted=False)
            order, unorder = packed.sorted_indices, packed.unsorted_indices
            assert order is not None and unorder is not None  # enforce_sorted=False always sets them
            hx = tuple(h.index_select(1, order) for h in hx)
            result = kernel(packed.data, packed.batch_sizes, hx if pair else hx[0], weights, form.has_bias, 1, 0.0,
                            train, False)
            outputs, _ = pad_packed_sequence(packed._replace(data=result[0]), total_length=call.steps)
            last = tuple(h.index_select(1, unorder) for h in result[1:])
        return outputs, form.from_hx(tuple(h[0] for h in last)), None


def _form(call: Call) -> Optional[TorchKernelForm]:
    """The cell's declared torch form (looked up once per call: accepts, defer and run read it)."""
    cell = call.cell
    return call.memo(_form, lambda: _declared_form(cell))


def _declared_form(cell: object) -> Optional[TorchKernelForm]:
    if not declares(cell, "torch_kernel"):
        return None
    form = cell.torch_kernel()  # type: ignore[attr-defined]
    if form is not None and not isinstance(form, TorchKernelForm):
        raise TypeError(f"{cell_name(cell)}: torch_kernel() should return a TorchKernelForm or None, "
                        f"got {type(form).__name__}")
    return form
