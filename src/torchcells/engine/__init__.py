"""The only time loops of the package: the reference unroll and the fast paths beside it."""

from .lengths import check_lengths, reverse_padded, step_mask
from .run import engines, run
from .unroll import unroll

__all__ = ["check_lengths", "engines", "reverse_padded", "run", "step_mask", "unroll"]
