"""The account in plain words: a few sentences on *this* model's cells, one function for every view.

``to_text()`` ends with it, the HTML page shows it, ``torchcells demo`` prints it. It says
how many step functions, units and applications the model has, which repeats share
weights, and what that means for the parameter count. The point it makes for every
model: a layer repeats one cell, and layers differ in whether the repeats share weights.
Time steps and convolution positions do (one set of weights, applied again and again);
the neurons of a dense layer, the kernels of a convolution and the units of a recurrent
cell do not (each has weights of its own). So parameters grow with units and inputs,
never with the length of a sequence or the size of an image.

The definitions of the table's columns live here too (:data:`COLUMNS`), for the glossary.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Optional, Sequence

from ..kinds import LayerKind, torch_twin

if TYPE_CHECKING:
    from ..records import Anatomy, Gate, Layer

__all__ = ["COLUMNS", "block_name", "block_role", "blocks_phrase", "fmt", "plain_words", "words_text"]

#: the meaning of each column of the layer table: one meaning each, for every kind of layer.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("cell", "the function a layer repeats: a neuron, a convolution kernel, a pool window, or a recurrent step "
             "function (named by its kind); \u2013 for a layer that is not made of cells (activation, reshape, "
             "dropout, normalization, embedding)"),
    ("units", "how many copies of the cell work side by side in one application, each making one output "
              "feature: a dense layer's neurons, a convolution's kernels (one per output channel), a pool's "
              "windows (one per channel), a recurrent cell's hidden units; \u2013 where there is no cell"),
    ("applications", "how often the layer's step function runs for one example: once per time step, per "
                     "output position, or per call"),
)


def fmt(n: int) -> str:
    """``15040`` → ``15,040``."""
    return f"{n:,}"


def block_name(layer: Layer) -> str:
    """The name of the layer ``layer`` belongs to: a recurrent layer's block (both directions of a
    bidirectional layer are one), else its own name."""
    return layer.block if layer.kind is LayerKind.RECURRENT and layer.block else layer.name


def _blocks(gates: Sequence[Gate]) -> list[Gate]:
    """A recurrent cell's blocks of rows, without the projection (a weight of its own, not a block)."""
    return [g for g in gates if g.name != "projection"]


def block_role(gate: Gate, gates: Sequence[Gate]) -> str:
    """What one block of ``gates`` is: ``"candidate"`` (the cell declares it so), ``"gate"``, or ``"–"``
    for the projection and for a lone block (an Elman cell's ``h``: nothing there to gate)."""
    if gate.candidate:
        return "candidate"
    return "gate" if gate.name != "projection" and len(_blocks(gates)) > 1 else "–"


def blocks_phrase(gates: Sequence[Gate]) -> str:
    """A cell's blocks in words: ``"3 gates (i, f, o) and the candidate g"``; ``""`` for fewer than two."""
    blocks = _blocks(gates)
    if len(blocks) < 2:
        return ""
    plain = [g.name for g in blocks if not g.candidate]
    new = [g.name for g in blocks if g.candidate]
    text = f"{_count(len(plain), 'gate')} ({', '.join(plain)})" if plain else ""
    if new:
        text += (" and " if text else "") + f"the candidate{'s' if len(new) > 1 else ''} {', '.join(new)}"
    return text


def words_text(a: Anatomy, *, sequence: Optional[str] = None, examples: int = 0, width: int = 100) -> str:
    """:func:`plain_words` as wrapped lines under the heading ``In plain words:``."""
    lines = ["In plain words:"]
    for sentence in plain_words(a, sequence=sequence, examples=examples):
        lines += textwrap.wrap(sentence, width, initial_indent="  ", subsequent_indent="    ")
    return "\n".join(lines)


def plain_words(a: Anatomy, *, sequence: Optional[str] = None, examples: int = 0) -> list[str]:
    """The sentences: the model's cells in numbers, one per layer that has cells, one for the layers
    without, and what it all means for the parameter count (``sequence`` names one example: default
    ``"sequence"`` for a model with a recurrent layer, else ``"example"``; ``examples`` adds how many
    applications that many examples made)."""
    one = sequence or ("sequence" if any(la.kind.in_time for la in a.layers) else "example")
    out = [_opening(a, one)]
    for item in _items(a):
        head = item[0]
        if head.kind.in_time:
            out.append(_recurrent(item, one))
        elif head.kind is LayerKind.DENSE:
            out.append(_dense(head, one))
        elif head.kind is LayerKind.CONV:
            out.append(_conv(head, one))
        elif head.kind is LayerKind.POOL:
            out.append(f"{_called(head.name, head.module)} is {_count(head.units, 'pool window')} ({head.step_function}), one per channel, "
                       f"each applied at {fmt(head.applications)} positions; a pool has no weights.")
    rest = _no_cells(a)
    if rest:
        out.append(rest)
    out.append(_closing(a, one, examples))
    return out


