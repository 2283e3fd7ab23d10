"""One entry point for every layer call: open the call, pick the path, close the call.

The paths (:mod:`.paths`, all with :func:`.unroll.unroll`'s contract and tested equal
to it) are registered in order:

* ``"scan"``  -- a parallel scan, for cells whose update is linear in the state and
  that declare it with ``scan_coefficients`` (:mod:`.scan`);
* ``"torch"`` -- torch's own fused kernel, for cells that declare their torch form with
  ``torch_kernel()`` (the built-in Elman/LSTM/GRU cells);
* ``"fused"`` -- the traced path: input part hoisted out of the loop, one autograd
  node for the sequence with a derived backward and batched weight gradients
  (:mod:`.fused`); in inference, the hoisted step graph without saving anything;
* ``"export"`` -- the cell's step under torch's ``scan`` operator, for ``torch.export`` and
  ONNX (:mod:`.paths.graph_scan`); auto runs it only while exporting, where the other
  paths decline;
* ``"loop"``  -- the reference loop (one cell call per step; the definition).

``engine="auto"`` takes the first that accepts the call: scan where declared, else
torch's kernel where declared and the faster (LSTM and Elman; a GRU on CPU runs fused
where the native runtime is built), else fused where the cell traces, else the loop
(with a one-time warning saying why). A path named explicitly that cannot run the call
raises a TypeError saying why. Direction and padding are handled around the path
(:mod:`.call`).
"""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor

from .call import close_call, open_call
from .paths import choose, engines

__all__ = ["engines", "run"]


def run(cell: Any, x: Tensor, state: Any, *, lengths: Optional[Tensor] = None, reverse: bool = False,
        all_states: bool = False, engine: str = "auto") -> tuple[Tensor, Any, Optional[Any]]:
    """Run ``cell`` over time-major ``x`` with the chosen engine (see module docstring)."""
    call = open_call(cell, x, state, lengths=lengths, reverse=reverse, all_states=all_states)
    return close_call(call, choose(call, engine).run(call), reverse=reverse)
