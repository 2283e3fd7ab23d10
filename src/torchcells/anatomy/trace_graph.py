"""A cell's inside as a small graph, read from its traced ``forward``.

The step is traced once (:func:`torchcells.graph.trace_step`, fake tensors
at batch 1, nothing computed) into aten operations, which are then read as a
diagram:

* a matrix product with a parameter (``addmm``, ``mm``, ``linear``, a convolution)
  is a **learned projection**: a dense layer of as many neurons as it has outputs;
  split into gates (``chunk``), each gate becomes its own projection of ``H``
  neurons, named from the cell's ``GATES``, and two projections of the same gate
  that are only added (``W_ih x + W_hh h``) become one; a product with one block of a
  weight's rows (``W_hh[2H:3H]``, a reset-before GRU's candidate) is that block's projection;
* everything else that computes is a **pointwise** (or joining) operation: σ, tanh, ⊙, +, concat, ...;
* views, transposes and copies are see-through; a parameter used outside a
  product (a learned vector) is drawn as a source.

The drawing code knows no cell: the same reading serves built-in and user cells.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import fx, nn
from torch.utils._pytree import TreeSpec

from ..cell import is_namedtuple
from ..graph import trace_step
from .kinds import gate_names

_SEE_THROUGH = {"t", "transpose", "view", "reshape", "_unsafe_view", "unsqueeze", "squeeze", "expand",
                "permute", "clone", "detach", "alias", "contiguous", "_to_copy", "to", "lift_fresh_copy",
                "expand_as", "view_as", "flatten"}
_PRODUCTS = {"mm", "addmm", "bmm", "matmul", "linear", "baddbmm", "convolution", "einsum", "addmv", "mv"}
_SPLITS = {"split", "split_with_sizes", "chunk", "unbind", "tensor_split"}
_ROWS_OF = {"slice", "select", "narrow", "index_select"}
_SECOND = {"sub": "−", "div": "÷"}
_SYMBOLS = {"add": "+", "sub": "−", "mul": "⊙", "div": "÷", "sigmoid": "σ", "tanh": "tanh", "relu": "ReLU",
            "neg": "−x", "exp": "exp", "log": "log", "cat": "concat", "stack": "stack", "sum": "Σ",
            "mean": "mean", "gelu": "GELU", "silu": "SiLU", "softplus": "softplus", "sqrt": "√", "rsqrt": "1/√",
            "pow": "^", "abs": "|x|", "where": "where", "ge": "≥", "gt": ">", "le": "≤", "lt": "<",
            "maximum": "max", "minimum": "min", "clamp": "clamp", "softmax": "softmax", "_softmax": "softmax",
            "log_sigmoid_forward": "log σ", "reciprocal": "1/x", "hardtanh": "hardtanh", "elu": "ELU",
            "leaky_relu": "LReLU", "sin": "sin", "cos": "cos", "square": "x²", "layer_norm": "norm",
            "native_layer_norm": "norm", "dropout": "dropout", "slice": "part of", "select": "one of",
            "narrow": "part of", "amax": "max", "amin": "min", "max": "max", "min": "min",
            "randn_like": "noise ε", "randn": "noise ε", "rand_like": "random", "rand": "random",
            "bernoulli": "random mask", "mm": "·", "addmm": "· +", "bmm": "·", "matmul": "·", "linear": "·",
            "convolution": "∗", "einsum": "·", "softsign": "softsign", "logsumexp": "log Σ exp",
            "constant_pad_nd": "pad", "zeros_like": "0", "ones_like": "1", "full_like": "fill", "erf": "erf",
            "heaviside": "step", "getitem": "one of", "sign": "sign", "floor": "floor", "round": "round", "mish": "Mish"}


@dataclass
class DNode:
    """A node of the diagram: ``kind`` is input, state_in, param, proj, op, output or state_out."""

    id: str
    kind: str
    label: str
    sub: str = ""
    detail: str = ""
    size: int = 0


@dataclass
class CellGraph:
    """The diagram graph of one cell: nodes and edges ``(src, dst)``, plus the traced graph."""

    nodes: dict[str, DNode]
    edges: list[tuple[str, str]]
    gm: fx.GraphModule
    state_names: list[str] = field(default_factory=list)
    #: edges into a non-commutative operation marked with the side they are (``"−"`` subtracted, ``"÷"`` divisor).
    notes: dict[tuple[str, str], str] = field(default_factory=dict)


@dataclass
class Traced:
    gm: fx.GraphModule
    param_names: list[str]
    spec: TreeSpec
    state_names: list[str]


def _op(node: fx.Node) -> str:
    if node.target is operator.getitem:
        return "getitem"
    target = node.target
    packet = getattr(target, "overloadpacket", None)
    name = str(getattr(packet, "__name__", None) or getattr(target, "__name__", str(target)))
    return name.split(".")[0].rstrip("_")


def trace_for_diagram(cell: nn.Module, step_shape: tuple[int, ...]) -> Traced:
    """Trace one step of ``cell`` at batch 1 for an input of ``step_shape`` (without the batch)."""
    ref = next(iter(cell.parameters()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    x = torch.zeros((1, *step_shape), device=device, dtype=dtype)
    init = getattr(cell, "init_state", None)
    if init is None:
        raise TypeError(f"{type(cell).__name__} has no init_state(batch_size); cannot trace its step")
    state = init(1, device=device, dtype=dtype)
    gm, names, spec = trace_step(cell, x, state)
    gm.graph.eliminate_dead_code()
    return Traced(gm, names, spec, _leaf_names(state))


def _leaf_names(state: Any) -> list[str]:
    """A name per state tensor, as a reader would say it: the field it sits in (``h``, ``c``), a wrapper's
    inner state seen through (``MaskedState(cell=LSTMState(h, c), masks=(m, m))`` → ``h, c, mask1, mask2``),
    a position numbered from 1 where a name repeats (a ``StackedCell``'s ``h1, c1, h2, c2``)."""
    paths = _leaf_paths(state, ())
    names = [_short_name(path) for path in paths]
    if len(set(names)) < len(names):
        names = [_short_name(path, numbered=True) for path in paths]
    return names if len(set(names)) == len(names) else [f"s{i + 1}" for i in range(len(paths))]


def _leaf_paths(state: Any, prefix: tuple) -> list[tuple]:
    if isinstance(state, torch.Tensor):
        return [prefix]
    fields = type(state)._fields if is_namedtuple(state) else None
    out: list[tuple] = []
    for i, part in enumerate(state):
        out += _leaf_paths(part, prefix + ((fields[i],) if fields else (i,)))
    return out


def _short_name(path: tuple, *, numbered: bool = False) -> str:
    """``("cell", "h")`` → ``h``; ``("masks", 0)`` → ``mask1``; ``(0, "h")`` → ``h`` (``h1`` when ``numbered``)."""
    named = [k for k, part in enumerate(path) if isinstance(part, str)]
    if not named:
        return "h" if not path else "s" + "".join(str(p + 1) for p in path)
    last = named[-1]
    base = path[last]
    after = [str(p + 1) for p in path[last + 1:]]
    if after and base.endswith("s") and len(base) > 2:
        base = base[:-1]  # masks[0] → mask1
    before = [str(p + 1) for p in path[:last] if isinstance(p, int)] if numbered else []
    return base + "".join(after + before)


def graph_macs(gm: fx.GraphModule) -> int:
    """Multiply-adds of the matrix products and convolutions in ``gm``."""
    total = 0
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = _op(node)
        vals = [a.meta.get("val") for a in node.all_input_nodes]
        out = node.meta.get("val")
        if name in ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "mv", "addmv") and isinstance(out, torch.Tensor):
            a = vals[1] if name in ("addmm", "baddbmm", "addmv") else vals[0]
            if isinstance(a, torch.Tensor):
                total += out.numel() * int(a.shape[-1])
        elif name == "convolution" and isinstance(out, torch.Tensor) and isinstance(vals[1], torch.Tensor):
            w = vals[1]
            total += out.numel() * int(w[0].numel())
    return total


