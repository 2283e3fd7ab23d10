"""Recurrent rows: one per layer and direction, with the gates' weight rows.

A gated cell (LSTM, GRU, Elman and torchcells cells with ``GATES``) keeps gate
``k`` in rows ``k·H … (k+1)·H − 1`` of ``weight_ih``, ``weight_hh`` and both biases;
torch.nn's ``nn.LSTM`` names them per layer and direction (``weight_ih_l1_reverse``).
Multiply-adds per application: ``G·H·I + G·H·R (+ P·H)`` for a gated cell; for any
other cell they are counted from its traced step (matrix products at batch 1).
"""

from __future__ import annotations

import math
from typing import Any, Optional

from torch import nn

from .. import cells
from ..cell import Cell, is_namedtuple, state_leaves
from ..layers import Bidirectional, Stack
from .context import Context, has_torch_names
from .kinds import (CELL_KINDS, LayerKind, candidate_kind, candidate_names, cell_kind_name, gate_activations, innermost,
                    kind_of_class)
from .records import Gate, Layer, WeightRows

__all__ = ["cell_kind", "cell_row", "gated_gates", "gated_macs", "recurrent_rows", "torch_rnn_rows", "traced_macs"]

_ROLES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def cell_kind(module: nn.Module) -> str:
    """``"LSTM"``, ``"GRU"``, ``"Elman"``, ... for the built-in cells; the class name otherwise."""
    return kind_of_class(type(module).__name__, type(module).__module__)


def gated_gates(kind: str, hidden: int, gates: tuple[str, ...], named: dict[str, Any],
                activation: Optional[str] = None, candidates: Optional[tuple[str, ...]] = None) -> tuple[Gate, ...]:
    """Gate rows of ``named`` (role -> ``(state_dict name, shape)``; roles as in ``_ROLES`` and ``weight_hr``);
    the blocks named in ``candidates`` (default: ``kind``'s) are marked candidates."""
    acts = gate_activations(kind, len(gates))
    candidates = candidate_kind(kind) if candidates is None else candidates
    if activation and kind == "Elman":
        acts = (activation,)
    out = []
    for k, (gate, act) in enumerate(zip(gates, acts)):
        parts = tuple(WeightRows(named[r][0], k * hidden, (k + 1) * hidden, (hidden,) + tuple(named[r][1][1:]))
                      for r in _ROLES if r in named and named[r][1][0] == len(gates) * hidden)
        out.append(Gate(gate, act, parts, candidate=gate in candidates))
    if "weight_hr" in named:
        name, shape = named["weight_hr"]
        out.append(Gate("projection", "", (WeightRows(name, 0, shape[0], tuple(shape)),)))
    return tuple(out)


def gated_macs(gates: tuple[Gate, ...]) -> int:
    """Multiply-adds of one application: one per weight-matrix element (biases are adds)."""
    return sum(p.numel for g in gates for p in g.parts if len(p.shape) == 2)


def _twin(kind: str, input_size: int, hidden: int, *, bias: bool, proj: int = 0,
          nonlinearity: str = "tanh") -> Optional[Cell]:
    """torchcells' cell with the same step as a torch.nn layer or cell of ``kind`` (:data:`~.kinds.CELL_KINDS`),
    on the meta device: what the cell diagram traces."""
    row = CELL_KINDS.get(kind)
    if row is None or not row.torchcells_cell:  # pragma: no cover - torch.nn has only LSTM, GRU, Elman
        return None
    options: dict[str, Any] = {"proj_size": proj} if proj else {}
    if kind == "Elman":
        options["nonlinearity"] = nonlinearity
    return getattr(cells, row.torchcells_cell)(input_size, hidden, bias=bias, device="meta", **options)


