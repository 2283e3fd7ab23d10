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
    # the cells' own names are aliases of the same objects, seen only without removing duplicates
    aliases = [(n, p) for n, p in ours.named_parameters(remove_duplicate=False) if n.startswith("stack.")]
    assert sorted(names.values()) == sorted(n for n, _ in aliases)
    assert all(p is ours.get_parameter(n) for n, p in aliases)


def test_paths_name_the_cells_inside():
    names = torchcells.LSTM(10, 20, num_layers=2, bidirectional=True).torch_parameter_names()
    assert names["weight_ih_l0"] == "stack.layers.0.forward_layer.cell.weight_ih"
    assert names["bias_hh_l1_reverse"] == "stack.layers.1.backward_layer.cell.bias_hh"
    assert torchcells.GRU(3, 4).torch_parameter_names()["weight_hh_l0"] == "stack.layers.0.cell.weight_hh"


def test_the_answer_is_a_copy():
    lstm = torchcells.LSTM(3, 4)
    lstm.torch_parameter_names().clear()
    assert "weight_ih_l0" in lstm.torch_parameter_names()


# --------------------------------------------------------------------------------------
# The names are the parameters: set, delete, register, convert, load, copy, functional_call
# --------------------------------------------------------------------------------------
def _pair(make="LSTM", **kw):
    torch.manual_seed(0)
    theirs = getattr(torch.nn, make)(3, 4, dtype=torch.float64, **kw)
    ours = getattr(torchcells, make)(3, 4, dtype=torch.float64, **kw)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _tied(ours) -> bool:
    """Every torch name holds the very Parameter its cell runs with."""
    return all(ours.get_parameter(path) is ours.get_parameter(name)
               for name, path in ours.torch_parameter_names().items())


def _same_outputs(ours, theirs):
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=1e-10, atol=1e-12)


def test_setting_and_registering_a_parameter_by_torch_name():
    ours, theirs = _pair(num_layers=2, bidirectional=True)
    new = torch.nn.Parameter(torch.randn(16, 4, dtype=torch.float64))
    ours.weight_hh_l1_reverse = new
    theirs.weight_hh_l1_reverse = torch.nn.Parameter(new.detach().clone())
    ours.register_parameter("bias_ih_l0", torch.nn.Parameter(torch.ones(16, dtype=torch.float64)))
    theirs.register_parameter("bias_ih_l0", torch.nn.Parameter(torch.ones(16, dtype=torch.float64)))
    assert ours.get_parameter("weight_hh_l1_reverse") is new and _tied(ours)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    _same_outputs(ours, theirs)
    with pytest.raises(TypeError, match="weight_ih_l0"):  # torch.nn's own check: a Parameter or None
        ours.weight_ih_l0 = torch.zeros(16, 3)


def test_deleting_then_setting_a_plain_tensor_as_torch_nn_does():
    ours, theirs = _pair(make="GRU")
    del ours.weight_hh_l0
    assert "weight_hh_l0" not in dict(ours.named_parameters())
    with pytest.raises(AttributeError, match=r"GRU\(3, 4\): weight_hh_l0 is missing .* shape \(12, 4\)"):
        ours(torch.randn(5, 2, 3, dtype=torch.float64))
    ours.weight_hh_l0 = theirs.weight_hh_l0.detach() * 2  # a plain tensor: used, not trained
    del theirs.weight_hh_l0
    theirs.weight_hh_l0 = ours.weight_hh_l0
    _same_outputs(ours, theirs)


def test_a_weight_of_the_wrong_shape_is_named():
    ours, _ = _pair(make="RNN")
    ours.weight_hh_l0 = torch.nn.Parameter(torch.zeros(4, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"RNN\(3, 4\): weight_hh_l0 should have shape \(4, 4\), got \(4, 5\)"):
        ours(torch.randn(5, 2, 3, dtype=torch.float64))


def test_conversions_keep_the_cells_on_the_drop_ins_parameters():
    ours, theirs = _pair(num_layers=2, proj_size=2)
    ours.float()
    theirs.float()
    assert _tied(ours) and ours.get_parameter("stack.layers.1.cell.weight_hr").dtype == torch.float32
    torch.__future__.set_overwrite_module_params_on_conversion(True)  # new Parameter objects
    try:
        ours.double()
        theirs.double()
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(False)
    assert _tied(ours)
    _same_outputs(ours, theirs)


def test_load_with_assign_and_deepcopy_keep_the_ties():
    import copy

    ours, theirs = _pair(make="GRU", bidirectional=True)
    theirs2 = torch.nn.GRU(3, 4, bidirectional=True, dtype=torch.float64)
    assert not ours.load_state_dict(theirs2.state_dict(), assign=True).missing_keys
    assert _tied(ours) and ours.weight_ih_l0_reverse is not theirs2.weight_ih_l0_reverse
    _same_outputs(ours, theirs2)
    twin = copy.deepcopy(ours)
    assert _tied(twin) and twin.weight_ih_l0 is not ours.weight_ih_l0
    _same_outputs(twin, theirs2)


def test_functional_call_by_torch_names_leaves_the_module_alone():
    from torch.func import functional_call

    ours, theirs = _pair(num_layers=2)
    given = {n: p.detach() * 0.5 for n, p in theirs.named_parameters()}
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(functional_call(ours, given, (x,))[0], functional_call(theirs, given, (x,))[0],
                               rtol=1e-10, atol=1e-12)
    assert _tied(ours)
    _same_outputs(ours, theirs)
