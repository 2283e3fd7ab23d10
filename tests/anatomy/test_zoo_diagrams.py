"""Every cell and wrapper of the zoo gets its anatomy and its traced inside-the-cell diagram,
with no drawing code of its own."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

import torchcells as tc
from torchcells.cells.registry import ZOO, make_cell

I, H, T, B = 6, 8, 5, 2
_CODE_NAMES = {"getitem", "addmm", "mm", "bmm", "matmul", "linear", "convolution", "slice", "select", "amax",
               "randn", "rand", "operation"}


def example(name: str):
    entry = ZOO[name]
    size = I
    if name == "residual":
        size = H  # y = x + cell(x): as many features in as out
    cell = make_cell(name, size, H)
    spatial = entry.options.get("spatial_size")
    x = torch.randn(T, B, size, *spatial) if spatial else torch.randn(T, B, size)
    return tc.Recurrent(cell), x


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_cell_is_explained_and_drawn(name):
    layer, x = example(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random cells note that they train on the loop
        anatomy = tc.explain(layer, x)
    assert anatomy.total_parameters == sum(p.numel() for p in layer.parameters())
    rows = anatomy.to_dict()["layers"]
    assert rows and rows[0]["applications"] == T
    svg = anatomy.to_svg("cell")
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    # the diagram shows the operations of the cell's own forward: a learned projection (a layer
    # of neurons) or an operation without weights, traced, beside the step's inputs and outputs
    labels = set(re.findall(r">([^<>]{1,16})</text>", svg))
    operations = {"σ", "tanh", "+", "⊙", "relu", "exp", "−", "where", "1−", "concat", "amax", "mean"}
    assert any(label.endswith(" neurons") for label in labels) or labels & operations, labels
    assert any(label.endswith(" features") for label in labels)
    # no code artefacts: operations in words or symbols, never aten's or Python's names
    ops = re.findall(r'class="op"/>\s*<text[^>]*>([^<]*)<', svg)
    states = re.findall(r'class="io"/>\s*<text[^>]*>([^<]*)<', svg)
    assert not [op for op in ops if "_" in op or op in _CODE_NAMES], ops
    assert not [s for s in states if "." in s or s in ("s0", "s1")], states
    if rows[0]["gates"]:  # a gated cell, wrapped or not, shows its gates by name
        assert "part " not in svg


def test_docs_show_every_cell_drawn_as_the_code_draws_it_now():
    import importlib.util
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs"
    spec = importlib.util.spec_from_file_location("draw_cells", docs / "draw_cells.py")
    assert spec is not None and spec.loader is not None
    draw_cells = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(draw_cells)
    page = "".join(p.read_text(encoding="utf-8") for p in sorted((docs / "zoo").glob("*.md")))  # one page a family
    for name in ZOO:
        path = docs / "cells" / f"{name}.svg"
        assert path.read_text(encoding="utf-8") == draw_cells.draw(name), (
            f"docs/cells/{name}.svg is stale: rerun `python docs/draw_cells.py`")
        assert f"](../cells/{name}.svg)" in page


@pytest.mark.parametrize("name", ["gru-reset-before", "mgu", "conv-gru"])
def test_a_product_with_one_block_of_rows_is_drawn_as_that_gate(name):
    """``W_hh[2H:3H] (r ⊙ h)``: the slice of the recurrent weight is the candidate's projection, named so and
    merged with its input half, not a box titled after the whole weight."""
    from torchcells.anatomy.trace_graph import cell_graph

    layer, x = example(name)
    graph = cell_graph(layer.cell, tuple(x.shape[2:]))
    projections = sorted(n.label for n in graph.nodes.values() if n.kind == "proj")
    assert projections == sorted(layer.cell.GATES), projections
    for node in (n for n in graph.nodes.values() if n.kind == "proj"):
        assert "weight_ih, weight_hh" in node.detail and "rows" in node.detail, (node.label, node.detail)


@pytest.mark.parametrize("name", [n for n in ZOO if ZOO[n].kind != "feed-forward" and n != "stacked"])
def test_candidates_are_among_the_gates_and_the_anatomy_marks_them(name):
    """A cell declares which of its blocks are candidates; the anatomy marks those (a wrapper's: its cell's)."""
    from torchcells.anatomy.kinds import innermost

    layer, x = example(name)
    cell = innermost(layer.cell)
    assert set(cell.CANDIDATES) <= set(cell.GATES), (cell.CANDIDATES, cell.GATES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gates = tc.explain(layer, x).to_dict()["layers"][0]["gates"]
    if gates:
        assert [g["gate"] for g in gates if g["candidate"]] == list(cell.CANDIDATES)
