"""The benchmark harness runs and reports (tiny sizes; no time is asserted -- speed lives in BENCHMARKS.md)."""

import pytest
import torch

from torchcells.bench import (UserLSTMCell, autocast_rows, compile_rows, environment, lstm_rows, new_batch_rows,
                              onnx_rows, to_markdown)
from torchcells import LSTMCell, Recurrent


def test_user_lstm_cell_is_an_lstm():
    torch.manual_seed(0)
    user, ref = UserLSTMCell(3, 4), LSTMCell(3, 4)
    with torch.no_grad():
        ref.weight_ih.copy_(user.ih.weight), ref.bias_ih.copy_(user.ih.bias)
        ref.weight_hh.copy_(user.hh.weight), ref.bias_hh.copy_(user.hh.bias)
    x = torch.randn(5, 2, 3)
    a, (h, c) = Recurrent(user)(x)
    b, (h2, c2) = Recurrent(ref, engine="loop")(x)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(c, c2)


def test_rows_and_markdown():
    rows = lstm_rows(runs=2, shapes=[(2, 3, 4, 5)])
    assert [r.ours for r in rows] == ["Recurrent(UserLSTMCell)", "Recurrent(UserLSTMCell), TORCHCELLS_NATIVE=0",
                                      "Recurrent(UserLSTMCell, engine='loop')"]
    assert all(r.ms_ours > 0 and r.ms_theirs > 0 and r.runs == 2 for r in rows)
    text = to_markdown(environment(), rows)
    assert "| user LSTM cell in Recurrent vs nn.LSTM | 2, 3, 4, 5 |" in text
    assert "torch: " + torch.__version__ in text and "threads: " in text and "allocator: " in text
    assert "native runtime: " in text


def test_python_loop_contender_switches_the_native_runtime_off_only_while_it_runs(monkeypatch):
    import os

    from torchcells.bench import UserLSTMCell, _PythonLoop
    from torchcells.engine.native import available

    monkeypatch.delenv("TORCHCELLS_NATIVE", raising=False)
    layer = _PythonLoop(Recurrent(UserLSTMCell(3, 4)))
    out = layer(torch.randn(5, 2, 3, requires_grad=True))[0]
    names = set()
    fn = out.grad_fn
    while fn is not None:
        names.add(type(fn).__name__)
        fn = fn.next_functions[0][0] if fn.next_functions else None
    assert "_FusedSequenceBackward" in names
    assert "TORCHCELLS_NATIVE" not in os.environ
    if available():
        direct = Recurrent(UserLSTMCell(3, 4))(torch.randn(5, 2, 3, requires_grad=True))[0]
        assert type(direct.grad_fn).__name__ == "NativeSequenceBackward"


def test_autocast_and_new_batch_rows_measure_both_sides():
    rows = autocast_rows(runs=2, shape=(2, 3, 4, 5)) + new_batch_rows(runs=2, shape=(2, 3, 4, 5))
    assert [r.theirs for r in rows] == ["nn.LSTM", "nn.GRU", "nn.LSTM"]
    assert all(r.ms_ours > 0 and r.ms_theirs > 0 and r.runs == 2 for r in rows)
    assert "B = 3, 4" in rows[-1].note


def test_compile_and_onnx_rows_measure_both_sides():
    pytest.importorskip("onnxruntime")
    rows = compile_rows(runs=2, shape=(2, 3, 4, 5), backend="aot_eager") + onnx_rows(runs=2, shape=(2, 3, 4, 5))
    assert [r.theirs for r in rows] == ["Recurrent(UserLSTMCell), eager", "nn.LSTM", "nn.LSTM (ONNX LSTM node)"]
    assert all(r.ms_ours > 0 and r.ms_theirs > 0 for r in rows)
