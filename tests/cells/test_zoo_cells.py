"""What each zoo cell promises beyond the shared table (cell_table.py, checked in test_zoo.py): torch.nn parity where
torch has the same function, and each cell's own properties (the sLSTM's bounded output,
spikes and their surrogate gradient, the Gaussian's moments and KL, the options of
LSTMCell and GRUCell)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchcells as tc
from torchcells.cells.spiking import spike

DT = torch.float64
TOL = {"atol": 1e-12, "rtol": 1e-10}
T, B, I, H = 6, 3, 3, 4


# ---------------------------------------------------------------- LSTMCell and GRUCell options
def test_forget_bias_is_added_to_the_forget_rows_only():
    torch.manual_seed(0)
    plain = tc.LSTMCell(I, H)
    torch.manual_seed(0)
    biased = tc.LSTMCell(I, H, forget_bias=1.0)
    rows = biased.gate_rows()["f"]
    torch.testing.assert_close(biased.bias_ih[rows], plain.bias_ih[rows] + 1.0)
    others = torch.ones(4 * H, dtype=torch.bool)
    others[rows] = False
    assert torch.equal(biased.bias_ih[others], plain.bias_ih[others])
    assert torch.equal(biased.bias_hh, plain.bias_hh) and torch.equal(biased.weight_ih, plain.weight_ih)
    biased.reset_parameters()  # re-applied, e.g. for a Bidirectional twin
    assert float(biased.bias_ih[rows].min()) >= 1.0 - 1 / math.sqrt(H)


def test_lstm_option_layouts():
    peep = tc.LSTMCell(I, H, peepholes=True)
    assert [n for n, _ in peep.named_parameters()] == ["weight_ih", "weight_hh", "bias_ih", "bias_hh",
                                                        "weight_ci", "weight_cf", "weight_co"]
    cifg = tc.LSTMCell(I, H, coupled=True, peepholes=True)
    assert cifg.GATES == ("f", "g", "o") and tc.LSTMCell.GATES == ("i", "f", "g", "o")
    assert cifg.weight_ih.shape == (3 * H, I) and cifg.weight_ci is None
    assert "coupled=True" in repr(cifg) and "peepholes=True" in repr(cifg)
    proj = tc.LSTMCell(I, H, proj_size=2, peepholes=True)
    y, (h, c) = proj(torch.randn(B, I))
    assert y.shape == (B, 2) and c.shape == (B, H)


VARIANTS = [lambda: tc.LSTMCell(I, H, peepholes=True), lambda: tc.LSTMCell(I, H, coupled=True),
            lambda: tc.GRUCell(I, H, reset_after=False)]


@pytest.mark.parametrize("make", VARIANTS, ids=["peephole", "cifg", "reset-before"])
def test_variants_never_run_on_torchs_kernel(make):
    cell = make()
    x = torch.randn(T, B, I)
    assert cell.torch_kernel() is None
    with pytest.raises(TypeError, match="engine='torch' runs only"):
        tc.Recurrent(cell, engine="torch")(x)


@pytest.mark.parametrize("kw", [{}, {"forget_bias": 1.0}], ids=["default", "forget-bias"])
def test_torch_form_lstm_still_runs_on_torchs_kernel(kw):
    cell = tc.LSTMCell(I, H, **kw).double()
    x = torch.randn(T, B, I, dtype=DT)
    assert cell.torch_kernel() is not None
    torch.testing.assert_close(tc.Recurrent(cell, engine="torch")(x)[0], tc.Recurrent(cell, engine="loop")(x)[0],
                               **TOL)


def test_reset_before_and_after_differ_with_the_same_weights():
    torch.manual_seed(0)
    after = tc.GRUCell(I, H).double()
    before = tc.GRUCell(I, H, reset_after=False).double()
    before.load_state_dict(after.state_dict())
    x, h = torch.randn(B, I, dtype=DT), torch.randn(B, H, dtype=DT)
    assert not torch.allclose(after(x, h)[0], before(x, h)[0])
    with torch.no_grad():  # with no hidden bias and r ≡ 1 the two forms agree
        for cell in (after, before):
            cell.bias_hh.zero_()
            cell.bias_ih[:H] = 1e3
    torch.testing.assert_close(after(x, h)[0], before(x, h)[0], **TOL)


# ---------------------------------------------------------------- torch.nn twins
@pytest.mark.parametrize("activation, fn", [("identity", lambda v: v), ("tanh", torch.tanh),
                                            ("sigmoid", torch.sigmoid), ("relu", torch.relu)])
def test_neuron_is_nn_linear_plus_activation(activation, fn):
    torch.manual_seed(0)
    theirs = nn.Linear(I, H)
    torch.manual_seed(0)
    ours = tc.Neuron(I, H, activation=activation)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), "same seed, same parameters as nn.Linear"
    x = torch.randn(T, B, I)
    out, state = tc.Recurrent(ours)(x)
    torch.testing.assert_close(out, fn(theirs(x)))
    assert state == ()


@pytest.mark.parametrize("bias", [True, False])
def test_kernel_cell_across_a_sequence_is_a_causal_conv1d(bias):
    torch.manual_seed(0)
    theirs = nn.Conv1d(I, H, 3, bias=bias, dtype=DT)
    torch.manual_seed(0)
    ours = tc.KernelCell(I, H, kernel_size=3, bias=bias, dtype=DT)
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), "same seed, same parameters as nn.Conv1d"
    x = torch.randn(B, 9, I, dtype=DT)  # (B, L, C): nine positions
    out, window = tc.Recurrent(ours, batch_first=True)(x)
    want = theirs(F.pad(x.transpose(1, 2), (2, 0))).transpose(1, 2)
    torch.testing.assert_close(out, want, **TOL)
    torch.testing.assert_close(window, x[:, -2:].transpose(1, 2), **TOL)  # the last k-1 inputs


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pool_cell_across_a_sequence_is_a_sliding_pool(mode):
    x = torch.randn(B, 8, I, dtype=DT)
    out, _ = tc.Recurrent(tc.PoolCell(I, kernel_size=3, mode=mode), batch_first=True)(x)
    channels_first = x.transpose(1, 2)
    if mode == "max":
        want = F.max_pool1d(F.pad(channels_first, (2, 0), value=-math.inf), 3, stride=1)
    else:
        want = F.avg_pool1d(F.pad(channels_first, (2, 0)), 3, stride=1)
    torch.testing.assert_close(out, want.transpose(1, 2), **TOL)
    strided = out[:, 2::3]  # stride 3: every third output, once the window is full
    torch.testing.assert_close(strided, (F.max_pool1d if mode == "max" else F.avg_pool1d)(
        channels_first, 3).transpose(1, 2), **TOL)


def test_conv_lstm_with_1x1_kernel_and_image_is_nn_lstm_cell():
    torch.manual_seed(0)
    theirs = nn.LSTMCell(I, H, dtype=DT)
    ours = tc.ConvLSTMCell(I, H, kernel_size=1, spatial_size=(1, 1), dtype=DT)
    ours.load_state_dict({k: v.reshape(ours.state_dict()[k].shape) for k, v in theirs.state_dict().items()})
    x, h, c = torch.randn(B, I, dtype=DT), torch.randn(B, H, dtype=DT), torch.randn(B, H, dtype=DT)
    y, (h2, c2) = ours(x[:, :, None, None], tc.LSTMState(h[:, :, None, None], c[:, :, None, None]))
    h_t, c_t = theirs(x, (h, c))
    torch.testing.assert_close(h2[:, :, 0, 0], h_t, **TOL)
    torch.testing.assert_close(c2[:, :, 0, 0], c_t, **TOL)


def test_conv_gru_with_1x1_kernel_and_image_is_a_reset_before_gru():
    torch.manual_seed(0)
    gru = tc.GRUCell(I, H, reset_after=False, dtype=DT)
    ours = tc.ConvGRUCell(I, H, kernel_size=1, spatial_size=(1, 1), dtype=DT)
    ours.load_state_dict({k: v.reshape(ours.state_dict()[k].shape) for k, v in gru.state_dict().items()})
    x, h = torch.randn(B, I, dtype=DT), torch.randn(B, H, dtype=DT)
    torch.testing.assert_close(ours(x[:, :, None, None], h[:, :, None, None])[0][:, :, 0, 0], gru(x, h)[0], **TOL)


def test_conv_cells_see_their_neighbours_and_check_the_image_size():
    cell = tc.ConvLSTMCell(2, 3, kernel_size=3, spatial_size=(5, 5)).double()
    x = torch.zeros(1, 2, 5, 5, dtype=DT)
    x[0, :, 2, 2] = 1.0  # one lit pixel
    base, _ = cell(torch.zeros_like(x))
    y, _ = cell(x)
    changed = (y - base).abs().sum(1)[0] > 0
    assert changed[1:4, 1:4].all() and not changed[0].any() and not changed[:, 4].any()  # a 3x3 neighbourhood
    with pytest.raises(ValueError, match=r"ConvLSTMCell\(2→3\): input has spatial size \(4, 5\), expected \(5, 5\)"):
        cell(torch.zeros(1, 2, 4, 5, dtype=DT))


# ---------------------------------------------------------------- sLSTM
@pytest.mark.parametrize("forget", ["sigmoid", "exp"])
def test_slstm_stays_finite_and_bounded_where_the_unstabilized_form_overflows(forget):
    torch.manual_seed(0)
    cell = tc.SLSTMCell(I, H, forget=forget).double()
    x = torch.randn(40, B, I, dtype=DT) * 3000  # pre-activations in the thousands: e^ĩ overflows float64
    out, state = tc.Recurrent(cell)(x)
    assert torch.isfinite(out).all() and all(torch.isfinite(t).all() for t in state)
    assert out.abs().max() <= 1  # h = o · (weighted mean of tanh values)
    assert (state.n >= 1).all()
    i_pre = F.linear(x, cell.weight_ih, cell.bias)[..., :H]
    assert not torch.isfinite(torch.exp(i_pre)).all(), "the test reaches the overflow it claims to avoid"


def test_slstm_exp_forget_matches_the_unstabilized_equations():
    torch.manual_seed(1)
    cell = tc.SLSTMCell(I, H, forget="exp").double()
    x = torch.randn(T, B, I, dtype=DT)
    h = c = n = torch.zeros(B, H, dtype=DT)
    assert torch.equal(cell.init_state(B).m, torch.full((B, H), -math.inf))  # n = 0 holds no input: m = log 0
    for t in range(T):  # the paper's equations with f = exp(f̃), no stabilizer
        pre = x[t] @ cell.weight_ih.T + cell.bias + h @ cell.weight_hh.T
        i_pre, f_pre, z_pre, o_pre = pre.split(H, -1)
        c = torch.exp(f_pre) * c + torch.exp(i_pre) * torch.tanh(z_pre)
        n = torch.exp(f_pre) * n + torch.exp(i_pre)
        h = torch.sigmoid(o_pre) * c / n
    out, state = tc.Recurrent(cell)(x)
    torch.testing.assert_close(out[-1], h, **TOL)
    torch.testing.assert_close(state.c * torch.exp(state.m), c, **TOL)
    torch.testing.assert_close(state.n * torch.exp(state.m), n, **TOL)


# ---------------------------------------------------------------- LIF
def test_lif_spikes_resets_and_leaks():
    cell = tc.LIFCell(1, 1, bias=False, beta=0.5).double()
    with torch.no_grad():
        cell.weight_ih.fill_(1.0)
    drive = torch.tensor([[[0.6]], [[0.6]], [[0.6]], [[0.0]], [[0.0]]], dtype=DT)  # (T, 1, 1)
    spikes, v_last, vs = tc.Recurrent(cell)(drive, all_states=True)
    # v: 0.6, 0.9, 1.05 (spike), 0.525 - 1 = -0.475 (reset by subtraction), -0.2375
    torch.testing.assert_close(vs.flatten(), torch.tensor([0.6, 0.9, 1.05, -0.475, -0.2375], dtype=DT), **TOL)
    assert spikes.flatten().tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]


def test_surrogate_gradient_is_the_fast_sigmoid_derivative():
    u = torch.linspace(-2, 2, 9, dtype=DT, requires_grad=True)
    s = spike(u, 5.0)
    assert torch.equal(s.detach(), (u > 0).to(DT))
    (g,) = torch.autograd.grad(s.sum(), u)
    torch.testing.assert_close(g, 1 / (1 + 5 * u.detach().abs()) ** 2, **TOL)


# ---------------------------------------------------------------- Gaussian and noisy input
def test_gaussian_samples_have_the_cells_mean_and_variance():
    torch.manual_seed(0)
    cell = tc.GaussianCell(I, 2).double()
    x = torch.randn(1, I, dtype=DT).expand(20000, I)
    mean, logvar = cell.distribution(x[:1])
    z, _ = cell(x)
    torch.testing.assert_close(z.mean(0), mean[0], atol=0.05, rtol=0)
    torch.testing.assert_close(z.var(0), logvar.exp()[0], atol=0.05, rtol=0.05)
    cell.eval()
    assert torch.equal(cell(x[:1])[0], mean)


def test_gaussian_state_is_the_kl_summed_over_valid_steps():
    torch.manual_seed(0)
    cell = tc.GaussianCell(I, 2).double()
    x = torch.randn(T, B, I, dtype=DT)
    lengths = [6, 2, 0]
    _, total = tc.Recurrent(cell)(x, lengths=lengths)
    mean, logvar = cell.distribution(x)
    per_step = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, torch.exp(0.5 * logvar)), torch.distributions.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(cell.kl(mean, logvar), per_step, **TOL)
    want = torch.stack([per_step[:L, b].sum() for b, L in enumerate(lengths)])
    torch.testing.assert_close(total, want, **TOL)


def test_noisy_input_adds_noise_of_its_std_in_training_only():
    torch.manual_seed(0)
    cell = tc.NoisyInput(I, std=0.5).double()
    x = torch.randn(40000, I, dtype=DT)
    y, _ = cell(x)
    torch.testing.assert_close((y - x).std(), torch.tensor(0.5, dtype=DT), atol=0.01, rtol=0)
    torch.testing.assert_close((y - x).mean(), torch.tensor(0.0, dtype=DT), atol=0.01, rtol=0)
    cell.eval()
    assert torch.equal(cell(x)[0], x)
