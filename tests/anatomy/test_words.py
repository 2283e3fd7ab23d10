"""`explain` speaks: the plain-words account after the table, one meaning per column, and diagrams
that draw time steps apart from units, keep gate names through wrappers and wire both directions."""

import re
import xml.etree.ElementTree as ET
from html import escape

import torch
from torch import nn

from torchcells import GRUCell, LSTMCell, Recurrent
from torchcells.anatomy import explain
from torchcells.anatomy.render.words import plain_words
from torchcells.cells import Zoneout
from torchcells.cli import main

SVG = "{http://www.w3.org/2000/svg}"


def flat(text: str) -> str:
    return " ".join(text.split())


def test_explain_cli_ends_with_the_plain_words(capsys):
    assert main(["explain", "lstm:input=10,hidden=20,layers=2"]) == 0
    out = capsys.readouterr().out
    words = flat(out[out.rindex("In plain words:"):])
    assert "2 recurrent step functions (LSTMCell(10→20), LSTMCell(20→20)" in words
    assert "of 20 units each, applied 10 times per sequence" in words
    assert "5 applications per sequence, all with the same weights" in words
    assert "Its 20 units (the 1997 LSTM paper's \"memory cells\") do not share weights" in words
    # the parameter count, explained: units × each unit's own weights, independent of the length
    assert "2,560 parameters = 20 units × 128, the same for 5 steps or 5,000" in words
    assert "3,360 parameters = 20 units × 168" in words
    assert "add applications and multiply-adds, not parameters" in words
    assert flat(out).endswith(words)  # the account is the end of the output


def test_dense_neurons_do_not_share_weights_convolution_positions_do():
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4))
    a = explain(model, torch.randn(1, 2, 6))
    words = flat(a.account())
    # nn.Sequential's layers are numbered: "layer 0 (Conv1d)", never a bare "0 is ..."
    assert "layer 0 (Conv1d) is a convolution layer: 3 kernels" in words and "each applied at all 4 output positions" in words
    assert "The positions share weights" in words and "21 parameters = 3 × 7" in words
    assert "layer 3 (Linear) is a dense layer: 4 neurons side by side, and the neurons do not share weights" in words
    assert "its own 12 weights and a bias, so its 52 parameters = 4 × 13" in words
    assert "layer 1 (ReLU), layer 2 (Flatten) are not made of cells" in words
    assert not re.search(r"(^|\. )\d+ (is|\()", words), words
    assert "neurons share" not in words
    # the same words in the account, at the end of to_text() and on the page
    sentences = plain_words(a)
    assert flat(a.account()) == flat("In plain words: " + " ".join(sentences))
    assert flat(a.to_text()).endswith(flat(a.account()))
    page = a.to_html()
    assert '<h2 id="words">In plain words</h2>' in page and all(f"<p>{escape(s)}</p>" in page for s in sentences)


def test_the_cell_column_names_only_cells_and_units_means_one_thing():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 5))
    a = explain(model, torch.randn(1, 1, 8, 8))
    assert [(la.cell, la.units) for la in a.layers] == [
        ("kernel", 4), ("", 0), ("pool window", 4), ("", 0), ("neuron", 5)]
    table = a.to_text().split("\n\n")[1].splitlines()
    relu, flatten = table[3].split(), table[5].split()
    assert relu[1] == "–" and relu[4] == "–" and flatten[1] == "–" and flatten[4] == "–"
    # the key under the table and the page's glossary say what the columns mean
    assert "units: how many copies of the cell work side by side" in a.to_text()
    assert "Column “units”</dt><dd>how many copies of the cell work side by side" in a.to_html()


def test_a_gru_page_names_no_other_cell():
    model = Recurrent(GRUCell(4, 6))
    html = explain(model, torch.randn(3, 1, 4)).to_html()
    assert "LSTM" not in html and "<b>6 units</b>" in html


def test_a_wrapped_cell_keeps_its_kind_and_gate_names():
    (la,) = explain(Recurrent(Zoneout(LSTMCell(4, 5), 0.1)), torch.randn(3, 1, 4)).layers
    assert la.cell == "LSTM" and [g.name for g in la.gates] == ["i", "f", "g", "o"]
    svg = explain(Recurrent(Zoneout(LSTMCell(4, 5), 0.1)), torch.randn(3, 1, 4)).to_svg("cell")
    gates = re.findall(r'class="proj"/>\s*<text[^>]*>([^<]*)<', svg)
    assert sorted(gates) == ["f", "g", "i", "o"] and "part " not in svg


def _boxes(svg: str) -> list[tuple[float, float, float, float]]:
    root = ET.fromstring(svg)
    return [tuple(float(r.get(k)) for k in ("x", "y", "width", "height"))  # type: ignore[misc]
            for r in root.iter(f"{SVG}rect") if r.get("class") == "application"]


def _arrow_ends(svg: str) -> list[tuple[float, float, float]]:
    """Each arrow's end point and the x where its last segment starts."""
    ends = []
    for p in ET.fromstring(svg).iter(f"{SVG}path"):
        if p.get("marker-end"):
            pts = [tuple(map(float, xy.split(","))) for xy in re.findall(r"-?[\d.]+,-?[\d.]+", p.get("d", ""))]
            ends.append((pts[-1][0], pts[-1][1], pts[-2][0]))
    return ends


def test_both_directions_of_a_bidirectional_layer_read_x():
    svg = explain(nn.LSTM(3, 4, bidirectional=True), torch.randn(2, 1, 3)).to_svg("unrolled")
    boxes = _boxes(svg)
    assert len(boxes) == 4  # 2 steps × 2 directions
    ends = _arrow_ends(svg)
    for x, y, w, h in boxes:
        into = [e for e in ends if abs(e[1] - (y + h + 1)) < 1.5 and x < e[0] < x + w]
        assert into, f"no arrow reaches the box at ({x}, {y}) from below"
        others = [b for b in boxes if b != (x, y, w, h) and b[1] > y]  # boxes below this one
        for ex, _, start_x in into:  # the arrow climbs beside, not through, the box below
            assert not any(ox <= ex <= ox + ow for ox, _, ow, _ in others)


def test_time_steps_are_drawn_apart_from_units():
    model = nn.Sequential()
    model.conv = nn.Conv1d(2, 3, 3)
    model.rnn = nn.GRU(4, 5)
    model.head = nn.Linear(5, 2)
    model.forward = lambda x: model.head(model.rnn(model.conv(x).permute(0, 2, 1).reshape(-1, 1, 4))[0])
    svg = explain(model, torch.randn(1, 2, 6)).to_svg("model")
    root = ET.fromstring(svg)
    steps = [e for e in root.iter() if e.get("class") == "step"]
    units = [e for e in root.iter() if e.get("class") == "unit"]
    assert steps and units
    shape = {(e.tag, e.get("width"), e.get("height"), e.get("rx")) for e in steps}
    assert shape.isdisjoint({(e.tag, e.get("width"), e.get("height"), e.get("rx")) for e in units})
    labels = [t.text for t in root.iter(f"{SVG}text")]
    assert "t1" in labels and "t2" in labels
