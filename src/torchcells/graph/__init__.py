"""Tracing a cell's step: the traced program, its regions and graph cutting.

The engine (hoisting, the fused step), anatomy (cell diagrams) and exporters read
cells through this package; it imports only :mod:`torchcells.cell` and torch.
"""

from .regions import CellProgram, trace_cell
from .rewrite import cut_graph, drop_detach, fast_targets
from .trace import TRACING, StateDtypeChange, TraceError, as_traced, batch_guards, op_name, trace_step

__all__ = ["TRACING", "CellProgram", "StateDtypeChange", "TraceError", "as_traced", "batch_guards", "cut_graph",
           "drop_detach", "fast_targets", "op_name", "trace_cell", "trace_step"]