def _called(name: str, what: str, *, always: bool = False) -> str:
    """A layer's name as a sentence says it: a numbered one (``nn.Sequential``'s ``0``, ``body.2``) as
    ``layer 0 (Conv2d)``, with ``what`` it is; any other name as it is (``what`` added in parentheses
    when ``always``)."""
    if name.rsplit(".", 1)[-1].isdigit() and what:
        return f"layer {name} ({what})"
    return f"{name} ({what})" if always and what else name


def _count(n: int, word: str) -> str:
    return f"{fmt(n)} {word}{'' if n == 1 else 's'}"


def _items(a: Anatomy) -> list[list[Layer]]:
    """Layers with cells, in order; the two directions of a bidirectional layer as one item."""
    items: dict[str, list[Layer]] = {}
    for la in a.layers:
        if la.cell and la.kind.learned or la.kind is LayerKind.POOL:
            items.setdefault(block_name(la) if la.kind.in_time else la.name, []).append(la)
    return list(items.values())


def _opening(a: Anatomy, one: str) -> str:
    """What the model is made of: its step functions, units and applications in numbers."""
    parts = []
    timed = [la for la in a.layers if la.kind.in_time]
    if timed:
        kinds = sorted({la.step_function for la in timed}, key=[la.step_function for la in timed].index)
        units = sorted({la.units for la in timed})
        each = (f"of {_count(units[0], 'unit')} each" if len(units) == 1 and len(timed) > 1 else
                f"of {' / '.join(fmt(u) for u in units)} units")
        parts.append(f"{_count(len(timed), 'recurrent step function')} ({', '.join(kinds)}; \"the cell\" in "
                     f"PyTorch's sense) {each}, applied {fmt(sum(la.applications for la in timed))} times per {one}")
    words = {LayerKind.DENSE: ("neuron", "dense layer"), LayerKind.CONV: ("kernel", "convolution layer")}
    for kind in dict.fromkeys(la.kind for la in a.layers if la.kind in words):
        rows = [la for la in a.layers if la.kind is kind]
        parts.append(f"{_count(sum(la.units for la in rows), words[kind][0])} in {_count(len(rows), words[kind][1])}")
    if not parts:
        return f"{a.model} has no layer made of learned cells; its parts are listed below."
    return (f"{a.model} is made of " + "; ".join(parts) + ". A layer repeats one cell; what differs between "
            "layers is whether the repeats share weights.")


def _per_unit(total: int, units: int) -> int:
    return total // units if units and total % units == 0 else 0


def _recurrent(item: list[Layer], one: str) -> str:
    """A recurrent layer (one or two directions): its step function over time; its units."""
    la = item[0]
    name = block_name(la)
    total = sum(x.parameters + x.shared_parameters for x in item)
    if la.kind is LayerKind.STEP:
        where = f"called {fmt(la.applications)} times by a loop of the model's own"
    else:
        where = f"applied at each of the {fmt(la.steps or 0)} time steps"
    twin = torch_twin(la.cell)
    what = f"{la.step_function}" + (f", the step of {twin}" if twin else "")
    if len(item) == 2:
        text = (f"{_called(name, la.module)} is a bidirectional recurrent layer: two step functions ({what}), one per direction, each "
                f"with weights of its own and each {where}: {fmt(sum(x.applications for x in item))} applications "
                f"per {one}. The time steps share weights: each direction uses its one set at every step.")
    else:
        text = (f"{_called(name, la.module)} is a recurrent layer: one step function ({what}) {where}, "
                f"{_count(la.applications, 'application')} per {one}, all with the same weights.")
    if la.units:
        blocks = blocks_phrase(la.gates)
        memory = " (the 1997 LSTM paper's \"memory cells\")" if la.cell == "LSTM" else ""
        rows = f"one row in each of its {blocks}" if blocks else "a row of each weight"
        per = _per_unit(total, la.units * len(item))
        times = f"{len(item)} directions × " if len(item) == 2 else ""
        product = (f" = {times}{_count(la.units, 'unit')} × {fmt(per)}" if per else "")
        text += (f" Its {_count(la.units, 'unit')}{memory} do not share weights: each has its own, {rows}; so "
                 f"its {fmt(total)} parameters{product}, the same for {fmt(la.steps or 1)} steps or "
                 f"{fmt(1000 * max(la.steps or 1, 1))}.")
    return text + _shared(item)


