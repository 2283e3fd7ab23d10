"""Parallel scan for cells whose step is linear in the state: ``h_t = a_t ⊙ h_{t−1} + b_t``.

A cell opts in by declaring ``scan_coefficients(x) -> (log_a, log_b)`` for a whole
sequence ``x`` ``(T, B, I)``, with ``a_t, b_t > 0`` depending on the inputs only (the
minimal cells ``MinGRUCell``, ``MinLSTMCell``). Unrolling the recurrence,

.. math::
    h_t = e^{A_t} \\odot h_0 + \\sum_{k \\le t} e^{A_t - A_k} \\odot b_k,
    \\qquad A_t = \\sum_{k \\le t} \\log a_k,

is two cumulative sums over time instead of ``T`` dependent steps (Heinsen 2023; Feng
et al. 2024): ``O(log T)`` depth on a device that runs a cumulative sum in parallel.
The ``h_0`` term stays linear, so ``h_0`` may be negative or zero.

How it is computed, and why:

* **Chunks, in linear space.** ``e^{±A}`` over- or underflows once ``|A|`` passes the
  dtype's exponent range, and ``A_t − A_k`` taken as a difference of two long running
  sums loses ``|A_t|·ε`` of precision. So time is cut into chunks of ``C`` steps
  (a power of two, at most :data:`CHUNK`) chosen from the data so that ``|A| ≤ R``
  inside a chunk (``R`` = half the exponent range: 44 in float32, 354 in float64).
  Inside a chunk ``h_t = e^{A_t} (h_{start} + Σ_{k≤t} e^{−A_k} b_k)``, one cumulative sum for all
  chunks at once; the chunks' start states then come from a doubling
  (Hillis–Steele) scan over the chunks, which for decaying cells (``a ≤ 1``) only
  multiplies numbers ``≤ 1``. This replaces a ``logcumsumexp`` over the whole
  sequence (an ``exp`` and a ``log1p`` per element, and two more of it in autograd's
  backward), which made the scan about as slow as the loop on CPU.
* **On CPU, the recurrence in the native runtime.** A parallel-prefix scan pays
  ``O(log T)`` depth with several passes over memory, which on a CPU of few cores
  costs more than reading the sequence once. Where the native runtime is built
  (:mod:`.native`; CPU, float32/float64), ``h_t = e^{log a_t} h_{t−1} + u_t`` runs there
  sequentially in time, vectorized and split over threads across the ``B·H`` lanes:
  one pass, the loop's operations per number (no chunking or range limits needed),
  the same bits at any thread count; its backward (below) is one fused pass against
  reading order giving ``g``, ``∂L/∂log a`` and ``∂L/∂h_0``. Second derivatives
  (``create_graph``) and ``TORCHCELLS_NATIVE=0`` take the chunked scan.
* **A known gating: one native call each way.** A cell that declares ``scan_gates()`` (the
  minimal cells) has its coefficients computed inside the native pass from one product of the
  input, forward and backward (:mod:`.gated_scan`), instead of the elementwise operations of its
  ``scan_coefficients`` and their autograd; where that pass declines a call, what follows runs.
* **Backward pass by hand.** The gradient of the recurrence is the same recurrence
  read backwards, ``g_t = ∂L/∂h_t + a_{t+1} g_{t+1}``, so the backward pass is one more
  scan (and itself differentiable) rather than autograd through the cumulative ops.
* **At least float32, the loop's dtype out.** In lower precision (autocast, a
  ``bfloat16``/``float16`` module) the loop rounds each step's ``a ⊙ h + b`` once; the
  scan's ``e^{±A}`` and running sums rounded in bfloat16 lose ``|A|·2⁻⁸`` each (three
  times the loop's error, measured). So coefficients and state are taken to at least
  float32 for the scan (the cells compute their coefficients in float32 too, see
  ``Cell.scan_coefficients``), and the results are returned in the dtype the loop's
  ``a ⊙ h + b`` has: the state's, promoted with the step products' (autocast's lower
  dtype where it casts ``x``, else ``x``'s).
* **Blocks on CPU.** On CPU, where every pass over a large tensor costs memory
  traffic, time is cut into blocks of about :data:`CPU_BLOCK` numbers that stay in
  cache, run one after the other (the state carried from block to block); each
  block is one scan. Elsewhere the whole sequence is one block.

:func:`scan_call` runs a forward call (:mod:`.call`; the ``scan`` path of :mod:`.paths`);
:func:`scan_linear` has exactly the contract of :func:`~torchcells.engine.unroll.unroll`
and is tested equal to it.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

from ..cell import Cell, ScanGateForm, at_least_float32, autocast_casts, declares
from .call import Call, Result, bracket
from .gated_scan import gated_scan
from .native import library

__all__ = ["CHUNK", "CPU_BLOCK", "CPU_BLOCK_MIN_STEPS", "scan_call", "scan_linear"]

#: most steps per chunk of one scan (fewer where the data's decay needs it, see above).
CHUNK = 256
#: on CPU, about how many numbers (steps × batch × hidden) one block of time holds ...
CPU_BLOCK = 2 ** 19
#: ... but at least this many steps (a block costs some thirty calls, whatever its size).
CPU_BLOCK_MIN_STEPS = 8


def scan_linear(cell: Cell, x: Tensor, state: Tensor, *, lengths: Optional[Tensor] = None,
                reverse: bool = False, all_states: bool = False) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Run a scannable ``cell`` over ``x`` ``(T, B, I)`` from ``state`` ``(B, H)``; time-major, already validated.

    Same arguments and results as :func:`~torchcells.engine.unroll.unroll`:
    ``(outputs (T, B, H), final_state (B, H), states (T, B, H) or None)``. Outputs and
    every-step states (for these cells the same values, in separate tensors) are exactly
    zero at padded steps; ``final_state`` is each sequence's state after its last valid
    step (its initial state if its length is 0); ``reverse`` reads each sequence from its
    own last valid step back to step 0.
    """
    if not declares(cell, "scan_coefficients"):
        raise TypeError(f"scan_linear: {type(cell).__name__} has no scan_coefficients(x); "
                        f"use engine.unroll for cells whose step is not linear in the state")
    return bracket(scan_call, cell, x, state, lengths=lengths, reverse=reverse, all_states=all_states)


