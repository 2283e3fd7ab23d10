"""explain(): counts in the three senses, parameters per gate, for torch.nn and torchcells models."""

import json
from typing import NamedTuple

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import torchcells
from torchcells import Bidirectional, Cell, ElmanCell, GRUCell, LSTMCell, Recurrent, Stack
from torchcells.anatomy import explain


def total(model):
    return sum(p.numel() for p in model.parameters())


def counts(anatomy):
    """What must agree between two builds of the same network (names aside)."""
    return [(la.cell, la.kind, la.units, la.applications, la.parameters, la.macs_per_application, la.state,
             la.direction, la.steps, [(g.name, g.activation, g.parameters,
                                       [(p.start, p.stop, p.shape) for p in g.parts]) for g in la.gates])
            for la in anatomy.layers]


# -- the "done when" ------------------------------------------------------------------

def test_done_when_nn_lstm_and_torchcells_pieces_give_identical_counts():
    x = torch.randn(5, 1, 10)
    theirs = explain(nn.LSTM(10, 20, num_layers=2, bidirectional=True), x)
    pieces = explain(Stack([Bidirectional(Recurrent(LSTMCell(10, 20))),
                            Bidirectional(Recurrent(LSTMCell(40, 20)))]), x)
    drop_in = explain(torchcells.LSTM(10, 20, num_layers=2, bidirectional=True), x)
    for a in (theirs, pieces, drop_in):
        assert a.total_parameters == 15_040
        assert [la.units for la in a.layers] == [20, 20, 20, 20]          # 20 units per direction
        assert sum(la.applications for la in a.layers) == 20              # 5 steps x 2 directions x 2 layers
        assert [la.direction for la in a.layers] == ["forward", "backward"] * 2
        assert sum(la.parameters for la in a.layers) == a.total_parameters
    assert counts(theirs) == counts(pieces) == counts(drop_in)
    assert len({la.block for la in pieces.layers}) == 2  # the two directions of a layer share a block


# -- torch.nn recurrent layers over their options ---------------------------------------------

RNN_OPTIONS = [
    dict(),
    dict(num_layers=3),
    dict(bidirectional=True, num_layers=2),
    dict(bias=False),
    dict(batch_first=True, bidirectional=True),
]


@pytest.mark.parametrize("options", RNN_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
@pytest.mark.parametrize("kind, gates", [("LSTM", "ifgo"), ("GRU", "rzn"), ("RNN", "h")])
def test_torch_rnn_rows_gates_and_parity_with_the_drop_in(kind, gates, options):
    torch.manual_seed(0)
    T, B, I, H = 7, 3, 6, 5
    theirs = getattr(nn, kind)(I, H, **options)
    ours = getattr(torchcells, kind)(I, H, **options)
    x = torch.randn(B, T, I) if options.get("batch_first") else torch.randn(T, B, I)
    a, b = explain(theirs, x), explain(ours, x)
    directions = 2 if options.get("bidirectional") else 1
    layers = options.get("num_layers", 1)
    assert a.total_parameters == total(theirs) == b.total_parameters
    assert len(a.layers) == layers * directions
    assert a.batch_size == B
    for k, la in enumerate(a.layers):
        assert (la.units, la.applications, la.steps, la.kind) == (H, T, T, "recurrent")
        assert [g.name for g in la.gates] == list(gates)
        assert sum(g.parameters for g in la.gates) == la.parameters
        layer, reverse = divmod(k, directions)
        suffix = f"_l{layer}" + ("_reverse" if reverse else "")
        gate = la.gates[-1]
        rows = (len(gates) - 1) * H, len(gates) * H
        expected = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if options.get("bias", True) else [])
        assert [p.name for p in gate.parts] == [n + suffix for n in expected]
        assert {(p.start, p.stop) for p in gate.parts} == {rows}
        width = I if layer == 0 else H * directions
        assert la.macs_per_application == len(gates) * H * (width + H)
    assert counts(a) == counts(b)
    for la in a.layers + b.layers:  # the candidate (an LSTM's g, a GRU's n) is not a gate
        assert [g.name for g in la.gates if g.candidate] == {"LSTM": ["g"], "GRU": ["n"], "RNN": []}[kind]
    # the drop-in's weights carry torch.nn's names, as its state_dict does
    assert [p.name for la in b.layers for g in la.gates for p in g.parts] == \
        [p.name for la in a.layers for g in la.gates for p in g.parts]


