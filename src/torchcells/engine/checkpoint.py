"""Recompute in backward: run a long sequence in chunks, keeping only chunk boundaries.

``run_chunked(..., chunk=K)`` has :func:`.unroll.unroll`'s contract. Time is cut into
chunks of ``K`` steps; each chunk runs on the chosen engine under
``torch.utils.checkpoint``, so the forward keeps only the state between chunks, and
the backward re-runs one chunk at a time. Peak memory for the activations falls from
``O(T)`` to ``O(K + T/K)`` steps, for one extra forward.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..cell import map_state
from .lengths import reverse_padded

__all__ = ["run_chunked"]


def run_chunked(cell: Any, x: Tensor, state: Any, *, lengths: Optional[Tensor] = None, reverse: bool = False,
                all_states: bool = False, engine: str = "auto", chunk: int) -> tuple[Tensor, Any, Optional[Any]]:
    from torch.utils.checkpoint import checkpoint

    from .run import run

    steps = x.shape[0]
    if steps <= chunk or not torch.is_grad_enabled():
        return run(cell, x, state, lengths=lengths, reverse=reverse, all_states=all_states, engine=engine)
    _trace_before_checkpointing(cell, x, state, engine, masked=lengths is not None)
    if reverse:
        x = reverse_padded(x, lengths)  # each sequence now starts at step 0; chunks run forwards
    leaves, spec = tree_flatten(state)
    n = len(leaves)
    outputs, history = [], []
    for start, piece in zip(range(0, steps, chunk), x.split(chunk)):
        part = None
        if lengths is not None:
            part = (lengths - start).clamp(0, piece.shape[0])
            if int(part.min()) == piece.shape[0]:
                part = None

        def segment(piece: Tensor, *state_leaves: Tensor, part: Optional[Tensor] = part):
            out, final, states = run(cell, piece, tree_unflatten(list(state_leaves), spec), lengths=part,
                                     all_states=all_states, engine=engine)
            return (out, *tree_flatten(final)[0], *(tree_flatten(states)[0] if states is not None else []))

        result = checkpoint(segment, piece, *leaves, use_reentrant=False)
        outputs.append(result[0])
        leaves = list(result[1:1 + n])
        if all_states:
            history.append(result[1 + n:])
    out = torch.cat(outputs)
    states = tree_unflatten([torch.cat([h[j] for h in history]) for j in range(n)], spec) if all_states else None
    if reverse:
        out = reverse_padded(out, lengths)
        if states is not None:
            states = map_state(lambda s: reverse_padded(s, lengths), states)
    return out, tree_unflatten(leaves, spec), states


def _trace_before_checkpointing(cell: Any, x: Tensor, state: Any, engine: str, masked: bool) -> None:
    """Trace and derive the fused step outside ``checkpoint``: its recomputation machinery
    (saved-tensor hooks, early stop) must not see the derivation's own autograd calls.
    Failures are cached and reported later by the engine, as without chunks."""
    from . import scan
    from .fused import fused_program
    from ..graph import TraceError

    if engine not in ("auto", "fused") or scan.is_scannable(cell):
        return
    for variant in {False, masked}:
        try:
            fused_program(cell, x[0], state, masked=variant)
        except TraceError:
            pass
