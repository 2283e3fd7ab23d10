"""Diagrams: the cell's inside read from its traced forward, the unrolled layers, the model."""

import re
import xml.etree.ElementTree as ET
from collections import Counter
from typing import NamedTuple

import pytest
import torch
from torch import nn

import torchcells
from torchcells import Bidirectional, Cell, GRUCell, LSTMCell, Recurrent, Stack
from torchcells.anatomy import explain
from torchcells.anatomy.render.cell_diagram import layout
from torchcells.anatomy.trace_graph import cell_graph

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # well-formed standalone XML
    assert root.tag == SVG + "svg" and float(root.get("width")) > 0 and float(root.get("height")) > 0
    return root


def texts(root: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter(SVG + "text")]


def ops(graph, kind):
    return Counter(n.label for n in graph.nodes.values() if n.kind == kind)


class MemoState(NamedTuple):
    h: torch.Tensor
    m: torch.Tensor


class MemoCell(Cell):
    """A cell written here, with no drawing code: the diagram must come from its forward."""

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.mix = nn.Linear(input_size + hidden_size, hidden_size)
        self.keep = nn.Linear(input_size, hidden_size)

    def init_state(self, batch_size, *, device=None, dtype=None):
        z = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return MemoState(z, z)

    def forward(self, x, state):
        a = torch.sigmoid(self.keep(x))
        m = a * state.m + (1 - a) * torch.relu(self.mix(torch.cat([x, state.h], -1)))
        return m, MemoState(torch.tanh(m), m)


def test_lstm_inside_has_four_gate_layers_and_the_wikipedia_pointwise_ops():
    g = cell_graph(LSTMCell(10, 20), (10,))
    gates = {n.label: n for n in g.nodes.values() if n.kind == "proj"}
    assert set(gates) == {"i", "f", "g", "o"}
    assert all(n.sub == "20 neurons" for n in gates.values())
    assert "rows 0–19" in gates["i"].detail and "rows 60–79" in gates["o"].detail
    assert "weight_ih, weight_hh + bias" in gates["f"].detail
    assert ops(g, "op") == Counter({"σ": 3, "⊙": 3, "tanh": 2, "+": 1})
    assert {n.label for n in g.nodes.values() if n.kind == "state_in"} == {"h_{t−1}", "c_{t−1}"}
    assert {n.label for n in g.nodes.values() if n.kind == "state_out"} == {"h_{t}", "c_{t}"}
    # each gate reads both x_t and h_{t-1}; c_{t-1} only meets the forget gate's product
    for gid in (n.id for n in gates.values()):
        assert {s for s, d in g.edges if d == gid} == {"x", "in:h"}
    (c_use,) = [d for s, d in g.edges if s == "in:c"]
    assert g.nodes[c_use].label == "⊙"


def test_gru_merges_input_and_hidden_parts_of_r_and_z_but_not_of_n():
    g = cell_graph(GRUCell(4, 6), (4,))
    labels = Counter(n.label for n in g.nodes.values() if n.kind == "proj")
    assert labels == Counter({"r": 1, "z": 1, "n": 2})  # torch's reset-after GRU: r multiplies W_hn h only
    n_parts = [n for n in g.nodes.values() if n.kind == "proj" and n.label == "n"]
    sources = sorted(tuple(s for s, d in g.edges if d == n.id) for n in n_parts)
    assert sources == [("in:h",), ("x",)]


def test_user_cell_diagram_shows_its_own_operations():
    layer = explain(Recurrent(MemoCell(8, 16)), torch.randn(5, 2, 8))
    g = cell_graph(MemoCell(8, 16), (8,))
    assert ops(g, "proj") == Counter({"mix": 1, "keep": 1})
    assert ops(g, "op") == Counter({"⊙": 2, "+": 1, "σ": 1, "1−": 1, "ReLU": 1, "concat": 1, "tanh": 1})
    root = parse(layer.to_svg("cell"))
    words = texts(root)
    for label in ("mix", "keep", "concat", "ReLU", "1−", "σ", "ht", "mt−1"):
        assert label in words, label
    assert "traced from MemoCell.forward; one of 5 applications, all sharing 544 parameters" in words
    assert len(root.findall(f".//{SVG}rect[@class='proj']")) == 2


def test_cell_diagram_uses_the_models_own_weight_names():
    a = explain(nn.LSTM(3, 4, num_layers=2, bidirectional=True), torch.randn(2, 1, 3))
    words = texts(parse(a.to_svg("cell", layer="l1_reverse")))
    assert "weight_ih_l1_reverse, weight_hh_l1_reverse + bias" in words
    assert "Inside one application of LSTMCell(8→4) — layer l1_reverse" in words


@pytest.mark.parametrize("cell", [LSTMCell(10, 20), GRUCell(8, 16), MemoCell(8, 16), torchcells.MinLSTMCell(5, 7),
                                  LSTMCell(6, 8, proj_size=3)], ids=lambda c: type(c).__name__)
def test_cell_layout_has_no_overlapping_nodes(cell):
    g = cell_graph(cell, (cell.input_size,))
    placed = layout(g)
    pos, cols, sizes = placed.pos, placed.cols, placed.sizes
    boxes = [(pos[n][0] - sizes[n][0] / 2, pos[n][1] - sizes[n][1] / 2, pos[n][0] + sizes[n][0] / 2,
              pos[n][1] + sizes[n][1] / 2, n) for n in g.nodes]
    for i, a in enumerate(boxes):
        assert a[0] >= 0 and a[1] >= 0
        for b in boxes[i + 1:]:
            apart = a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
            assert apart, f"{a[4]} overlaps {b[4]}"
    # inputs in the first column, outputs in the last
    assert {g.nodes[n].kind for n in cols[0] if n in g.nodes} <= {"input", "state_in"}
    assert {g.nodes[n].kind for n in cols[-1] if n in g.nodes} == {"output", "state_out"}


