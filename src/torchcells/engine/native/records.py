"""The records a native program is made of, defined once: what the planner writes, what the runtime reads.

Numbers the C++ side interprets are ``IntEnum`` members here and enums in
``runtime.cpp``. The runtime exports its enums' names and values (``enums()``);
:func:`enum_mismatch` compares them with :data:`ENUMS`, and the loader
(:func:`.build.library`) does not use a build whose table differs.

A program is a list of blocks over a table of tensor slots: a :class:`CallBlock`
(one aten operator called through the dispatcher), a :class:`FusedBlock` (a group
of elementwise operations over one ``[rows, cols]`` domain, run in vector
registers) or a :class:`ProductBlock` (a per-step product on a weight laid out in
column blocks once per sequence, run by torch's batch-reduce GEMM). :class:`NativePlan`
holds the three programs of one derived step and where the drivers find the values the
backward reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Mapping, Optional, Union

__all__ = ["Alloc", "ArgKind", "Block", "CallArg", "CallBlock", "DeferredPair", "ENUMS", "FusedBlock", "GroupInput",
           "GroupOutput", "Instr", "Layout", "NativePlan", "Op", "Operand", "OperandSource", "PACKED_INPUTS",
           "PRODUCT_BLOCK_COLS", "Packing", "ProductBlock", "ProgramSpec", "SavedKind", "SavedPlace", "enum_mismatch"]


class Op(IntEnum):
    """Elementwise opcodes of a fused group's register machine (``enum Op``)."""

    ADD = 0
    SUB = 1
    MUL = 2
    DIV = 3
    NEG = 4
    SIGMOID = 5
    TANH = 6
    EXP = 7
    LOG = 8
    RELU = 9
    SIGMOID_BWD = 10   # a * b * (1 - b): the gradient a through sigmoid's output b
    TANH_BWD = 11      # a * (1 - b²): the gradient a through tanh's output b
    WHERE = 12         # c where a is 0, else b
    THRESHOLD_BWD = 13  # a where b > imm, else 0
    MAX = 14
    MIN = 15
    SQRT = 16
    RSQRT = 17
    RECIP = 18
    ABS = 19
    COPY = 20
    SQUARE = 21
    FILL = 22          # imm everywhere


class Layout(IntEnum):
    """How an input of a fused group lies over its ``[R, C]`` domain (``enum Layout``)."""

    FULL = 0    # [R, C] (or a column block of a wider [R, ·] tensor)
    ROW = 1     # [C] or [1, C], broadcast over the rows
    COL = 2     # [R, 1], broadcast over the columns
    SCALAR = 3  # one element


class ArgKind(IntEnum):
    """What an argument of a call block is (``enum ArgKind``)."""

    TENSOR = 0         # the tensor in slot ``value``
    INT = 1
    DOUBLE = 2
    BOOL = 3
    NONE = 4
    INTLIST = 5
    TENSORLIST = 6     # the tensors in slots ``items``
    SCALAR_INT = 7     # an int passed as a Scalar
    SCALAR_DOUBLE = 8  # a float passed as a Scalar
    BOOLLIST = 9


class SavedKind(IntEnum):
    """Where a value the backward reads is kept over the sequence (``enum SavedKind``)."""

    PER_STEP = 0      # a [T, ...] buffer written by the forward, one row per step
    ONCE = 1          # depends on per-sequence values only: kept from the first step
    STATE_BEFORE = 2  # state leaf ``index`` before the step: read from the state history, nothing copied
    STATE_AFTER = 3   # state leaf ``index`` after the step: likewise


class OperandSource(IntEnum):
    """Where the operands of a deferred weight-gradient product lie for all steps (``enum OperandSource``)."""

    OWN_BUFFER = 0    # made by the step's backward: collected into a [T, ...] buffer of its own
    HOISTED_GRAD = 1  # the gradient buffer of hoisted input ``index``
    SAVED = 2         # the per-step saved buffer ``index``
    STATE_BEFORE = 3  # the state history of leaf ``index``, before each step
    STATE_AFTER = 4   # the same, after each step


class Packing(IntEnum):
    """How the per-sequence right operands ``W`` (``[K, N]``) of per-step float32 products are laid out
    once per sequence (Python-side only: the runtime reads the blocks a plan names)."""

    MKL = 0     # MKL's packed copy of ``Wᵀ`` and ``Wᵀ`` itself (two inputs): ``mkl::_mkl_linear``
    BLOCKS = 1  # ``W``'s columns in blocks (one input): a :class:`ProductBlock`


