"""The scan's fused pass: product, coefficients and recurrence together, in the native runtime.

A cell that declares ``scan_gates()`` (:class:`~torchcells.cell.ScanGateForm`: minGRU's or
minLSTM's gating of one product ``k = x Wᵀ + b``) runs the scan as one native call each way
(``gated_scan_forward``/``gated_scan_backward`` in ``runtime.cpp``), a block of :data:`BLOCK`
numbers of time at a time so that what a block makes stays in cache:

* forward, per block: ``k`` for all gates (one product), then one pass that computes each
  step's ``a_t, b_t`` from ``k_t`` in linear space, in vector registers, and runs
  ``h_t = a_t ⊙ h_{t−1} + b_t`` with them; nothing but ``h`` is written to memory or kept;
* backward, blocks in reverse: ``k`` again (a product costs less than keeping it), one pass
  against time giving ``∂L/∂k`` (the coefficients recomputed, ``g_t = ∂L/∂h_t + a_{t+1} g_{t+1}``
  carried from block to block), then ``∂L/∂x = ∂L/∂k · W`` and the block's share of
  ``∂L/∂W``, ``∂L/∂b``.

Where :func:`gated_scan` returns ``None`` the plain scan of :mod:`.scan` runs: a cell that
declares no gating, or whose ``scan_gates`` and ``scan_coefficients`` come from different classes
(a subclass changed one of them) or are set on the instance; not a CPU; autocast on; ``x``, the
weights and the state (in the scan's dtype) not all of one dtype, float32 or float64; shapes
that do not fit the form; the native runtime not built (or ``TORCHCELLS_NATIVE=0``). Second
derivatives (``create_graph``) take the form's differentiable ``coefficients`` through the plain
scan, so the backward of this pass is itself differentiable.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cell import ScanGateForm, declares
from .call import Call
from .native import library
from .native.records import ScanGates

__all__ = ["BLOCK", "ScanGates", "gated_scan"]

#: about how many numbers (steps × batch × hidden) of ``h`` one block of time holds.
BLOCK = 2 ** 16

#: ``(k, h0) -> (every step's state, the last)``, differentiable: what second derivatives run.
Reference = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def gated_scan(call: Call, h0: Tensor,
               reference: Callable[[ScanGateForm], Reference]) -> Optional[tuple[Tensor, Tensor]]:
    """Every step's state ``(T, B, H)`` and the last, in ``h0``'s dtype, for ``call`` from ``h0``
    (the state in the scan's dtype); ``None`` where this pass does not serve the call (the module
    docstring). ``reference(form)`` makes the differentiable scan second derivatives run."""
    form = _form(call.cell)
    lib = _runtime()
    if form is None or lib is None or not _fits(form, call.raw_x, h0):
        return None
    block = max(1, BLOCK // max(1, h0.numel()))
    return _GatedScan.apply(call.x, form.weight, form.bias, h0, call.valid,
                            (ScanGates[form.kind.upper()], block, reference(form)))


def _form(cell: Any) -> Optional[ScanGateForm]:
    """The cell's gating, where its class declares it together with ``scan_coefficients``."""
    if not declares(cell, "scan_gates") or not declares(cell, "scan_coefficients"):
        return None
    if "scan_gates" in vars(cell) or "scan_coefficients" in vars(cell):
        return None
    mro = type(cell).__mro__
    owner = {name: next(c for c in mro if name in vars(c)) for name in ("scan_gates", "scan_coefficients")}
    if owner["scan_gates"] is not owner["scan_coefficients"]:
        return None
    form = cell.scan_gates()
    return form if isinstance(form, ScanGateForm) else None


def _fits(form: ScanGateForm, x: Tensor, h0: Tensor) -> bool:
    """Whether ``x`` ``(T, B, I)``, ``h0`` ``(B, H)`` and the form's weights are of one dtype (float32 or
    float64) on a CPU, outside autocast, and make ``k`` ``(T, B, G·H)``."""
    dtype, w, b = h0.dtype, form.weight, form.bias
    if h0.device.type != "cpu" or dtype not in (torch.float32, torch.float64) or torch.is_autocast_enabled("cpu"):
        return False
    if any(t.dtype != dtype or t.device != h0.device for t in (x, w) + (() if b is None else (b,))):
        return False
    if x.dim() != 3 or h0.dim() != 2 or x.shape[1] != h0.shape[0]:
        return False
    rows = ScanGateForm.KINDS[form.kind] * h0.shape[1]
    return w.shape == (rows, x.shape[2]) and (b is None or b.shape == (rows,))


def _runtime() -> Any:
    """The native runtime, or ``None`` (its enums, :class:`ScanGates` among them, are checked as it loads)."""
    return library()


class _GatedScan(torch.autograd.Function):
    """``h_t = a_t ⊙ h_{t−1} + b_t`` with ``(a_t, b_t)`` the gating of ``k_t = x_t Wᵀ + b``, from ``h0``;
    ``valid`` ``(T, B)`` (or ``None``) marks the steps that run (a padded step keeps the state).
    ``how``: the gating, steps per block, and the differentiable reference ``(k, h0) -> (h, last)``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Optional[Tensor], h0: Tensor, valid: Optional[Tensor],
                how: tuple[ScanGates, int, Reference]) -> tuple[Tensor, Tensor]:
        gates, block, _ = how
        h = _runtime().gated_scan_forward(x, weight, bias, h0, valid, int(gates), block)
        ctx.how = how
        ctx.save_for_backward(x, weight, bias, h0, h, valid)
        # The last state apart (h[-1] would cost its gradient a zero-filled copy of h); padded
        # steps carried each sequence's last valid state to step T - 1.
        return h, h[-1].clone()

    @staticmethod
    def backward(ctx: Any, grad_h: Tensor, grad_last: Tensor) -> tuple[Optional[Tensor], ...]:
        x, weight, bias, h0, h, valid = ctx.saved_tensors
        need = ctx.needs_input_grad[:4]
        if torch.is_grad_enabled():  # create_graph: the differentiable reference
            grads = _differentiable_grads(ctx.how[2], (x, weight, bias, h0), need, grad_h, grad_last)
        else:
            gates, block, _ = ctx.how
            grads = _runtime().gated_scan_backward(x, weight, bias, h0, h, valid, grad_h, grad_last, int(gates),
                                                   block, list(need[:3]))
        return (*(g if n else None for g, n in zip(grads, need)), None, None)


def _differentiable_grads(reference: Reference, inputs: tuple[Tensor, Tensor, Optional[Tensor], Tensor],
                          need: tuple[bool, ...], grad_h: Tensor, grad_last: Tensor) -> list[Optional[Tensor]]:
    """``∂L/∂(x, W, b, h0)`` through the reference, as functions of the inputs and the incoming gradients."""
    x, weight, bias, h0 = inputs
    wanted = [t for t, n in zip(inputs, need) if n and t is not None]
    with torch.enable_grad():
        h, last = reference(F.linear(x, weight, bias), h0)
        got = iter(torch.autograd.grad((h, last), wanted, (grad_h, grad_last), create_graph=True,
                                       allow_unused=True))
    return [next(got) if n and t is not None else None for t, n in zip(inputs, need)]
