"""The ``fused`` path: the cell's traced step, hoisted and fused (:mod:`..fused`), for any cell that traces."""

from __future__ import annotations

from typing import Optional

from ...graph import TraceError
from ..call import Call, Path, Result
from ..fused import explain_fallback, fused_call, inference_call, step_program


class FusedPath(Path):
    name = "fused"

    def accepts(self, call: Call) -> Optional[str]:
        """Whether the step traces (traced once per cell structure and shapes, then cached)."""
        try:
            step_program(call, masked=call.lengths is not None)
        except TraceError as error:
            return str(error)
        return None

    def explain(self, call: Call, reason: str) -> None:
        explain_fallback(call.cell, TraceError(reason))

    def run(self, call: Call) -> Result:
        return fused_call(call) if call.needs_grad else inference_call(call)