#: Columns of ``W`` per block for :data:`Packing.BLOCKS` (a block of ``K`` rows stays in cache
#: while the batch-reduce GEMM runs on it; 64 measured best or within noise of 32 and 128 from
#: B=8, H=128 to B=64, H=512, forward and backward shapes).
PRODUCT_BLOCK_COLS = 64

#: Extra program inputs per packed weight, by packing.
PACKED_INPUTS = {Packing.MKL: 2, Packing.BLOCKS: 1}


class ScanGates(IntEnum):
    """The gatings the scan's fused pass knows (``enum ScanGates``), by ``ScanGateForm.kind``
    (:mod:`torchcells.engine.gated_scan`)."""

    MIN_GRU = 0
    MIN_LSTM = 1


#: The enums shared with runtime.cpp, by the name its ``enums()`` gives them.
ENUMS: dict[str, type[IntEnum]] = {"Op": Op, "Layout": Layout, "ArgKind": ArgKind, "SavedKind": SavedKind,
                                   "OperandSource": OperandSource, "ScanGates": ScanGates}


def enum_mismatch(exported: Mapping[str, Mapping[str, int]],
                  enums: Optional[Mapping[str, type[IntEnum]]] = None) -> Optional[str]:
    """``None`` when the runtime's exported enums equal ``enums`` (default :data:`ENUMS`), else one
    line saying which enum differs and how."""
    ours_all = ENUMS if enums is None else enums
    for name in sorted(set(ours_all) | set(exported)):
        if name not in exported:
            return f"runtime.cpp exports no enum {name}"
        if name not in ours_all:
            return f"runtime.cpp exports an enum {name} that records.py lacks"
        ours = {m.name: int(m.value) for m in ours_all[name]}
        theirs = {str(k): int(v) for k, v in exported[name].items()}
        if ours != theirs:
            diff = sorted(set(ours.items()) ^ set(theirs.items()))
            first = ", ".join(f"{k}={'C++' if (k, v) in theirs.items() else 'Python'}:{v}" for k, v in diff[:4])
            return f"enum {name} differs between runtime.cpp and records.py: {first}"
    return None


# --- call blocks ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CallArg:
    """One argument of a call, in schema order."""

    kind: ArgKind
    value: int = 0                # TENSOR: the slot; INT, BOOL, SCALAR_INT: the value
    real: float = 0.0             # DOUBLE, SCALAR_DOUBLE: the value
    items: tuple[int, ...] = ()   # INTLIST, BOOLLIST: the values; TENSORLIST: the slots


@dataclass
class CallBlock:
    """An aten operator called from C++ through the dispatcher; its results go to ``outs``."""

    op: str          # qualified name, "aten::mm"
    overload: str    # "" for the default overload
    args: list[CallArg]
    outs: list[int]  # one slot per returned tensor (a list return fills several)
    once: bool = False  # reads only per-sequence values: run at the first step, then reused

    def reads(self) -> list[int]:
        """The slots this call reads."""
        return [a.value for a in self.args if a.kind == ArgKind.TENSOR] + \
            [s for a in self.args if a.kind == ArgKind.TENSORLIST for s in a.items]

    def add_to(self, program: Any) -> None:
        program.add_call(name=self.op, overload=self.overload, kinds=[int(a.kind) for a in self.args],
                         ints=[a.value for a in self.args], doubles=[a.real for a in self.args],
                         lists=[list(a.items) for a in self.args], outs=list(self.outs), once=self.once)


# --- fused groups ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class GroupInput:
    """Register ``i`` of a group holds input ``i``: read from ``slot``, laid as ``layout``, from column
    ``offset`` on (a column block of a wider tensor); a bool input is read as 0/1."""

    slot: int
    layout: Layout
    offset: int = 0
    is_bool: bool = False


@dataclass(frozen=True)
class Instr:
    """``dst = op(a, b, c)`` over registers (-1: not read); ``imm`` for FILL and THRESHOLD_BWD."""

    op: Op
    dst: int
    a: int
    b: int = -1
    c: int = -1
    imm: float = 0.0


@dataclass(frozen=True)
class GroupOutput:
    """Register ``reg`` written to ``slot``; with ``into_slot >= 0``, into that slot's columns from
    ``into_offset`` on (a ``cat`` written in place)."""

    reg: int
    slot: int
    into_slot: int = -1
    into_offset: int = 0


@dataclass(frozen=True)
class Alloc:
    """A ``[rows, cols]`` tensor made for ``slot`` before the group runs (a ``cat`` it writes into)."""

    slot: int
    rows: int
    cols: int