def test_lstm_with_projection_has_a_projection_row_and_smaller_h():
    lstm = nn.LSTM(6, 8, proj_size=3, num_layers=2)
    a = explain(lstm, torch.randn(4, 2, 6))
    first, second = a.layers
    assert first.state == (("h", 3), ("c", 8)) and first.units == 8
    assert first.gates[-1].name == "projection" and first.gates[-1].parts[0].name == "weight_hr_l0"
    assert second.input_size == 3
    assert first.macs_per_application == 4 * 8 * (6 + 3) + 3 * 8
    assert a.total_parameters == total(lstm) == sum(la.parameters for la in a.layers)


def test_packed_sequence_input_counts_the_longest_sequence():
    gru = nn.GRU(4, 6)
    packed = pack_padded_sequence(torch.randn(9, 3, 4), [9, 5, 2], enforce_sorted=False)
    a = explain(gru, packed)
    assert a.layers[0].applications == 9 and a.batch_size == 3


def test_rnn_cells_called_in_a_loop_count_one_application_per_call():
    class Loop(nn.Module):
        def __init__(self, cell):
            super().__init__()
            self.cell = cell

        def forward(self, x):
            state = None
            for t in range(x.shape[0]):
                state = self.cell(x[t], state)
            return state[0] if isinstance(state, tuple) else state
    for cell, kind, gates in ((nn.LSTMCell(3, 4), "LSTM", 4), (nn.GRUCell(3, 4), "GRU", 3), (nn.RNNCell(3, 4), "Elman", 1)):
        a = explain(Loop(cell), torch.randn(6, 2, 3))
        (la,) = a.layers
        assert (la.cell, la.kind, la.applications, la.units, len(la.gates)) == (kind, "step", 6, 4, gates)
        assert la.macs_per_application == gates * 4 * (3 + 4)


# -- dense, convolution, pooling and the rest --------------------------------------------------

def test_linear_is_neuron_cells_applied_once_per_example_or_once_per_step():
    lin = nn.Linear(7, 3)
    once = explain(lin, torch.randn(5, 7))
    (la,) = once.layers
    assert (la.cell, la.units, la.applications, la.parameters, la.macs) == ("neuron", 3, 1, 24, 21)
    per_step = explain(lin, torch.randn(2, 11, 7))
    assert per_step.layers[0].applications == 11


@pytest.mark.parametrize("conv, x, positions", [
    (nn.Conv1d(4, 6, 3), torch.randn(2, 4, 10), 8),
    (nn.Conv1d(4, 6, 3, stride=2, padding=1), torch.randn(2, 4, 10), 5),
    (nn.Conv2d(3, 8, (3, 5), padding=(1, 2)), torch.randn(2, 3, 6, 7), 42),
    (nn.Conv2d(4, 8, 3, groups=2), torch.randn(1, 4, 5, 5), 9),
    (nn.Conv3d(2, 3, (1, 2, 2)), torch.randn(2, 2, 4, 3, 3), 16),
])
def test_convolution_is_kernel_cells_applied_at_every_output_position(conv, x, positions):
    (la,) = explain(conv, x).layers
    assert (la.cell, la.kind, la.units, la.applications) == ("kernel", "conv", conv.out_channels, positions)
    per_position = conv.out_channels * (conv.in_channels // conv.groups) * conv.weight[0, 0].numel()
    assert la.macs_per_application == per_position
    assert la.parameters == total(conv)


def test_pooling_activation_dropout_norm_embedding_are_what_they_are():
    model = nn.Sequential(nn.Embedding(50, 8), nn.LayerNorm(8), nn.Dropout(0.2), nn.Flatten(),
                          nn.Unflatten(1, (4, 16)), nn.MaxPool1d(2), nn.Tanh())
    a = explain(model, torch.randint(0, 50, (3, 8)))
    kinds = [(la.name, la.cell, la.units, la.applications, la.parameters) for la in a.layers]
    # only a layer made of cells names a cell and counts units (the pool: one window per channel)
    assert kinds == [
        ("0", "", 0, 8, 400),                 # 8 lookups per example in a table of 50 rows
        ("1", "", 0, 8, 16),
        ("2", "", 0, 1, 0),
        ("3", "", 0, 1, 0),
        ("4", "", 0, 1, 0),
        ("5", "pool window", 4, 8, 0),        # 4 channels, 8 output positions each
        ("6", "", 0, 1, 0),
    ]
    assert [la.kind.value for la in a.layers] == ["embedding", "normalization", "dropout", "reshape", "reshape",
                                                  "pool", "activation"]


def test_batchnorm_counts_and_the_model_is_left_as_it_was():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    model.train()
    before = model[1].running_mean.clone()
    a = explain(model, torch.randn(2, 1, 5, 5))
    assert a.layers[1].kind == "normalization" and a.layers[1].cell == "" and a.layers[1].parameters == 8
    assert model.training and model[1].training
    assert torch.equal(model[1].running_mean, before)


def test_unknown_modules_are_opaque_and_own_parameters_are_counted():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(6))
            self.attn = nn.MultiheadAttention(6, 2)
            self.out = nn.Linear(6, 2)

        def forward(self, x):
            y, _ = self.attn(x, x, x)
            return self.out(y * self.scale)
    model = Scaled()
    a = explain(model, torch.randn(4, 1, 6))
    rows = {la.name: la for la in a.layers}
    assert rows["(model)"].kind == "opaque" and rows["(model)"].cell == "" and rows["(model)"].parameters == 6
    assert rows["attn"].kind == "opaque" and rows["attn"].parameters == total(model.attn)
    assert rows["attn"].applications == 1
    assert rows["out"].cell == "neuron"
    assert a.total_parameters == total(model) == sum(la.parameters for la in a.layers)


