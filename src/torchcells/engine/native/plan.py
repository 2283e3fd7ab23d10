"""Planning a derived step graph into a native program.

Every node of the graph becomes either

* part of a **fused group**: an elementwise operation (``sigmoid``, ``mul``,
  ``tanh_backward``, ``where`` ...) whose result is a 1-D or 2-D floating tensor.
  Operations on the same ``[R, C]`` domain are gathered into one group, as early as
  their inputs allow, and the group is evaluated tile by tile in vector registers:
  only values used outside the group are written out. Inputs may be full
  ``[R, C]`` tensors, column blocks of a wider tensor (a ``split`` of the gates,
  read in place), rows broadcast over ``R``, per-row values, or scalars. A ``cat``
  of group results along the last dimension is written in place by the group.
* a **call**: any other aten operation (``addmm``, ``mm``, ``sum``, views),
  called from C++ through the dispatcher with its arguments encoded here;
* a **product** of a per-step float32 ``A`` by a per-sequence ``W``, on a copy of ``W``
  made once per sequence (:class:`~.records.Packing`): its column blocks, run by
  torch's batch-reduce GEMM (a :class:`~.records.ProductBlock`), or MKL's packed form.

A graph is planned by :class:`_Planner` in passes (blocks, folded cats, splits read
in place, slots, encoding); each group is encoded by :class:`_GroupEncoder`. The
result is plain data (:mod:`.records`); the C++ ``Program`` is built from it when
the runtime runs it. :func:`plan_step` plans the three programs of a derived step.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Optional, Union

import torch
from torch import fx

from .records import (Alloc, ArgKind, Block, CallArg, CallBlock, DeferredPair, FusedBlock, GroupInput, GroupOutput,
                      Instr, Layout, NativePlan, Op, Operand, OperandSource, PACKED_INPUTS, PRODUCT_BLOCK_COLS,
                      Packing, ProductBlock, ProgramSpec, SavedKind, SavedPlace)

aten = torch.ops.aten

__all__ = ["NotNative", "plan_graph", "plan_step", "product_packing"]


class NotNative(Exception):
    """The graph uses something the native runtime does not run (the message says what)."""


_UNARY = {aten.neg.default: Op.NEG, aten.sigmoid.default: Op.SIGMOID, aten.tanh.default: Op.TANH,
          aten.exp.default: Op.EXP, aten.log.default: Op.LOG, aten.relu.default: Op.RELU,
          aten.sqrt.default: Op.SQRT, aten.rsqrt.default: Op.RSQRT, aten.reciprocal.default: Op.RECIP,
          aten.abs.default: Op.ABS, aten.clone.default: Op.COPY, aten.alias.default: Op.COPY}
_BINARY = {aten.mul.Tensor: Op.MUL, aten.div.Tensor: Op.DIV, aten.sigmoid_backward.default: Op.SIGMOID_BWD,
           aten.tanh_backward.default: Op.TANH_BWD, aten.maximum.default: Op.MAX, aten.minimum.default: Op.MIN,
           aten.mul.Scalar: Op.MUL, aten.div.Scalar: Op.DIV}
_WITH_ALPHA = {aten.add.Tensor: Op.ADD, aten.sub.Tensor: Op.SUB, aten.add.Scalar: Op.ADD, aten.sub.Scalar: Op.SUB}
_ELEMENTWISE = (set(_UNARY) | set(_BINARY) | set(_WITH_ALPHA)
                | {aten.rsub.Scalar, aten.where.self, aten.masked_fill.Scalar, aten.threshold_backward.default,
                   aten.pow.Tensor_Scalar})
# c10::ScalarType numbers
_SCALAR_TYPES = {torch.uint8: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.int64: 4, torch.float16: 5,
                 torch.float32: 6, torch.float64: 7, torch.bool: 11, torch.bfloat16: 15}
_SPLITS = {aten.split.Tensor, aten.split_with_sizes.default, aten.unsafe_split.Tensor,
           aten.unsafe_split_with_sizes.default}


def _args(node: Any) -> Any:
    """A node's arguments, untyped (fx's Argument union is too wide to be useful here)."""
    return node.args


def _val(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def _output_node(graph: fx.Graph) -> fx.Node:
    return next(n for n in graph.nodes if n.op == "output")


def _placeholders(graph: fx.Graph) -> list[fx.Node]:
    return [n for n in graph.nodes if n.op == "placeholder"]


def _domain(node: fx.Node) -> Optional[tuple[int, int, torch.dtype]]:
    v = _val(node)
    if not isinstance(v, torch.Tensor) or not v.is_floating_point() or v.dim() not in (1, 2):
        return None
    if v.dtype not in (torch.float32, torch.float64):
        return None
    rows, cols = (1, v.shape[0]) if v.dim() == 1 else (v.shape[0], v.shape[1])
    if rows == 0 or cols == 0:
        return None
    return int(rows), int(cols), v.dtype


def _layout(node: fx.Node, rows: int, cols: int) -> Optional[Layout]:
    shape = tuple(_val(node).shape)
    if shape == (rows, cols) or (rows == 1 and shape == (cols,)):
        return Layout.FULL
    if shape in ((cols,), (1, cols)):
        return Layout.ROW
    if shape == (rows, 1):
        return Layout.COL
    if all(s == 1 for s in shape):
        return Layout.SCALAR
    return None


def _tensor_operands(node: fx.Node) -> list[fx.Node]:
    return [a for a in _args(node) if isinstance(a, fx.Node) and not _is_number(a)]


def _is_number(node: fx.Node) -> bool:
    """A 0-dim constant made in the graph (``scalar_tensor``): read by groups as a number."""
    return node.op == "call_function" and node.target is aten.scalar_tensor.default and \
        isinstance(_args(node)[0], (int, float)) and not node.kwargs.get("dtype") in (torch.bool,)


def _fusable(node: fx.Node) -> Optional[tuple]:
    """The ``(rows, cols, dtype)`` domain of an elementwise node a group can run, else ``None``."""
    if node.op != "call_function" or node.target not in _ELEMENTWISE:
        return None
    dom = _domain(node)
    if dom is None:
        return None
    rows, cols, dtype = dom
    if node.kwargs and set(node.kwargs) - {"alpha"}:
        return None
    if node.target is aten.pow.Tensor_Scalar and _args(node)[1] != 2:
        return None
    for a in _tensor_operands(node):
        v = _val(a)
        if not isinstance(v, torch.Tensor) or _layout(a, rows, cols) is None:
            return None
        is_cond = (node.target is aten.where.self and a is _args(node)[0]) or \
                  (node.target is aten.masked_fill.Scalar and a is _args(node)[1])
        if v.dtype != dtype and not (is_cond and v.dtype == torch.bool):
            return None
    for a in _args(node):
        if not isinstance(a, (fx.Node, int, float)) or isinstance(a, bool):
            return None
        if isinstance(a, fx.Node) and _is_number(a) and _val(a).dtype != dtype and not _val(a).is_floating_point():
            return None
    return dom


def _bias_of(node: fx.Node) -> Optional[tuple[fx.Node, Layout]]:
    """``addmm(U, h, W)`` (only used by one split) with ``U`` full-shaped or a row: ``(U, layout)``."""
    args = _args(node)
    if not (node.op == "call_function" and node.target is aten.addmm.default and len(node.users) == 1
            and not node.kwargs and len(args) == 3 and isinstance(args[0], fx.Node)):
        return None
    u, out = _val(args[0]), _val(node)
    if u.dtype != out.dtype or out.dim() != 2:
        return None
    if tuple(u.shape) == tuple(out.shape):
        return args[0], Layout.FULL
    if tuple(u.shape) in ((out.shape[1],), (1, out.shape[1])):
        return args[0], Layout.ROW
    return None


class _Group:
    """Elementwise nodes of one domain ``key`` gathered into one fused block, and the cats it writes."""

    def __init__(self, key: tuple) -> None:
        self.key = key
        self.nodes: list[fx.Node] = []
        self.cats: list[fx.Node] = []


def plan_graph(graph: fx.Graph, input_alias: Optional[list[int]] = None,
               outputs: Optional[list] = None, packed: Optional[list[fx.Node]] = None,
               per_sequence: Optional[set] = None, packing: Packing = Packing.MKL) -> ProgramSpec:
    """Plan ``graph`` (aten targets); ``input_alias[i]`` is the input slot placeholder ``i`` reads;
    ``outputs`` replaces the graph's own output list. ``packed``: placeholders ``B`` (per-sequence
    ``[K, N]`` right operands of per-step products) whose copy laid out as ``packing`` says comes as
    extra inputs after the graph's own (MKL: its packed form and ``Bᵀ``; BLOCKS: its column blocks):
    ``mm(A, B)`` then runs on that copy.
    ``per_sequence``: placeholders that hold the same value at every step; a call that reads only
    those (or what such calls made) is marked to run once per sequence, not once per step."""
    return _Planner(graph, input_alias, outputs, packed, per_sequence, packing).plan()


class _Planner:
    """Plans one graph in passes over shared state: blocks, folded cats, splits read in place,
    slots, then the encoded program."""

    def __init__(self, graph: fx.Graph, input_alias: Optional[list[int]], outputs: Optional[list],
                 packed: Optional[list[fx.Node]], per_sequence: Optional[set], packing: Packing) -> None:
        self.graph = graph
        self.placeholders = _placeholders(graph)
        self.alias = input_alias if input_alias is not None else list(range(len(self.placeholders)))
        n_inputs = max(self.alias) + 1 if self.alias else 0
        # per packed weight, the slots of its copy: (MKL-packed, transpose) or (column blocks,)
        self.packing = packing
        width = PACKED_INPUTS[packing]
        self.pack_slots = {b: tuple(range(n_inputs + width * k, n_inputs + width * (k + 1)))
                           for k, b in enumerate(packed or [])}
        self.n_inputs = n_inputs + width * len(self.pack_slots)
        self.output_node = _output_node(graph)
        self.outputs = outputs
        # with an output list of its own: a group writes only values read outside it or listed there
        self.needed = None if outputs is None else {o for o in outputs if isinstance(o, fx.Node)}
        self.per_sequence = per_sequence or set()
        self.blocks: list[Union[_Group, fx.Node]] = []        # pass 1
        self.group_of: dict[fx.Node, _Group] = {}
        self.folded_cats: set[fx.Node] = set()                 # pass 2
        self.column_of: dict[fx.Node, tuple[Any, int]] = {}    # pass 3: split piece -> (base, first column)
        self.skipped_splits: set[fx.Node] = set()
        self.bias_of: dict[fx.Node, tuple[fx.Node, Layout]] = {}
        self.materialize: set[fx.Node] = set()
        self.slot: dict[fx.Node, Any] = {}                     # pass 4
        self.n_slots = self.n_inputs

    def plan(self) -> ProgramSpec:
        self._gather_blocks()
        self._fold_cats()
        for b in self.blocks:
            if isinstance(b, fx.Node) and b.target in _SPLITS:
                self._read_split_in_place(b)
        self._assign_slots()
        return self._encode()

    # 1. blocks: calls in graph order, elementwise nodes in the earliest group their inputs allow
    def _gather_blocks(self) -> None:
        where: dict[fx.Node, int] = {}
        for node in self.graph.nodes:
            if node.op != "call_function":
                continue
            if node.target is operator.getitem:
                where[node] = where[_args(node)[0]]
                continue
            deps = [where[a] for a in node.all_input_nodes if a in where]
            after = max(deps) if deps else -1
            dom = _fusable(node)
            if dom is None:
                self.blocks.append(node)
                where[node] = len(self.blocks) - 1
                continue
            chosen = self._group_for(dom, after)
            group = self.blocks[chosen]
            assert isinstance(group, _Group)
            group.nodes.append(node)
            self.group_of[node] = group
            where[node] = chosen

    def _group_for(self, dom: tuple, after: int) -> int:
        """The first group of domain ``dom`` at or after block ``after`` (a new one at the end if none)."""
        for i in range(max(after, 0), len(self.blocks)):
            b = self.blocks[i]
            if isinstance(b, _Group) and b.key == dom and (i > after or b is self.blocks[after]):
                return i
        self.blocks.append(_Group(dom))
        return len(self.blocks) - 1

    # 2. a cat along the last dim of results of one group: the group writes it in place
    def _fold_cats(self) -> None:
        for b in self.blocks:
            if not (isinstance(b, fx.Node) and b.target is aten.cat.default):
                continue
            parts = _args(b)[0]
            dim = _args(b)[1] if len(_args(b)) > 1 else b.kwargs.get("dim", 0)
            owners = {self.group_of.get(p) for p in parts}
            if (len(owners) == 1 and None not in owners and _val(b).dim() == 2 and dim in (1, -1)
                    and all(tuple(_val(p).shape) == tuple(_val(parts[0]).shape) for p in parts)
                    and _val(parts[0]).dim() == 2 and len(set(parts)) == len(parts)):
                owner = owners.pop()
                assert owner is not None
                owner.cats.append(b)
                self.folded_cats.add(b)

    # 3. splits read in place by groups: a column block of the base
    def _read_split_in_place(self, split: fx.Node) -> None:
        base = _args(split)[0]
        dim = _args(split)[2] if len(_args(split)) > 2 else split.kwargs.get("dim", 0)
        if _val(base).dim() != 2 or dim not in (1, -1):
            return
        width = _val(base).shape[1]
        sizes = _args(split)[1]
        if isinstance(sizes, int):
            sizes = [min(sizes, width - k) for k in range(0, width, sizes)]
        offsets = [sum(sizes[:k]) for k in range(len(sizes))]
        getters = [u for u in split.users if u.target is operator.getitem]
        if len(getters) != len(split.users):
            return
        only_groups = all(all(u in self.group_of for u in g.users) for g in getters)
        for g in getters:
            self.column_of[g] = (base, offsets[_args(g)[1]])
        bias = _bias_of(base)
        # addmm(U, h, W) read through such a split: run mm(h, W) and let the groups add U's
        # columns (or U's row, for a bias) as they read -- no copy of U into the product first.
        # A piece also read outside (saved for the backward) is written by a group.
        read_by_groups = all(any(u in self.group_of for u in g.users)
                             and all(u in self.group_of or u is self.output_node for u in g.users)
                             for g in getters)
        if bias is not None and read_by_groups:
            self.bias_of[base] = bias
            self.materialize.update(g for g in getters if self.output_node in g.users)
            self.skipped_splits.add(split)
        elif only_groups:
            self.skipped_splits.add(split)

    # 4. slots: inputs first (by alias), then one per value made (getitems share their source's)
    def _assign_slots(self) -> None:
        self.slot = {p: self.alias[i] for i, p in enumerate(self.placeholders)}
        for node in self.graph.nodes:
            if node.op != "call_function" or node.target is operator.getitem:
                continue
            val = _val(node)
            self.slot[node] = [self._new_slot() for _ in val] if isinstance(val, (list, tuple)) else self._new_slot()
        for node in self.graph.nodes:
            if node.op == "call_function" and node.target is operator.getitem:
                self.slot[node] = self.slot[_args(node)[0]][_args(node)[1]]

    def _new_slot(self) -> int:
        self.n_slots += 1
        return self.n_slots - 1

    # 5. the program: each block encoded, run-once calls marked, the output slots
    def _encode(self) -> ProgramSpec:
        spec = ProgramSpec(self.n_inputs, 0, [])
        for b in self.blocks:
            block = self._encode_block(b)
            if block is None:
                continue
            spec.blocks.append(block)
            if isinstance(block, FusedBlock):
                spec.n_fused_ops += len(b.nodes)  # type: ignore[union-attr]
            else:
                spec.n_calls += 1
        steady = {self.slot[p] for p in self.per_sequence} | {k for pair in self.pack_slots.values() for k in pair}
        for block in spec.blocks:
            _mark_once(block, steady)
        spec.n_slots = self.n_slots
        outs = _args(self.output_node)[0] if self.outputs is None else self.outputs
        spec.output_slots = [self.slot[o] if isinstance(o, fx.Node) else -1 for o in outs]
        return spec

    def _encode_block(self, b: Union[_Group, fx.Node]) -> Optional[Block]:
        """The block for ``b``; ``None`` where nothing runs (folded into a group, read in place)."""
        if isinstance(b, _Group):
            return _GroupEncoder(self, b).encode()
        if b in self.folded_cats or b in self.skipped_splits:
            return None
        if _is_number(b) and all(u in self.group_of for u in b.users):
            return None
        if b in self.bias_of:  # the product alone: the groups add the addend as they read
            a, w = _args(b)[1], _args(b)[2]
            return self._mm_call(a, w, b)
        if b.target is aten.mm.default and _args(b)[1] in self.pack_slots and not b.kwargs:
            a, w = _args(b)
            return self._mm_call(a, w, b)
        return _encode_call(b, self.slot)

    def _mm_call(self, a: fx.Node, w: fx.Node, node: fx.Node) -> Union[CallBlock, ProductBlock]:
        """``A @ W`` into ``node``'s slot: on the packed copy of ``W`` where the planner was given one."""
        out = self.slot[node]
        if w in self.pack_slots and self.packing is Packing.BLOCKS:
            return ProductBlock(self.slot[a], self.pack_slots[w][0], out, int(_val(w).shape[1]), PRODUCT_BLOCK_COLS)
        if w in self.pack_slots:
            mkl_w, orig = self.pack_slots[w]
            return CallBlock("mkl::_mkl_linear", "", [CallArg(ArgKind.TENSOR, self.slot[a]), CallArg(ArgKind.TENSOR, mkl_w),
                                                      CallArg(ArgKind.TENSOR, orig), CallArg(ArgKind.NONE),
                                                      CallArg(ArgKind.INT, int(_val(a).shape[0]))], [out])
        return CallBlock("aten::mm", "", [CallArg(ArgKind.TENSOR, self.slot[a]), CallArg(ArgKind.TENSOR, self.slot[w])],
                         [out])


