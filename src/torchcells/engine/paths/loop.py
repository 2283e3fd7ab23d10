"""The ``loop`` path: the reference loop (:mod:`..unroll`), for any cell; the last resort of auto."""

from __future__ import annotations

from typing import Optional

from ..call import Call, Path, Result
from ..unroll import unroll_call


class LoopPath(Path):
    name = "loop"

    def accepts(self, call: Call) -> Optional[str]:
        return None

    def run(self, call: Call) -> Result:
        return unroll_call(call)
