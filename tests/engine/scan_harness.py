"""What the scan's tests share (imported by name: tests/engine is on ``sys.path``, see tests/conftest.py)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from torchcells.engine.scan import scan_linear


def engine_results(engine: Callable[..., Any], cell: Any, x: Tensor, h0: Tensor, **kw: Any) -> list:
    """``engine(cell, x, h0, **kw)`` (``scan_linear``'s contract) on copies of ``x`` and ``h0``: outputs, final
    state, states (or None), then the gradients of ``x``, ``h0`` and every parameter of a loss that weighs
    each of them differently."""
    xx, hh = x.detach().clone().requires_grad_(), h0.detach().clone().requires_grad_()
    cell.zero_grad()
    out, final, states = engine(cell, xx, hh, **kw)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    loss = (out * weights).sum() + (final ** 2).sum() + (0 if states is None else (states ** 3).sum())
    loss.backward()
    return [out, final, states, xx.grad, hh.grad] + [p.grad.clone() for p in cell.parameters()]


def scan_gradchecks(cell: Any, *, reverse: bool) -> None:
    """gradcheck and gradgradcheck of :func:`~torchcells.engine.scan.scan_linear` over ``cell``
    (float64, ``input_size = hidden_size = 2``): ``x`` (5, 2, 2), ``h0`` and every parameter, with
    lengths 3 and 5."""
    x = torch.randn(5, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([3, 5])
    names = [n for n, _ in cell.named_parameters()]

    def f(x, h0, *weights):
        with torch.nn.utils.stateless._reparametrize_module(cell, dict(zip(names, weights))):
            out, final, _ = scan_linear(cell, x, h0, lengths=lengths, reverse=reverse)
        return out, final
    inputs = (x, h0, *(p.detach().clone().requires_grad_() for p in cell.parameters()))
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)
