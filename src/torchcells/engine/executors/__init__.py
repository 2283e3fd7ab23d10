"""Executors of the fused step: one contract (:mod:`.base`), chosen by device.

The registry is ordered; the first executor that accepts a step on the input's
device runs it:

1. ``native`` (:mod:`.native`) -- the time loops in the C++ runtime: on the CPU, where
   the runtime is built and the step can be planned for it;
2. ``python`` (:mod:`.python`) -- the loop driven from Python: every step, every device.

Another executor (a CUDA one, say) is one more :func:`register` call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from .base import Executor, SequenceInputs, SequenceNode, SequenceOutputs, Trained, run_with_grad
from .native import NativeExecutor
from .python import PythonExecutor

if TYPE_CHECKING:
    from ..derive import FusedKernels

__all__ = ["EXECUTORS", "Executor", "SequenceInputs", "SequenceNode", "SequenceOutputs", "Trained", "choose",
           "reasons", "register", "run_with_grad"]

#: The fallback: accepts every step on every device, so it stays last.
PYTHON = PythonExecutor()
#: Tried in this order.
EXECUTORS: list[Executor] = [NativeExecutor(), PYTHON]


def register(executor: Executor, *, before: str = PYTHON.name) -> None:
    """Add ``executor`` to the registry ahead of the one named ``before`` (default: the Python
    fallback), replacing one of the same name."""
    unregister(executor.name)
    names = [e.name for e in EXECUTORS]
    EXECUTORS.insert(names.index(before) if before in names else len(EXECUTORS) - 1, executor)


def unregister(name: str) -> None:
    """Remove the executor named ``name`` (not the Python fallback)."""
    if name == PYTHON.name:
        raise ValueError("the Python executor is the fallback of every step and stays registered")
    EXECUTORS[:] = [e for e in EXECUTORS if e.name != name]


def choose(kernels: "FusedKernels", device: torch.device, native: Optional[bool] = None) -> Executor:
    """The first registered executor that accepts ``kernels`` on ``device`` (``native=False``: the
    Python executor, whatever else is registered)."""
    if native is not False:
        for executor in EXECUTORS:
            if executor.accepts(kernels, device) is None:
                return executor
    return PYTHON


def reasons(kernels: "FusedKernels", device: torch.device) -> dict[str, Optional[str]]:
    """Each registered executor's answer for ``kernels`` on ``device``: ``None`` where it accepts,
    else why not."""
    return {e.name: e.accepts(kernels, device) for e in EXECUTORS}
