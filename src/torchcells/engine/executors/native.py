"""The native executor: the time loops in the C++ runtime (:mod:`..native`), on the CPU.

It plans a step on first use -- the derived graphs with aten targets
(``FusedKernels.aten_graphs``) into native programs (:func:`..native.plan.plan_step`)
-- and keeps the plan, or why there is none, in the kernels' ``lowered`` cache under
its name. It declines (with the reason) a step on another device, where the runtime
is not built, and a step it cannot plan; the Python executor then runs.

A step traced under autocast runs here too (with autocast off, as every traced graph runs:
``graph.as_traced``): its graphs hold autocast's casts (``_to_copy``),
its bfloat16 products and its mixed-dtype elementwise operations as the trace made them; the
runtime calls each through the dispatcher as traced (autocast off: a product the cell kept in
float32 inside ``torch.autocast(enabled=False)`` stays float32), and fuses into groups only
operations whose operands and result are one float32/float64 dtype. Products and casts thus
stay in bfloat16 where the loop's are (``tests/engine/test_mixed_precision.py``, native rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, Union

import torch
from torch import Tensor

from ..native import build
from ..native.records import NativePlan, Packing
from ..native.sequence import run_backward, run_forward
from .base import SequenceInputs, SequenceNode, SequenceOutputs, Trained

if TYPE_CHECKING:
    from ..derive import FusedKernels

__all__ = ["NativeExecutor", "native_plan"]


class NativeSequence(SequenceNode):
    """The sequence node, run by the native executor."""


@dataclass(slots=True)
class _Memo:
    kernels: "FusedKernels"
    plan: NativePlan
    hoisted_meta: list[tuple[torch.Size, torch.dtype]]
    has_saved: list[bool]  # per saved value: a buffer was saved (state kinds live in the history)
    n_state: int
    steps: int
    batch: int
    device: torch.device


def native_plan(kernels: "FusedKernels") -> Union[NativePlan, str]:
    """The step planned for the native runtime (made on first use, then kept), or why it cannot be."""
    found = kernels.lowered.get(NativeExecutor.name)
    if found is None:
        from ..native.plan import NotNative, plan_step

        fw, bw = kernels.aten_graphs
        program = kernels.program
        try:
            found = plan_step(fw, bw, n_outputs=kernels.n_outputs, n_hoisted=program.n_hoisted,
                              n_state=program.n_state, n_const=program.n_const)
        except NotNative as e:
            found = f"the step cannot be planned for the native runtime: {e}"
        except Exception as e:  # a failure of the planner itself: the Python executor runs, saying why
            first = (str(e).splitlines() or [""])[0]
            found = f"planning the step for the native runtime failed: {type(e).__name__}: {first}"
        kernels.lowered[NativeExecutor.name] = found
    return found


class NativeExecutor:
    """The step loops in C++: the CPU, where the runtime is built and the step can be planned."""

    name = "native"
    node: type[SequenceNode] = NativeSequence

    def accepts(self, kernels: "FusedKernels", device: torch.device) -> Optional[str]:
        if device.type != "cpu":
            return f"the native runtime runs on the CPU, not {device.type}"
        if build.library() is None:
            return build.notice()
        found = native_plan(kernels)
        return found if isinstance(found, str) else None

    def forward(self, inputs: SequenceInputs, want_states: bool) -> Trained:
        kernels = inputs.kernels
        plan = _plan(kernels)
        state = [s.contiguous() for s in inputs.state]
        consts = _contiguous_consts(plan, inputs.consts)
        ys, final, history, saved = run_forward(build.library(), plan, kernels.n_outputs, inputs.hoisted, state,
                                                consts, inputs.valid, inputs.steps, save=True)
        memo = _Memo(kernels, plan, [(h.shape, h.dtype) for h in inputs.hoisted], [s is not None for s in saved],
                     len(state), ys.shape[0], ys.shape[1] if ys.dim() > 1 else 1, ys.device)
        outputs = [ys] + [f.clone() for f in final]
        if want_states:
            outputs += [h[1:].clone() for h in history]
        return Trained(outputs, [*history, *[s for s in saved if s is not None]], memo)

    def backward(self, memo: _Memo, saved: Sequence[Tensor], d_ys: Optional[Tensor], d_final: list[Optional[Tensor]],
                 d_states: list[Optional[Tensor]]) -> list[Optional[Tensor]]:
        kernels, n_s = memo.kernels, memo.n_state
        history = list(saved[:n_s])
        rest = iter(saved[n_s:])
        buffers = [next(rest) if has else None for has in memo.has_saved]
        zero_like = [torch.zeros(shape, dtype=dtype, device=memo.device) for shape, dtype in kernels.tangent_meta]
        d_hoisted = [torch.empty(shape, dtype=dtype, device=memo.device) for shape, dtype in memo.hoisted_meta]
        result = run_backward(build.library(), memo.plan, kernels, buffers, history,
                              d_ys.contiguous() if d_ys is not None else None, d_final,
                              [g.contiguous() if g is not None else None for g in d_states], d_hoisted, zero_like,
                              memo.steps, memo.batch)
        n_h, n_c = len(d_hoisted), kernels.program.n_const
        d_consts = list(result[n_h + n_s:n_h + n_s + n_c])
        for k, summed in zip(sorted(kernels.deferred), result[n_h + n_s + n_c:]):
            d_consts[k] = kernels.deferred[k](summed) if summed is not None else None
        return [*result[:n_h + n_s], *d_consts]

    def infer(self, inputs: SequenceInputs, want_states: bool) -> SequenceOutputs:
        plan = _plan(inputs.kernels)
        state = [s.contiguous() for s in inputs.state]
        ys, final, history, _ = run_forward(build.library(), plan, inputs.kernels.n_outputs, inputs.hoisted, state,
                                            _contiguous_consts(plan, inputs.consts), inputs.valid, inputs.steps,
                                            save=False)
        return SequenceOutputs(ys, final, [h[1:] for h in history] if want_states else None)


def _contiguous_consts(plan: NativePlan, consts: Sequence[Tensor]) -> list[Tensor]:
    """The per-sequence values as the drivers take them: one contiguous copy of each (a transposed
    weight: faster products and views), except a weight whose products run on its column blocks
    (made from it directly, one copy; what else reads it reads views)."""
    blocked = set(plan.fw_packed) if plan.packing is Packing.BLOCKS else set()
    return [c if i in blocked else c.contiguous() for i, c in enumerate(consts)]


def _plan(kernels: "FusedKernels") -> NativePlan:
    found = native_plan(kernels)
    if isinstance(found, str):
        raise RuntimeError(f"torchcells: the native executor ran a step it declined: {found}")
    return found
