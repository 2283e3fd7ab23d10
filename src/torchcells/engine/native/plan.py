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
  called from C++ through the dispatcher with its arguments encoded here.

The plan is plain data (:class:`ProgramSpec`); the C++ ``Program`` is built from it
when the runtime is loaded.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import fx

aten = torch.ops.aten

__all__ = ["NativeKernels", "NotNative", "ProgramSpec", "plan_graph", "plan_kernels"]


class NotNative(Exception):
    """The graph uses something the native runtime does not run (the message says what)."""


# opcodes: keep in step with `enum Op` in runtime.cpp
(O_ADD, O_SUB, O_MUL, O_DIV, O_NEG, O_SIGMOID, O_TANH, O_EXP, O_LOG, O_RELU, O_SIGMOID_BWD, O_TANH_BWD,
 O_WHERE, O_THRESHOLD_BWD, O_MAX, O_MIN, O_SQRT, O_RSQRT, O_RECIP, O_ABS, O_COPY, O_SQUARE, O_FILL) = range(23)
L_FULL, L_ROW, L_COL, L_SCALAR = range(4)
A_TENSOR, A_INT, A_DOUBLE, A_BOOL, A_NONE, A_INTLIST, A_TENSORLIST, A_SCALAR_INT, A_SCALAR_DOUBLE, A_BOOLLIST = range(10)

_UNARY = {aten.neg.default: O_NEG, aten.sigmoid.default: O_SIGMOID, aten.tanh.default: O_TANH,
          aten.exp.default: O_EXP, aten.log.default: O_LOG, aten.relu.default: O_RELU,
          aten.sqrt.default: O_SQRT, aten.rsqrt.default: O_RSQRT, aten.reciprocal.default: O_RECIP,
          aten.abs.default: O_ABS, aten.clone.default: O_COPY, aten.alias.default: O_COPY}
_BINARY = {aten.mul.Tensor: O_MUL, aten.div.Tensor: O_DIV, aten.sigmoid_backward.default: O_SIGMOID_BWD,
           aten.tanh_backward.default: O_TANH_BWD, aten.maximum.default: O_MAX, aten.minimum.default: O_MIN}
_WITH_ALPHA = {aten.add.Tensor: O_ADD, aten.sub.Tensor: O_SUB}
_ELEMENTWISE = (set(_UNARY) | set(_BINARY) | set(_WITH_ALPHA)
                | {aten.rsub.Scalar, aten.where.self, aten.masked_fill.Scalar, aten.threshold_backward.default,
                   aten.pow.Tensor_Scalar, aten.mul.Scalar, aten.add.Scalar, aten.sub.Scalar, aten.div.Scalar})
# c10::ScalarType numbers
_SCALAR_TYPES = {torch.uint8: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.int64: 4, torch.float16: 5,
                 torch.float32: 6, torch.float64: 7, torch.bool: 11, torch.bfloat16: 15}
_SPLITS = {aten.split.Tensor, aten.split_with_sizes.default, aten.unsafe_split.Tensor,
           aten.unsafe_split_with_sizes.default}


@dataclass
class ProgramSpec:
    """A planned program: ``n_inputs`` input slots, blocks in order, the output slots."""

    n_inputs: int
    n_slots: int
    output_slots: list[int]
    blocks: list[tuple] = field(default_factory=list)
    n_fused_ops: int = 0
    n_calls: int = 0
    _built: Any = None

    def build(self, lib: Any) -> Any:
        if self._built is None:
            prog = lib.Program(self.n_slots, self.output_slots)
            for block in self.blocks:
                if block[0] == "call":
                    prog.add_call(*block[1:])
                else:
                    prog.add_fused(*block[1:])
            self._built = prog
        return self._built


