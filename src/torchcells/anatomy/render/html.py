"""One self-contained HTML page: glossary with the model's numbers, the model in plain words
(:mod:`.words`, the same words ``to_text()`` ends with), three diagrams, tables.

Everything is inline (styles and SVG); the page loads nothing and runs no script.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from ..kinds import LayerKind
from .cell_diagram import cell_svg
from .diagrams import svg_kinds
from .model_diagram import model_svg
from .text import block_name, fmt, layer_count, shape_text
from .unrolled import unrolled_svg
from .words import COLUMNS, block_role, blocks_phrase, plain_words

if TYPE_CHECKING:
    from ..records import Anatomy, Layer

__all__ = ["anatomy_html"]

_CSS = """
body { font-family: "DejaVu Sans", Verdana, Arial, sans-serif; color: #1d1d1d; margin: 24px auto;
       max-width: 1180px; padding: 0 16px; line-height: 1.45; background: #ffffff; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 34px; border-bottom: 1px solid #ddd; }
.summary { color: #555; margin-top: 0; }
figure { margin: 12px 0; overflow-x: auto; border: 1px solid #e4e4e4; border-radius: 6px; padding: 6px; }
figure svg { display: block; max-width: none; }
figcaption { color: #555; font-size: 13px; margin: 4px 6px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 16px; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 3px 9px; text-align: left; white-space: nowrap; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 0.92em; background: #f4f4f4;
       padding: 0 3px; border-radius: 3px; }
dl.glossary dt { font-weight: bold; margin-top: 10px; } dl.glossary dd { margin-left: 18px; }
.gatebox { display: inline-block; vertical-align: top; margin-right: 28px; }
"""


def anatomy_html(a: Anatomy) -> str:
    """The page for ``a`` (a complete HTML document)."""
    from ... import __version__
    parts = [f"<h1>Anatomy of <code>{escape(a.model)}</code></h1>",
             f'<p class="summary">{fmt(a.total_parameters)} parameters in {layer_count(a)} · '
             f"{fmt(a.macs)} multiply-adds per example · input {escape(shape_text(a.input_shape))} → "
             f"output {escape(shape_text(a.output_shape))} (batch of {a.batch_size} in the example)</p>",
             _glossary(a), '<h2 id="words">In plain words</h2>',
             "".join(f"<p>{escape(sentence)}</p>" for sentence in plain_words(a)),
             '<h2 id="model">The model: input → layers → output</h2>',
             _figure(model_svg(a), "Each layer drawn with its cells in the sense that fits: neurons side by "
                     "side, kernels across positions, one cell repeated across time.")]
    if any(la.kind.in_time for la in a.layers):
        parts += ['<h2 id="unrolled">The recurrent layers unrolled over time</h2>',
                  _figure(unrolled_svg(a), "One box per application; long sequences are elided.")]
    if "cell" in svg_kinds(a):
        parts.append('<h2 id="cells">Inside a cell</h2>')
    for i, la in enumerate(_distinct_cells(a)):
        try:
            svg = cell_svg(a, la.name).replace('id="cell-diagram"', f'id="cell-diagram-{i}"', 1)
        except ValueError as e:  # a cell whose forward cannot be traced
            parts.append(f"<p><b>{escape(la.name)}</b>: {escape(str(e))}</p>")
            continue
        caption = (f"{escape(la.step_function)} of layer {escape(la.name)}, read from its traced forward: yellow "
                   f"boxes are learned projections, pink discs pointwise operations, blue lines the state."
                   if la.kind.in_time else
                   f"One of the {la.units} cells of layer {escape(la.name)} ({escape(la.step_function)}).")
        parts.append(_figure(svg, caption))
    parts += ['<h2 id="layers">Layers</h2>', _layers_table(a)]
    gated = [la for la in a.layers if la.gates]
    if gated:
        parts.append('<h2 id="gates">Parameters per gate and candidate</h2>')
        parts.append("<p>Block <i>k</i> of a layer (a gate, or the candidate: the new content a step writes) is "
                     "the same rows of every weight it reads: a dense layer of as many neurons as the layer has "
                     "units.</p>")
        for la in gated:
            parts.append(f'<div class="gatebox"><p><b>{escape(la.name)}</b> — {escape(la.step_function)}</p>'
                         f"{_gates_table(la)}</div>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>Anatomy of {escape(a.model)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n"
            f'<p class="summary">Made by torchcells {escape(__version__)} <code>explain</code>.</p>\n'
            f"</body>\n</html>\n")


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"


def _distinct_cells(a: Anatomy) -> list[Layer]:
    """One layer per kind of cell (LSTM, GRU, a user cell, neuron, kernel), recurrent first; at most four."""
    seen: set[str] = set()
    out = []
    in_time = [la for la in a.layers if la.kind.in_time]
    for la in in_time + [la for la in a.layers if la.kind.in_width]:
        key = la.cell if la.kind.in_time else la.kind.value
        if key not in seen and (la.trace_cell is not None or la.kind.in_width):
            seen.add(key)
            out.append(la)
    return out[:4]


def _glossary(a: Anatomy) -> str:
    rec = next((la for la in a.layers if la.kind.in_time), None)
    dense = next((la for la in a.layers if la.kind is LayerKind.DENSE), None)
    conv = next((la for la in a.layers if la.kind is LayerKind.CONV), None)
    items = []
    if rec is not None:
        blocks = blocks_phrase(rec.gates)
        per_unit = (f", each with one neuron in each of its {blocks}: one row of every block's weights"
                    if blocks else "")
        state = ", ".join(f"{n} ({s} features)" for n, s in rec.state) or "its state"
        items += [
            ("Cell, as PyTorch and Keras say it: one step function",
             f"In layer <code>{escape(rec.name)}</code> the cell is <code>{escape(rec.step_function)}</code>: it "
             f"reads one step <i>x<sub>t</sub></i> ({rec.input_size} features) and the state {escape(state)}, and "
             f"returns the output and the new state. It is one function with "
             f"{fmt(rec.parameters + rec.shared_parameters)} parameters."),
            ("Unit: one element of the state",
             f"The step function is made of <b>{rec.units} units</b>{escape(per_unit)}."
             + (f" They are the 1997 LSTM paper's “memory cells”: this LSTM has {rec.units} of them."
                if rec.cell == "LSTM" else "")),
            ("Application: one box of an unrolled diagram",
             f"For one sequence of {fmt(rec.steps or 0)} steps, <code>{escape(rec.name)}</code> applies its cell "
             f"<b>{fmt(rec.applications)} times</b>, always with the same weights. Over all its recurrent layers "
             f"this model makes {fmt(sum(la.applications for la in a.layers if la.kind.in_time))} "
             f"applications per sequence." + _other_direction_text(a, rec)),
        ]
    layer_text = []
    if rec is not None:
        layer_text.append(f"<code>{escape(rec.name)}</code> is its cell applied across time ({fmt(rec.applications)} "
                          f"steps), the steps sharing one set of weights")
    if dense is not None:
        layer_text.append(f"<code>{escape(dense.name)}</code> is {dense.units} neuron cells side by side, each a "
                          f"weighted sum of {dense.input_size} inputs plus a bias with weights of its own")
    if conv is not None:
        layer_text.append(f"<code>{escape(conv.name)}</code> is {conv.units} kernel cells, each with weights of its "
                          f"own and each applied at {fmt(conv.applications)} positions, which share them")
    if layer_text:
        items.append(("Layer: one cell repeated; the repeats share weights or not", "; ".join(layer_text) + "."))
    items += [(f"Column “{name}”", escape(meaning)) for name, meaning in COLUMNS]
    between = " → ".join(f"<code>{escape(block_name(la))}</code>" for la in _unique_blocks(a))
    items.append(("Between the input layer and the output layer",
                  f"The input {escape(shape_text(a.input_shape))} flows through {between} to the output "
                  f"{escape(shape_text(a.output_shape))}. In the model diagram below, the yellow shapes inside "
                  f"each layer are its cells: circles are neurons and squares kernels, side by side with weights "
                  f"of their own; boxes labelled t1, t2, … are time steps, one cell applied again with the same "
                  f"weights."))
    body = "".join(f"<dt>{t}</dt><dd>{d}</dd>" for t, d in items)
    return f'<h2 id="glossary">What is a cell, what is a layer — in this model</h2><dl class="glossary">{body}</dl>'


def _other_direction_text(a: Anatomy, rec: Layer) -> str:
    """A sentence on the backward direction of ``rec``'s bidirectional layer, if it has one."""
    others = [la for la in a.layers if la.block == rec.block and la is not rec and la.kind is LayerKind.RECURRENT]
    if not others:
        return ""
    twin = others[0]
    return (f" Its twin <code>{escape(twin.name)}</code> reads the sequence from the end with a cell of its own "
            f"({fmt(twin.parameters + twin.shared_parameters)} other weights, {fmt(twin.applications)} more "
            f"applications); the two directions make one bidirectional layer whose outputs are joined.")


def _unique_blocks(a: Anatomy) -> list[Layer]:
    seen: set[str] = set()
    out = []
    for la in a.layers:
        key = block_name(la)
        if key not in seen:
            seen.add(key)
            out.append(la)
    return out


def _layers_table(a: Anatomy) -> str:
    head = ("<tr><th>layer</th><th>cell</th><th>kind</th><th>step function</th><th class=n>units</th>"
            "<th class=n>applications</th><th>state</th><th class=n>parameters</th><th class=n>MACs / application"
            "</th><th class=n>MACs</th></tr>")
    rows = []
    for la in a.layers:
        recurrent = la.kind is LayerKind.RECURRENT
        arrow = {"forward": " →", "backward": " ←"}.get(la.direction or "", "") if recurrent else ""
        state = ", ".join(f"{n} {s}" for n, s in la.state) or "–"
        shared = f" (+{fmt(la.shared_parameters)} shared)" if la.shared_parameters else ""
        units = fmt(la.units) if la.cell else "–"
        rows.append(f"<tr><td><code>{escape(la.name)}</code>{arrow}</td><td>{escape(la.cell or '–')}</td>"
                    f"<td>{escape(la.kind.value)}</td><td>{escape(la.step_function)}</td><td class=n>{units}</td>"
                    f"<td class=n>{fmt(la.applications)}</td><td>{escape(state)}</td>"
                    f"<td class=n>{fmt(la.parameters)}{shared}</td><td class=n>{fmt(la.macs_per_application)}</td>"
                    f"<td class=n>{fmt(la.macs)}</td></tr>")
    rows.append(f"<tr><th>total</th><td></td><td></td><td></td><td></td><td></td><td></td>"
                f"<th class=n>{fmt(a.total_parameters)}</th><td></td><th class=n>{fmt(a.macs)}</th></tr>")
    return f'<table class="layers">{head}{"".join(rows)}</table>'


def _gates_table(la: Layer) -> str:
    head = "<tr><th>block</th><th>activation</th><th>weight</th><th>rows</th><th>shape</th><th class=n>parameters</th></tr>"
    rows = []
    for g in la.gates:
        role = "" if block_role(g, la.gates) == "–" else escape(block_role(g, la.gates))
        for i, p in enumerate(g.parts):
            first = i == 0
            rows.append(f"<tr><td>{'<b>' + escape(g.name) + '</b> ' + role if first else ''}</td>"
                        f"<td>{escape(g.activation) if first else ''}</td><td><code>{escape(la.local_name(p.name))}"
                        f"</code></td><td>{p.start} … {p.stop - 1}</td><td>{' × '.join(map(str, p.shape))}</td>"
                        f"<td class=n>{fmt(p.numel)}</td></tr>")
        rows.append(f"<tr><td></td><td></td><td colspan=3><i>{escape(g.name)} in all</i></td>"
                    f"<th class=n>{fmt(g.parameters)}</th></tr>")
    return f'<table class="gates">{head}{"".join(rows)}</table>'