def cell_graph(cell: nn.Module, step_shape: tuple[int, ...], *, gates: Optional[tuple[str, ...]] = None,
               param_labels: Optional[dict[str, str]] = None) -> CellGraph:
    """The diagram graph of one application of ``cell``.

    ``gates`` names the chunks of a split projection (default: the cell's gates, a wrapped cell's included);
    ``param_labels`` renames parameters (e.g. to torch.nn's ``weight_ih_l0``).
    """
    traced = trace_for_diagram(cell, step_shape)
    return read_graph(traced, gates=gates if gates is not None else gate_names(cell),
                      param_labels=param_labels or {})


def read_graph(traced: Traced, *, gates: tuple[str, ...], param_labels: dict[str, str]) -> CellGraph:
    """The diagram graph of a traced step: ``gates`` names the chunks of a split projection,
    ``param_labels`` renames parameters."""
    return _GraphReader(traced, gates, param_labels).read()


class _GraphReader:
    """One pass over a traced step, in the graph's order: each aten call becomes a projection, a
    gate, an operation, or is seen through.

    ``rep`` maps each fx node to what stands for it in the diagram: a node id, ``("param", name)``
    for a parameter (a node is made only where one is used as a value), or ``("split", node)``
    for a split whose chunks are taken apart where they are read.
    """

    def __init__(self, traced: Traced, gates: tuple[str, ...], param_labels: dict[str, str]) -> None:
        self.traced = traced
        self.gates = gates
        self.nodes: dict[str, DNode] = {}
        self.edges: list[tuple[str, str]] = []
        self.rep: dict[fx.Node, Any] = {}
        self.param_nodes: dict[str, str] = {}  # parameter label -> its source node
        self.param_rows: dict[fx.Node, tuple[int, int, int]] = {}  # rows of a parameter: (start, stop, of all)
        self.proj_parts: dict[str, list[str]] = {}  # projection id -> weight labels
        self.notes: dict[tuple[str, str], str] = {}  # edge -> the operand it is ("−": subtracted, "÷": divisor)
        self.counter = 0
        self._inputs(param_labels)

    def _inputs(self, param_labels: dict[str, str]) -> None:
        """The step's placeholders: the parameters, then x, then the state's leaves."""
        placeholders = [n for n in self.traced.gm.graph.nodes if n.op == "placeholder"]
        n_params = len(self.traced.param_names)
        self.nodes["x"] = DNode("x", "input", "x_{t}", size=_width(placeholders[n_params]))
        self.rep[placeholders[n_params]] = "x"
        for leaf, name in zip(placeholders[n_params + 1:], self.traced.state_names):
            nid = f"in:{name}"
            self.nodes[nid] = DNode(nid, "state_in", f"{name}_{{t−1}}", size=_width(leaf))
            self.rep[leaf] = nid
        for p, name in zip(placeholders[:n_params], self.traced.param_names):
            self.rep[p] = ("param", param_labels.get(name, name))

    def read(self) -> CellGraph:
        """Read every call, then the outputs; name the projections' weights; drop what reaches no output."""
        for node in self.traced.gm.graph.nodes:
            if node.op == "call_function":
                self._call(node)
        self._outputs()
        for nid, weights in self.proj_parts.items():
            self.nodes[nid].detail = _weights_detail(weights)
        _prune(self.nodes, self.edges)
        return CellGraph(self.nodes, self.edges, self.traced.gm, self.traced.state_names,
                         {e: n for e, n in self.notes.items() if e in self.edges})

    def _new_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def _source(self, a: Any) -> Optional[str]:
        """Diagram id for an fx argument (a parameter used as a value becomes a source node)."""
        if not isinstance(a, fx.Node):
            return None
        r = self.rep.get(a)
        if isinstance(r, tuple):
            name = r[1]
            if name not in self.param_nodes:
                nid = f"param:{name}"
                self.nodes[nid] = DNode(nid, "param", name.rsplit(".", 1)[0] if name.endswith(("weight", "bias"))
                                        else name, sub=f"{_width(a)} learned", size=_width(a))
                self.param_nodes[name] = nid
            return self.param_nodes[name]
        return r

    def _split_of(self, a: Any) -> Optional[fx.Node]:
        """The split node ``a`` stands for, if it is one."""
        r = self.rep.get(a)
        return r[1] if isinstance(r, tuple) and r[0] == "split" else None

    def _call(self, node: fx.Node) -> None:
        """One aten call, by what it does."""
        name = _op(node)
        args = [a for a in node.args if isinstance(a, fx.Node)]
        for a in node.args:
            if isinstance(a, (list, tuple)):
                args += [b for b in a if isinstance(b, fx.Node)]
        if (name in _SEE_THROUGH or name in _ROWS_OF and isinstance(self.rep.get(args[0]), tuple)) and args:
            self.rep[node] = self.rep.get(args[0])  # (rows of a parameter are still that parameter)
            self._rows_of(node, name, args[0])
        elif name in _PRODUCTS and any(isinstance(self.rep.get(a), tuple) for a in args):
            self._projection(node, name, args)
        elif name in _SPLITS:
            self.rep[node] = ("split", node)
        elif name == "getitem" and (split := self._split_of(node.args[0])) is not None:
            self.rep[node] = self._split_part(split, int(node.args[1]), _width(node))  # type: ignore[arg-type]
        elif name == "getitem" and args:  # a result of an op that returns several (log σ's output, its buffer)
            self.rep[node] = self.rep.get(args[0])
        elif not (name == "add" and self._merge_same_gate(node, args)):
            self._operation(node, name, args)

    def _rows_of(self, node: fx.Node, name: str, src: fx.Node) -> None:
        """Which rows of a parameter ``node`` is: those of ``src`` seen through, or a slice of its first
        dimension (``W_hh[2H:3H]``) taken from the whole parameter."""
        if name in _SEE_THROUGH:
            if src in self.param_rows:
                self.param_rows[node] = self.param_rows[src]
            return
        val = src.meta.get("val")
        if name != "slice" or src in self.param_rows or not isinstance(val, torch.Tensor) or val.dim() == 0:
            return
        dim, start, stop = (list(node.args[1:4]) + [0, 0, None])[:3]
        step = node.args[4] if len(node.args) > 4 else 1
        total = int(val.shape[0])
        if dim == 0 and step == 1 and isinstance(start, int) and (stop is None or isinstance(stop, int)):
            stop = total if stop is None else min(stop, total)
            self.param_rows[node] = (start, stop, total)

    def _one_block(self, params: list[fx.Node]) -> Optional[tuple[str, int, int]]:
        """The gate (or candidate) whose rows every parameter of a product is -- ``(name, start, stop)`` -- when
        they are the same single block of the cell's ``GATES`` (``W_hh[2H:3H]`` and ``b_hh[2H:3H]``)."""
        rows = {self.param_rows.get(p) for p in params}
        if len(rows) != 1 or None in rows or not self.gates:
            return None
        (start, stop, total), = rows  # type: ignore[misc]
        block = total // len(self.gates)
        if total % len(self.gates) or stop - start != block or start % block:
            return None
        return self.gates[start // block], start, stop

    def _projection(self, node: fx.Node, name: str, args: list[fx.Node]) -> None:
        """A product with a parameter: a learned projection, a dense layer of as many neurons as it has outputs;
        named after its gate when it reads one block of a weight's rows."""
        params = [a for a in args if isinstance(self.rep.get(a), tuple)]
        weights = [self.rep[a][1] for a in params]
        inputs = [a for a in args if not isinstance(self.rep.get(a), tuple)]
        block = self._one_block(params)
        if block is not None:
            weights = [f"{w}[{block[1]}:{block[2]}]" for w in weights]
        nid = self._new_id("proj")
        width = _width(node)
        unit = "kernels" if name == "convolution" else "neurons"  # a convolution's units are kernels
        title = block[0] if block is not None else _proj_title(weights)
        self.nodes[nid] = DNode(nid, "proj", title, sub=f"{width} {unit}", size=width)
        self.proj_parts[nid] = weights
        for a in inputs:
            s = self._source(a)
            if s:
                self.edges.append((s, nid))
        self.rep[node] = nid

    def _operation(self, node: fx.Node, name: str, args: list[fx.Node]) -> None:
        """Anything else that computes: a pointwise (or joining) operation."""
        nid = self._new_id("op")
        self.nodes[nid] = DNode(nid, "op", _symbol(name, node), size=_width(node))
        for i, a in enumerate(args):
            s = self._source(a)
            if s and (s, nid) not in self.edges:
                self.edges.append((s, nid))
                if i == 1 and name in _SECOND:  # which side of a − b, a ÷ b
                    self.notes[(s, nid)] = _SECOND[name]
        self.rep[node] = nid

    def _outputs(self) -> None:
        """``y_t`` and the new state's leaves, from the step's output."""
        output = next(n for n in self.traced.gm.graph.nodes if n.op == "output")
        outs = list(output.args[0])
        self.nodes["y"] = DNode("y", "output", "y_{t}", size=_width(outs[0]))
        if (s := self._source(outs[0])):
            self.edges.append((s, "y"))
        for leaf, name in zip(outs[1:], self.traced.state_names):
            nid = f"out:{name}"
            self.nodes[nid] = DNode(nid, "state_out", f"{name}_{{t}}", size=_width(leaf))
            if (s := self._source(leaf)):
                self.edges.append((s, nid))

    def _split_part(self, split: fx.Node, k: int, width: int) -> str:
        """Chunk ``k`` of a split: a gate projection when the split's source is made of projections."""
        src = split.args[0]
        parts = split.meta.get("val")
        chunks = len(parts) if isinstance(parts, (list, tuple)) else len(split.users)
        # a split into as many chunks as gates is one chunk per gate; into fewer (GRU's W_hr, W_hz of
        # ``W_hh[:2H] h``), the first gates, in the cell's row order
        gate = self.gates[k] if 0 < chunks <= len(self.gates) else f"part {k + 1} of {chunks}"
        projs = self._projections_behind(src)
        if projs:
            return self._gate(gate, projs, k, width)
        nid = f"{self._source(src)}#{k}"
        if nid not in self.nodes:
            self.nodes[nid] = DNode(nid, "op", gate, size=width)
            if (s := self._source(src)):
                self.edges.append((s, nid))
        return nid

    def _gate(self, gate: str, projs: list[str], k: int, width: int) -> str:
        """Gate ``gate``: rows ``k·width … (k+1)·width − 1`` of the projections ``projs``, one projection of its own."""
        nid = f"gate:{gate}:{'+'.join(projs)}"
        if nid not in self.nodes:
            weights = [w for p in projs for w in self.proj_parts[p]]
            rows = f"[{k * width}:{(k + 1) * width}]"
            unit = "kernels" if any(self.nodes[p].sub.endswith("kernels") for p in projs) else "neurons"
            self.nodes[nid] = DNode(nid, "proj", gate, sub=f"{width} {unit}", size=width)
            self.proj_parts[nid] = [w + rows for w in weights]
            for p in projs:
                for s, d in list(self.edges):
                    if d == p and (s, nid) not in self.edges:
                        self.edges.append((s, nid))
        return nid

    def _projections_behind(self, src: Any) -> list[str]:
        """The projections that ``src`` is (one), or the sum of (``W_ih x + W_hh h``)."""
        nodes, r = self.nodes, self.rep.get(src)
        if isinstance(r, str) and nodes.get(r) and nodes[r].kind == "proj":
            return [r]
        if isinstance(src, fx.Node) and _op(src) == "add" and isinstance(r, str) and r in nodes \
                and nodes[r].kind == "op":
            parts = [self.rep.get(a) for a in src.args if isinstance(a, fx.Node)]
            if len(parts) == 2 and all(isinstance(p, str) and nodes[p].kind == "proj" for p in parts):
                return [str(p) for p in parts]
        return []

    def _merge_same_gate(self, node: fx.Node, args: list[fx.Node]) -> bool:
        """``add`` of two projections of the same gate, each used only here: one projection."""
        ids = [self.rep.get(a) for a in args]
        if len(ids) != 2 or not all(isinstance(i, str) and self.nodes[i].kind == "proj" for i in ids):
            return False
        a, b = self.nodes[str(ids[0])], self.nodes[str(ids[1])]
        if a.label != b.label or a.id == b.id or any(len(x.users) != 1 for x in args):
            return False
        nid = f"{a.id}&{b.id}"
        self.nodes[nid] = DNode(nid, "proj", a.label, sub=a.sub, size=a.size)
        self.proj_parts[nid] = self.proj_parts.pop(a.id) + self.proj_parts.pop(b.id)
        for old in (a.id, b.id):
            for i, (s, d) in enumerate(self.edges):
                if d == old:
                    self.edges[i] = (s, nid)
            del self.nodes[old]
        self.rep[node] = nid
        return True


def _weights_detail(weights: list[str]) -> str:
    """``"weight_ih, weight_hh + bias\nrows 0–19"``: the matrices a projection reads, and which rows."""
    names = [w.split("[")[0] for w in weights]
    rows = {w[w.index("[") + 1:-1] for w in weights if "[" in w}
    mats = list(dict.fromkeys(n for n in names if not n.rsplit(".", 1)[-1].startswith("bias")))
    line = ", ".join(mats) + (" + bias" if len(mats) < len(set(names)) else "")
    if len(rows) == 1:
        start, stop = (int(v) for v in rows.pop().split(":"))
        line += f"\nrows {start}–{stop - 1}"
    return line


def _width(node: Any) -> int:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    if isinstance(val, torch.Tensor) and val.dim():
        return int(val.shape[-1])
    return 1


def _proj_title(weights: list[str]) -> str:
    """A projection's name: its module (``mix`` for ``mix.weight``), torch's "projection" for
    ``weight_hr``, else the weight's own name."""
    mats = [w for w in weights if not w.rsplit(".", 1)[-1].startswith("bias")] or weights
    head, _, last = mats[0].rpartition(".")
    if head and last == "weight":
        return head.rsplit(".", 1)[-1]
    return "projection" if last.startswith("weight_hr") else last


def _symbol(name: str, node: fx.Node) -> str:
    scalars = [a for a in node.args if isinstance(a, (int, float)) and not isinstance(a, bool)]
    if name == "rsub" and scalars:
        return f"{_num(scalars[0])}−"
    if name in ("add", "sub", "mul", "div", "ge", "gt", "le", "lt", "pow") and scalars:
        sym = {"mul": "×", "add": "+", "sub": "−"}.get(name, _SYMBOLS.get(name, name))
        return f"{sym}{_num(scalars[0])}"
    return _SYMBOLS.get(name) or _readable(name)


def _readable(name: str) -> str:
    """An operation torchcells has no symbol for, in words: ``aten.logical_and`` → ``logical and``
    (no code artefacts such as ``getitem`` or underscores in a diagram)."""
    words = name.replace("_", " ").split()
    if words and words[-1] in ("like", "forward", "default"):
        words = words[:-1]
    return " ".join(words) or "operation"


def _num(v: float) -> str:
    return f"{v:g}"


def _prune(nodes: dict[str, DNode], edges: list[tuple[str, str]]) -> None:
    """Drop nodes that reach no output (and their edges), and duplicate edges."""
    keep = {n for n, d in nodes.items() if d.kind in ("output", "state_out")}
    changed = True
    while changed:
        changed = False
        for s, d in edges:
            if d in keep and s not in keep:
                keep.add(s)
                changed = True
    keep |= {n for n, d in nodes.items() if d.kind in ("input", "state_in")}
    for n in [n for n in nodes if n not in keep]:
        del nodes[n]
    kept = [e for e in edges if e[0] in keep and e[1] in keep]
    edges[:] = list(dict.fromkeys(kept))