class _GroupEncoder:
    """Encodes one group for the register machine: its inputs (registers ``0..n-1``), the code, and
    the values it writes out."""

    def __init__(self, planner: _Planner, group: _Group) -> None:
        self.p = planner
        self.group = group
        self.rows, self.cols, _ = group.key
        self.members = set(group.nodes)
        self.regs: dict[fx.Node, int] = {}    # value -> the register that holds it
        self.inputs: list[GroupInput] = []
        self.biased: list[tuple[fx.Node, int]] = []  # (input read from mm(h, W), the register of U's part)
        self.code: list[Instr] = []
        self.n_regs = 0
        self.written: list[GroupOutput] = []

    def encode(self) -> FusedBlock:
        for node in self.group.nodes:
            for a in _tensor_operands(node):
                if a not in self.members and a not in self.regs:
                    self._read_input(a)
        self.n_regs = len(self.inputs)
        for a, bias_reg in self.biased:
            self._add_bias(a, bias_reg)
        for node in self.group.nodes:
            self.regs[node] = self._emit_node(node)
        outputs, allocs = self._outputs()
        return FusedBlock(self.rows, self.cols, self.inputs, self.code, outputs, allocs, self.n_regs)

    def _read_input(self, a: fx.Node) -> None:
        """``a`` into the next register: in place as a column block of a split's base where it can."""
        lay = _layout(a, self.rows, self.cols)
        src: Any = a
        offset = 0
        if a in self.p.column_of and self.p.column_of[a][0] not in self.members:
            if _args(a)[0] in self.p.skipped_splits or lay == Layout.FULL:
                src, offset = self.p.column_of[a]
        if src is a and a.op == "call_function" and a.target is operator.getitem \
                and _args(a)[0] in self.p.skipped_splits:
            raise NotNative("internal: a skipped split's column read without its base")
        self.regs[a] = len(self.inputs)
        self.inputs.append(GroupInput(self.p.slot[src], lay if lay is not None else Layout.FULL, int(offset),
                                      _val(a).dtype == torch.bool))
        if src in self.p.bias_of:  # the column of mm(h, W) plus the same column of U
            self.biased.append((a, len(self.inputs)))
            bias, bias_layout = self.p.bias_of[src]
            self.inputs.append(GroupInput(self.p.slot[bias], bias_layout, int(offset)))

    def _add_bias(self, a: fx.Node, bias_reg: int) -> None:
        self.regs[a] = self._emit(Op.ADD, self._reg(), self.regs[a], bias_reg)
        if a in self.p.materialize:  # read outside too: this group writes it (once)
            self.p.materialize.discard(a)
            self.written.append(GroupOutput(self.regs[a], self.p.slot[a]))

    def _reg(self) -> int:
        self.n_regs += 1
        return self.n_regs - 1

    def _emit(self, op: Op, dst: int, a: int, b: int = -1, c: int = -1, imm: float = 0.0) -> int:
        self.code.append(Instr(op, dst, a, b, c, float(imm)))
        return dst

    def _operand(self, x: Any) -> int:
        """The register holding ``x``: a value of the group, or a number filled into a new register."""
        if isinstance(x, fx.Node) and _is_number(x):
            x = _args(x)[0]
        if isinstance(x, fx.Node):
            return self.regs[x]
        r = self._reg()
        return self._emit(Op.FILL, r, r, imm=float(x))

    def _times_alpha(self, node: fx.Node, r: int) -> int:
        """``alpha * r`` for add/sub/rsub's ``alpha`` (``r`` itself when it is 1)."""
        args = _args(node)
        alpha = node.kwargs.get("alpha", args[2] if len(args) > 2 else 1)
        return r if alpha == 1 else self._emit(Op.MUL, self._reg(), r, self._operand(alpha))

    def _emit_node(self, node: fx.Node) -> int:
        t, args, operand = node.target, _args(node), self._operand
        dst = self._reg()
        if t in _UNARY:
            return self._emit(_UNARY[t], dst, operand(args[0]))
        if t in _BINARY:
            return self._emit(_BINARY[t], dst, operand(args[0]), operand(args[1]))
        if t in _WITH_ALPHA:
            return self._emit(_WITH_ALPHA[t], dst, operand(args[0]), self._times_alpha(node, operand(args[1])))
        if t is aten.rsub.Scalar:  # other - alpha * self
            return self._emit(Op.SUB, dst, operand(args[1]), self._times_alpha(node, operand(args[0])))
        if t is aten.pow.Tensor_Scalar:
            return self._emit(Op.SQUARE, dst, operand(args[0]))
        if t is aten.where.self:
            return self._emit(Op.WHERE, dst, operand(args[0]), operand(args[1]), operand(args[2]))
        if t is aten.masked_fill.Scalar:
            return self._emit(Op.WHERE, dst, operand(args[1]), operand(args[2]), operand(args[0]))
        if t is aten.threshold_backward.default:
            return self._emit(Op.THRESHOLD_BWD, dst, operand(args[0]), operand(args[1]), imm=float(args[2]))
        raise NotNative(f"no elementwise code for {t}")  # pragma: no cover - _fusable admits only the ops above

    def _outputs(self) -> tuple[list[GroupOutput], list[Alloc]]:
        """What the group writes: values read outside it (or listed as outputs), and the cats it fills."""
        needed = self.p.needed
        outputs = self.written
        allocs: list[Alloc] = []
        cat_place: dict[fx.Node, list[tuple[int, int]]] = {}
        for cat in self.group.cats:
            allocs.append(Alloc(self.p.slot[cat], self.rows, self.cols * len(_args(cat)[0])))
            for k, part in enumerate(_args(cat)[0]):  # a part may be in several cats
                cat_place.setdefault(part, []).append((self.p.slot[cat], k * self.cols))
        for node in self.group.nodes:
            outside = [u for u in node.users if u not in self.members and (u.op != "output" or needed is None)]
            if not outside and node not in cat_place and not (needed is not None and node in needed):
                continue
            for into, offset in cat_place.get(node, [(-1, 0)]):
                outputs.append(GroupOutput(self.regs[node], self.p.slot[node], into, offset))
        return outputs, allocs


