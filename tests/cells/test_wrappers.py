"""The wrappers' promises: masks really once per sequence, DropConnect shared by the batch and
steps, zoneout's keep-or-update rule, eval mode = the wrapped cell, composition."""

from __future__ import annotations

import warnings

import pytest
import torch

import torchcells as tc
from torchcells.cell import state_leaves

DT = torch.float64
TOL = {"atol": 1e-12, "rtol": 1e-10}
T, B, I, H = 6, 5, 8, 6


@pytest.fixture
def loop(reference_loop):
    """``loop(cell, x, lengths=None)``: the outputs of the ``reference_loop`` fixture from the cell's
    ``init_state``: the same operations as the cell's own, so equal bit for bit."""
    return lambda cell, x, lengths=None: reference_loop(cell, x, cell.init_state(x.shape[1], dtype=DT), lengths)[0]


def lstm(seed: int = 0, i: int = I, h: int = H) -> tc.LSTMCell:
    torch.manual_seed(seed)
    return tc.LSTMCell(i, h).double()


# ---------------------------------------------------------------- VariationalDropout
def test_variational_input_mask_is_one_per_sequence():
    torch.manual_seed(1)
    cell = tc.VariationalDropout(lstm(), (0.5, 0.0))
    x = torch.randn(T, B, I, dtype=DT, requires_grad=True)
    state = cell.init_state(B, dtype=DT)
    out, final = tc.Recurrent(cell)(x, state)
    (g,) = torch.autograd.grad(out.sum(), x)
    m_in = state.masks[0]
    assert set(m_in.unique().tolist()) <= {0.0, 2.0}          # Bernoulli(1/2) / (1/2)
    dropped = m_in == 0
    for t in range(T):  # the same inputs are invisible at every step of a sequence
        assert torch.equal(g[t] == 0, dropped)
    assert len({tuple(row.tolist()) for row in dropped}) > 1, "each sequence has its own mask"
    assert final.masks[0] is m_in or torch.equal(final.masks[0], m_in)   # passed on unchanged


def test_variational_output_mask_is_one_per_sequence_and_fresh_per_call():
    torch.manual_seed(2)
    layer = tc.Recurrent(tc.VariationalDropout(lstm(), (0.0, 0.5)))
    x = torch.randn(T, B, I, dtype=DT)
    out, final = layer(x)
    zero = out == 0
    assert zero.any() and torch.equal(zero, zero[:1].expand_as(zero))  # same units silent at every step
    assert torch.equal(zero[0], final.masks[1] == 0)
    out2, final2 = layer(x)
    assert not torch.equal(final.masks[1], final2.masks[1]), "a fresh sequence draws a fresh mask"
    out3, _ = layer(x, final)  # continuing a sequence (truncated BPTT) keeps its mask
    assert torch.equal(out3 == 0, zero)


def test_variational_dropout_is_the_wrapped_cell_in_eval_and_expected_scale_in_training(loop):
    inner = lstm()
    wrapped = tc.VariationalDropout(inner, 0.3).eval()
    x = torch.randn(T, B, I, dtype=DT)
    assert torch.equal(loop(wrapped, x), loop(inner, x))
    state = wrapped.train().init_state(20000, dtype=DT)
    torch.testing.assert_close(state.masks[0].mean(), torch.tensor(1.0, dtype=DT), atol=0.02, rtol=0)


def test_bidirectional_and_stacked_directions_draw_their_own_masks():
    torch.manual_seed(3)
    bi = tc.Bidirectional(tc.Recurrent(tc.VariationalDropout(lstm(), 0.5)))
    _, (fwd, bwd) = bi(torch.randn(T, B, I, dtype=DT), lengths=[6, 3, 1, 0, 2])
    assert not torch.equal(fwd.masks[0], bwd.masks[0])


def test_variational_dropout_on_a_conv_cell_drops_whole_channels():
    cell = tc.VariationalDropout(tc.ConvGRUCell(4, 3, spatial_size=(5, 5)).double(), 0.5)
    state = cell.init_state(2, dtype=DT)
    assert state.masks[0].shape == (2, 4, 1, 1) and state.masks[1].shape == (2, 3, 1, 1)
    out, _ = tc.Recurrent(cell)(torch.randn(T, 2, 4, 5, 5, dtype=DT), state)
    silent = (out == 0).all(-1).all(-1).all(0)  # (B, C): channels zero at every step and pixel
    assert torch.equal(silent, state.masks[1][:, :, 0, 0] == 0)


