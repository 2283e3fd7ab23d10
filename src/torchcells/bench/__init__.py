"""Benchmarks: torchcells against torch.nn, measured as ratios of medians (``torchcells bench``)."""

from .context import autocast_rows, compile_rows, new_batch_rows, onnx_rows
from .fresh import first_call_rows, memory_rows
from .machine import ALLOCATORS, Allocator, cpu, machine, settings
from .matrix import plan, run_matrix
from .report import GOALS, Goal, Matrix, Run, document, measured, to_markdown, verdict
from .rows import (Row, UserLSTMCell, dropin_rows, gru_rows, interleaved, lstm_rows, scan_rows,
                   streaming_rows)

__all__ = ["ALLOCATORS", "Allocator", "GOALS", "Goal", "Matrix", "Row", "Run", "UserLSTMCell", "autocast_rows",
           "compile_rows", "cpu", "document", "dropin_rows", "first_call_rows", "gru_rows", "interleaved",
           "lstm_rows", "machine", "measured", "memory_rows", "new_batch_rows", "onnx_rows", "plan", "run_matrix",
           "scan_rows", "settings", "streaming_rows", "to_markdown", "verdict"]
