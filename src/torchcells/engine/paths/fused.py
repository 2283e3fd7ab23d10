"""The ``fused`` path: the cell's traced step, hoisted and fused (:mod:`..fused`), for any cell that traces.

Eagerly it runs one autograd node per sequence (``SequenceNode``). While dynamo traces
(``torch.compile``) or a ``torch.func`` transform runs, it runs the same computation through the
registered operators ``torchcells::fused_forward``/``fused_backward`` (:mod:`..ops`), which both
see as single ops with known shapes and a known autograd formula (and vmap rule).
"""

from __future__ import annotations

from typing import Optional

from ...graph import TraceError
from .. import ops
from ..call import Call, Path, Result
from ..derive import churning
from ..fused import explain_fallback, fused_call, inference_call, step_program


class FusedPath(Path):
    name = "fused"
    short_steps = 8  # no grad, T <= 8: the loop costs less than the trace-cache key, hoisting and the native set-up

    def accepts(self, call: Call) -> Optional[str]:
        """Whether the step traces (traced once per cell structure and shapes, then cached)."""
        if ops.compiling():
            return ops.compile_check(call.cell, call.lengths is not None, call.raw_x.dtype, call.raw_x.device)[1]
        try:
            if ops.functorch_active():
                ops.kernels_for(call)
            else:
                step_program(call, masked=call.lengths is not None)
        except TraceError as error:
            return str(error)
        return None

    def defer_unasked(self, call: Call) -> Optional[str]:
        """A cell traced again at each of its last calls (a value its step reads keeps changing) is
        left to the loop while that goes on: each new trace would cost time and keep memory."""
        if ops.compiling() or ops.functorch_active():
            return None
        return churning(call.cell, call.raw_x[0], call.state, masked=call.lengths is not None)

    def explain(self, call: Call, reason: str) -> None:
        if not ops.compiling():
            explain_fallback(call.cell, TraceError(reason))

    def run(self, call: Call) -> Result:
        if ops.compiling():
            handle = ops.compile_check(call.cell, call.lengths is not None, call.raw_x.dtype, call.raw_x.device)[0]
            return ops.run_ops(call, handle)
        if ops.functorch_active():
            return ops.run_ops(call)
        return fused_call(call) if call.needs_grad else inference_call(call)