# ---------------------------------------------------------------- RecurrentDropout
def test_recurrent_dropout_masks_the_h_fed_back_and_returns_it_unmasked(loop):
    torch.manual_seed(4)
    inner = lstm()
    cell = tc.RecurrentDropout(inner, 0.5)
    x = torch.randn(T, B, I, dtype=DT)
    state = cell.init_state(B, dtype=DT)
    (m_h,) = state.masks
    assert m_h.shape == (B, H) and set(m_h.unique().tolist()) <= {0.0, 2.0}
    out, final = tc.Recurrent(cell)(x, state)
    h, c = torch.zeros(B, H, dtype=DT), torch.zeros(B, H, dtype=DT)
    for t in range(T):
        y, (h, c) = inner(x[t], tc.LSTMState(h * m_h, c))
        torch.testing.assert_close(out[t], y, **TOL)
    torch.testing.assert_close(final.cell.h, h, **TOL)  # the state keeps the unmasked h
    torch.testing.assert_close(final.cell.c, c, **TOL)
    assert not (final.cell.h == 0).any()
    cell.eval()
    assert torch.equal(loop(cell, x), loop(inner, x))


# ---------------------------------------------------------------- WeightDrop
def test_weight_drop_uses_one_mask_for_the_batch_and_every_step():
    torch.manual_seed(5)
    inner = lstm()
    cell = tc.WeightDrop(inner, 0.5)
    x = torch.randn(T, B, I, dtype=DT)
    out, _ = tc.Recurrent(cell)(x, cell.init_state(B, dtype=DT))  # the call draws the mask
    mask = cell.mask_weight_hh.clone()
    assert mask.shape == inner.weight_hh.shape and set(mask.unique().tolist()) == {0.0, 2.0}
    reference = lstm()
    with torch.no_grad():
        reference.weight_hh.mul_(mask)
    torch.testing.assert_close(out, tc.Recurrent(reference)(x)[0], **TOL)


def test_weight_drop_draws_a_new_mask_at_every_call_even_with_a_carried_state():
    """AWD-LSTM drops the weights anew at every forward call; truncated BPTT carries the state."""
    torch.manual_seed(14)
    cell = tc.WeightDrop(lstm(), 0.5)
    layer = tc.Recurrent(cell)
    x = torch.randn(T, B, I, dtype=DT)
    _, state = layer(x)
    first = cell.mask_weight_hh.clone()
    out, _ = layer(x, state)                   # the next batch continues the sequence
    second = cell.mask_weight_hh.clone()
    assert not torch.equal(first, second), "a carried state must not keep the previous call's mask"
    zeros = tc.LSTMState(*(torch.zeros(B, H, dtype=DT) for _ in range(2)))
    reference = lstm()
    with torch.no_grad():
        reference.weight_hh.mul_(second)
    torch.testing.assert_close(out, tc.Recurrent(reference)(x, state)[0], **TOL)  # the call used the new mask
    cell.eval()
    layer(x, zeros)
    assert torch.equal(cell.mask_weight_hh, second), "eval draws nothing"


