"""Variable lengths: validation, step masks and per-sequence reversal.

A batch of padded sequences ``(T, B, ...)`` comes with ``lengths`` ``(B,)``: sequence
``b`` is valid at steps ``0 … lengths[b] − 1`` and padded after. Lengths may come in
any order; a length of 0 is allowed (the sequence's outputs are all zero and its
final state is its initial state).
"""

from __future__ import annotations

import numbers
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from .modes import is_exporting

Lengths = Union[Tensor, Sequence[int]]


def check_lengths(owner: str, lengths: Any, steps: int, batch: int) -> Optional[Tensor]:
    """Validate ``lengths`` against ``T = steps`` and ``B = batch``.

    Returns a CPU ``int64`` tensor, or ``None`` when every sequence is full length
    (nothing to mask). Raises ``TypeError``/``ValueError`` naming ``owner``.
    """
    if lengths is None:
        return None
    if isinstance(lengths, Tensor):
        if lengths.dtype == torch.bool or lengths.is_floating_point() or lengths.is_complex():
            raise TypeError(f"{owner}: lengths should hold integers, got dtype {lengths.dtype}")
        if lengths.dim() != 1:
            raise ValueError(f"{owner}: lengths should be 1-D with one length per sequence, "
                             f"got shape {tuple(lengths.shape)}")
        if lengths.device.type == "meta":
            raise ValueError(f"{owner}: lengths should hold values (on the CPU or the input's device), "
                             f"got a tensor on the meta device, which has none")
        lens = lengths.detach().to("cpu", torch.int64)
        if torch.compiler.is_compiling():
            return _checked_in_graph(owner, lens, steps, batch)
    else:
        try:
            values = list(lengths)
        except TypeError:
            raise TypeError(f"{owner}: lengths should be a 1-D tensor or a sequence of ints, "
                            f"got {type(lengths).__name__}") from None
        ints = []
        for v in values:
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{owner}: lengths should hold ints, got {v!r} ({type(v).__name__})")
            ints.append(int(v))
        if any(not -2**63 <= v < 2**63 for v in ints):
            big = next(v for v in ints if not -2**63 <= v < 2**63)
            raise ValueError(f"{owner}: lengths should be " + (f"<= the number of steps ({steps})" if big > 0 else
                                                                ">= 0") + f", got {big}")
        lens = torch.tensor(ints, dtype=torch.int64).reshape(-1)
    if lens.numel() != batch:
        raise ValueError(f"{owner}: lengths has {lens.numel()} entries, expected one per sequence "
                         f"of the batch ({batch})")
    if is_exporting() and isinstance(lengths, Tensor):
        # The lengths are an input of the exported program: their values are not known here, and
        # a check (or the "all full" shortcut) on them would fix the program to the example's.
        return lens
    if batch:
        lo, hi = int(lens.min()), int(lens.max())
        if lo < 0:
            raise ValueError(f"{owner}: lengths should be >= 0, got {lo}")
        if hi > steps:
            raise ValueError(f"{owner}: lengths should be <= the number of steps ({steps}), got {hi}")
        if lo == steps:
            return None
    return lens


def _checked_in_graph(owner: str, lens: Tensor, steps: int, batch: int) -> Tensor:
    """Under torch.compile: the range check as an assertion of the graph (reading the values here
    would stop the graph; they are data). Full lengths are not told apart (the masked step runs)."""
    if lens.dim() != 1 or lens.shape[0] != batch:
        raise ValueError(f"{owner}: lengths should hold one length per sequence of the batch")
    torch._assert_async(((lens >= 0) & (lens <= steps)).all(),
                        f"{owner}: lengths should be >= 0 and <= the number of steps")
    return lens


def step_mask(lengths: Tensor, steps: int, device: torch.device) -> Tensor:
    """``(T, B)`` bool: ``True`` where step ``t`` of sequence ``b`` is valid."""
    lens = lengths.to(device)
    return torch.arange(steps, device=device).unsqueeze(1) < lens.unsqueeze(0)


def reverse_padded(x: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """Reverse each sequence of ``x`` ``(T, B, ...)`` within its own length.

    Step ``t < L_b`` of sequence ``b`` goes to ``L_b − 1 − t``; padded steps stay
    where they are. Applying it twice gives ``x`` back.
    """
    if lengths is None:
        return x.flip(0)
    steps, batch = x.shape[0], x.shape[1]
    lens = lengths.to(x.device)
    t = torch.arange(steps, device=x.device).unsqueeze(1).expand(steps, batch)
    index = torch.where(t < lens, lens - 1 - t, t)
    index = index.reshape(steps, batch, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, index)
