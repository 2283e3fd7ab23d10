"""The account in words (``Anatomy.account``): each layer's cells in the three senses, with the numbers."""

import torch
from torch import nn

from torchcells import LSTM, Bidirectional, GRUCell, LSTMCell, Recurrent
from torchcells.anatomy import LayerKind, explain


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = Bidirectional(Recurrent(LSTMCell(5, 7)))
        self.out = nn.Linear(14, 3)

    def forward(self, x):
        return self.out(self.rnn(x)[0][-1])


def test_counts_for_a_bidirectional_tagger():
    rows = explain(Tagger(), torch.randn(12, 1, 5)).layers
    assert [(r.name, r.kind, r.direction) for r in rows] == [
        ("rnn.forward_layer", LayerKind.RECURRENT, "forward"), ("rnn.backward_layer", "recurrent", "backward"),
        ("out", "dense", None)]
    lstm_params = 4 * 7 * (5 + 7) + 2 * 4 * 7
    for r in rows[:2]:
        assert (r.units, r.applications, r.parameters) == (7, 12, lstm_params)
        assert tuple(g.name for g in r.gates) == ("i", "f", "g", "o") and r.step_function == "LSTMCell(5→7)"
    assert (rows[2].units, rows[2].applications, rows[2].parameters) == (3, 1, 14 * 3 + 3)
    assert sum(r.parameters for r in rows) == sum(p.numel() for p in Tagger().parameters())


def test_drop_in_lstm_is_broken_into_its_layers():
    rows = explain(LSTM(4, 6, num_layers=3), torch.randn(5, 1, 4)).layers
    assert len(rows) == 3 and all(r.units == 6 and r.applications == 5 for r in rows)
    assert rows[1].step_function == "LSTMCell(6→6)"


class Reader(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = Recurrent(GRUCell(8, 64), batch_first=True)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def test_account_names_the_three_senses_with_the_numbers():
    text = " ".join(explain(Reader(), torch.randn(2, 8, 8)).account(sequence="image", examples=450).split())
    assert "1 recurrent step function (GRUCell(8→64); \"the cell\" in PyTorch's sense) of 64 units" in text
    assert "one step function (GRUCell(8→64), the step of nn.GRUCell)" in text
    assert "8 applications per image, all with the same weights" in text
    assert "Its 64 units do not share weights" in text and "its 2 gates (r, z) and the candidate n" in text
    assert "14,208 parameters = 64 units × 222" in text
    assert "10 neurons side by side, and the neurons do not share weights" in text
    assert "3,600 times" in text


def test_a_kind_is_a_string_and_an_enum():
    (row,) = explain(nn.Linear(2, 3), torch.randn(1, 2)).layers
    assert row.kind is LayerKind.DENSE and row.kind == "dense" and f"{row.kind}" == "dense"
    assert row.to_dict()["kind"] == "dense" and type(row.to_dict()["kind"]) is str
    assert LayerKind.RECURRENT.in_time and LayerKind.STEP.in_time and not LayerKind.DENSE.in_time
    assert LayerKind.CONV.in_width and LayerKind.CONV.learned and not LayerKind.POOL.learned
