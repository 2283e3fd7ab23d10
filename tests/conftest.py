"""Shared test configuration: a derandomized hypothesis profile, tensor comparisons and the reference loop.

Helpers are handed to tests as fixtures (``close``, ``tolerances``, ``reference_loop``;
``onnx_table_once`` for the tests that export to ONNX) rather than imported, so they work
whatever import mode pytest runs with and whatever other ``conftest.py`` files sit in
sub-folders. What a test needs while it is collected (its
parametrize tables) is a module of the tests' own, imported by name: ``fixture_cells``
(cells written for the tests), ``cell_table`` (tests/cells/, the table of cells) and
``pytorch2_modes`` (tests/engine/, the PyTorch 2 columns of the mode matrix); their
folders are put on ``sys.path`` here, so that works in every import mode too.

Hypothesis profiles (choose with ``HYPOTHESIS_PROFILE=...``):

* ``ci`` (default): derandomized, no deadline -- the same examples on every run.
* ``dev``: randomized, no deadline, for hunting new counter-examples locally.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pytest
import torch
from hypothesis import HealthCheck, settings

HERE = Path(__file__).resolve().parent
for folder in (HERE, HERE / "cells", HERE / "engine"):  # fixture_cells.py, cells/cell_table.py, engine/pytorch2_modes.py
    if str(folder) not in sys.path:
        sys.path.append(str(folder))

settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=50, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=200, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _threads_per_worker() -> int:
    """Intra-op threads for one pytest-xdist worker: the CPUs this process may use, shared out.

    ``make test`` runs the suite in one worker per CPU (``-n auto``); each worker left at
    torch's default (every CPU) would oversubscribe the machine, and torch's parallel regions
    then wait on each other. Tests that are about thread counts set their own
    (``tests/engine/test_threads.py``, the scans' and the fused drivers' thread tests).
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(1, int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(_threads_per_worker())

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


# --------------------------------------------------------------------------------------
# The reference loop: the oracle every layer and engine test compares against. Written
# here, plainly, without the library's engine or state helpers, so it stays independent.
# --------------------------------------------------------------------------------------
def _tree_map(fn: Callable[..., torch.Tensor], state: Any, *others: Any) -> Any:
    """``fn`` on every tensor of ``state`` (and the matching tensors of ``others``), keeping
    NamedTuple types; ``()`` stays ``()``."""
    if isinstance(state, torch.Tensor):
        return fn(state, *others)
    parts = [_tree_map(fn, part, *(o[i] for o in others)) for i, part in enumerate(state)]
    return type(state)(*parts) if hasattr(type(state), "_fields") else tuple(parts)


def run_reference_loop(cell: Any, x: torch.Tensor, state: Any, lengths: Optional[Sequence[int]] = None, *,
                       reverse: bool = False, all_states: bool = False) -> tuple[Any, ...]:
    """A cell run over time the plain way: one sequence at a time, one ``cell(x_t, state)`` call per step.

    ``x`` is time-major ``(T, B, ...)``; ``state`` is batched ``(B, ...)``: a tensor or any
    nesting of tuples and NamedTuples of tensors (``()`` for none); ``lengths`` has one entry
    per sequence (default: all ``T``; at least one step must run). Sequence ``b`` reads
    ``x[:L_b, b:b+1]``, its last valid step first for ``reverse``.

    Returns ``(outputs (T, B, ...), final_state)``, and with ``all_states`` also the state
    after every step ``(T, B, ...)``, both at the input's own positions (for ``reverse`` too)
    and zero at padded steps. A sequence of length 0 keeps its state.
    """
    steps, batch = x.shape[0], x.shape[1]
    lens = [steps] * batch if lengths is None else [int(n) for n in lengths]
    assert any(lens), "reference_loop: at least one step should run"
    ys: list[list[Any]] = [[None] * steps for _ in range(batch)]      # ys[b][t]: sequence b's output at t
    states: list[list[Any]] = [[None] * steps for _ in range(batch)]  # its state after step t
    finals = []
    for b in range(batch):
        s = _tree_map(lambda t: t[b:b + 1], state)
        for t in (reversed(range(lens[b])) if reverse else range(lens[b])):
            ys[b][t], s = cell(x[t, b:b + 1], s)
            states[b][t] = s
        finals.append(s)
    y_zero = torch.zeros_like(next(y for row in ys for y in row if y is not None))
    s_zero = _tree_map(lambda t: torch.zeros_like(t[:1]), state)
    outputs = torch.cat([torch.stack([y_zero if y is None else y for y in row]) for row in ys], 1)
    final = _tree_map(lambda *rows: torch.cat(rows), *finals)
    if not all_states:
        return outputs, final
    every = [_tree_map(lambda *ts: torch.stack(ts), *[s_zero if s is None else s for s in row]) for row in states]
    return outputs, final, _tree_map(lambda *rows: torch.cat(rows, 1), *every)


@pytest.fixture
def reference_loop() -> Callable[..., tuple[Any, ...]]:
    """``reference_loop(cell, x, state, lengths=None, *, reverse=False, all_states=False)``:
    :func:`run_reference_loop`, the hand-written loop every layer and engine is checked against."""
    return run_reference_loop


# --------------------------------------------------------------------------------------
# torch.onnx.export(dynamo=True) builds its table of ONNX translations anew on every call:
# onnxscript's torchlib functions are listed by parsing each one's source (about 500 of them,
# 0.5 s a call; 0.7 s with the table around it). The list depends only on the installed onnxscript,
# so the tests that export build it once per session. Every export still translates with the same
# table, so each file and each refusal is the one a user gets.
# --------------------------------------------------------------------------------------
class _TorchlibListedOnce:
    """Stands in for the ``onnxscript_apis`` module that torch's ONNX registry reads: the same
    module, its ``get_torchlib_ops()`` listed once and handed out as a new list each call."""

    def __init__(self, apis: Any) -> None:
        self._apis, self._listed = apis, None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._apis, name)

    def get_torchlib_ops(self) -> list:
        if self._listed is None:
            self._listed = tuple(self._apis.get_torchlib_ops())
        return list(self._listed)


@pytest.fixture(scope="session")
def onnx_table_once():
    """Tests that call ``torch.onnx.export(dynamo=True)`` (or ``torchcells.export_onnx``) use this:
    torch's table of onnxscript functions is listed once for the session (see above)."""
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:  # no onnxscript, or another torch: nothing to share
        _registration = None
    if not hasattr(_registration, "onnxscript_apis"):  # a torch that reads the table elsewhere: leave it
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_registration, "onnxscript_apis", _TorchlibListedOnce(_registration.onnxscript_apis))
        yield
