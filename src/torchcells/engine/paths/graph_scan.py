"""The ``export`` path: the cell's own step under torch's ``scan`` operator, for torch.export and ONNX.

The other paths loop over time in Python (the loop, the fused executors), call the native
runtime (opaque to the exporter's fake tensors: "Cannot access data pointer"), or choose
their chunking from the data (the parallel scan's decay bound, a guard torch.export cannot
keep). A graph that records one of them is fixed to the example's number of steps. This
path hands the time loop to ``torch._higher_order_ops.scan``, one operator over the whole
sequence whose body is the cell's ``forward`` traced once, so the exported program (and the
ONNX ``Scan`` it becomes) runs any number of steps and any batch.

Per step ``t`` of the forward-reading call (:mod:`..call`), with ``keep_t`` the step's
validity ``(B,)`` where there are lengths, exactly the loop's operations::

    y_t, new = cell(x_t, s_{t-1})
    s_t = where(keep_t, new, s_{t-1});  y_t = y_t masked to 0 where not keep_t

so the results are the reference loop's (:mod:`..unroll`). ``reverse`` and every-step states
are the bracket's, as on every path.

In ``engine="auto"`` the path runs only while ``torch.compiler.is_exporting()``; elsewhere
it defers to the faster paths. Named (``engine="export"``) it also runs eagerly -- for
checking an exportable model against the loop, not for speed. Eagerly (nothing compiling)
the same step body is applied in a Python loop rather than through torch's eager ``scan``,
which compiles its body with dynamo on every call's first sight and so fails from several
threads, under torch.func transforms and (through its autograd) for second derivatives; the
body, and so every result, is the one the exported program runs.
"""

from __future__ import annotations

import sys
from typing import Optional

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from ...cell import cell_name, check_step, state_leaves, step_pair
from ..call import Call, Path, Result, expand
from ..modes import is_exporting


class GraphScanPath(Path):
    """The ``export`` path: any cell with a state, as one ``scan`` operator (see the module docstring)."""

    name = "export"
    exportable = True
    #: in auto it runs only under torch.export, where no call is short (:func:`.short_call`): a
    #: short call is never its, whatever its length
    short_steps = sys.maxsize

    def accepts(self, call: Call) -> Optional[str]:
        if not state_leaves(call.state):
            return "engine='export' needs a cell with at least one state tensor (the scan's carry)"
        return None

    def defer(self, call: Call) -> Optional[str]:
        if not is_exporting():
            return "engine='export' runs in auto only under torch.export (elsewhere a faster path runs)"
        return None

    def run(self, call: Call) -> Result:
        return scan_over_time(call)


def scan_over_time(call: Call) -> Result:
    """Run a forward call with torch's ``scan`` operator; ``(outputs, final, states or None)``.

    The carry is the state's leaves as a flat tuple (scan's body may return tensors only, not a
    user's NamedTuple), rebuilt into the cell's state structure at each step and at the end."""
    from torch._higher_order_ops.scan import scan

    cell, owner, valid, keep_states = call.cell, cell_name(call.cell), call.valid, call.all_states
    leaves, spec = tree_flatten(call.state)
    fresh_carry = torch.compiler.is_compiling() and not is_exporting()

    def step(carry: tuple[Tensor, ...], inputs: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        x_t, state = inputs[0], tree_unflatten(list(carry), spec)
        y, new = step_pair(owner, cell(x_t, state))
        check_step(owner, x_t, state, y, new)
        new_leaves = tree_flatten(new)[0]
        if valid is not None:
            keep = inputs[1]
            new_leaves = [torch.where(expand(keep, n), n, o) for n, o in zip(new_leaves, carry)]
            y = y.masked_fill(~expand(keep, y), 0)
        # scan's body may neither return one tensor twice nor alias its inputs: fresh per-step outputs
        out = (y.clone(), *(n.clone() for n in new_leaves)) if keep_states else (y.clone(),)
        if fresh_carry:  # torch.compile's AOT autograd refuses a carry it cannot prove unaliased
            new_leaves = [n.clone() for n in new_leaves]
        return tuple(new_leaves), out

    inputs = (call.x,) if valid is None else (call.x, valid)
    run = scan if torch.compiler.is_compiling() else _eager_scan
    final, stacked = run(step, _own_leaves(leaves), inputs)
    states = tree_unflatten(list(stacked[1:]), spec) if keep_states else None
    return stacked[0], tree_unflatten(list(final), spec), states


def _eager_scan(step, carry: tuple[Tensor, ...], inputs: tuple[Tensor, ...]
                ) -> tuple[tuple[Tensor, ...], list[Tensor]]:
    """What ``scan(step, carry, inputs)`` computes, as a Python loop over the leading dimension."""
    outputs: list[tuple[Tensor, ...]] = []
    for t in range(inputs[0].shape[0]):
        carry, out = step(carry, tuple(i[t] for i in inputs))
        outputs.append(out)
    return carry, [torch.stack(column) for column in zip(*outputs)]


def _own_leaves(leaves: list[Tensor]) -> tuple[Tensor, ...]:
    """``leaves`` with no tensor appearing twice (scan's carry may not alias itself: an initial
    ``LSTMState(zeros, zeros)`` holds one tensor twice)."""
    seen: set[int] = set()
    own = []
    for t in leaves:
        own.append(t.clone() if id(t) in seen else t)
        seen.add(id(t))
    return tuple(own)
