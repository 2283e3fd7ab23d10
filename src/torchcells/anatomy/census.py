"""Count a model's cells in the three senses of the word.

1. **unit** -- one neuron-like element (an LSTM "memory cell", a dense neuron);
2. **step function** -- the whole ``(x_t, state) -> (y_t, state)`` function
   (``nn.LSTMCell``'s sense);
3. **application** -- one unrolled copy of the step function at one time step.

Superseded by :func:`torchcells.explain` (any model, per-gate parameters, diagrams,
the demo's account); kept because tests of the cell zoo count cells with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

from ..layers import Recurrent


@dataclass(frozen=True)
class LayerCensus:
    """One layer's cells: ``units`` units in one step function applied ``applications`` times."""

    name: str
    kind: str
    step_function: str
    units: int
    gates: tuple[str, ...]
    applications: int
    parameters: int


_TORCH_TWINS = {"ElmanCell": "nn.RNNCell", "LSTMCell": "nn.LSTMCell", "GRUCell": "nn.GRUCell"}


def census(model: nn.Module, steps: int) -> list[LayerCensus]:
    """The recurrent and dense layers of ``model``, for sequences of ``steps`` steps.

    A ``Recurrent`` layer is one step function with ``hidden_size`` units applied
    ``steps`` times; a backward direction is a layer of its own. An ``nn.Linear``
    applied once per sequence is ``out_features`` neuron cells, applied once.
    """
    rows: list[LayerCensus] = []
    for name, module in model.named_modules():
        if isinstance(module, Recurrent):
            cell = module.cell
            rows.append(LayerCensus(
                name=name or "(model)", kind="recurrent" + (", reversed" if module.reverse else ""),
                step_function=cell.short_name() if hasattr(cell, "short_name") else type(cell).__name__,
                units=int(getattr(cell, "hidden_size", 0) or 0), gates=tuple(getattr(cell, "GATES", ())),
                applications=steps, parameters=_count(cell)))
        elif isinstance(module, nn.Linear):
            rows.append(LayerCensus(
                name=name or "(model)", kind="dense",
                step_function=f"Neuron({module.in_features}→1)", units=module.out_features, gates=(),
                applications=1, parameters=_count(module)))
    return rows


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe_census(rows: list[LayerCensus], *, samples: Optional[int] = None,
                    sequence: str = "sequence") -> str:
    """A short plain-text account of ``rows``: each layer's cells in the three senses."""
    lines = []
    for r in rows:
        if r.kind.startswith("recurrent"):
            cell_type = r.step_function.split("(")[0]
            twin = _TORCH_TWINS.get(cell_type)
            if len(r.gates) > 1:
                units = f"{r.units}, each with {len(r.gates)} gate neurons ({', '.join(r.gates)})"
            else:
                units = f"{r.units} recurrent neurons"
            if cell_type.startswith("LSTM"):
                units += " -- the 1997 paper's 'memory cells'"
            lines += [
                f"{r.name}  recurrent layer{' (reversed)' if 'reversed' in r.kind else ''}",
                f"    step function : 1 {r.step_function} -- 'the cell' of PyTorch/Keras"
                + (f" ({twin})" if twin else ""),
                f"    units         : {units}",
                f"    applications  : {r.applications} per {sequence}, one per time step, all sharing "
                f"the same {r.parameters:,} parameters -- the boxes of an unrolled diagram",
            ]
        else:
            inputs = r.step_function[r.step_function.index("(") + 1:r.step_function.index("→")]
            lines += [
                f"{r.name}  dense layer",
                f"    units         : {r.units} neuron cells side by side, each a weighted sum of "
                f"{inputs} inputs plus a bias",
                f"    applications  : {r.applications} per {sequence} ({r.parameters:,} parameters)",
            ]
    if samples is not None:
        total = sum(r.applications for r in rows if r.kind.startswith("recurrent"))
        lines.append(f"Running {samples:,} {sequence}s applied the recurrent step function "
                     f"{samples * total:,} times; it is still one function with one set of weights.")
    return "\n".join(lines)
