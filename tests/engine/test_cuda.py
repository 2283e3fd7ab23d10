"""Every engine path on a CUDA GPU equals the reference loop (skipped, visibly, without a GPU)."""

import pytest
import torch

import torchcells as tc
from fixture_cells import UserLSTMCell
from torchcells.cell import map_state, state_leaves

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")

T, B, I, H = 7, 4, 3, 5
CASES = [
    ("user-lstm-fused", lambda: UserLSTMCell(I, H), "fused"),
    ("lstm-torch", lambda: tc.LSTMCell(I, H), "torch"),
    ("gru-fused", lambda: tc.GRUCell(I, H), "fused"),
    ("gru-torch", lambda: tc.GRUCell(I, H), "torch"),
    ("mingru-scan", lambda: tc.MinGRUCell(I, H), "scan"),
    ("minlstm-scan", lambda: tc.MinLSTMCell(I, H), "scan"),
]


@pytest.mark.parametrize("name, make, engine", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("use_lengths, reverse", [(False, False), (True, True)])
def test_cuda_path_equals_loop(name, make, engine, use_lengths, reverse):
    torch.manual_seed(0)
    cell = make().double().cuda()
    x = torch.randn(T, B, I, dtype=torch.float64, device="cuda")
    state = map_state(lambda s: torch.randn_like(s), cell.init_state(B, dtype=torch.float64, device="cuda"))
    lengths = [7, 2, 5, 1] if use_lengths else None
    results = []
    for which in ("loop", engine):
        layer = tc.Recurrent(cell, reverse=reverse, engine=which)
        xs = x.clone().requires_grad_()
        st = map_state(lambda s: s.clone().requires_grad_(), state)
        out, final = layer(xs, st, lengths=lengths)
        leaves = [out, *state_leaves(final)]
        loss = sum((l * torch.linspace(-1, 1, l.numel(), dtype=l.dtype, device="cuda").reshape(l.shape)).sum()
                   for l in leaves)
        grads = torch.autograd.grad(loss, [xs, *state_leaves(st), *cell.parameters()])
        results.append(leaves + list(grads))
    for got, want in zip(results[1], results[0]):
        assert got.device.type == "cuda"
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8)


def test_drop_in_lstm_on_cuda_matches_torch():
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True).cuda()
    ours = tc.LSTM(I, H, num_layers=2, bidirectional=True).cuda()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(T, B, I, device="cuda")
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name, make, engine", CASES, ids=[c[0] for c in CASES])
def test_cuda_autocast_is_as_accurate_as_the_loop(name, make, engine, dtype):
    """Under CUDA autocast each path gives the loop's output dtype, and its error against a float64
    run of the same weights is within twice the loop's own plus the mode's precision."""
    torch.manual_seed(0)
    cell = make().cuda()
    x = torch.randn(T, B, I, device="cuda")
    ref = tc.Recurrent(cell.double(), engine="loop")(x.double())[0]
    cell.float()
    with torch.autocast("cuda", dtype=dtype):
        got = tc.Recurrent(cell, engine=engine)(x)[0]
        want = tc.Recurrent(cell, engine="loop")(x)[0]
    if engine != "torch":  # torch's kernel follows torch.nn's autocast dtype (LSTM: the lower one)
        assert got.dtype == want.dtype
    err_got = float((got.double() - ref).abs().max())
    err_loop = float((want.double() - ref).abs().max())
    assert err_got <= 2 * err_loop + 2e-2, (err_got, err_loop)


def test_drop_ins_under_cuda_autocast_give_torch_nns_dtype():
    torch.manual_seed(0)
    for name in ("LSTM", "GRU", "RNN"):
        ours, theirs = getattr(tc, name)(I, H, num_layers=2).cuda(), getattr(torch.nn, name)(I, H, num_layers=2).cuda()
        theirs.load_state_dict(ours.state_dict())
        x = torch.randn(T, B, I, device="cuda")
        with torch.autocast("cuda", dtype=torch.float16):
            got, want = ours(x)[0], theirs(x)[0]
        assert got.dtype == want.dtype, name
        torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)
