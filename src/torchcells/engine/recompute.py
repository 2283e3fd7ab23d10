"""Recompute in backward: run a long sequence in chunks, keeping only chunk boundaries.

``run_chunked(..., chunk=K)`` has :func:`.unroll.unroll`'s contract. Time is cut into
chunks of ``K`` steps; each chunk runs on the chosen path under
``torch.utils.checkpoint``, so the forward keeps only the state between chunks, and
the backward re-runs one chunk at a time. Peak memory for the activations falls from
``O(T)`` to ``O(K + T/K)`` steps, for one extra forward. Direction and padding are
handled once, around all chunks (:mod:`.call`).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from .call import Call, Result, close_call, open_call
from .modes import is_exporting
from .paths import choose
from .run import run

__all__ = ["run_chunked"]


def run_chunked(cell: Any, x: Tensor, state: Any, *, lengths: Optional[Tensor] = None, reverse: bool = False,
                all_states: bool = False, engine: str = "auto", chunk: int) -> Result:
    from torch.utils.checkpoint import checkpoint

    steps = x.shape[0]
    # Under torch.export, one call: chunks cut in Python would fix the program to the example's length.
    if is_exporting() or steps <= chunk or not torch.is_grad_enabled():
        return run(cell, x, state, lengths=lengths, reverse=reverse, all_states=all_states, engine=engine)
    call = open_call(cell, x, state, lengths=lengths, reverse=reverse, all_states=all_states)
    leaves, spec = tree_flatten(state)
    n = len(leaves)
    outputs, history = [], []
    for start, piece in zip(range(0, steps, chunk), call.raw_x.split(chunk)):
        part = None
        if lengths is not None:
            part = (lengths - start).clamp(0, piece.shape[0])
            if int(part.min()) == piece.shape[0]:
                part = None
        # Chosen outside the checkpoint: a fused step is traced and derived here, where the
        # checkpoint's recomputation machinery (saved-tensor hooks, early stop) cannot see
        # the derivation's own autograd calls.
        path = choose(Call(cell, piece, tree_unflatten(leaves, spec), part, all_states), engine)

        def segment(piece: Tensor, *state_leaves: Tensor, part: Optional[Tensor] = part, path: Any = path):
            out, final, states = path.run(Call(cell, piece, tree_unflatten(list(state_leaves), spec), part,
                                               all_states))
            return (out, *tree_flatten(final)[0], *(tree_flatten(states)[0] if states is not None else []))

        result = checkpoint(segment, piece, *leaves, use_reentrant=False)
        outputs.append(result[0])
        leaves = list(result[1:1 + n])
        if all_states:
            history.append(result[1 + n:])
    states = tree_unflatten([torch.cat([h[j] for h in history]) for j in range(n)], spec) if all_states else None
    return close_call(call, (torch.cat(outputs), tree_unflatten(leaves, spec), states), reverse=reverse)
