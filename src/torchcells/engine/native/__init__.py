"""The native runtime: the fused step's time loop in C++, elementwise groups fused.

``runtime.cpp`` (built once with ``torch.utils.cpp_extension`` and cached, see
:mod:`.build`) runs a *program*: the derived forward or backward graph of a step
(:mod:`..derive`) planned by :mod:`.plan` into aten calls made from C++ and
*fused groups* -- elementwise operations over one ``[B, H]`` domain evaluated tile
by tile in vector registers. A plan is written in the typed records of
:mod:`.records`; its two drivers (:mod:`.sequence`) run the forward over all ``T``
steps and the backward in reverse, so no Python runs per step. The native executor
(:mod:`..executors.native`) plans a step on first use; where no compiler is present,
or a step cannot be planned, the Python executor runs instead.
"""

from .build import available, library, notice
from .plan import NotNative, plan_graph, plan_step
from .records import NativePlan

__all__ = ["NativePlan", "NotNative", "available", "library", "notice", "plan_graph", "plan_step"]
