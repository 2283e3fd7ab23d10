"""Shared test configuration: a derandomized hypothesis profile and tensor comparisons.

Helpers are handed to tests as fixtures (``close``, ``tolerances``) rather than
imported, so they work whatever import mode pytest runs with and whatever other
``conftest.py`` files sit in sub-folders.

Hypothesis profiles (choose with ``HYPOTHESIS_PROFILE=...``):

* ``ci`` (default): derandomized, no deadline -- the same examples on every run.
* ``dev``: randomized, no deadline, for hunting new counter-examples locally.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=50, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=200, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# One place for the tolerances every parity test uses. float64 comparisons are
# between mathematically identical computations that may only differ in the order
# of floating-point sums; float32 ones between different kernels at float32 precision.
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"atol": 1e-12, "rtol": 1e-10},
    torch.float32: {"atol": 1e-5, "rtol": 1e-4},
    torch.float16: {"atol": 1e-2, "rtol": 1e-2},
    torch.bfloat16: {"atol": 5e-2, "rtol": 5e-2},
}


def tolerances_for(dtype: torch.dtype) -> dict[str, float]:
    """``{"atol": ..., "rtol": ...}`` for comparisons made in ``dtype``."""
    return dict(TOLERANCES[dtype])


def assert_close(actual: Any, expected: Any, *, dtype: Optional[torch.dtype] = None, what: str = "") -> None:
    """Assert two tensors (or same-structured tuples of tensors) are close.

    Tolerances come from ``dtype`` (default: ``expected``'s dtype). Shapes and
    dtypes must match exactly; ``None`` only matches ``None`` (a gradient that
    one side has and the other lacks is a failure, not a pass).
    """
    if isinstance(expected, (tuple, list)):
        assert isinstance(actual, (tuple, list)) and len(actual) == len(expected), (
            f"{what}: structure differs: {type(actual).__name__} of "
            f"{len(actual) if isinstance(actual, (tuple, list)) else '?'} vs {len(expected)}")
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, dtype=dtype, what=f"{what}[{i}]")
        return
    if expected is None or actual is None:
        assert actual is None and expected is None, f"{what}: one side is None: {actual!r} vs {expected!r}"
        return
    assert isinstance(actual, torch.Tensor), f"{what}: expected a tensor, got {type(actual).__name__}"
    tol = tolerances_for(dtype or expected.dtype)
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{what}: {m}" if what else m)


@pytest.fixture
def close() -> Callable[..., None]:
    """``close(actual, expected, dtype=None, what="")``: :func:`assert_close`."""
    return assert_close


@pytest.fixture
def tolerances() -> Callable[[torch.dtype], dict[str, float]]:
    """``tolerances(dtype) -> {"atol", "rtol"}``."""
    return tolerances_for