def test_weight_drop_draws_a_new_mask_per_sequence_and_never_touches_the_parameter(reference_loop):
    torch.manual_seed(6)
    inner = lstm()
    before = inner.weight_hh.detach().clone()
    layer = tc.Recurrent(tc.WeightDrop(inner, 0.5))
    x = torch.randn(T, B, I, dtype=DT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at all: no fallback, no non-contiguous weights
        out1, _ = layer(x)
        mask1 = layer.cell.mask_weight_hh.clone()
        out2, _ = layer(x)
    assert not torch.equal(mask1, layer.cell.mask_weight_hh)
    assert not torch.allclose(out1, out2)
    zeros = layer.cell.cell.init_state(B, dtype=DT)  # the inner cell's: draws nothing
    torch.testing.assert_close(out2, reference_loop(layer.cell, x, zeros)[0], **TOL)  # the new mask
    assert torch.equal(inner.weight_hh, before) and isinstance(inner.weight_hh, torch.nn.Parameter)
    assert list(layer.state_dict()) == ["cell.cell." + k for k in inner.state_dict()]  # no mask saved


def test_weight_drop_gradient_is_zero_on_dropped_weights():
    torch.manual_seed(7)
    cell = tc.WeightDrop(lstm(), 0.5)
    out, _ = tc.Recurrent(cell)(torch.randn(T, B, I, dtype=DT))
    out.square().sum().backward()
    g = cell.cell.weight_hh.grad
    assert torch.equal(g == 0, cell.mask_weight_hh == 0)


def test_weight_drop_in_eval_and_with_p_zero_is_the_wrapped_cell(loop):
    inner = lstm()
    x = torch.randn(T, B, I, dtype=DT)
    want = loop(inner, x)
    assert torch.equal(loop(tc.WeightDrop(inner, 0.5).eval(), x), want)
    assert torch.equal(loop(tc.WeightDrop(inner, 0.0), x), want)


def test_weight_drop_on_other_weights():
    torch.manual_seed(8)
    cell = tc.WeightDrop(tc.IndRNNCell(I, H).double(), 0.5, weights=("weight_hh", "weight_ih"))
    cell.resample()
    assert cell.mask_weight_ih.shape == (H, I) and cell.mask_weight_hh.shape == (H,)
    assert "weights=['weight_hh', 'weight_ih']" in repr(cell)


# ---------------------------------------------------------------- Zoneout
def test_zoneout_keeps_or_updates_each_unit_with_its_own_rate():
    torch.manual_seed(9)
    inner = lstm()
    cell = tc.Zoneout(inner, (0.3, 0.7))
    x = torch.randn(4000, I, dtype=DT)
    state = tc.LSTMState(torch.randn(4000, H, dtype=DT), torch.randn(4000, H, dtype=DT))
    y, (h, c) = cell(x, state)
    _, (h_new, c_new) = inner(x, state)
    kept_h, kept_c = h == state.h, c == state.c
    assert torch.equal(kept_h | (h == h_new), torch.ones_like(kept_h))  # every unit: old or new, exactly
    assert torch.equal(kept_c | (c == c_new), torch.ones_like(kept_c))
    assert abs(kept_h.double().mean().item() - 0.3) < 0.02
    assert abs(kept_c.double().mean().item() - 0.7) < 0.02
    assert torch.equal(y, h), "the output is the zoned-out h"


def test_zoneout_in_eval_is_the_expectation_and_passes_stateless_cells_through():
    inner = lstm()
    cell = tc.Zoneout(inner, 0.25).eval()
    x, state = torch.randn(B, I, dtype=DT), tc.LSTMState(torch.randn(B, H, dtype=DT), torch.randn(B, H, dtype=DT))
    _, (h_new, c_new) = inner(x, state)
    y, (h, c) = cell(x, state)
    torch.testing.assert_close(h, 0.25 * state.h + 0.75 * h_new, **TOL)
    torch.testing.assert_close(c, 0.25 * state.c + 0.75 * c_new, **TOL)
    neuron = tc.Neuron(I, H).double()
    assert torch.equal(tc.Zoneout(neuron, 0.5)(x)[0], neuron(x)[0])


# ---------------------------------------------------------------- composition
def test_stacked_cell_equals_a_stack_of_layers():
    torch.manual_seed(10)
    a, b = tc.GRUCell(I, H).double(), tc.LSTMCell(H, H).double()
    x = torch.randn(T, B, I, dtype=DT, requires_grad=True)
    lengths = [6, 0, 3, 1, 5]
    out, (s_a, s_b) = tc.Recurrent(tc.StackedCell([a, b]))(x, lengths=lengths)
    want, (w_a, w_b) = tc.Stack([tc.Recurrent(a), tc.Recurrent(b)])(x, lengths=lengths)
    torch.testing.assert_close(out, want, **TOL)
    for got, exp in zip(state_leaves((s_a, s_b)), state_leaves((w_a, w_b))):
        torch.testing.assert_close(got, exp, **TOL)
    g1 = torch.autograd.grad(out.square().sum(), [x, *a.parameters(), *b.parameters()])
    g2 = torch.autograd.grad(want.square().sum(), [x, *a.parameters(), *b.parameters()])
    for u, v in zip(g1, g2):
        torch.testing.assert_close(u, v, **TOL)


def test_wrappers_compose_and_are_the_plain_cell_in_eval(loop):
    inner = lstm()
    cell = tc.VariationalDropout(tc.RecurrentDropout(tc.WeightDrop(inner, 0.3), 0.2), 0.1)
    x = torch.randn(T, B, I, dtype=DT)
    lengths = [6, 2, 0, 4, 1]
    out, _ = tc.Bidirectional(tc.Recurrent(cell))(x, lengths=lengths)
    assert out.shape == (T, B, 2 * H)
    for b, L in enumerate(lengths):
        assert torch.all(out[L:, b] == 0)
    cell.eval()
    assert torch.equal(loop(cell, x, lengths), loop(inner, x, lengths))


def test_residual_adds_the_input():
    inner = tc.GRUCell(I, I).double()
    x = torch.randn(T, B, I, dtype=DT)
    torch.testing.assert_close(tc.Recurrent(tc.Residual(inner))(x)[0], x + tc.Recurrent(inner)(x)[0], **TOL)


def test_zoneout_keeps_values_where_dropout_would_zero_them():
    torch.manual_seed(11)
    cell = tc.Zoneout(lstm(), 0.5)
    x = torch.randn(T, 200, I, dtype=DT)
    start = tc.LSTMState(torch.randn(200, H, dtype=DT), torch.randn(200, H, dtype=DT))
    with pytest.warns(UserWarning, match="random"):
        out, _ = tc.Recurrent(cell)(x, start)
    assert not (out == 0).any()
    assert (out[0] == start.h).any() and (out[1] == out[0]).any()  # units carried over unchanged


def test_wrappers_find_h_in_a_wrapped_cells_nested_state():
    torch.manual_seed(12)
    inner = tc.VariationalDropout(lstm(), 0.5)
    state = inner.init_state(B, dtype=DT)
    x = torch.randn(B, I, dtype=DT)

    zoned = tc.Zoneout(inner, (0.5, 0.5))
    _, new = zoned(x, state)
    assert new.masks[0] is state.masks[0] and new.masks[1] is state.masks[1], "masks are not zoned out"
    _, fresh = inner(x, state)
    assert torch.equal((new.cell.h == state.cell.h) | (new.cell.h == fresh.cell.h), torch.ones(B, H, dtype=torch.bool))

    dropped = tc.RecurrentDropout(inner, 0.5)
    outer = dropped.init_state(B, dtype=DT)
    assert outer.masks[0].shape == (B, H)            # shaped like the LSTM's h, two levels down
    start = tc.MaskedState(tc.MaskedState(tc.LSTMState(torch.randn(B, H, dtype=DT), torch.randn(B, H, dtype=DT)),
                                          outer.cell.masks), outer.masks)
    y, _ = dropped(x, start)
    masked_h = tc.MaskedState(tc.LSTMState(start.cell.cell.h * outer.masks[0], start.cell.cell.c), outer.cell.masks)
    torch.testing.assert_close(y, inner(x, masked_h)[0], **TOL)


@pytest.mark.parametrize("make", [lambda: tc.Zoneout(lstm(), (0.3, 0.2)), lambda: tc.VariationalDropout(lstm(), 0.3),
                                  lambda: tc.WeightDrop(lstm(), 0.3)], ids=["zoneout", "variational", "weight-drop"])
def test_random_wrappers_under_checkpointing_give_the_same_gradients(make):
    """Recomputing chunks in the backward (checkpoint_steps) replays the same random draws."""
    cell = make()
    x = torch.randn(T, B, I, dtype=DT, requires_grad=True)
    results = []
    for chunk in (None, 2):
        torch.manual_seed(13)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out, _ = tc.Recurrent(cell, checkpoint_steps=chunk)(x, lengths=[6, 2, 5, 0, 3])
        results.append((out, torch.autograd.grad(out.square().sum(), [x, *cell.parameters()])))
    (out1, g1), (out2, g2) = results
    torch.testing.assert_close(out1, out2, **TOL)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, **TOL)


