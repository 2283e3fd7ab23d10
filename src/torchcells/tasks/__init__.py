"""Real tasks on offline data."""

from .digits import RowReader, load_digit_sequences, train_digits

__all__ = ["RowReader", "load_digit_sequences", "train_digits"]