def torch_rnn_rows(ctx: Context, module: Any, path: str) -> list[Layer]:
    """``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``: one row per layer and direction."""
    kind = cell_kind_name(type(module).__name__, module.mode)
    nonlinearity = "relu" if module.mode == "RNN_RELU" else "tanh"
    rec = ctx.calls.get(module)
    steps = _steps(rec.inputs[0], module.batch_first, 1) if rec and rec.inputs else 0
    gates = CELL_KINDS[kind].gates
    H, P = module.hidden_size, getattr(module, "proj_size", 0)
    directions = 2 if module.bidirectional else 1
    rows = []
    for layer in range(module.num_layers):
        for d in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            params = [getattr(module, n) for n in module._flat_weights_names if n.endswith(suffix)]
            named = {n[: -len(suffix)]: (ctx.name(getattr(module, n)), tuple(getattr(module, n).shape))
                     for n in module._flat_weights_names if n.endswith(suffix)}
            I = named["weight_ih"][1][1]
            g = gated_gates(kind, H, gates, named, nonlinearity)
            new, shared = ctx.count(params)
            out = (P or H)
            rows.append(Layer(
                name=f"{path + '.' if path else ''}l{layer}{'_reverse' if d else ''}", cell=kind,
                kind=LayerKind.RECURRENT,
                module=f"nn.{type(module).__name__}", step_function=f"{kind}Cell({I}→{H}"
                + (f", proj {P})" if P else ")"), units=H, applications=steps, parameters=new,
                shared_parameters=shared, weights=tuple((ctx.name(p), tuple(p.shape)) for p in params), gates=g,
                state=(("h", out), ("c", H)) if kind == "LSTM" else (("h", H),),
                macs_per_application=gated_macs(g), steps=steps, direction="backward" if d else "forward",
                group=path or "(model)", block=f"{path + '.' if path else ''}l{layer}", input_size=I,
                input_shape=(steps, ctx.batch, I), output_shape=(steps, ctx.batch, out),
                order=ctx.order(module) + (layer * directions + d) / 100,
                trace_cell=_twin(kind, I, H, bias=module.bias, proj=P, nonlinearity=nonlinearity),
                step_shape=(I,)))
    return rows


def _steps(shape: Any, batch_first: bool, step_rank: int) -> int:
    if not shape:
        return 0
    if shape[0] == "packed":
        return int(shape[1])
    if len(shape) == step_rank + 2:
        return int(shape[1] if batch_first else shape[0])
    return int(shape[0])  # unbatched (T, ...)


def _cell_parts(ctx: Context, cell: nn.Module) -> dict[str, Any]:
    """Facts about a cell module shared by the recurrent and step rows. A wrapped cell (``Zoneout(LSTMCell)``)
    is of its inner cell's kind, with its inner cell's gates."""
    inner = innermost(cell)
    kind = cell_kind(inner)
    H = int(getattr(cell, "hidden_size", 0) or 0)
    params = list(cell.parameters())
    gates: tuple[Gate, ...] = ()
    names = getattr(inner, "GATES", None) or (CELL_KINDS[kind].gates if kind in CELL_KINDS else None)
    if names and H and H == getattr(inner, "hidden_size", None):
        named = {n: (ctx.name(p), tuple(p.shape)) for n, p in inner.named_parameters(recurse=False)}
        gates = gated_gates(kind, H, tuple(names), named, getattr(inner, "nonlinearity", None), candidate_names(inner))
    state: tuple[tuple[str, int], ...] = ()
    step_shape: Optional[tuple[int, ...]] = None
    try:
        ref = next(iter(params), None)
        if isinstance(cell, Cell):
            init = cell.init_state(1, device="meta", dtype=ref.dtype if ref is not None else None)
            state = _state_sizes(init)
        elif kind == "LSTM":
            state = (("h", H), ("c", H))
        else:
            state = (("h", H),)
    except Exception:  # a cell whose init_state needs more than a batch size
        state = ()
    size = getattr(cell, "input_size", None)
    if size:
        step_shape = (int(size),)
    if gates and all(len(p.shape) <= 2 for g in gates for p in g.parts):
        macs = gated_macs(gates)
    else:
        macs = traced_macs(cell, step_shape)
    namer = getattr(cell, "short_name", None)
    short = str(namer()) if callable(namer) else f"{type(cell).__name__}({size}→{H})"
    return dict(cell=kind, units=H, gates=gates, state=state, macs_per_application=macs, step_function=short,
                input_size=int(size) if size else None, trace_cell=cell, step_shape=step_shape)


def _state_sizes(state: Any) -> tuple[tuple[str, int], ...]:
    if is_namedtuple(state):
        out: list[tuple[str, int]] = []
        for name, part in zip(type(state)._fields, state):
            sub = _state_sizes(part)
            out += [(name if len(sub) == 1 else f"{name}.{n}", s) for n, s in sub]
        return tuple(out)
    leaves = state_leaves(state)
    if len(leaves) == 1:
        return (("h", math.prod(leaves[0].shape[1:])),)
    return tuple((f"s{i}", math.prod(t.shape[1:])) for i, t in enumerate(leaves))