# ---------------------------------------------------------------- issue 13: the wrappers as their papers define them
def remembering_gru(h: int = H) -> tc.GRUCell:
    """A GRU whose update gates hold (z ≈ 1): h_t ≈ h_{t−1} whatever the input."""
    torch.manual_seed(15)
    cell = tc.GRUCell(I, h).double()
    with torch.no_grad():
        cell.bias_ih[h:2 * h] = 8.0
    return cell


def test_recurrent_dropout_never_masks_a_grus_carried_state():
    """Gal & Ghahramani mask only what feeds W_hh: a GRU's h_t = (1 − z) n + z h_{t−1} mixes the
    unmasked h, so its state stays in [−1, 1] and a holding unit keeps its value."""
    cell = tc.RecurrentDropout(remembering_gru(), 0.5)
    x = torch.randn(60, B, I, dtype=DT)
    h0 = torch.rand(B, H, dtype=DT) * 1.6 - 0.8
    start = cell.init_state(B, dtype=DT)
    out, final = tc.Recurrent(cell)(x, tc.MaskedState(h0, start.masks))
    assert (start.masks[0] == 0).any() and out.abs().max() <= 1.0
    torch.testing.assert_close(final.cell, h0, atol=0.05, rtol=0)  # the memory is kept, dropped units too