def _dense(la: Layer, one: str) -> str:
    total = la.parameters + la.shared_parameters
    per = _per_unit(total, la.units)
    own = (f"its own {_count(la.input_size or 0, 'weight')}" + (" and a bias" if per == (la.input_size or 0) + 1 else "")
           if per else "weights of its own")
    text = (f"{_called(la.name, la.module)} is a dense layer: {_count(la.units, 'neuron')} side by side, and the neurons do not share "
            f"weights: each has {own}, so its {fmt(total)} parameters = {fmt(la.units)} × {fmt(per)}."
            if per else f"{_called(la.name, la.module)} is a dense layer of {_count(la.units, 'neuron')}, each with {own}.")
    if la.applications > 1:
        text += (f" It is applied {fmt(la.applications)} times per {one} (at every position it is given), "
                 f"each time with the same weights.")
    return text + _shared([la])


def _conv(la: Layer, one: str) -> str:
    total = la.parameters + la.shared_parameters
    per = _per_unit(total, la.units)
    text = (f"{_called(la.name, la.module)} is a convolution layer: {_count(la.units, 'kernel')} ({la.step_function}), each applied at "
            f"all {fmt(la.applications)} output positions. The positions share weights: a kernel is the same "
            f"weights wherever it is applied, so a larger input adds applications, not parameters. The kernels do "
            f"not share weights: ")
    text += (f"each has {fmt(per)}, so {fmt(total)} parameters = {fmt(la.units)} × {fmt(per)}." if per
             else f"each has its own ({fmt(total)} parameters in all).")
    return text + _shared([la])


def _shared(item: list[Layer]) -> str:
    shared = sum(x.shared_parameters for x in item)
    return (f" ({fmt(shared)} of these parameters are the same tensors as an earlier layer's and count there.)"
            if shared else "")


def _no_cells(a: Anatomy) -> str:
    """One sentence on the layers that are not made of cells."""
    rows = [la for la in a.layers if not la.cell and la.kind is not LayerKind.POOL]
    if not rows:
        return ""
    plain = [la for la in rows if not la.parameters + la.shared_parameters]
    weighted = [la for la in rows if la.parameters + la.shared_parameters]
    out = []
    if plain:
        names = ", ".join(_called(la.name, la.step_function, always=True) for la in plain[:6]) + (" ..." if len(plain) > 6 else "")
        out.append(f"{names} {'are' if len(plain) > 1 else 'is'} not made of cells: "
                   f"{'functions' if len(plain) > 1 else 'a function'} of the whole input with no weights.")
    for la in weighted[:4]:
        out.append(f"{_called(la.name, la.step_function, always=True)} holds {fmt(la.parameters + la.shared_parameters)} parameters "
                   f"but no cell: {_why(la)}.")
    return " ".join(out)


def _why(la: Layer) -> str:
    if la.kind is LayerKind.NORMALIZATION:
        return "a learned scale and shift per feature"
    if la.kind is LayerKind.EMBEDDING:
        return "a table whose rows are looked up, one per input index"
    return "torchcells cannot see inside it, so it counts only its parameters and calls"


def _closing(a: Anatomy, one: str, examples: int) -> str:
    """What sharing means for the parameter count; a total over ``examples`` when given."""
    applications = sum(la.applications for la in a.layers if la.kind.in_time)
    text = (f"In all: {fmt(a.total_parameters)} parameters and {fmt(a.macs)} multiply-adds per {one}. Repeats that "
            f"share weights (time steps, convolution positions) add applications and multiply-adds, not "
            f"parameters; units side by side (neurons, kernels, hidden units) each add weights of their own.")
    if examples and applications:
        text += (f" Running {fmt(examples)} {one}s applied the recurrent step functions {fmt(examples * applications)} "
                 f"times; "
                 f"each is still one function with one set of weights.")
    return text