def _mark_once(block: Block, steady: set) -> None:
    """Mark a call that reads only ``steady`` slots (the same value at every step) to run once per
    sequence; its results join ``steady``. Fused groups run every step."""
    if not isinstance(block, CallBlock):
        return
    block.once = all(r in steady for r in block.reads())  # reading no tensor: a constant (no random ops here)
    if block.once:
        steady.update(block.outs)


def _encode_call(node: fx.Node, slot: dict) -> CallBlock:
    schema = _call_schema(node)
    args: list[CallArg] = []
    for i, arg in enumerate(schema.arguments):
        if i < len(_args(node)) and not arg.kwarg_only:
            v = _args(node)[i]
        elif arg.name in node.kwargs:
            v = node.kwargs[arg.name]
        elif arg.has_default_value():
            v = arg.default_value
        else:
            raise NotNative(f"{schema.name}: argument {arg.name} missing")
        encoded = _encode_arg(v, _takes_scalar(arg), slot)
        if encoded is None:
            raise NotNative(f"{schema.name}: argument {arg.name}={v!r} ({arg.type}) is not supported")
        args.append(encoded)
    out = slot[node]
    return CallBlock(schema.name, schema.overload_name, args, out if isinstance(out, list) else [out])


def _takes_scalar(arg: Any) -> bool:
    """Whether a schema argument is a Scalar (its type prints as ``number``, optional ``number?``)."""
    return str(arg.type).rstrip("?") in ("Scalar", "number")