def test_shared_parameters_count_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.out = nn.Linear(4, 10, bias=False)
            self.out.weight = self.embed.weight

        def forward(self, x):
            return self.out(self.embed(x))
    model = Tied()
    a = explain(model, torch.randint(0, 10, (2, 3)))
    assert a.total_parameters == 40 == total(model)
    assert (a.layers[1].parameters, a.layers[1].shared_parameters) == (0, 40)


# -- user cells ----------------------------------------------------------------------------------

class LeakyState(NamedTuple):
    h: torch.Tensor
    m: torch.Tensor


class LeakyCell(Cell):
    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.mix = nn.Linear(input_size + hidden_size, hidden_size)
        self.leak = nn.Linear(input_size, hidden_size)

    def init_state(self, batch_size, *, device=None, dtype=None):
        zeros = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return LeakyState(zeros, zeros)

    def forward(self, x, state):
        a = torch.sigmoid(self.leak(x))
        m = a * state.m + (1 - a) * torch.tanh(self.mix(torch.cat([x, state.h], -1)))
        return m, LeakyState(m, state.m)


def test_user_cell_counts_state_and_traced_multiply_adds():
    layer = Bidirectional(Recurrent(LeakyCell(8, 16), batch_first=True))
    a = explain(layer, torch.randn(3, 10, 8))
    fwd, bwd = a.layers
    for la in (fwd, bwd):
        assert (la.cell, la.units, la.applications, la.steps) == ("LeakyCell", 16, 10, 10)
        assert la.state == (("h", 16), ("m", 16))
        assert la.macs_per_application == 16 * (8 + 16) + 16 * 8  # counted from the traced matrix products
        assert la.step_function == "LeakyCell(8→16)"
    assert (fwd.direction, bwd.direction) == ("forward", "backward")
    assert a.total_parameters == total(layer) and a.batch_size == 3


@pytest.mark.parametrize("cell", [LSTMCell(5, 7), GRUCell(5, 7), ElmanCell(5, 7), LSTMCell(5, 7, proj_size=3),
                                  torchcells.MinGRUCell(5, 7)])
def test_traced_multiply_adds_equal_the_gate_arithmetic(cell):
    from torchcells.anatomy.rnn_rows import traced_macs
    (la,) = explain(Recurrent(cell), torch.randn(4, 2, 5)).layers
    assert la.gates and la.macs_per_application == traced_macs(cell, (5,)) > 0


# -- output forms and bad input -----------------------------------------------------------------

def test_to_dict_is_json_and_sums_to_the_total():
    a = explain(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)), torch.randn(1, 4))
    data = json.loads(json.dumps(a.to_dict()))
    assert data["total_parameters"] == 44 == sum(la["parameters"] for la in data["layers"])
    assert [(la["name"], la["cell"], la["units"], la["applications"]) for la in data["layers"]] == [
        ("0", "neuron", 6, 1), ("1", "", 0, 1), ("2", "neuron", 2, 1)]