@dataclass
class NativeKernels:
    """The forward and backward programs of one fused step, and where saved values live."""

    forward: ProgramSpec
    backward: ProgramSpec
    saved_kind: list[int]   # per saved value: 0 per step, 1 once, 2+s state s before, 2+n_s+s after
    y_alias: int            # the state leaf the forward's y is (its history is the output), or -1
    inference: ProgramSpec  # the forward without the saved values, for runs without autograd
    deferred_source: list[list[int]]  # per deferred pair: where both operands already lie, for all steps
    fw_packed: list[int] = field(default_factory=list)  # consts whose MKL-packed copy the forward reads
    bw_packed: list[int] = field(default_factory=list)  # once-saved values whose packed copy the backward reads


def _args(node: Any) -> Any:
    """A node's arguments, untyped (fx's Argument union is too wide to be useful here)."""
    return node.args


def _val(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def _is_tensor(node: Any) -> bool:
    return isinstance(_val(node), torch.Tensor)


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


def _layout(node: fx.Node, rows: int, cols: int) -> Optional[int]:
    shape = tuple(_val(node).shape)
    if shape == (rows, cols) or (rows == 1 and shape == (cols,)):
        return L_FULL
    if shape in ((cols,), (1, cols)):
        return L_ROW
    if shape == (rows, 1):
        return L_COL
    if all(s == 1 for s in shape):
        return L_SCALAR
    return None


def _tensor_operands(node: fx.Node) -> list[fx.Node]:
    return [a for a in _args(node) if isinstance(a, fx.Node) and not _is_number(a)]


def _is_number(node: fx.Node) -> bool:
    """A 0-dim constant made in the graph (``scalar_tensor``): read by groups as a number."""
    return node.op == "call_function" and node.target is aten.scalar_tensor.default and \
        isinstance(_args(node)[0], (int, float)) and not node.kwargs.get("dtype") in (torch.bool,)


def _fusable(node: fx.Node) -> Optional[tuple]:
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
    for i, a in enumerate(_tensor_operands(node)):
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
        if isinstance(a, fx.Node) and _is_number(a) and _domain(node) is not None:
            v = _val(a)
            if v.dtype not in (dtype,) and not v.is_floating_point():
                return None
    return dom


def _bias_of(node: fx.Node) -> Optional[tuple[fx.Node, int]]:
    """``addmm(U, h, W)`` (only used by one split) with ``U`` full-shaped or a row: ``(U, layout)``."""
    args = _args(node)
    if not (node.op == "call_function" and node.target is aten.addmm.default and len(node.users) == 1
            and not node.kwargs and len(args) == 3 and isinstance(args[0], fx.Node)):
        return None
    u, out = _val(args[0]), _val(node)
    if u.dtype != out.dtype or out.dim() != 2:
        return None
    if tuple(u.shape) == tuple(out.shape):
        return args[0], L_FULL
    if tuple(u.shape) in ((out.shape[1],), (1, out.shape[1])):
        return args[0], L_ROW
    return None


class _Group:
    def __init__(self, key: tuple) -> None:
        self.key = key
        self.nodes: list[fx.Node] = []
        self.cats: list[fx.Node] = []


def plan_graph(gm: fx.GraphModule, input_alias: Optional[list[int]] = None,
               outputs: Optional[list] = None, packed: Optional[list[fx.Node]] = None,
               per_sequence: Optional[set] = None) -> ProgramSpec:
    """Plan ``gm`` (aten targets); ``input_alias[i]`` is the input slot placeholder ``i`` reads;
    ``outputs`` replaces the graph's own output list. ``packed``: placeholders ``B`` (per-sequence
    ``[K, N]`` right operands of per-step products) whose MKL-packed form and ``Bᵀ`` come as two
    extra inputs each, after the graph's own: ``mm(A, B)`` then runs on the packed weights.
    ``per_sequence``: placeholders that hold the same value at every step; a call that reads only
    those (or what such calls made) is marked to run once per sequence, not once per step."""
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    alias = input_alias if input_alias is not None else list(range(len(placeholders)))
    n_inputs = max(alias) + 1 if alias else 0
    pack_slots = {b: (n_inputs + 2 * k, n_inputs + 2 * k + 1) for k, b in enumerate(packed or [])}
    n_inputs += 2 * len(pack_slots)
    output_node = next(n for n in graph.nodes if n.op == "output")

    # 1. blocks: calls in graph order, elementwise nodes in the earliest group their inputs allow
    blocks: list[Any] = []
    where: dict[fx.Node, int] = {}
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is operator.getitem:
            where[node] = where[_args(node)[0]]
            continue
        deps = [where[a] for a in node.all_input_nodes if a in where]
        after = max(deps) if deps else -1
        dom = _fusable(node)
        if dom is not None:
            chosen = None
            for i in range(max(after, 0), len(blocks)):
                b = blocks[i]
                if isinstance(b, _Group) and b.key == dom and (i > after or b is blocks[after]):
                    chosen = i
                    break
            if chosen is None:
                blocks.append(_Group(dom))
                chosen = len(blocks) - 1
            blocks[chosen].nodes.append(node)
            where[node] = chosen
        else:
            blocks.append(node)
            where[node] = len(blocks) - 1

    group_of = {n: b for b in blocks if isinstance(b, _Group) for n in b.nodes}

    # 2. a cat along the last dim of results of one group: the group writes it in place
    folded_cats: set[fx.Node] = set()
    for b in blocks:
        if isinstance(b, fx.Node) and b.target is aten.cat.default:
            parts = _args(b)[0]
            dim = _args(b)[1] if len(_args(b)) > 1 else b.kwargs.get("dim", 0)
            owners = {group_of.get(p) for p in parts}
            if (len(owners) == 1 and None not in owners and _val(b).dim() == 2 and dim in (1, -1)
                    and all(tuple(_val(p).shape) == tuple(_val(parts[0]).shape) for p in parts)
                    and _val(parts[0]).dim() == 2 and len(set(parts)) == len(parts)):
                owner = owners.pop()
                assert owner is not None
                owner.cats.append(b)
                folded_cats.add(b)

    # 3. splits read in place by groups: a column block of the base
    column_of: dict[fx.Node, tuple[Any, int]] = {}
    skipped_splits: set[fx.Node] = set()
    bias_of: dict[fx.Node, tuple[fx.Node, int]] = {}
    materialize: set[fx.Node] = set()
    for b in blocks:
        if isinstance(b, fx.Node) and b.target in _SPLITS:
            base = _args(b)[0]
            dim = _args(b)[2] if len(_args(b)) > 2 else b.kwargs.get("dim", 0)
            bv = _val(base)
            if bv.dim() != 2 or dim not in (1, -1):
                continue
            sizes = _args(b)[1]
            width = bv.shape[1]
            if isinstance(sizes, int):
                sizes = [min(sizes, width - k) for k in range(0, width, sizes)]
            offsets = [sum(sizes[:k]) for k in range(len(sizes))]
            getters = [u for u in b.users if u.target is operator.getitem]
            if len(getters) != len(b.users):
                continue
            only_groups = all(all(u in group_of for u in g.users) for g in getters)
            for g in getters:
                column_of[g] = (base, offsets[_args(g)[1]])
            bias = _bias_of(base)
            # 3b. addmm(U, h, W) read through such a split: run mm(h, W) and let the groups add
            # U's columns (or U's row, for a bias) as they read -- no copy of U into the product
            # first. A piece also read outside (saved for the backward) is written by a group.
            if bias is not None and all(any(u in group_of for u in g.users)
                                        and all(u in group_of or u is output_node for u in g.users)
                                        for g in getters):
                bias_of[base] = bias
                materialize.update(g for g in getters if output_node in g.users)
                skipped_splits.add(b)
            elif only_groups:
                skipped_splits.add(b)

    # 4. slots and encoded blocks
    slot: dict[fx.Node, Any] = {p: alias[i] for i, p in enumerate(placeholders)}
    counter = [n_inputs]

    def new_slot() -> int:
        counter[0] += 1
        return counter[0] - 1

    for node in graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        val = _val(node)
        if isinstance(val, (list, tuple)):
            slot[node] = [new_slot() for _ in val]
        else:
            slot[node] = new_slot()
    for node in graph.nodes:
        if node.op == "call_function" and node.target is operator.getitem:
            slot[node] = slot[_args(node)[0]][_args(node)[1]]

    spec = ProgramSpec(n_inputs, 0, [])
    for b in blocks:
        if isinstance(b, _Group):
            spec.blocks.append(_encode_group(b, slot, column_of, group_of, output_node, skipped_splits,
                                             None if outputs is None else {o for o in outputs if isinstance(o, fx.Node)},
                                             bias_of, materialize))
            spec.n_fused_ops += len(b.nodes)
        elif b in folded_cats or b in skipped_splits:
            continue
        elif _is_number(b) and all(u in group_of for u in b.users):
            continue
        elif b in bias_of:
            a, w = _args(b)[1], _args(b)[2]
            spec.blocks.append(_mm_call(slot[a], w, slot[b], slot, pack_slots, _val(a).shape[0]))
            spec.n_calls += 1
        elif b.target is aten.mm.default and _args(b)[1] in pack_slots and not b.kwargs:
            a, w = _args(b)
            spec.blocks.append(_mm_call(slot[a], w, slot[b], slot, pack_slots, _val(a).shape[0]))
            spec.n_calls += 1
        else:
            spec.blocks.append(_encode_call(b, slot))
            spec.n_calls += 1
    steady = {slot[p] for p in (per_sequence or ())} | {k for pair in pack_slots.values() for k in pair}
    spec.blocks = [_mark_once(b, steady) for b in spec.blocks]
    spec.n_slots = counter[0]
    outs = output_node.args[0] if outputs is None else outputs
    spec.output_slots = [slot[o] if isinstance(o, fx.Node) else -1 for o in outs]
    return spec


def _encode_group(g: _Group, slot: dict, column_of: dict, group_of: dict, output_node: fx.Node,
                  skipped_splits: set, needed: Optional[set], bias_of: dict, materialize: set) -> tuple:
    rows, cols, _ = g.key
    members = set(g.nodes)
    regs: dict[fx.Node, int] = {}
    inputs: list[list[int]] = []
    pending: list[tuple[fx.Node, int]] = []
    for node in g.nodes:
        for a in _tensor_operands(node):
            if a in members or a in regs:
                continue
            lay = _layout(a, rows, cols)
            src: Any = a
            offset = 0
            if a in column_of and column_of[a][0] not in members:
                split = _args(a)[0]
                if split in skipped_splits or lay == L_FULL:
                    src, offset = column_of[a]
            if src is a and a.op == "call_function" and a.target is operator.getitem and _args(a)[0] in skipped_splits:
                raise NotNative("internal: a skipped split's column read without its base")
            regs[a] = len(inputs)
            inputs.append([slot[src], int(lay) if lay is not None else L_FULL, int(offset),
                           int(_val(a).dtype == torch.bool)])
            if src in bias_of:  # the column of mm(h, W) plus the same column of U
                pending.append((a, len(inputs)))
                bias, bias_layout = bias_of[src]
                inputs.append([slot[bias], bias_layout, int(offset), 0])
    n_regs = [len(inputs)]

    def reg() -> int:
        n_regs[0] += 1
        return n_regs[0] - 1

    code: list[list[int]] = []
    imms: list[float] = []

    def emit(op: int, dst: int, a: int, b: int = -1, c: int = -1, imm: float = 0.0) -> int:
        code.append([op, dst, a, b, c])
        imms.append(float(imm))
        return dst

    def operand(x: Any) -> int:
        if isinstance(x, fx.Node) and _is_number(x):
            x = _args(x)[0]
        if isinstance(x, fx.Node):
            return regs[x]
        r = reg()
        return emit(O_FILL, r, r, imm=float(x))

    written: list[list[int]] = []
    def times_alpha(node: fx.Node, r: int) -> int:
        """``alpha * r`` for add/sub/rsub's ``alpha`` (``r`` itself when it is 1)."""
        args = _args(node)
        alpha = node.kwargs.get("alpha", args[2] if len(args) > 2 else 1)
        return r if alpha == 1 else emit(O_MUL, reg(), r, operand(alpha))

    for a, bias_reg in pending:
        regs[a] = emit(O_ADD, reg(), regs[a], bias_reg)
        if a in materialize:  # read outside too: this group writes it (once)
            materialize.discard(a)
            written.append([regs[a], slot[a], -1, 0])
    for node in g.nodes:
        t, args = node.target, _args(node)
        dst = reg()
        if t in _UNARY:
            emit(_UNARY[t], dst, operand(args[0]))
        elif t in _BINARY:
            emit(_BINARY[t], dst, operand(args[0]), operand(args[1]))
        elif t in _WITH_ALPHA or t in (aten.add.Scalar, aten.sub.Scalar):
            op = O_ADD if t in (aten.add.Tensor, aten.add.Scalar) else O_SUB
            emit(op, dst, operand(args[0]), times_alpha(node, operand(args[1])))
        elif t is aten.mul.Scalar:
            emit(O_MUL, dst, operand(args[0]), operand(args[1]))
        elif t is aten.div.Scalar:
            emit(O_DIV, dst, operand(args[0]), operand(args[1]))
        elif t is aten.rsub.Scalar:  # other - alpha * self
            emit(O_SUB, dst, operand(args[1]), times_alpha(node, operand(args[0])))
        elif t is aten.pow.Tensor_Scalar:
            emit(O_SQUARE, dst, operand(args[0]))
        elif t is aten.where.self:
            emit(O_WHERE, dst, operand(args[0]), operand(args[1]), operand(args[2]))
        elif t is aten.masked_fill.Scalar:
            emit(O_WHERE, dst, operand(args[1]), operand(args[2]), operand(args[0]))
        elif t is aten.threshold_backward.default:
            emit(O_THRESHOLD_BWD, dst, operand(args[0]), operand(args[1]), imm=float(args[2]))
        else:  # pragma: no cover - _fusable admits only the ops above
            raise NotNative(f"no elementwise code for {t}")
        regs[node] = dst

    outputs: list[list[int]] = written
    allocs: list[list[int]] = []
    cat_place: dict[fx.Node, list[tuple[int, int]]] = {}
    for cat in g.cats:
        allocs.append([slot[cat], rows, cols * len(_args(cat)[0])])
        for k, part in enumerate(_args(cat)[0]):
            cat_place.setdefault(part, []).append((slot[cat], k * cols))  # a part may be in several cats
    for node in g.nodes:
        outside = [u for u in node.users if u not in members and (u.op != "output" or needed is None)]
        if not outside and node not in cat_place and not (needed is not None and node in needed):
            continue
        for into, offset in cat_place.get(node, [(-1, 0)]):
            outputs.append([regs[node], slot[node], into, offset])
    return ("fused", rows, cols, inputs, code, imms, outputs, allocs, n_regs[0])


def _mark_once(block: tuple, steady: set) -> tuple:
    """A call block with its run-once flag appended (fused groups run every step). ``steady``:
    the slots that hold the same value at every step; a call reading only those joins them."""
    if block[0] != "call":
        return block
    kinds, ints, lists, outs = block[3], block[4], block[6], block[7]
    reads = [i for k, i in zip(kinds, ints) if k == A_TENSOR] + \
        [s for k, lst in zip(kinds, lists) if k == A_TENSORLIST for s in lst]
    once = all(r in steady for r in reads)  # a call reading no tensor makes a constant (no random ops here)
    if once:
        steady.update(outs)
    return block + (once,)


def _mm_call(a: int, w: fx.Node, out: int, slot: dict, pack_slots: dict, rows: int) -> tuple:
    """``A @ W`` into slot ``out``: on MKL's packed copy of ``W`` where the planner was given one."""
    if w in pack_slots:
        mkl_w, orig = pack_slots[w]
        return ("call", "mkl::_mkl_linear", "", [A_TENSOR, A_TENSOR, A_TENSOR, A_NONE, A_INT],
                [a, mkl_w, orig, 0, int(rows)], [0.0] * 5, [[]] * 5, [out])
    return ("call", "aten::mm", "", [A_TENSOR, A_TENSOR], [a, slot[w]], [0.0, 0.0], [[], []], [out])


def _encode_call(node: fx.Node, slot: dict) -> tuple:
    target = node.target
    schema = getattr(target, "_schema", None)
    if schema is None:
        raise NotNative(f"{target} is not an aten operator")
    kinds: list[int] = []
    ints: list[int] = []
    doubles: list[float] = []
    lists: list[list[int]] = []
    for i, arg in enumerate(schema.arguments):
        if i < len(_args(node)) and not arg.kwarg_only:
            v = _args(node)[i]
        elif arg.name in node.kwargs:
            v = node.kwargs[arg.name]
        elif arg.has_default_value():
            v = arg.default_value
        else:
            raise NotNative(f"{schema.name}: argument {arg.name} missing")
        type_name = str(arg.type)
        kind, iv, dv, lv = A_NONE, 0, 0.0, []
        if isinstance(v, fx.Node):
            kind, iv = A_TENSOR, slot[v]
        elif v is None:
            kind = A_NONE
        elif isinstance(v, bool):
            kind, iv = A_BOOL, int(v)
        elif isinstance(v, torch.dtype) and v in _SCALAR_TYPES:
            kind, iv = A_INT, _SCALAR_TYPES[v]
        elif (isinstance(v, torch.device) and v.type == "cpu") or v is torch.strided:
            kind = A_NONE  # the default
        elif isinstance(v, int):
            kind, iv = (A_SCALAR_INT if "Scalar" in type_name else A_INT), v
        elif isinstance(v, float):
            kind, dv = (A_SCALAR_DOUBLE if "Scalar" in type_name else A_DOUBLE), v
        elif isinstance(v, (list, tuple)) and all(isinstance(e, fx.Node) for e in v) and v:
            kind, lv = A_TENSORLIST, [slot[e] for e in v]
        elif isinstance(v, (list, tuple)) and v and all(isinstance(e, bool) for e in v):
            kind, lv = A_BOOLLIST, [int(e) for e in v]
        elif isinstance(v, (list, tuple)) and all(isinstance(e, int) and not isinstance(e, bool) for e in v):
            kind, lv = A_INTLIST, [int(e) for e in v]
        else:
            raise NotNative(f"{schema.name}: argument {arg.name}={v!r} ({type_name}) is not supported")
        kinds.append(kind)
        ints.append(int(iv))
        doubles.append(float(dv))
        lists.append(lv)
    out = slot[node]
    outs = out if isinstance(out, list) else [out]
    name, overload = schema.name, schema.overload_name
    return ("call", name, overload, kinds, ints, doubles, lists, outs)


def plan_kernels(fw: fx.GraphModule, bw: fx.GraphModule, *, n_outputs: int, n_hoisted: int, n_state: int,
                 n_const: int) -> NativeKernels:
    """Plan the derived forward ``(*args) -> (*outs, *saved)`` and backward ``(*saved, *tangents)``."""
    fw_out = next(n for n in fw.graph.nodes if n.op == "output")
    results = list(fw_out.args[0])
    outs, saved = results[:n_outputs], results[n_outputs:]
    placeholders = [n for n in fw.graph.nodes if n.op == "placeholder"]
    const_nodes = set(placeholders[n_hoisted + n_state:n_hoisted + n_state + n_const])
    const_only: set[fx.Node] = set(const_nodes)
    for node in fw.graph.nodes:
        if node.op == "call_function" and all(a in const_only for a in node.all_input_nodes):
            const_only.add(node)
    state_out = {}
    for p, node in enumerate(outs):
        s = p - 1  # outs = (y, *new state)
        if s >= 0 and isinstance(node, fx.Node) and node not in state_out:
            state_out[node] = s
    unique: list[fx.Node] = []
    index_of: dict[fx.Node, int] = {}
    alias: list[int] = []
    for node in saved:
        if not isinstance(node, fx.Node):
            raise NotNative("a saved value is not a tensor")
        if node not in index_of:
            index_of[node] = len(unique)
            unique.append(node)
        alias.append(index_of[node])
    kinds = []
    for node in unique:
        if node in placeholders:
            i = placeholders.index(node)
            if n_hoisted <= i < n_hoisted + n_state:
                kinds.append(2 + i - n_hoisted)
            elif node in const_nodes:
                kinds.append(1)
            else:
                kinds.append(0)
        elif node in state_out:
            kinds.append(2 + n_state + state_out[node])
        elif node in const_only:
            kinds.append(1)
        else:
            kinds.append(0)
    fw_packed = _packable(fw, lambda n: n in const_nodes)
    fw_spec = plan_graph(fw, outputs=outs + unique, packed=fw_packed, per_sequence=const_nodes)
    bw_placeholders = [n for n in bw.graph.nodes if n.op == "placeholder"]
    n_tangents = len(bw_placeholders) - len(saved)
    bw_alias = alias + [len(unique) + k for k in range(n_tangents)]
    once = {p for i, p in enumerate(bw_placeholders[:len(saved)]) if kinds[alias[i]] == 1}
    bw_packed = _packable(bw, lambda n: n in once)
    bw_spec = plan_graph(bw, bw_alias, packed=bw_packed, per_sequence=once)
    y_alias = -1
    if outs and isinstance(outs[0], fx.Node):
        y_alias = next((s for s, o in enumerate(outs[1:]) if o is outs[0]), -1)
    n_grads = n_hoisted + n_state + n_const + (len(placeholders) - n_hoisted - n_state - n_const)
    sources = _deferred_sources(bw_spec, n_grads, n_hoisted, kinds, n_state)
    inference = plan_graph(fw, outputs=outs, packed=fw_packed, per_sequence=const_nodes)
    return NativeKernels(fw_spec, bw_spec, kinds, y_alias, inference, sources,
                         [placeholders.index(n) - n_hoisted - n_state for n in fw_packed],
                         [alias[bw_placeholders.index(n)] for n in bw_packed])


# Per-step products at least this large (multiply-adds) run on MKL's packed weights: packing
# pays from about B=32, H=256 (measured: -20 % a product); smaller ones are slower packed.
_PACK_MIN_MACS = 2_000_000


def _packable(gm: fx.GraphModule, per_sequence) -> list[fx.Node]:
    """Placeholders ``W`` (per sequence: ``per_sequence(W)``) that are the right operand of a
    float32 ``mm``/``addmm`` in ``gm`` large enough to gain from MKL's packed weights."""
    if not _mkl_packing():
        return []
    found: list[fx.Node] = []
    for node in gm.graph.nodes:
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
        if va.shape[0] * vw.shape[0] * vw.shape[1] >= _PACK_MIN_MACS:
            found.append(w)
    return found


def _mkl_packing() -> bool:
    try:
        return bool(torch.backends.mkl.is_available()) and hasattr(torch.ops.mkl, "_mkl_linear")
    except (AttributeError, RuntimeError):
        return False


def _deferred_sources(bw: ProgramSpec, n_grads: int, n_hoisted: int, kinds: list[int], n_state: int) -> list[list[int]]:
    """For each deferred operand pair of the backward, ``[kind_a, index_a, kind_b, index_b]`` where
    kind 1 = the gradient buffer of hoisted input ``index``, 2 = per-step saved value ``index``,
    3 = state leaf ``index`` before the step, 4 = after it; kind 0 = made per step (collected)."""
    out_slots = bw.output_slots
    grad_slot = {out_slots[i]: i for i in range(n_hoisted) if out_slots[i] >= 0}

    def source(slot: int) -> tuple[int, int]:
        if slot in grad_slot:
            return 1, grad_slot[slot]
        if 0 <= slot < len(kinds):
            kind = kinds[slot]
            if kind == 0:
                return 2, slot
            if kind >= 2:
                s = kind - 2
                return (3, s) if s < n_state else (4, s - n_state)
        return 0, 0

    pairs = []
    for p in range((len(out_slots) - n_grads) // 2):
        ka, ia = source(out_slots[n_grads + 2 * p])
        kb, ib = source(out_slots[n_grads + 2 * p + 1])
        pairs.append([ka, ia, kb, ib])
    return pairs