def _call_schema(node: fx.Node) -> Any:
    """The schema the runtime calls ``node`` by. A traced graph may hold a number where the schema
    takes a tensor (``aten.mul.Tensor(m, 0.5)``: a wrapped number); the runtime's stack cannot pass
    one there ("Expected Tensor but got Double", seen in a bfloat16 step run op by op), so such a
    call goes to the operator's ``.Scalar`` overload, which computes the same (a wrapped number
    does not promote the dtype, nor does a Scalar), or is refused."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        raise NotNative(f"{node.target} is not an aten operator")
    numbers = [i for i, (arg, v) in enumerate(zip(schema.arguments, _args(node)))
               if str(arg.type).startswith("Tensor") and isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not numbers:
        return schema
    twin = getattr(getattr(node.target, "overloadpacket", None), "Scalar", None)
    twin_schema = getattr(twin, "_schema", None)
    if twin_schema is None or any(not _takes_scalar(twin_schema.arguments[i]) for i in numbers) or \
            [a.name for a in twin_schema.arguments] != [a.name for a in schema.arguments]:
        raise NotNative(f"{schema.name}: a number where it takes a tensor, and no .Scalar overload to call instead")
    return twin_schema


def _encode_arg(v: Any, scalar: bool, slot: dict) -> Optional[CallArg]:
    """One argument value (``scalar``: the schema takes a Scalar), or ``None`` if it cannot be passed."""
    if isinstance(v, fx.Node):
        return CallArg(ArgKind.TENSOR, slot[v])
    if v is None:
        return CallArg(ArgKind.NONE)
    if isinstance(v, bool):
        return CallArg(ArgKind.BOOL, int(v))
    if isinstance(v, torch.dtype) and v in _SCALAR_TYPES:
        return CallArg(ArgKind.INT, _SCALAR_TYPES[v])
    if (isinstance(v, torch.device) and v.type == "cpu") or v is torch.strided:
        return CallArg(ArgKind.NONE)  # the default
    if isinstance(v, int):
        return CallArg(ArgKind.SCALAR_INT if scalar else ArgKind.INT, v)
    if isinstance(v, float):
        return CallArg(ArgKind.SCALAR_DOUBLE if scalar else ArgKind.DOUBLE, real=v)
    if isinstance(v, (list, tuple)) and v and all(isinstance(e, fx.Node) for e in v):
        return CallArg(ArgKind.TENSORLIST, items=tuple(slot[e] for e in v))
    if isinstance(v, (list, tuple)) and v and all(isinstance(e, bool) for e in v):
        return CallArg(ArgKind.BOOLLIST, items=tuple(int(e) for e in v))
    if isinstance(v, (list, tuple)) and all(isinstance(e, int) and not isinstance(e, bool) for e in v):
        return CallArg(ArgKind.INTLIST, items=tuple(int(e) for e in v))
    return None


def plan_step(fw: fx.Graph, bw: fx.Graph, *, n_outputs: int, n_hoisted: int, n_state: int,
              n_const: int, packing: Optional[Packing] = None) -> NativePlan:
    """Plan a derived step (aten targets): forward ``(*args) -> (*outs, *saved)`` and backward
    ``(*saved, *tangents) -> (*grads, *deferred operand pairs)``; raises :class:`NotNative`.
    ``packing``: how per-step float32 products' per-sequence weights are laid out (``None``: the
    best this torch offers, :func:`product_packing`)."""
    packing = product_packing() if packing is None else packing
    results = list(_args(_output_node(fw))[0])
    outs, saved = results[:n_outputs], results[n_outputs:]
    placeholders = _placeholders(fw)
    const_nodes = set(placeholders[n_hoisted + n_state:n_hoisted + n_state + n_const])
    index_of: dict[fx.Node, int] = {}  # the saved values, each once; alias[j]: saved output j's index there
    alias: list[int] = []
    for node in saved:
        if not isinstance(node, fx.Node):
            raise NotNative("a saved value is not a tensor")
        alias.append(index_of.setdefault(node, len(index_of)))
    unique = list(index_of)
    places = _saved_places(fw, unique, outs, n_hoisted, n_state, const_nodes)
    fw_spec, fw_packed = _planned(fw, _packable(fw, lambda n: n in const_nodes, packing), packing,
                                  outputs=outs + unique, per_sequence=const_nodes)
    inference = plan_graph(fw, outputs=outs, packed=fw_packed, per_sequence=const_nodes, packing=packing)
    bw_placeholders = _placeholders(bw)
    n_tangents = len(bw_placeholders) - len(saved)
    once = {p for i, p in enumerate(bw_placeholders[:len(saved)]) if places[alias[i]].kind == SavedKind.ONCE}
    bw_spec, bw_packed = _planned(bw, _packable(bw, lambda n: n in once, packing), packing,
                                  input_alias=alias + [len(unique) + k for k in range(n_tangents)], per_sequence=once)
    y_alias = -1
    if outs and isinstance(outs[0], fx.Node):
        y_alias = next((s for s, o in enumerate(outs[1:]) if o is outs[0]), -1)
    return NativePlan(fw_spec, bw_spec, inference, places, y_alias,
                      _deferred_pairs(bw_spec, len(placeholders), n_hoisted, places),
                      [placeholders.index(n) - n_hoisted - n_state for n in fw_packed],
                      [alias[bw_placeholders.index(n)] for n in bw_packed], packing)


def _planned(graph: fx.Graph, packed: list[fx.Node], packing: Packing, **options: Any) -> tuple[ProgramSpec,
                                                                                                list[fx.Node]]:
    """``plan_graph`` with the weights ``packed``, keeping only those a block of the program reads (a
    weight whose product the planner wrote as a plain call -- an ``addmm`` adding a per-step value --
    is neither laid out for nothing every call nor left uncopied); ``(program, weights kept)``."""
    spec = plan_graph(graph, packed=packed, packing=packing, **options)
    width = PACKED_INPUTS[packing]
    first = spec.n_inputs - width * len(packed)
    read = {r for block in spec.blocks for r in block.reads()}
    used = [w for k, w in enumerate(packed) if any(first + width * k + i in read for i in range(width))]
    if len(used) == len(packed):
        return spec, packed
    return plan_graph(graph, packed=used, packing=packing, **options), used


def _saved_places(fw: fx.Graph, unique: list[fx.Node], outs: list, n_hoisted: int, n_state: int,
                  const_nodes: set[fx.Node]) -> list[SavedPlace]:
    """Where each saved value is kept: a state leaf before or after the step (read from the state
    history), once (reads per-sequence values only), or per step."""
    placeholders = _placeholders(fw)
    const_only: set[fx.Node] = set(const_nodes)
    for node in fw.nodes:
        if node.op == "call_function" and all(a in const_only for a in node.all_input_nodes):
            const_only.add(node)
    state_out: dict[fx.Node, int] = {}
    for s, node in enumerate(outs[1:]):  # outs = (y, *new state)
        if isinstance(node, fx.Node) and node not in state_out:
            state_out[node] = s
    places = []
    for node in unique:
        i = placeholders.index(node) if node in placeholders else -1
        if n_hoisted <= i < n_hoisted + n_state:
            places.append(SavedPlace(SavedKind.STATE_BEFORE, i - n_hoisted))
        elif i < 0 and node in state_out:
            places.append(SavedPlace(SavedKind.STATE_AFTER, state_out[node]))
        elif node in const_only:
            places.append(SavedPlace(SavedKind.ONCE))
        else:
            places.append(SavedPlace(SavedKind.PER_STEP))
    return places


# Per-step products at least this large (multiply-adds) run on MKL's packed weights: packing
# pays from about B=32, H=256 (measured: -20 % a product); smaller ones are slower packed.
_PACK_MIN_MACS = 2_000_000

# Per-step products at least this large run on column blocks; smaller ones stay plain ``aten::mm``
# calls. Measured in the whole layer against plain ``mm`` at B=8, H=128 (0.5 M multiply-adds a
# product): even at 1 thread (0.99-1.01×), 1-2 % slower at 2 threads (the blocks' parallel region
# costs about what splitting a 7 µs product saves); from B=32, H=256 (8 M) on, 4 % faster.
_BLOCKS_MIN_MACS = 1_000_000


def product_packing() -> Packing:
    """BLOCKS where the native runtime was built with torch's float32 batch-reduce GEMM
    (``at::native::cpublas::brgemm``): measured alone 10-50 % faster than MKL's ``sgemm`` (packed or
    not) on the per-step products from B=8, H=128 to B=32, H=256, about even at B=64, H=512; in the
    whole layer 4 % faster at B=32 (see :data:`_BLOCKS_MIN_MACS` for small ones). Else MKL."""
    from . import build

    lib = build.library()
    return Packing.BLOCKS if lib is not None and lib.has_blocked_products() else Packing.MKL


def _packable(graph: fx.Graph, per_sequence: Callable[[fx.Node], bool], packing: Packing) -> list[fx.Node]:
    """Placeholders ``W`` (per sequence: ``per_sequence(W)``) that are the right operand of a
    float32 ``mm``/``addmm`` in ``graph`` large enough to gain from ``packing``."""
    if packing is Packing.MKL and not _mkl_packing():
        return []
    min_macs = _PACK_MIN_MACS if packing is Packing.MKL else _BLOCKS_MIN_MACS
    found: list[fx.Node] = []
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in (aten.mm.default, aten.addmm.default):
            continue
        args = _args(node)
        a, w = (args[0], args[1]) if node.target is aten.mm.default else (args[1], args[2])
        if not (isinstance(w, fx.Node) and w.op == "placeholder" and per_sequence(w) and w not in found):
            continue
        va, vw = _val(a), _val(w)
        if (va is None or vw is None or va.dim() != 2 or vw.dim() != 2 or vw.dtype != torch.float32
                or va.dtype != torch.float32):
            continue
        if va.shape[0] * vw.shape[0] * vw.shape[1] >= min_macs:
            found.append(w)
    return found


def _mkl_packing() -> bool:
    try:
        return bool(torch.backends.mkl.is_available()) and hasattr(torch.ops.mkl, "_mkl_linear")
    except (AttributeError, RuntimeError):
        return False


def _deferred_pairs(bw: ProgramSpec, n_grads: int, n_hoisted: int, places: list[SavedPlace]) -> list[DeferredPair]:
    """Where both operands of each deferred product of the backward already lie for all steps (the
    gradient buffer of a hoisted input, a per-step saved buffer, the state history), or that they
    are made per step and collected into a buffer of their own."""
    out_slots = bw.output_slots
    grad_slot = {out_slots[i]: i for i in range(n_hoisted) if out_slots[i] >= 0}

    def source(slot: int) -> Operand:
        if slot in grad_slot:
            return Operand(OperandSource.HOISTED_GRAD, grad_slot[slot])
        if 0 <= slot < len(places):  # the backward's first input slots hold the saved values
            place = places[slot]
            if place.kind == SavedKind.PER_STEP:
                return Operand(OperandSource.SAVED, slot)
            if place.kind == SavedKind.STATE_BEFORE:
                return Operand(OperandSource.STATE_BEFORE, place.index)
            if place.kind == SavedKind.STATE_AFTER:
                return Operand(OperandSource.STATE_AFTER, place.index)
        return Operand(OperandSource.OWN_BUFFER)

    return [DeferredPair(source(out_slots[n_grads + 2 * p]), source(out_slots[n_grads + 2 * p + 1]))
            for p in range((len(out_slots) - n_grads) // 2)]