def traced_macs(cell: nn.Module, step_shape: Optional[tuple[int, ...]]) -> int:
    """Multiply-adds of one step at batch 1, counted from the traced graph (0 if it cannot trace)."""
    from .trace_graph import graph_macs, trace_for_diagram
    if step_shape is None:
        return 0
    try:
        traced = trace_for_diagram(cell, step_shape)
    except Exception:
        return 0
    return graph_macs(traced.gm)


def recurrent_rows(ctx: Context, module: Any, path: str) -> list[Layer]:
    """``Recurrent(cell)``: one row, ``T`` applications of the cell."""
    rec = ctx.calls.get(module)
    cell = module.cell
    rank = getattr(cell, "step_rank", 1)
    steps = _steps(rec.inputs[0], module.batch_first, rank) if rec and rec.inputs else 0
    facts = _cell_parts(ctx, cell)
    if rec and rec.inputs and rec.inputs[0] and rec.inputs[0][0] != "packed":
        facts["step_shape"] = tuple(rec.inputs[0][-rank:])
        if not facts["macs_per_application"]:
            facts["macs_per_application"] = traced_macs(cell, facts["step_shape"])
    params = list(module.parameters())
    new, shared = ctx.count(params)
    group, block = _group(ctx, path)
    out_shape = rec.outputs[0] if rec and rec.outputs else None
    return [Layer(name=path or "(model)", kind=LayerKind.RECURRENT, module="Recurrent",
                  applications=steps * (rec.count if rec else 0),
                  parameters=new, shared_parameters=shared, weights=tuple((ctx.name(p), tuple(p.shape)) for p in params),
                  steps=steps, direction="backward" if module.reverse else "forward", group=group, block=block,
                  input_shape=(steps, ctx.batch, facts["input_size"] or 0),
                  output_shape=(steps, ctx.batch, out_shape[-1]) if out_shape else None,
                  order=ctx.order(module), **facts)]


def cell_row(ctx: Context, cell: Any, path: str) -> Layer:
    """A cell called directly (``nn.LSTMCell``, a torchcells cell in a hand-written loop): one application per call."""
    rec = ctx.calls.get(cell)
    facts = _cell_parts(ctx, cell)
    if isinstance(cell, nn.RNNCellBase):
        facts["trace_cell"] = _twin(facts["cell"], cell.input_size, cell.hidden_size, bias=cell.bias,
                                    nonlinearity=getattr(cell, "nonlinearity", "tanh"))
        facts["step_function"] = f"{facts['cell']}Cell({cell.input_size}→{cell.hidden_size})"
    elif rec and rec.inputs and rec.inputs[0] and rec.inputs[0][0] != "packed":
        rank = getattr(cell, "step_rank", 1)  # a torchcells cell called directly: trace it at the shape it saw
        facts["step_shape"] = tuple(rec.inputs[0][-rank:])
        if not facts["macs_per_application"]:
            facts["macs_per_application"] = traced_macs(cell, facts["step_shape"])
    params = list(cell.parameters())
    new, shared = ctx.count(params)
    return Layer(name=path or "(model)", kind=LayerKind.STEP, module=type(cell).__name__,
                 applications=rec.count if rec else 0, parameters=new, shared_parameters=shared,
                 weights=tuple((ctx.name(p), tuple(p.shape)) for p in params), steps=rec.count if rec else 0,
                 input_shape=rec.inputs[0] if rec and rec.inputs else None,
                 output_shape=rec.outputs[0] if rec and rec.outputs else None,
                 order=ctx.order(cell), group=path or "(model)", block=path or "(model)", **facts)


def _group(ctx: Context, path: str) -> tuple[str, str]:
    """The outermost recurrent container above ``path`` (Stack, Bidirectional, drop-in), and the
    layer's block: its path with the direction taken out, shared by a bidirectional pair."""
    group = path
    cur = path
    while cur in ctx.parents:
        parent_path, parent = ctx.parents[cur]
        if isinstance(parent, (Stack, Bidirectional, nn.ModuleList)) or has_torch_names(parent):
            group = parent_path
            cur = parent_path
        else:
            break
    block = ".".join(p for p in path.split(".") if p not in ("forward_layer", "backward_layer"))
    return group or "(model)", block or "(model)"
