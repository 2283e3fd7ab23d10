"""``torch_parameter_names()`` of the drop-ins: torch.nn's names, in torch.nn's order, and where each lives."""

import pytest
import torch

import torchcells


@pytest.mark.parametrize("make, kw", [
    ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=3)),
    ("LSTM", dict(bias=False)),
    ("GRU", dict(num_layers=3)),
    ("RNN", dict(bidirectional=True, nonlinearity="relu")),
])
def test_names_and_order_are_torch_nns(make, kw):
    ours = getattr(torchcells, make)(4, 5, **kw)
    theirs = getattr(torch.nn, make)(4, 5, **kw)
    names = ours.torch_parameter_names()
    assert list(names) == theirs._flat_weights_names == list(theirs.state_dict())
    assert list(names) == list(ours.state_dict())
    for torch_name, path in names.items():
        assert ours.get_parameter(path) is getattr(ours, torch_name)
        assert ours.get_parameter(path).shape == getattr(theirs, torch_name).shape
    assert [n for n, _ in ours.named_parameters()] == list(names) == [n for n, _ in theirs.named_parameters()]
    assert sorted(names.values()) == sorted(n for n, _ in ours.named_parameters(remove_duplicate=False)
                                            if n.startswith("stack."))


def test_paths_name_the_cells_inside():
    names = torchcells.LSTM(10, 20, num_layers=2, bidirectional=True).torch_parameter_names()
    assert names["weight_ih_l0"] == "stack.layers.0.forward_layer.cell.weight_ih"
    assert names["bias_hh_l1_reverse"] == "stack.layers.1.backward_layer.cell.bias_hh"
    assert torchcells.GRU(3, 4).torch_parameter_names()["weight_hh_l0"] == "stack.layers.0.cell.weight_hh"


def test_the_answer_is_a_copy():
    lstm = torchcells.LSTM(3, 4)
    lstm.torch_parameter_names().clear()
    assert "weight_ih_l0" in lstm.torch_parameter_names()
