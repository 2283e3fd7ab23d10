"""The only time loops of the package: the reference unroll and the fast paths beside it."""

from .lengths import check_lengths, reverse_padded, step_mask
from .run import ENGINES, run
from .unroll import unroll

__all__ = ["ENGINES", "check_lengths", "reverse_padded", "run", "step_mask", "unroll"]