def scan_call(call: Call) -> Result:
    """The scan over a forward call (:mod:`.call`): a padded step is the identity (``a = 1, b = 0``)."""
    x, state = call.x, call.state
    if call.steps == 0:
        outputs = state.new_zeros((0,) + tuple(state.shape))
        return outputs, state, (outputs.clone() if call.all_states else None)
    valid = None if call.valid is None else call.valid.unsqueeze(-1)  # (T, B, 1)
    dtype = loop_dtype(x, state)
    state = at_least_float32(state.to(dtype))
    fused = gated_scan(call, state, lambda form: _reference(form, valid))
    hs, h = fused if fused is not None else _scan_blocks(call, state, valid)
    hs, h = hs.to(dtype), h.to(dtype)
    # Padded steps carried each sequence's last valid state to step T - 1: h is the final state.
    outputs = hs if valid is None else hs.masked_fill(~valid, 0)
    states = None
    if call.all_states:  # a tensor apart from outputs (the bracket's zeroing copies it where there are lengths)
        states = hs.clone() if valid is None else hs
    return outputs, h, states


def _scan_blocks(call: Call, state: Tensor, valid: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Every step's state and the last from the cell's ``scan_coefficients``, block by block of time."""
    x, block = call.x, call.steps
    if x.device.type == "cpu":
        block = max(CPU_BLOCK_MIN_STEPS, CPU_BLOCK // max(1, state.numel()), 1)
    # (split, not slicing: the gradient of a slice is a zero-filled copy of all of x)
    blocks = x.split(block)
    masks = [None] * len(blocks) if valid is None else valid.split(block)
    parts, h = [], state
    for x_block, mask in zip(blocks, masks):
        part, h = _scan_block(call.cell, x_block, h, mask)
        parts.append(part)
    return (parts[0] if len(parts) == 1 else torch.cat(parts)), h


def loop_dtype(x: Tensor, state: Tensor) -> torch.dtype:
    """The dtype of the loop's ``h_t = a_t ⊙ h_{t−1} + b_t``: the state's, promoted with that of
    the step's products of ``x`` (autocast's lower dtype where autocast casts ``x``, else ``x``'s)."""
    product = torch.get_autocast_dtype(x.device.type) if autocast_casts(x, x) else x.dtype
    return torch.promote_types(product, state.dtype)


def _scan_block(cell: Any, x: Tensor, h0: Tensor, valid: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Every step's state ``(T, B, H)`` over a block of inputs ``x`` ``(T, B, I)`` from ``h0``, and the
    last, in ``h0``'s dtype (at least float32, see the module docstring)."""
    log_a, log_b = cell.scan_coefficients(x)
    return _scan_coefficients(log_a, log_b, h0, valid)


def _reference(form: ScanGateForm, valid: Optional[Tensor]) -> Any:
    """``(k, h0) -> (every step's state, the last)`` from the form's differentiable ``coefficients``
    of the pre-activations ``k`` (what second derivatives of :func:`.gated_scan.gated_scan` run)."""
    def run(k: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
        log_a, log_b = form.coefficients(k)
        return _scan_coefficients(log_a, log_b, h0, valid)
    return run


def _scan_coefficients(log_a: Tensor, log_b: Tensor, h0: Tensor, valid: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """The scan of ``h_t = a_t ⊙ h_{t−1} + b_t`` from ``(log a, log b)`` ``(T, B, H)`` and ``h0``, in ``h0``'s dtype."""
    log_a, b = log_a.to(h0.dtype), log_b.to(h0.dtype).exp()
    if valid is not None:  # a padded step carries the state through unchanged: a = 1, b = 0
        log_a = log_a.masked_fill(~valid, 0)
        b = b.masked_fill(~valid, 0)
    return _LinearScan.apply(log_a, b, h0, False)


class _LinearScan(torch.autograd.Function):
    """``h_t = e^{log a_t} ⊙ h_{t∓1} + u_t`` from ``h0``, ``u`` of any sign, forwards or backwards in time.

    Forwards (``backwards=False``) ``h_{−1} = h0`` and ``t = 0 … T−1``; backwards
    ``h_T = h0`` and ``t = T−1 … 0``. The gradient of one direction is the other
    direction's recurrence (``g_t = ∂L/∂h_t + a_{t+1} g_{t+1}`` for a forward scan), run by
    this same function, so the backward pass is a scan too and is itself differentiable.
    """

    @staticmethod
    def forward(ctx: Any, log_a: Tensor, u: Tensor, h0: Tensor, backwards: bool) -> tuple[Tensor, Tensor]:
        lib = _native(log_a, u, h0)
        if lib is not None:
            lanes = (log_a.shape[0], -1)
            h = lib.linear_scan_forward(log_a.reshape(lanes), u.reshape(lanes), h0.reshape(-1),
                                        backwards).view(log_a.shape)
        else:
            h = _scan_values(log_a, u, h0, backwards)
        ctx.backwards = backwards
        ctx.save_for_backward(log_a, h0, h)
        # The last state read, apart (h[-1] would cost its gradient a zero-filled copy of h).
        return h, h[0 if backwards else -1].clone()

    @staticmethod
    def backward(ctx: Any, grad_h: Tensor, grad_last: Tensor) -> tuple[Optional[Tensor], ...]:
        log_a, h0, h = ctx.saved_tensors
        lib = None if torch.is_grad_enabled() else _native(log_a, grad_h, h0)  # (create_graph: differentiable)
        if lib is not None:  # one fused pass against reading order
            lanes = (log_a.shape[0], -1)
            g, grad_log_a, grad_h0 = lib.linear_scan_backward(
                log_a.reshape(lanes), h0.reshape(-1), h.reshape(lanes), grad_h.reshape(lanes),
                grad_last.reshape(-1), ctx.backwards)
            return (grad_log_a.view(log_a.shape) if ctx.needs_input_grad[0] else None, g.view(log_a.shape),
                    grad_h0.view(h0.shape), None)
        zero = log_a.new_zeros((1,) + log_a.shape[1:])
        # The gradient of the last state enters as the backward scan's start (a = 1 there).
        if ctx.backwards:  # g_t = ∂L/∂h_t + a_{t-1} g_{t-1}
            g, _ = _LinearScan.apply(torch.cat([zero, log_a[:-1]]), grad_h, grad_last, False)
            first = -1  # the step that read h0
        else:  # g_t = ∂L/∂h_t + a_{t+1} g_{t+1}
            g, _ = _LinearScan.apply(torch.cat([log_a[1:], zero]), grad_h, grad_last, True)
            first = 0
        grad_h0 = log_a[first].exp() * g[first]
        grad_log_a = None
        if ctx.needs_input_grad[0]:  # ∂L/∂log a_t = g_t a_t h_{t∓1}, the product formed directly
            start = h0.unsqueeze(0)  # (h_t − u_t would save passes but loses a_t h_{t∓1} ≪ u_t)
            before = torch.cat([h[1:], start]) if ctx.backwards else torch.cat([start, h[:-1]])
            grad_log_a = g * log_a.exp() * before
        return grad_log_a, g, grad_h0, None


def _native(log_a: Tensor, u: Tensor, h0: Tensor) -> Any:
    """The native runtime where it runs this scan (CPU, float32/float64, one dtype), else ``None``."""
    if log_a.device.type != "cpu" or log_a.dtype not in (torch.float32, torch.float64):
        return None
    if u.dtype != log_a.dtype or h0.dtype != log_a.dtype or u.device != log_a.device or h0.device != log_a.device:
        return None
    lib = library()
    return lib if lib is not None and hasattr(lib, "linear_scan_forward") else None


def _scan_values(log_a: Tensor, u: Tensor, h0: Tensor, backwards: bool) -> Tensor:
    """The values of :class:`_LinearScan` (no autograd): chunked cumulative sums in linear space.

    Inside a chunk of ``C`` steps, with ``A_t`` the running sum of ``log a`` from the
    chunk's start, ``h_t = e^{A_t} h_start + e^{A_t} Σ_{k≤t} e^{−A_k} u_k`` (mirrored for
    ``backwards``): cumulative sums for all chunks at once. ``C`` (a power of two) is
    chosen so that ``|A| ≤ R``, half the exponent range of the dtype, so no ``e^{±A}``
    overflows or loses precision to underflow; the chunks' start states then come from
    a doubling scan over the chunks.
    """
    steps = log_a.shape[0]
    R = math.log(torch.finfo(log_a.dtype).max) / 2
    lo, hi = (float(v) for v in torch.aminmax(log_a)) if log_a.numel() else (0.0, 0.0)
    if lo < -R:  # a < e^-R is below the dtype's resolution: count it as e^-R
        log_a = log_a.clamp(min=-R)
        lo = -R
    biggest = max(-lo, hi)
    size = CHUNK
    if biggest * CHUNK > R:  # (NaN or inf: any size, the result is NaN or inf like the loop's)
        size = 2 ** int(math.log2(max(1.0, R / biggest)))
    size = min(size, steps)
    n = -(-steps // size)
    if n * size != steps:  # fill the last chunk with identity steps: a = 1, u = 0
        fill = (n * size - steps,) + tuple(log_a.shape[1:])
        log_a = torch.cat([log_a, log_a.new_zeros(fill)])
        u = torch.cat([u, u.new_zeros(fill)])
    chunked = (n, size) + tuple(log_a.shape[1:])
    decay = _cumsum(log_a.reshape(chunked), backwards).exp_()  # e^{A_t}, |A_t| <= R
    h = _cumsum(u.reshape(chunked) / decay, backwards).mul_(decay)  # each chunk from a zero state
    edge = 0 if backwards else -1  # a chunk's last step in reading order
    starts = _chunk_starts(decay[:, edge], h[:, edge], h0, backwards)
    h.addcmul_(decay, starts.unsqueeze(1))
    return h.reshape((n * size,) + h.shape[2:])[:steps]


def _cumsum(x: Tensor, backwards: bool) -> Tensor:
    """Running sums of ``x`` ``(N, C, ...)`` along dim 1 (from the end when ``backwards``)."""
    if x.device.type != "cpu":
        return x.flip(1).cumsum(1).flip(1) if backwards else x.cumsum(1)
    # On CPU torch's cumsum over a non-innermost dim is a scalar loop; a product with a
    # (C, C) triangle of ones is a small GEMM over all chunks at once, about twice as fast.
    # Autocast off: it would round this product (the running sums themselves) to bfloat16.
    size = x.shape[1]
    ones = torch.ones(size, size, dtype=x.dtype)
    ones = ones.triu() if backwards else ones.tril()
    with torch.autocast("cpu", enabled=False):
        return torch.matmul(ones, x.reshape(x.shape[0], size, -1)).reshape(x.shape)


def _chunk_starts(decay: Tensor, end: Tensor, h0: Tensor, backwards: bool) -> Tensor:
    """Start states ``s_j`` of ``N`` chunks: ``s_0 = h0``, ``s_{j+1} = decay_j s_j + end_j``
    (numbered from the last chunk when ``backwards``).

    A doubling (Hillis–Steele) scan in linear space, ``⌈log₂ N⌉`` rounds; for decaying
    cells products of decays only shrink (to 0 below the dtype's resolution, harmlessly).
    """
    if backwards:
        return _chunk_starts(decay.flip(0), end.flip(0), h0, False).flip(0)
    end = end.clone()
    end[0].addcmul_(decay[0], h0)
    decay = decay.clone()
    shift = 1
    while shift < end.shape[0]:
        end[shift:] = torch.addcmul(end[shift:], decay[shift:], end[:-shift])
        decay[shift:] = decay[shift:] * decay[:-shift]
        shift *= 2
    return torch.cat([h0.unsqueeze(0), end[:-1]])
