"""The drop-ins' direct kernel: a plain configuration runs as one call of torch's multi-layer kernel.

Such a call is torch.nn's computation, so outputs and final states equal nn.LSTM/GRU/RNN's bit for
bit (``torch.equal``, float32) -- with and without ``hx``, batch_first, bidirectional, two layers,
dropout in eval, unbatched, packed and ``lengths=``. A configuration that is not plain (a hook on an
inner module, a layer set to another engine, dropout in training, a cell changed out of torch's
form) runs the composed layers: the hook runs, the named engine runs.
"""

from __future__ import annotations

import pytest
import torch
from torch import _VF, nn
from torch.nn.utils.rnn import pack_padded_sequence

import torchcells as tc
from torchcells.layers import direct_kernel

I, H, B = 3, 5, 2
ROWS = [(tc.LSTM, nn.LSTM, {}, "lstm"), (tc.LSTM, nn.LSTM, {"proj_size": 2}, "lstm"),
        (tc.GRU, nn.GRU, {}, "gru"), (tc.RNN, nn.RNN, {}, "rnn_tanh"),
        (tc.RNN, nn.RNN, {"nonlinearity": "relu"}, "rnn_relu")]
row_param = pytest.mark.parametrize("ours_cls, theirs_cls, options, kind", ROWS,
                                    ids=["lstm", "lstm-proj", "gru", "rnn-tanh", "rnn-relu"])


def pair(ours_cls, theirs_cls, options, **kw):
    torch.manual_seed(0)
    theirs = theirs_cls(I, H, **options, **kw)
    ours = ours_cls(I, H, **options, **kw)
    ours.load_state_dict(theirs.state_dict())
    return ours.eval(), theirs.eval()


def random_hx(theirs, batch):
    d = 2 if theirs.bidirectional else 1
    shape = (theirs.num_layers * d,) + (() if batch is None else (batch,))
    h = torch.randn(*shape, theirs.proj_size or H)
    return (h, torch.randn(*shape, H)) if isinstance(theirs, nn.LSTM) else h


def leaves(result):
    out, hn = result
    out = out.data if isinstance(out, nn.utils.rnn.PackedSequence) else out
    return (out,) + (tuple(hn) if isinstance(hn, tuple) else (hn,))


def assert_equal(a, b):
    for x, y in zip(leaves(a), leaves(b), strict=True):
        assert torch.equal(x, y)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts of calls to torch's recurrent kernels, by name."""
    counts: dict[str, int] = {}
    for name in ("lstm", "gru", "rnn_tanh", "rnn_relu"):
        def counted(*args, _name=name, _kernel=getattr(_VF, name)):
            counts[_name] = counts.get(_name, 0) + 1
            return _kernel(*args)
        monkeypatch.setattr(direct_kernel._VF, name, counted)
    return counts


@row_param
@pytest.mark.parametrize("num_layers, bidirectional, batch_first, with_hx",
                         [(1, False, False, False), (1, False, False, True), (2, True, False, True),
                          (2, False, True, True), (2, True, True, False)])
def test_plain_call_is_torch_nn_bit_for_bit(ours_cls, theirs_cls, options, kind, num_layers, bidirectional,
                                            batch_first, with_hx, kernel_calls):
    ours, theirs = pair(ours_cls, theirs_cls, options, num_layers=num_layers, bidirectional=bidirectional,
                        batch_first=batch_first, dropout=0.3 if num_layers > 1 else 0.0)
    x = torch.randn(B, 1, I) if batch_first else torch.randn(1, B, I)  # one step: a streaming call
    hx = random_hx(theirs, B) if with_hx else None
    with torch.no_grad():
        assert_equal(ours(x, hx), theirs(x, hx))
        one = None if hx is None else _unbatched(hx)
        assert_equal(ours(x[0], one), theirs(x[0], one))
    assert kernel_calls == {kind: 4}  # one kernel call for every layer and direction, ours and theirs twice


def _unbatched(hx):
    return tuple(h[:, 0] for h in hx) if isinstance(hx, tuple) else hx[:, 0]


@row_param
def test_packed_and_lengths_are_torch_nn_bit_for_bit(ours_cls, theirs_cls, options, kind):
    ours, theirs = pair(ours_cls, theirs_cls, options, num_layers=2, bidirectional=True)
    x, lengths = torch.randn(3, 3, I), torch.tensor([2, 3, 1])
    hx = random_hx(theirs, 3)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    with torch.no_grad():
        expected = theirs(packed, hx)
        assert_equal(ours(packed, hx), expected)
        out, hn = ours(x, hx, lengths=lengths)
    padded, _ = nn.utils.rnn.pad_packed_sequence(expected[0], total_length=3)
    assert torch.equal(out, padded)
    assert_equal((out, hn), (padded, expected[1]))


def test_lstm_with_gradients_is_torch_nn_bit_for_bit():
    ours, theirs = pair(tc.LSTM, nn.LSTM, {}, num_layers=2)
    x = torch.randn(4, B, I)
    (out_o, (h_o, c_o)), (out_t, (h_t, c_t)) = ours(x), theirs(x)
    assert torch.equal(out_o, out_t) and torch.equal(h_o, h_t) and torch.equal(c_o, c_t)
    (out_o.sum() + c_o.sum()).backward()
    (out_t.sum() + c_t.sum()).backward()
    for name, p in theirs.named_parameters():
        assert torch.equal(getattr(ours, name).grad, p.grad), name


def test_a_hook_on_an_inner_module_runs_the_composed_layers(kernel_calls):
    ours, theirs = pair(tc.GRU, nn.GRU, {})
    seen = []
    ours.stack.layers[0].cell.register_forward_hook(lambda module, args, result: seen.append(module))
    x = torch.randn(1, B, I)
    with torch.no_grad():
        out, h = ours(x)
    assert seen and "gru" not in kernel_calls
    torch.testing.assert_close((out, h), theirs(x))


@pytest.mark.parametrize("change", ["engine-loop", "dropout-train", "checkpoint"])
def test_a_configuration_not_torch_nn_s_runs_the_composed_layers(change, kernel_calls):
    ours, theirs = pair(tc.LSTM, nn.LSTM, {}, num_layers=2, dropout=0.5 if change == "dropout-train" else 0.0)
    if change == "engine-loop":
        ours.stack.layers[1].engine = "loop"
    elif change == "checkpoint":
        ours.stack.layers[0].checkpoint_steps = 2
    else:
        ours.train()
    assert direct_kernel.plain_kind(ours, torch.randn(1, 1, I)) is None
    with torch.no_grad():
        ours(torch.randn(1, B, I))
    assert "lstm" not in kernel_calls or change == "checkpoint"  # the checkpointed layer may run torch's kernel


def test_a_cell_changed_after_a_call_is_read_again():
    ours, theirs = pair(tc.RNN, nn.RNN, {})
    x = torch.randn(1, B, I) * 3
    with torch.no_grad():
        assert torch.equal(ours(x)[0], theirs(x)[0])
        ours.stack.layers[0].cell.nonlinearity = "relu"
        theirs.nonlinearity, theirs.mode = "relu", "RNN_RELU"
        assert direct_kernel.plain_kind(ours, x) == "rnn_relu"
        assert torch.equal(ours(x)[0], theirs(x)[0])
        ours.stack.layers[0].cell.reset_after = True  # an attribute its form does not read: asked again, same
        assert direct_kernel.plain_kind(ours, x) == "rnn_relu"