@dataclass
class FusedBlock:
    """Elementwise operations over one ``[rows, cols]`` domain, evaluated tile by tile."""

    rows: int
    cols: int
    inputs: list[GroupInput]
    code: list[Instr]
    outputs: list[GroupOutput]
    allocs: list[Alloc]
    n_regs: int

    def reads(self) -> list[int]:
        """The slots this group reads."""
        return [i.slot for i in self.inputs]

    def add_to(self, program: Any) -> None:
        program.add_fused(rows=self.rows, cols=self.cols,
                          inputs=[[i.slot, int(i.layout), i.offset, int(i.is_bool)] for i in self.inputs],
                          code=[[int(c.op), c.dst, c.a, c.b, c.c] for c in self.code],
                          imms=[c.imm for c in self.code],
                          outputs=[[o.reg, o.slot, o.into_slot, o.into_offset] for o in self.outputs],
                          allocs=[[a.slot, a.rows, a.cols] for a in self.allocs], n_regs=self.n_regs)


@dataclass
class ProductBlock:
    """``out = A @ W`` for a per-step ``A`` (``[M, K]``, float32) and a per-sequence ``W`` (``[K, cols]``)
    held in slot ``blocks`` as its columns in blocks of ``block_cols`` (``[ceil(cols / block_cols), K,
    block_cols]``, the last block padded), laid out once per sequence (:data:`Packing.BLOCKS`): one
    batch-reduce GEMM call a block, the blocks shared out over threads."""

    a: int
    blocks: int
    out: int
    cols: int
    block_cols: int

    def reads(self) -> list[int]:
        """The slots this product reads."""
        return [self.a, self.blocks]

    def add_to(self, program: Any) -> None:
        program.add_product(a=self.a, blocks=self.blocks, out=self.out, cols=self.cols, block_cols=self.block_cols)


Block = Union[CallBlock, FusedBlock, ProductBlock]


@dataclass
class ProgramSpec:
    """A planned program: ``n_inputs`` input slots, blocks in order, the output slots (-1: none)."""

    n_inputs: int
    n_slots: int
    output_slots: list[int]
    blocks: list[Block] = field(default_factory=list)
    n_fused_ops: int = 0
    n_calls: int = 0
    _built: Any = field(default=None, repr=False, compare=False)

    def build(self, lib: Any) -> Any:
        """The C++ ``Program`` (made once, then kept)."""
        if self._built is None:
            prog = lib.Program(self.n_slots, self.output_slots)
            for block in self.blocks:
                block.add_to(prog)
            self._built = prog
        return self._built


# --- the step's plan ------------------------------------------------------------------------------

@dataclass(frozen=True)
class SavedPlace:
    """Where one saved value (an input of the backward) is kept; ``index``: the state leaf."""

    kind: SavedKind
    index: int = 0


@dataclass(frozen=True)
class Operand:
    """One operand of a deferred product, for all steps at once."""

    source: OperandSource
    index: int = 0


@dataclass(frozen=True)
class DeferredPair:
    """The two operands of one deferred weight-gradient product ``sum_t A_t B_t``."""

    left: Operand
    right: Operand


@dataclass
class NativePlan:
    """The forward, backward and inference programs of one derived step, and where saved values live."""

    forward: ProgramSpec    # (*hoisted_t, *state, *consts[, valid], *packed) -> (*outs, *saved)
    backward: ProgramSpec   # (*saved, *tangents, *packed) -> (*grads, *deferred operand pairs)
    inference: ProgramSpec  # the forward without the saved values, for runs without autograd
    saved: list[SavedPlace]        # one per saved value, in the forward's order
    y_alias: int                   # the state leaf the forward's y is (its history is the output), or -1
    deferred: list[DeferredPair]   # one per deferred product, in const order
    fw_packed: list[int] = field(default_factory=list)  # consts whose packed copy the forward reads
    bw_packed: list[int] = field(default_factory=list)  # once-saved values whose packed copy the backward reads
    packing: Packing = Packing.MKL                      # how those copies are laid out

    def __post_init__(self) -> None:
        # what the drivers take, as plain ints (made once, not per call)
        self.saved_kinds = [int(p.kind) for p in self.saved]
        self.saved_indices = [p.index for p in self.saved]
        operands = [o for pair in self.deferred for o in (pair.left, pair.right)]
        self.operand_sources = [int(o.source) for o in operands]
        self.operand_indices = [o.index for o in operands]