def test_recurrent_dropout_keeps_a_default_grus_state_bounded_over_200_steps():
    torch.manual_seed(16)
    cell = tc.RecurrentDropout(tc.GRUCell(I, H).double(), 0.5)
    out, _ = tc.Recurrent(cell)(torch.randn(200, 64, I, dtype=DT) * 3)
    assert out.abs().max() <= 1.0


BOUNDED_BY_ONE = {"elman", "lstm", "lstm-peephole", "lstm-cifg", "gru", "gru-reset-before", "mgu", "ln-lstm", "ln-gru",
                  "slstm", "conv-lstm", "conv-gru"}
REFUSED = {"indrnn", "mingru", "minlstm", "lif", "neuron", "noisy-input", "gaussian", "kernel", "pool"}


@pytest.mark.parametrize("name", sorted(BOUNDED_BY_ONE | REFUSED))
def test_recurrent_dropout_on_every_zoo_cell_is_bounded_or_refused(name):
    from torchcells.cells.registry import ZOO, make_cell
    assert ZOO[name].kind != "wrapper"
    torch.manual_seed(17)
    inner = make_cell(name, 3, 4).double()
    if name in REFUSED:
        with pytest.raises(ValueError, match=r"RecurrentDropout: .*(no state|carries its h|declare)"):
            tc.RecurrentDropout(inner, 0.5)
        return
    cell = tc.RecurrentDropout(inner, 0.5)
    shape = (3, 8, 8) if name.startswith("conv") else (3,)
    out, final = tc.Recurrent(cell)(torch.randn(200, 4, *shape, dtype=DT) * 3)
    assert out.abs().max() <= 1.0 and all(torch.isfinite(t).all() for t in state_leaves(final))
    # the memory of a cell whose memory is not h (an LSTM's c) is never masked either
    if hasattr(final.cell, "c"):
        state = cell.init_state(4, dtype=DT)
        x = torch.randn(4, *shape, dtype=DT)
        c0 = torch.randn_like(state.cell.c)
        _, new = cell(x, tc.MaskedState(state.cell._replace(c=c0), state.masks))
        _, plain = inner(x, state.cell._replace(c=c0, h=state.cell.h * state.masks[0]))
        torch.testing.assert_close(new.cell.c, plain.c, **TOL)


def test_zoneout_in_eval_never_averages_the_slstm_stabilizer():
    """Averaging m with its initial −∞ left it at −∞ and the cell forgot everything at every step."""
    torch.manual_seed(18)
    inner = tc.SLSTMCell(I, H, forget_bias=6.0).double()  # forget gates open: the memory should last
    cell = tc.Zoneout(inner, 0.3).eval()
    x = torch.zeros(300, 2, I, dtype=DT)
    x[0] = torch.randn(2, I, dtype=DT) * 3
    _, final = tc.Recurrent(cell)(x)
    assert all(torch.isfinite(t).all() for t in final)
    assert (final.n > 10).all(), "the normalizer sums the input gates of many remembered steps"
    other = x.clone()
    other[0] = -other[0]
    _, final2 = tc.Recurrent(cell)(other)
    assert (final.c / final.n - final2.c / final2.n).abs().max() > 1e-3, "the first input is still remembered"


