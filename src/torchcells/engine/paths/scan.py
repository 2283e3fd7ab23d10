"""The ``scan`` path: a parallel scan (:mod:`..scan`), for cells that declare ``scan_coefficients``."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ...cell import declares
from .. import ops
from ..call import Call, Path, Result
from ..scan import scan_call


class ScanPath(Path):
    name = "scan"
    short_steps = 4  # no grad, T <= 4: the loop costs less than chunking the log-space scan

    def accepts(self, call: Call) -> Optional[str]:
        if not declares(call.cell, "scan_coefficients"):
            return ("it does not declare scan_coefficients(); engine='scan' needs a cell whose update "
                    "is linear in the state")
        if not isinstance(call.state, Tensor):
            return "engine='scan' needs a cell whose state is one tensor"
        if torch.compiler.is_compiling():
            return ("under torch.compile the scan cannot run: it sizes its chunks from the data (the "
                    "range of log a), which a compiled graph cannot read; the fused path or the loop runs")
        if ops.functorch_active():
            return ("under a torch.func transform (grad, vmap, jacrev) the scan cannot run: its "
                    "autograd.Function has no functorch rules; the fused path or the loop runs")
        return None

    def run(self, call: Call) -> Result:
        return scan_call(call)
