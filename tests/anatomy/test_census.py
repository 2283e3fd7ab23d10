"""The census of cells in the three senses."""

from torch import nn

from torchcells import LSTM, Bidirectional, GRUCell, LSTMCell, Recurrent
from torchcells.anatomy import census, describe_census


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = Bidirectional(Recurrent(LSTMCell(5, 7)))
        self.out = nn.Linear(14, 3)


def test_counts_for_a_bidirectional_tagger():
    rows = census(Tagger(), steps=12)
    assert [(r.name, r.kind) for r in rows] == [
        ("rnn.forward_layer", "recurrent"), ("rnn.backward_layer", "recurrent, reversed"), ("out", "dense")]
    lstm_params = 4 * 7 * (5 + 7) + 2 * 4 * 7
    for r in rows[:2]:
        assert (r.units, r.applications, r.parameters, r.gates) == (7, 12, lstm_params, ("i", "f", "g", "o"))
        assert r.step_function == "LSTMCell(5→7)"
    assert (rows[2].units, rows[2].applications, rows[2].parameters) == (3, 1, 14 * 3 + 3)
    assert sum(r.parameters for r in rows) == sum(p.numel() for p in Tagger().parameters())


def test_drop_in_lstm_is_broken_into_its_layers():
    rows = census(LSTM(4, 6, num_layers=3), steps=5)
    assert len(rows) == 3 and all(r.units == 6 and r.applications == 5 for r in rows)
    assert rows[1].step_function == "LSTMCell(6→6)"


def test_account_names_the_three_senses_with_the_numbers():
    model = nn.Module()
    model.rnn = Recurrent(GRUCell(8, 64))
    model.head = nn.Linear(64, 10)
    text = describe_census(census(model, steps=8), samples=450, sequence="image")
    assert "1 GRUCell(8→64)" in text and "nn.GRUCell" in text
    assert "64, each with 3 gate neurons (r, z, n)" in text
    assert "8 per image" in text and "14,208 parameters" in text
    assert "10 neuron cells" in text and "64 inputs" in text
    assert "3,600 times" in text