def test_zoneout_in_training_keeps_or_updates_an_slstm_memory_whole():
    """A zoned-out unit keeps c, n and m together (its true memory c·e^m, n·e^m), never m alone."""
    torch.manual_seed(19)
    inner = tc.SLSTMCell(I, H).double()
    cell = tc.Zoneout(inner, (0.0, 0.5))
    start = tc.SLSTMState(torch.rand(B, H, dtype=DT) - 0.5, torch.randn(B, H, dtype=DT),
                          torch.rand(B, H, dtype=DT) + 1, -torch.rand(B, H, dtype=DT))
    x = torch.randn(B, I, dtype=DT)
    _, new = cell(x, start)
    _, fresh = inner(x, start)
    kept = new.m == start.m
    assert kept.any() and (~kept).any()
    for name in ("c", "n", "m"):
        torch.testing.assert_close(getattr(new, name), torch.where(kept, getattr(start, name), getattr(fresh, name)))


def test_zoneout_leaves_tensors_of_role_other_alone():
    cell = tc.Zoneout(tc.KernelCell(I, H, kernel_size=3).double(), 0.5).eval()
    window = torch.randn(B, I, 2, dtype=DT)
    x = torch.randn(B, I, dtype=DT)
    assert torch.equal(cell(x, window)[1], cell.cell(x, window)[1]), "a window of inputs is not a memory"


# ---------------------------------------------------------------- CandidateDropout (Semeniuta et al. 2016)
def test_candidate_dropout_drops_the_lstm_candidate_with_a_new_mask_every_step():
    torch.manual_seed(20)
    inner = lstm()
    cell = tc.CandidateDropout(inner, 0.5)
    state = tc.LSTMState(torch.randn(B, H, dtype=DT), torch.randn(B, H, dtype=DT))
    x = torch.randn(B, I, dtype=DT)
    _, kept = inner.candidate_step(x, state, lambda g: 2 * g)
    _, dropped = inner.candidate_step(x, state, torch.zeros_like)
    gates = torch.nn.functional.linear(x, inner.weight_ih, inner.bias_ih) + \
        torch.nn.functional.linear(state.h, inner.weight_hh, inner.bias_hh)
    torch.testing.assert_close(dropped.c, torch.sigmoid(gates[:, H:2 * H]) * state.c, **TOL)  # f ⊙ c: nothing lost
    masks = []
    for _ in range(2):
        _, new = cell(x, state)
        is_kept = (new.c - kept.c).abs() < 1e-12
        assert torch.equal(is_kept | ((new.c - dropped.c).abs() < 1e-12), torch.ones_like(is_kept))
        masks.append(is_kept)
    assert not torch.equal(masks[0], masks[1]), "a new mask at every step"
    assert torch.equal(cell.eval()(x, state)[1].c, inner(x, state)[1].c)


def test_candidate_dropout_keeps_a_holding_grus_memory():
    cell = tc.CandidateDropout(remembering_gru(), 0.5)
    h0 = torch.rand(B, H, dtype=DT) * 1.6 - 0.8
    with pytest.warns(UserWarning, match="random"):
        out, final = tc.Recurrent(cell)(torch.randn(60, B, I, dtype=DT), h0)
    assert out.abs().max() <= 1.0
    torch.testing.assert_close(final, h0, atol=0.05, rtol=0)


@pytest.mark.parametrize("name", ["gru-reset-before", "mgu", "ln-lstm", "ln-gru", "slstm", "mingru", "minlstm",
                                  "lstm-peephole", "lstm-cifg"])
def test_candidate_step_with_the_identity_is_the_step(name):
    from torchcells.cells.registry import make_cell
    torch.manual_seed(21)
    cell = make_cell(name, I, H).double()
    state = cell.init_state(B, dtype=DT)
    if name == "slstm":
        state = state._replace(m=torch.zeros(B, H, dtype=DT), n=torch.ones(B, H, dtype=DT))
    x = torch.randn(B, I, dtype=DT)
    for got, want in zip(state_leaves(cell.candidate_step(x, state, lambda v: v)), state_leaves(cell(x, state))):
        torch.testing.assert_close(got, want, **TOL)
    y, _ = cell.candidate_step(x, state, lambda v: v * 0)
    assert not torch.allclose(y, cell(x, state)[0]), "the candidate was dropped"


@pytest.mark.parametrize("make", [lambda: tc.ElmanCell(I, H), lambda: tc.IndRNNCell(I, H), lambda: tc.Neuron(I, H)])
def test_candidate_dropout_refuses_a_cell_without_a_candidate(make):
    with pytest.raises(ValueError, match=r"CandidateDropout: \w+.* does not declare candidate_step"):
        tc.CandidateDropout(make())
