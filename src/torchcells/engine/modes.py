"""Which of torch's recording modes a layer call runs under (read by the registry and the checks)."""

from __future__ import annotations

import torch

__all__ = ["is_exporting"]


def is_exporting() -> bool:
    """Whether ``torch.export`` (or ``torch.onnx.export(..., dynamo=True)``, built on it) is
    recording this call: then the registry runs only exportable paths and no value of an input
    tensor is read in Python. ``False`` on a torch without ``torch.compiler.is_exporting``."""
    check = getattr(torch.compiler, "is_exporting", None)
    return bool(check()) if check is not None else False