def test_text_table_and_account_name_the_numbers():
    model = nn.Module()
    model.rnn = Recurrent(GRUCell(8, 64))
    model.head = nn.Linear(64, 10)
    model.forward = lambda x: model.head(model.rnn(x)[0][-1])
    a = explain(model, torch.randn(8, 1, 8))
    text = a.to_text()
    assert "rnn →" in text and "GRUCell(8→64)" in text and "14,208" in text and "14,858" in text
    assert "GRUCell(8→64); 2 gates (r, z) and the candidate n, each the same rows of each weight" in text
    assert "block  role       activation" in text and "\nr      gate       σ           0:64" in text
    assert "\nn      candidate  tanh        128:192" in text
    account = " ".join(a.account(sequence="image", examples=450).split())
    assert "one step function (GRUCell(8→64), the step of nn.GRUCell)" in account
    assert "64 units do not share weights" in account and "one row in each of its 2 gates (r, z) and the candidate n" in account
    assert "8 applications per image" in account and "14,208 parameters = 64 units × 222" in account
    assert "10 neurons side by side" in account and "its own 64 weights and a bias" in account
    assert "3,600 times" in account
    assert text.rstrip().endswith(a.account().rstrip())  # to_text() ends with the same words


def test_bad_input_gets_errors_that_say_what_was_expected():
    with pytest.raises(TypeError, match="should be a torch.nn.Module, got str"):
        explain("lstm", torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"LSTM could not run on the example input \(a tensor of shape \(5, 1, 7\)"):
        explain(nn.LSTM(10, 20), torch.randn(5, 1, 7))
    with pytest.raises(ValueError, match="batch_size should be a positive int"):
        explain(nn.Linear(2, 2), torch.randn(1, 2), batch_size=0)
    a = explain(nn.Linear(2, 2), torch.randn(1, 2))
    with pytest.raises(ValueError, match="kind should be one of 'cell', 'unrolled', 'model', got 'graph'"):
        a.to_svg("graph")
    with pytest.raises(ValueError, match="has no recurrent layer to unroll"):
        a.to_svg("unrolled")
    with pytest.raises(KeyError, match=r"no layer 'nope'; the layers are \['\(model\)'\]"):
        a.layer("nope")


@pytest.mark.parametrize("pool, x, channels, positions", [
    (nn.MaxPool2d(2), torch.randn(2, 3, 8, 6), 3, 12),
    (nn.AvgPool1d(3, stride=1), torch.randn(1, 5, 7), 5, 5),
    (nn.AdaptiveAvgPool2d((2, 3)), torch.randn(4, 6, 9, 9), 6, 6),
])
def test_pooling_is_one_window_per_channel_at_every_output_position(pool, x, channels, positions):
    (la,) = explain(pool, x).layers
    assert (la.cell, la.units, la.applications, la.parameters, la.macs) == ("pool window", channels, positions, 0, 0)


def test_relu_rnn_gate_and_bidirectional_stack_inside():
    (la,) = explain(nn.RNN(3, 4, nonlinearity="relu"), torch.randn(2, 1, 3)).layers
    assert [(g.name, g.activation) for g in la.gates] == [("h", "relu")]
    inner = Bidirectional(Stack([Recurrent(GRUCell(3, 4)), Recurrent(GRUCell(4, 4))]))
    a = explain(inner, torch.randn(6, 2, 3))
    assert [(la.name, la.direction, la.block) for la in a.layers] == [
        ("forward_layer.layers.0", "forward", "layers.0"), ("forward_layer.layers.1", "forward", "layers.1"),
        ("backward_layer.layers.0", "backward", "layers.0"), ("backward_layer.layers.1", "backward", "layers.1")]
    assert a.total_parameters == total(inner) and all(la.applications == 6 for la in a.layers)


def test_a_user_cell_called_step_by_step_without_sizes():
    class Decay(Cell):
        """No input_size: the step shape comes from the call the hooks saw."""

        def __init__(self):
            super().__init__(None, 5)
            self.w = nn.Linear(3, 5)

        def forward(self, x, h):
            h = 0.5 * h + self.w(x)
            return h, h

    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = Decay()

        def forward(self, x):
            h = self.cell.init_state(x.shape[1])
            for t in range(x.shape[0]):
                _, h = self.cell(x[t], h)
            return h
    a = explain(Loop(), torch.randn(4, 2, 3))
    (la,) = a.layers
    assert (la.kind, la.cell, la.applications, la.units, la.step_shape, la.macs_per_application) == \
        ("step", "Decay", 4, 5, (3,), 15)
    assert "×0.5" in a.to_svg("cell")