def test_dense_and_conv_layers_draw_one_neuron_or_kernel():
    a = explain(nn.Sequential(nn.Conv1d(2, 3, 5), nn.Flatten(), nn.Linear(3 * 6, 4)), torch.randn(1, 2, 10))
    assert "One kernel of 0: 10 weights + bias, one of 3" in texts(parse(a.to_svg("cell", layer="0")))
    words = texts(parse(a.to_svg("cell")))  # no recurrent layer: the first dense or conv layer
    assert "One kernel of 0: 10 weights + bias, one of 3" in words
    neuron = texts(parse(a.to_svg("cell", layer="2")))
    assert "One neuron of 2: 18 weights + bias, one of 4" in neuron and "x18" in neuron


def test_unrolled_elides_long_sequences_to_the_same_size():
    short = explain(nn.GRU(3, 4), torch.randn(5, 1, 3)).to_svg("unrolled")
    long = explain(nn.GRU(3, 4), torch.randn(10_000, 1, 3)).to_svg("unrolled")
    boxes = [len(parse(s).findall(f".//{SVG}rect[@class='application']")) for s in (short, long)]
    assert boxes == [5, 4]  # x1..x5, then x1, x2, x3, ⋯, x10000
    assert [parse(s).get("width") for s in (short, long)] == [parse(short).get("width")] * 2
    assert [parse(s).get("height") for s in (short, long)] == [parse(short).get("height")] * 2
    assert abs(len(long) - len(short)) < 0.1 * len(short)
    words = texts(parse(long))
    assert "x10000" in words and "y10000" in words and "⋯" in words and "x4" not in words


def test_unrolled_bidirectional_stack_has_one_band_per_layer_and_arrows_both_ways():
    stack = Stack([Bidirectional(Recurrent(LSTMCell(3, 4))), Recurrent(LSTMCell(8, 4))])
    root = parse(explain(stack, torch.randn(4, 1, 3)).to_svg("unrolled"))
    words = texts(root)
    assert words.count("→ LSTM") == 4 and words.count("← LSTM") == 4 and words.count("LSTM") == 4
    assert {"layers.0", "layers.1", "LSTMCell(3→4) ×2 directions", "LSTMCell(8→4)"} <= set(words)
    assert "W1 = 144 weights, 4 steps" in words and "W3 = 224 weights, 4 steps" in words
    colors = Counter(m for m in re.findall(r'stroke="(#[0-9a-f]+)" stroke-width="2"', root_text(root)))
    assert colors["#2f6db5"] > 0 and colors["#b5532f"] > 0  # forward and backward state arrows


def root_text(root: ET.Element) -> str:
    return ET.tostring(root, encoding="unicode").replace("ns0:", "")


def test_model_diagram_shows_stacked_bidirectional_layers_and_each_layers_cells():
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(6, 8, num_layers=2, bidirectional=True)
            self.head = nn.Linear(16, 12)

        def forward(self, x):
            return self.head(self.rnn(x)[0])
    a = explain(Tagger(), torch.randn(7, 2, 6))
    root = parse(a.to_svg("model"))
    words = texts(root)
    assert words.count("bidirectional recurrent layer") == 2
    assert "rnn: nn.LSTM, 2 layers deep, 2,688 parameters" in words
    assert "input (7, 2, 6)" in words and "output (7, 2, 12)" in words
    assert "12 neurons × 16 inputs, applied 7×" in words and "×12" in words
    assert "→ ×7" in words and "← ×7" in words
    assert words.index("rnn.l0") < words.index("rnn.l1") < words.index("head")


class Branchy(Cell):
    """Python control flow on a tensor's value: cannot be traced."""

    def __init__(self):
        super().__init__(3, 4)
        self.lin = nn.Linear(7, 4)

    def forward(self, x, h):
        h = torch.tanh(self.lin(torch.cat([x, h], -1)))
        return (-h, -h) if h.sum() > 0 else (h, h)


def test_a_cell_that_cannot_be_traced_is_said_so(tmp_path):
    # (explain runs the model without gradients: five steps go to the loop without asking the fused path)
    a = explain(Recurrent(Branchy()), torch.randn(5, 2, 3))
    assert a.layers[0].applications == 5 and a.total_parameters == 32
    with pytest.raises(ValueError, match=r"the step of Branchy\(3→4\) \(layer \(model\)\) cannot be traced"):
        a.to_svg("cell")
    page = a.save_html(tmp_path / "p.html").read_text(encoding="utf-8")
    assert "cannot be traced, so its inside cannot be drawn" in page and 'id="unrolled-diagram"' in page


def test_the_subtracted_operand_is_marked():
    g = cell_graph(GRUCell(4, 6), (4,))  # h = n + z ⊙ (h_{t-1} − n)
    (sub,) = [n.id for n in g.nodes.values() if n.label == "−"]
    into = {s: g.notes.get((s, d)) for s, d in g.edges if d == sub}
    assert into["in:h"] is None and [g.nodes[s].label for s, note in into.items() if note == "−"] == ["tanh"]


def test_projected_lstm_ends_in_a_projection_of_proj_size_neurons():
    g = cell_graph(LSTMCell(6, 8, proj_size=3), (6,))
    (proj,) = [n for n in g.nodes.values() if n.label == "projection"]
    assert proj.kind == "proj" and proj.sub == "3 neurons"
    assert {g.nodes[d].label for s, d in g.edges if s == proj.id} == {"h_{t}", "y_{t}"}
