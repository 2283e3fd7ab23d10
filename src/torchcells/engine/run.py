"""One entry point for every layer call: pick the path, fall back with a reason.

Paths, all with :func:`.unroll.unroll`'s contract and tested equal to it:

* ``"loop"``  -- the reference loop (one cell call per step; the definition);
* ``"fused"`` -- the traced path: input part hoisted out of the loop, one autograd
  node for the sequence with a derived backward and batched weight gradients
  (:mod:`.fused`); in inference, the hoisted step graph without saving anything;
* ``"scan"``  -- a parallel scan, for cells whose update is linear in the state and
  that declare it with ``scan_coefficients`` (:mod:`.scan`);
* ``"torch"`` -- torch's own fused kernel, for the built-in Elman/LSTM/GRU cells
  only (:mod:`.torch_kernels`);
* ``"auto"``  -- scan where declared, else torch's kernel for a built-in cell where
  it applies and is the faster (LSTM and Elman; GRU on CPU runs fused where the native
  runtime is built), else fused where the cell traces, else loop (with a one-time
  warning saying why).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..cell import state_leaves
from ..cells import GRUCell
from . import scan
from .fused import explain_fallback, run_fused, run_inference
from .torch_kernels import has_torch_kernel, run_torch_kernel
from ..graph import TraceError
from .unroll import unroll

ENGINES = ("auto", "loop", "fused", "scan", "torch")


def run(cell: Any, x: Tensor, state: Any, *, lengths: Optional[Tensor] = None, reverse: bool = False,
        all_states: bool = False, engine: str = "auto") -> tuple[Tensor, Any, Optional[Any]]:
    """Run ``cell`` over time-major ``x`` with the chosen engine (see module docstring)."""
    if engine == "loop" or x.shape[0] == 0 or x.shape[1] == 0:  # nothing to speed up in an empty input
        return unroll(cell, x, state, lengths=lengths, reverse=reverse, all_states=all_states)
    if engine == "scan" or (engine == "auto" and scan.is_scannable(cell)):
        if not scan.is_scannable(cell):
            raise TypeError(f"{_name(cell)} does not declare scan_coefficients(); engine='scan' needs a cell "
                            f"whose update is linear in the state")
        return scan.scan_linear(cell, x, state, lengths=lengths, reverse=reverse, all_states=all_states)
    if engine == "torch" or (engine == "auto" and has_torch_kernel(cell, x, lengths, all_states)
                             and not _native_is_faster(cell, x)):
        if not has_torch_kernel(cell, x, lengths, all_states):
            raise TypeError(f"{_name(cell)}: engine='torch' runs only ElmanCell, LSTMCell and GRUCell, without "
                            f"every-step states or zero lengths")
        return run_torch_kernel(cell, x, state, lengths=lengths, reverse=reverse)
    try:
        if _needs_grad(cell, x, state):
            return run_fused(cell, x, state, lengths=lengths, reverse=reverse, all_states=all_states)
        return run_inference(cell, x, state, lengths=lengths, reverse=reverse, all_states=all_states)
    except TraceError as error:
        if engine == "fused":
            raise TypeError(f"{_name(cell)} cannot run on the fused engine: {error}") from error
        explain_fallback(cell, error)
        return unroll(cell, x, state, lengths=lengths, reverse=reverse, all_states=all_states)


def _native_is_faster(cell: Any, x: Tensor) -> bool:
    """GRU on CPU: the native runtime beats torch's kernel (BENCHMARKS.md); LSTM and Elman: it doesn't."""
    if not isinstance(cell, GRUCell) or x.device.type != "cpu":
        return False
    from .native import library
    return library() is not None


def _name(cell: Any) -> str:
    return cell.short_name() if hasattr(cell, "short_name") else type(cell).__name__


def _needs_grad(cell: nn.Module, x: Tensor, state: Any) -> bool:
    if not torch.is_grad_enabled():
        return False
    if x.requires_grad or any(p.requires_grad for p in cell.parameters()):
        return True
    return any(t.requires_grad for t in state_leaves(state))
