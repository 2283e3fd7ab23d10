"""The native runtime: the fused step's time loop in C++, elementwise groups fused.

``runtime.cpp`` (built once with ``torch.utils.cpp_extension`` and cached, see
:mod:`.build`) runs a *program*: the derived forward or backward graph of a step
(:mod:`..derive`) planned by :mod:`.plan` into aten calls made from C++ and
*fused groups* -- elementwise operations over one ``[B, H]`` domain evaluated tile
by tile in vector registers. Its two drivers run the forward over all ``T`` steps
and the backward in reverse, so no Python runs per step. Where no compiler is
present the Python-driven loop of :mod:`..fused` runs instead (one notice).
"""

from .build import available, library, notice
from .plan import NativeKernels, NotNative, plan_kernels

__all__ = ["NativeKernels", "NotNative", "available", "library", "notice", "plan_kernels"]
