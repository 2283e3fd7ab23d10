"""``Stack([...], dropout=p)`` and ``Bidirectional(layer, merge=...)`` against composition by hand."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from torchcells import (Bidirectional, BidirectionalState, ElmanCell, GRUCell, LSTMCell, LSTMState, Recurrent,
                        Stack)

DT = torch.float64
TOL = {"atol": 1e-12, "rtol": 1e-10}
T, B, I = 5, 4, 3
LENGTHS = [3, 0, 5, 1]


def leaves(s: Any) -> list[Tensor]:
    if s is None:
        return []
    return [s] if isinstance(s, Tensor) else [t for part in s for t in leaves(part)]


def assert_close(actual: Any, expected: Any, what: str = "") -> None:
    a, e = leaves(actual), leaves(expected)
    assert len(a) == len(e), f"{what}: {len(a)} tensors vs {len(e)}"
    for i, (x, y) in enumerate(zip(a, e)):
        torch.testing.assert_close(x, y, **TOL, msg=lambda m: f"{what}[{i}]: {m}")


def flip_each(x: Tensor, lengths) -> Tensor:
    lens = [x.shape[0]] * x.shape[1] if lengths is None else lengths
    return torch.stack([torch.cat([x[:L, b].flip(0), x[L:, b]]) for b, L in enumerate(lens)], 1)


def param_grads(loss: Tensor, module) -> list[Tensor]:
    return list(torch.autograd.grad(loss, list(module.parameters())))


# ================================================================== Stack
def three_layers(batch_first: bool = False) -> list[Recurrent]:
    torch.manual_seed(0)
    return [Recurrent(LSTMCell(I, 4, dtype=DT), batch_first=batch_first),
            Recurrent(GRUCell(4, 5, dtype=DT), reverse=True, batch_first=batch_first),
            Recurrent(ElmanCell(5, 2, dtype=DT), batch_first=batch_first)]


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "init-state"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tbi", "bti"])
def test_stack_equals_composing_layers(lengths, with_state, batch_first):
    layers = three_layers(batch_first)
    net = Stack(layers)
    assert net.batch_first == batch_first
    x = torch.randn(B, T, I, dtype=DT) if batch_first else torch.randn(T, B, I, dtype=DT)
    x.requires_grad_()
    states = tuple(LSTMState(*map(torch.randn_like, s)) if isinstance(s, tuple) else torch.randn_like(s)
                   for s in net.init_state(B, dtype=DT)) if with_state else None

    out, finals = net(x, states, lengths=lengths)
    assert isinstance(finals, tuple) and len(finals) == 3
    assert isinstance(finals[0], LSTMState) and isinstance(finals[1], Tensor)

    h, want_finals = x, []
    for i, layer in enumerate(layers):
        h, f = layer(h, None if states is None else states[i], lengths=lengths)
        want_finals.append(f)
    assert_close(out, h, "outputs")
    assert_close(finals, tuple(want_finals), "final states")

    w = torch.randn_like(out)
    g_got = torch.autograd.grad((out * w).sum() + sum(f.sum() for f in leaves(finals)), [x] + list(net.parameters()))
    g_want = torch.autograd.grad((h * w).sum() + sum(f.sum() for f in leaves(want_finals)),
                                 [x] + list(net.parameters()))
    assert_close(list(g_got), list(g_want), "gradients")


def test_stack_passes_lengths_to_every_layer():
    layers = three_layers()
    net = Stack(layers)
    states = tuple(LSTMState(*map(torch.randn_like, s)) if isinstance(s, tuple) else torch.randn_like(s)
                   for s in net.init_state(B, dtype=DT))
    out, finals, every = net(torch.randn(T, B, I, dtype=DT), states, lengths=LENGTHS, all_states=True)
    assert isinstance(every, tuple) and len(every) == 3
    for layer_final, layer_init, layer_every in zip(finals, states, every):
        for f, s in zip(leaves(layer_final), leaves(layer_init)):
            assert torch.equal(f[1], s[1])  # the empty sequence kept its state in every layer
        for b, L in enumerate(LENGTHS):
            assert all(torch.all(e[L:, b] == 0) for e in leaves(layer_every))
    for b, L in enumerate(LENGTHS):
        assert torch.all(out[L:, b] == 0)


def test_stack_dropout_only_in_training():
    layers = three_layers()
    net = Stack(layers, dropout=0.5)
    plain = Stack(layers, dropout=0.0)
    x = torch.randn(T, B, I, dtype=DT)

    net.eval()
    a, b = net(x, lengths=LENGTHS), net(x, lengths=LENGTHS)
    assert_close(a, b, "eval is deterministic")
    assert_close(a, plain(x, lengths=LENGTHS), "eval equals p=0")

    net.train()
    plain.train()
    assert_close(plain(x, lengths=LENGTHS), a, "p=0 in training does nothing")
    torch.manual_seed(1)
    t1 = net(x, lengths=LENGTHS)
    torch.manual_seed(2)
    t2 = net(x, lengths=LENGTHS)
    assert not torch.allclose(t1[0], t2[0])
    assert not torch.allclose(t1[0], a[0])
    for out in (t1[0], t2[0]):
        for b, L in enumerate(LENGTHS):
            assert torch.all(out[L:, b] == 0)

    # exactly: dropout on the outputs of every layer but the last
    torch.manual_seed(3)
    got_out, got_finals = net(x, lengths=LENGTHS)
    torch.manual_seed(3)
    h, finals = x, []
    for i, layer in enumerate(layers):
        h, f = layer(h, lengths=LENGTHS)
        finals.append(f)
        if i < len(layers) - 1:
            h = F.dropout(h, 0.5, training=True)
    assert_close(got_out, h, "outputs")
    assert_close(got_finals, tuple(finals), "final states")


def test_stack_of_one_layer_is_that_layer():
    torch.manual_seed(0)
    layer = Recurrent(GRUCell(I, 4, dtype=DT))
    x = torch.randn(T, B, I, dtype=DT)
    out, (h,) = Stack([layer], dropout=0.5).train()(x, lengths=LENGTHS)  # no dropout after the last layer
    want_out, want_h = layer(x, lengths=LENGTHS)
    assert_close((out, h), (want_out, want_h))


@pytest.mark.parametrize("dropout", [-0.1, 1.5, "0.5", True, None, float("nan")])
def test_stack_bad_dropout(dropout):
    with pytest.raises(ValueError, match="Stack: dropout"):
        Stack(three_layers(), dropout=dropout)


def test_stack_errors():
    with pytest.raises(ValueError, match="Stack: layers"):
        Stack([])
    torch.manual_seed(0)
    mixed = [Recurrent(GRUCell(I, 4, dtype=DT), batch_first=True), Recurrent(GRUCell(4, 4, dtype=DT))]
    with pytest.raises(ValueError, match="Stack: .*batch_first"):
        Stack(mixed)
    net = Stack(three_layers())
    x = torch.randn(T, B, I, dtype=DT)
    good = net.init_state(B, dtype=DT)
    for bad in (good[:2], good + (None,), good[0], torch.zeros(B, 4, dtype=DT)):
        with pytest.raises(TypeError, match=r"Stack\(3 layers\): state .*one state per layer \(3\)"):
            net(x, bad)
    net(x, list(good))  # a list is fine
    net(x, (None, good[1], None))  # None for "start from zeros"


# ================================================================== Bidirectional
def make_bi(merge="concat", batch_first=False, cell=None):
    torch.manual_seed(0)
    return Bidirectional(Recurrent(cell or LSTMCell(I, 4, dtype=DT), batch_first=batch_first), merge=merge)


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "init-state"])
def test_bidirectional_concat_equals_forward_and_backward_loops(lengths, with_state, reference_loop):
    bi = make_bi()
    fwd_cell, bwd_cell = bi.forward_layer.cell, bi.backward_layer.cell
    assert not bi.forward_layer.reverse and bi.backward_layer.reverse
    x = torch.randn(T, B, I, dtype=DT, requires_grad=True)
    state = None
    if with_state:
        state = BidirectionalState(LSTMState(*map(torch.randn_like, fwd_cell.init_state(B, dtype=DT))),
                                   LSTMState(*map(torch.randn_like, bwd_cell.init_state(B, dtype=DT))))
    out, final = bi(x, state, lengths=lengths)
    assert isinstance(final, BidirectionalState)
    assert isinstance(final.forward, LSTMState) and isinstance(final.backward, LSTMState)

    f_out, f_fin = reference_loop(fwd_cell, x, state.forward if state else fwd_cell.init_state(B, dtype=DT), lengths)
    b_out, b_fin = reference_loop(bwd_cell, x, state.backward if state else bwd_cell.init_state(B, dtype=DT), lengths,
                                  reverse=True)
    want = torch.cat([f_out, b_out], -1)
    assert out.shape == (T, B, 8)
    assert_close(out, want, "outputs")
    assert_close(final.forward, f_fin, "forward state")
    assert_close(final.backward, b_fin, "backward state")

    w = torch.randn_like(out)
    g_got = torch.autograd.grad((out * w).sum() + sum(f.sum() for f in leaves(final)), [x] + list(bi.parameters()))
    g_want = torch.autograd.grad((want * w).sum() + sum(f.sum() for f in leaves((f_fin, b_fin))),
                                 [x] + list(bi.parameters()))
    assert_close(list(g_got), list(g_want), "gradients")


def test_bidirectional_backward_starts_at_each_sequences_last_valid_step():
    bi = make_bi(merge="concat", cell=ElmanCell(I, 4, dtype=DT))
    cell = bi.backward_layer.cell
    x = torch.randn(T, B, I, dtype=DT)
    out, final = bi(x, lengths=LENGTHS)
    for b, L in enumerate(LENGTHS):
        if L == 0:
            assert torch.all(out[:, b] == 0) and torch.all(final.backward[b] == 0)
            continue
        h = torch.zeros(1, 4, dtype=DT)
        y, h = cell(x[L - 1, b:b + 1], h)  # the first backward step reads the last valid input
        torch.testing.assert_close(out[L - 1, b, 4:], y[0], **TOL)
        for t in range(L - 2, -1, -1):
            y, h = cell(x[t, b:b + 1], h)
        torch.testing.assert_close(out[0, b, 4:], y[0], **TOL)
        torch.testing.assert_close(final.backward[b], h[0], **TOL)
        assert torch.all(out[L:, b] == 0)


def test_bidirectional_merges():
    x = torch.randn(T, B, I, dtype=DT)
    cat_out, _ = make_bi("concat")(x, lengths=LENGTHS)
    f, b = cat_out[..., :4], cat_out[..., 4:]
    sum_out, sum_state = make_bi("sum")(x, lengths=LENGTHS)
    assert_close(sum_out, f + b, "sum")
    assert_close(make_bi("mean")(x, lengths=LENGTHS)[0], (f + b) / 2, "mean")
    seen = []

    def gated(fo, bo):
        seen.append((fo, bo))
        return fo * torch.sigmoid(bo)

    got, state = make_bi(gated)(x, lengths=LENGTHS)
    assert len(seen) == 1
    assert_close(list(seen[0]), [f, b], "callable receives (forward, backward)")
    assert_close(got, f * torch.sigmoid(b), "callable")
    assert_close(state, sum_state, "state does not depend on the merge")


def test_bidirectional_backward_has_its_own_weights():
    torch.manual_seed(0)
    layer = Recurrent(LSTMCell(I, 4, dtype=DT))
    before = [p.detach().clone() for p in layer.parameters()]
    bi = Bidirectional(layer)
    assert bi.forward_layer is layer
    for p, q in zip(before, layer.parameters()):
        assert torch.equal(p, q)  # building the backward copy leaves the forward weights alone
    fwd, bwd = list(bi.forward_layer.parameters()), list(bi.backward_layer.parameters())
    assert len(list(bi.parameters())) == 2 * len(fwd) == 8
    for (name, p), q in zip(bi.forward_layer.named_parameters(), bwd):
        assert p is not q and p.data_ptr() != q.data_ptr(), name
        assert p.shape == q.shape and not torch.equal(p, q), f"{name} was copied, not re-initialized"
    with torch.no_grad():
        bwd[0].add_(1.0)
    assert not torch.equal(fwd[0], bwd[0])
    assert bi.backward_layer.reverse and not layer.reverse


def test_bidirectional_batch_first_and_all_states():
    torch.manual_seed(0)
    tm = make_bi()
    bf = make_bi(batch_first=True)
    bf.load_state_dict(tm.state_dict())
    assert bf.batch_first and bf.backward_layer.batch_first
    x = torch.randn(T, B, I, dtype=DT)
    out_tm, fin_tm, every_tm = tm(x, lengths=LENGTHS, all_states=True)
    out_bf, fin_bf, every_bf = bf(x.transpose(0, 1), lengths=LENGTHS, all_states=True)
    assert_close(out_bf.transpose(0, 1), out_tm, "outputs")
    assert_close(fin_bf, fin_tm, "final states")
    assert isinstance(every_tm, BidirectionalState)
    assert_close(every_tm.forward, tm.forward_layer(x, lengths=LENGTHS, all_states=True)[2], "forward states")
    assert_close(every_tm.backward, tm.backward_layer(x, lengths=LENGTHS, all_states=True)[2], "backward states")
    assert_close([e.transpose(0, 1) for e in leaves(every_bf)], leaves(every_tm), "batch-first states")


def test_bidirectional_accepts_a_plain_pair_of_states():
    bi = make_bi()
    x = torch.randn(T, B, I, dtype=DT)
    s = bi.init_state(B, dtype=DT)
    s = BidirectionalState(LSTMState(*map(torch.randn_like, s.forward)), LSTMState(*map(torch.randn_like, s.backward)))
    assert_close(bi(x, (tuple(s.forward), tuple(s.backward)), lengths=LENGTHS), bi(x, s, lengths=LENGTHS))
    assert_close(bi(x, [s.forward, None], lengths=LENGTHS)[0],
                 bi(x, (s.forward, bi.backward_layer.init_state(B, dtype=DT)), lengths=LENGTHS)[0])


def test_bidirectional_errors():
    with pytest.raises(ValueError, match="Bidirectional: merge .*'max'"):
        make_bi("max")
    with pytest.raises(TypeError, match="Bidirectional: merge"):
        make_bi(42)
    layer = Recurrent(GRUCell(I, 4, dtype=DT))
    with pytest.raises(ValueError, match="Bidirectional: .*batch_first"):
        Bidirectional(layer, backward=Recurrent(GRUCell(I, 4, dtype=DT), batch_first=True, reverse=True))
    bi = Bidirectional(layer)
    x = torch.randn(T, B, I, dtype=DT)
    for bad in (torch.zeros(B, 4, dtype=DT), (None,), (None, None, None)):
        with pytest.raises(TypeError, match=r"Bidirectional\(Recurrent\(GRUCell\(3→4\)\)\): state"):
            bi(x, bad)


def test_bidirectional_with_an_explicit_backward_layer():
    torch.manual_seed(0)
    fwd = Recurrent(GRUCell(I, 4, dtype=DT))
    bwd = Recurrent(GRUCell(I, 4, dtype=DT), reverse=True)
    bi = Bidirectional(fwd, backward=bwd, merge="sum")
    assert bi.backward_layer is bwd
    x = torch.randn(T, B, I, dtype=DT)
    assert_close(bi(x, lengths=LENGTHS)[0], fwd(x, lengths=LENGTHS)[0] + bwd(x, lengths=LENGTHS)[0])


def test_bidirectional_of_a_stack_reads_the_whole_stack_backwards(reference_loop):
    torch.manual_seed(0)
    stack = Stack([Recurrent(LSTMCell(I, 4, dtype=DT)), Recurrent(GRUCell(4, 3, dtype=DT))])
    bi = Bidirectional(stack)
    back = bi.backward_layer
    assert isinstance(back, Stack) and all(layer.reverse for layer in back.layers)
    assert not any(layer.reverse for layer in stack.layers)
    x = torch.randn(T, B, I, dtype=DT)
    out, final = bi(x, lengths=LENGTHS)
    assert out.shape == (T, B, 6)
    assert isinstance(final, BidirectionalState) and len(final.forward) == 2 and len(final.backward) == 2

    f_out, f_fin = stack(x, lengths=LENGTHS)
    # backwards = reverse each sequence, run the backward weights forwards through both layers, reverse back
    first, second = back.layers[0].cell, back.layers[1].cell
    h1, s1 = reference_loop(first, flip_each(x, LENGTHS), first.init_state(B, dtype=DT), LENGTHS)
    h2, s2 = reference_loop(second, h1, second.init_state(B, dtype=DT), LENGTHS)
    assert_close(out, torch.cat([f_out, flip_each(h2, LENGTHS)], -1), "outputs")
    assert_close(final.forward, f_fin, "forward states")
    assert_close(final.backward, (s1, s2), "backward states")


def test_stack_of_bidirectionals(reference_loop):
    torch.manual_seed(0)
    bi1 = Bidirectional(Recurrent(LSTMCell(I, 4, dtype=DT)))
    bi2 = Bidirectional(Recurrent(GRUCell(8, 3, dtype=DT)), merge="sum")
    net = Stack([bi1, bi2], dropout=0.3).eval()
    x = torch.randn(T, B, I, dtype=DT, requires_grad=True)
    init = net.init_state(B, dtype=DT)
    assert isinstance(init, tuple) and all(isinstance(s, BidirectionalState) for s in init)
    init = (BidirectionalState(LSTMState(*map(torch.randn_like, init[0].forward)),
                               LSTMState(*map(torch.randn_like, init[0].backward))),
            BidirectionalState(torch.randn_like(init[1].forward), torch.randn_like(init[1].backward)))
    out, finals = net(x, init, lengths=LENGTHS)
    assert out.shape == (T, B, 3)

    o1, f1 = reference_loop(bi1.forward_layer.cell, x, init[0].forward, LENGTHS)
    r1, g1 = reference_loop(bi1.backward_layer.cell, x, init[0].backward, LENGTHS, reverse=True)
    mid = torch.cat([o1, r1], -1)
    o2, f2 = reference_loop(bi2.forward_layer.cell, mid, init[1].forward, LENGTHS)
    r2, g2 = reference_loop(bi2.backward_layer.cell, mid, init[1].backward, LENGTHS, reverse=True)
    assert_close(out, o2 + r2, "outputs")
    assert isinstance(finals[0], BidirectionalState) and isinstance(finals[1], BidirectionalState)
    assert_close(finals, ((f1, g1), (f2, g2)), "final states")
    assert torch.equal(finals[1].backward[1], init[1].backward[1])  # the empty sequence

    g_got = torch.autograd.grad(out.square().sum(), [x] + list(net.parameters()))
    g_want = torch.autograd.grad((o2 + r2).square().sum(), [x] + list(net.parameters()))
    assert_close(list(g_got), list(g_want), "gradients")
