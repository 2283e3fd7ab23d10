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
  it applies, else fused where the cell traces, else loop (with a one-time warning
  saying why).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..cell import map_state
from .fused import explain_fallback, fused_program, run_fused
from .lengths import reverse_padded, step_mask
from .torch_kernels import has_torch_kernel, run_torch_kernel
from .trace import TraceError
from .unroll import unroll

ENGINES = ("auto", "loop", "fused", "scan", "torch")


def _scan_module():
    from . import scan
    return scan


def run(cell: Any, x: Tensor, state: Any, *, lengths: Optional[Tensor] = None, reverse: bool = False,
        all_states: bool = False, engine: str = "auto") -> tuple[Tensor, Any, Optional[Any]]:
    """Run ``cell`` over time-major ``x`` with the chosen engine (see module docstring)."""
    if engine == "loop" or x.shape[0] == 0 or x.shape[1] == 0:  # nothing to speed up in an empty input
        return unroll(cell, x, state, lengths=lengths, reverse=reverse, all_states=all_states)
    scan = _scan_module()
    if engine == "scan" or (engine == "auto" and scan.is_scannable(cell)):
        if not scan.is_scannable(cell):
            raise TypeError(f"{_name(cell)} does not declare scan_coefficients(); engine='scan' needs a cell "
                            f"whose update is linear in the state")
        return scan.scan_linear(cell, x, state, lengths=lengths, reverse=reverse, all_states=all_states)
    if engine == "torch" or (engine == "auto" and has_torch_kernel(cell, x, lengths, all_states)):
        if not has_torch_kernel(cell, x, lengths, all_states):
            raise TypeError(f"{_name(cell)}: engine='torch' runs only ElmanCell, LSTMCell and GRUCell, without "
                            f"every-step states or zero lengths")
        return run_torch_kernel(cell, x, state, lengths=lengths, reverse=reverse)
    try:
        if _needs_grad(cell, x, state):
            return run_fused(cell, x, state, lengths=lengths, reverse=reverse, all_states=all_states)
        return _run_inference(cell, x, state, lengths=lengths, reverse=reverse, all_states=all_states)
    except TraceError as error:
        if engine == "fused":
            raise TypeError(f"{_name(cell)} cannot run on the fused engine: {error}") from error
        explain_fallback(cell, error)
        return unroll(cell, x, state, lengths=lengths, reverse=reverse, all_states=all_states)


def _name(cell: Any) -> str:
    return cell.short_name() if hasattr(cell, "short_name") else type(cell).__name__


def _needs_grad(cell: nn.Module, x: Tensor, state: Any) -> bool:
    if not torch.is_grad_enabled():
        return False
    if x.requires_grad or any(p.requires_grad for p in cell.parameters()):
        return True
    from ..cell import state_leaves
    return any(t.requires_grad for t in state_leaves(state))


def _run_inference(cell: Any, x: Tensor, state: Any, *, lengths: Optional[Tensor], reverse: bool,
                   all_states: bool) -> tuple[Tensor, Any, Optional[Any]]:
    """Hoisted input part, then the step graph per step; nothing saved for a backward."""
    from torch.utils._pytree import tree_flatten, tree_unflatten

    steps, batch = x.shape[0], x.shape[1]
    kernels = fused_program(cell, x[0], state, masked=False)
    program = kernels.program
    leaves, spec = tree_flatten(state)
    params = program.params(cell)
    if reverse:
        x = reverse_padded(x, lengths)
    valid = step_mask(lengths, steps, x.device) if lengths is not None else None
    if valid is not None:
        x = x.masked_fill(~valid.reshape(steps, batch, *([1] * (x.dim() - 2))), 0)
    consts = list(program.const_fn(*params))
    hoisted = torch.vmap(lambda x_t, *ps: program.input_fn(x_t, *ps), in_dims=(0,) + (None,) * len(params))(
        x, *params) if program.n_hoisted else ()
    per_step = [h.unbind(0) for h in hoisted]
    masks = valid.unbind(0) if valid is not None else None
    step = program.fast_step_fn
    ys, history = [], []
    for t in range(steps):
        outs = step(*[h[t] for h in per_step], *leaves, *consts)
        y, new = outs[0], list(outs[1:])
        if masks is not None:
            keep = masks[t]
            new = [torch.where(keep.reshape((batch,) + (1,) * (n.dim() - 1)), n, o) for n, o in zip(new, leaves)]
            y = y.masked_fill(~keep.reshape((batch,) + (1,) * (y.dim() - 1)), 0)
        ys.append(y)
        leaves = new
        if all_states:
            history.append(leaves)
    outputs = torch.stack(ys)
    final = tree_unflatten(leaves, spec)
    states = None
    if all_states:
        stacked = [torch.stack([h[j] for h in history]) for j in range(len(leaves))]
        if valid is not None:
            stacked = [s.masked_fill(~valid.reshape(steps, batch, *([1] * (s.dim() - 2))), 0) for s in stacked]
        states = tree_unflatten(stacked, spec)
    if reverse:
        outputs = reverse_padded(outputs, lengths)
        if states is not None:
            states = map_state(lambda s: reverse_padded(s, lengths), states)
    return outputs, final, states
