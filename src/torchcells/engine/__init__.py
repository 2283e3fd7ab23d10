"""The only time loops of the package (reference unroll; fast paths come beside it)."""

from .lengths import check_lengths, reverse_padded, step_mask
from .unroll import unroll

__all__ = ["check_lengths", "reverse_padded", "step_mask", "unroll"]
