"""``torch.jit.trace`` (and the legacy ONNX exporter, which uses it): a layer on torch's own
kernel is recorded for every length and equals eager; a layer that loops in Python (loop,
scan, fused, the native runtime) is a clear error, never a trace fixed to one length or a
crash (the native runtime's calls made the process segfault)."""

from __future__ import annotations

import warnings

import pytest
import torch

import torchcells as tc
from fixture_cells import UserLSTMCell


def trace(module, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's own notes on Python values
        return torch.jit.trace(module, (x,), check_trace=False)


@pytest.mark.parametrize("make", [lambda: tc.LSTM(3, 4, num_layers=2), lambda: tc.GRU(3, 4), lambda: tc.RNN(3, 4)],
                         ids=["lstm", "gru", "rnn"])
def test_drop_ins_trace_for_every_length(make):
    torch.manual_seed(0)
    module = make().eval()
    traced = trace(module, torch.randn(5, 2, 3))
    for steps in (5, 9):
        x = torch.randn(steps, 2, 3)
        torch.testing.assert_close(traced(x)[0], module(x)[0])


@pytest.mark.parametrize("make, engine", [(lambda: UserLSTMCell(3, 4), "auto"), (lambda: UserLSTMCell(3, 4), "fused"),
                                          (lambda: tc.MinGRUCell(3, 4), "auto"), (lambda: tc.GRUCell(3, 4), "loop"),
                                          (lambda: UserLSTMCell(3, 4), "export")],
                         ids=["user-auto", "user-fused", "mingru-scan", "gru-loop", "user-export"])
def test_python_loops_refuse_to_be_traced(make, engine):
    layer = tc.Recurrent(make(), engine=engine)
    with pytest.raises(TypeError, match=r"torch.jit.trace .* this input's length only"):
        trace(layer, torch.randn(5, 2, 3))
    assert layer(torch.randn(5, 2, 3))[0].shape == (5, 2, 4)  # eager still runs


@pytest.mark.parametrize("make", [lambda: tc.LSTM(3, 4), lambda: torch.nn.Sequential(tc.GRU(3, 4))],
                         ids=["lstm", "gru-in-a-model"])
def test_script_refuses_drop_ins_naming_what_works(make):
    with pytest.raises(TypeError, match=r"(LSTM|GRU)\(3, 4\): torch.jit.script cannot .* torch.export.export.* "
                                        r"torch.onnx.export.*torch.jit.trace"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script's own
            torch.jit.script(make())


def test_drop_ins_export_under_torch_names():
    """torch.export keeps every name of a parameter: torch.nn's, and the cell's alias of the same tensor."""
    module = tc.LSTM(3, 4, num_layers=2).eval()
    program = torch.export.export(module, (torch.randn(5, 2, 3),))
    assert set(module._flat_weights_names) <= set(program.state_dict)
    for torch_name, inner in module.torch_parameter_names().items():
        assert program.state_dict[inner] is program.state_dict[torch_name]
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(program.module()(x)[0], module(x)[0])
