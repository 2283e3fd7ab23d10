"""The drop-in ``torchcells.LSTM/GRU/RNN`` against ``torch.nn.LSTM/GRU/RNN``.

Table-driven: one :class:`ModelSpec` row per kind of model. Every check copies
torch's weights in through ``load_state_dict(torch_module.state_dict())`` and then
compares outputs, final states and gradients (input, ``hx`` and every parameter by
its torch name) -- float64 tightly, float32 at float32 tolerances -- over a grid of
layers, directions, layouts, biases, initial states, unbatched input, packed input
and our ``lengths=`` keyword. Then: same-seed initialization, the torch.nn attribute
surface (``weight_ih_l0``, ``all_weights``, ``flatten_parameters``), dropout,
state-dict keys when nested and when incomplete, named errors, and zero sizes.
"""

from __future__ import annotations

import itertools
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import torchcells as tc

I, H, P, T, B = 3, 4, 2, 5, 3  # input features, hidden, projection, steps, batch
UNSORTED_LENGTHS = [3, 5, 2]
SORTED_LENGTHS = [5, 3, 2]


@dataclass(frozen=True)
class ModelSpec:
    id: str
    ours: type
    theirs: type
    options: tuple[tuple[str, Any], ...] = ()  # constructor keywords of this row (proj_size, nonlinearity)

    def __str__(self) -> str:
        return self.id

    @property
    def is_lstm(self) -> bool:
        return self.theirs is nn.LSTM

    @property
    def out_size(self) -> int:
        return dict(self.options).get("proj_size", 0) or H

    @property
    def name(self) -> str:
        """How the module names itself in error messages."""
        return f"{self.ours.__name__}({I}, {H})"

    def state_sizes(self) -> tuple[int, ...]:
        return (self.out_size, H) if self.is_lstm else (H,)

    def build(self, *, dtype=torch.float64, seed: int = 0, **kw) -> tuple[nn.Module, nn.Module]:
        """``(ours, theirs)`` with torch's weights loaded into ours."""
        kw = {**dict(self.options), **kw}
        torch.manual_seed(seed)
        theirs = self.theirs(I, H, dtype=dtype, **kw)
        ours = self.ours(I, H, dtype=dtype, **kw)
        result = ours.load_state_dict(theirs.state_dict())
        assert not result.missing_keys and not result.unexpected_keys
        return ours, theirs


SPECS = [
    ModelSpec("lstm", tc.LSTM, nn.LSTM),
    ModelSpec("lstm-proj", tc.LSTM, nn.LSTM, (("proj_size", P),)),
    ModelSpec("gru", tc.GRU, nn.GRU),
    ModelSpec("rnn-tanh", tc.RNN, nn.RNN),
    ModelSpec("rnn-relu", tc.RNN, nn.RNN, (("nonlinearity", "relu"),)),
]
spec_param = pytest.mark.parametrize("spec", SPECS, ids=str)


# --------------------------------------------------------------------------------------
# The parity driver
# --------------------------------------------------------------------------------------
def random_hx(spec: ModelSpec, num_layers: int, bidirectional: bool, batch: Optional[int],
              dtype: torch.dtype, gen: torch.Generator) -> list[Tensor]:
    """Leaves of ``hx`` (``[h_0]`` or ``[h_0, c_0]``), unbatched if ``batch`` is None."""
    entries = num_layers * (2 if bidirectional else 1)
    return [torch.randn((entries, size) if batch is None else (entries, batch, size), dtype=dtype, generator=gen)
            for size in spec.state_sizes()]


def as_hx(spec: ModelSpec, leaves: Optional[list[Tensor]]):
    if leaves is None:
        return None
    return tuple(leaves) if spec.is_lstm else leaves[0]


def hn_leaves(hn) -> tuple[Tensor, ...]:
    return tuple(hn) if isinstance(hn, tuple) else (hn,)


def leaf(t: Tensor) -> Tensor:
    return t.detach().clone().requires_grad_(True)


def plain_call(module, x, hx):
    out, hn = module(x, hx)
    return out, hn_leaves(hn), out


Call = Callable[[nn.Module, Tensor, Any], tuple[Tensor, tuple[Tensor, ...], Any]]


def assert_parity(spec: ModelSpec, ours: nn.Module, theirs: nn.Module, x: Tensor, hx: Optional[list[Tensor]],
                  close, *, call_ours: Call = plain_call, call_theirs: Call = plain_call, seed: int = 0):
    """Run both, compare outputs, final states and all gradients; return both raw outputs.

    ``call_*(module, x_leaf, hx) -> (output tensor, final-state leaves, raw output)``.
    """
    dtype = x.dtype
    x_o, x_t = leaf(x), leaf(x)
    hx_o = None if hx is None else [leaf(h) for h in hx]
    hx_t = None if hx is None else [leaf(h) for h in hx]
    out_o, hn_o, raw_o = call_ours(ours, x_o, as_hx(spec, hx_o))
    out_t, hn_t, raw_t = call_theirs(theirs, x_t, as_hx(spec, hx_t))

    close(out_o, out_t, what="output")
    close(hn_o, hn_t, what="h_n/c_n")

    gen = torch.Generator().manual_seed(seed + 100)
    cots = [torch.randn(t.shape, dtype=dtype, generator=gen) for t in (out_t, *hn_t)]
    sum((a * g).sum() for a, g in zip((out_o, *hn_o), cots)).backward()
    sum((a * g).sum() for a, g in zip((out_t, *hn_t), cots)).backward()
    close(x_o.grad, x_t.grad, what="d input")
    if hx is not None:
        close([h.grad for h in hx_o], [h.grad for h in hx_t], what="d hx")
    ours_by_torch_name = ours.state_dict(keep_vars=True)
    for name, p in theirs.named_parameters():
        assert p.grad is not None, name
        assert ours_by_torch_name[name] is getattr(ours, name)
        close(ours_by_torch_name[name].grad, p.grad, what=f"d {name}")
    return raw_o, raw_t


# --------------------------------------------------------------------------------------
# Parity over the grid
# --------------------------------------------------------------------------------------
def _grid(dtype, layers, bidirectional, batch_first, bias, with_hx):
    return [pytest.param(s, dtype, *combo, id=f"{s.id}-{str(dtype)[6:]}-L{combo[0]}"
                         f"{'-bi' if combo[1] else ''}{'-bf' if combo[2] else ''}"
                         f"{'' if combo[3] else '-nobias'}{'-hx' if combo[4] else ''}")
            for s in SPECS for combo in itertools.product(layers, bidirectional, batch_first, bias, with_hx)]


GRID = [row for dtype in (torch.float64, torch.float32)
        for row in _grid(dtype, [1, 2], [False, True], [False, True], [True, False], [False, True])]


@pytest.mark.parametrize("spec, dtype, num_layers, bidirectional, batch_first, bias, with_hx", GRID)
def test_matches_torch(spec, dtype, num_layers, bidirectional, batch_first, bias, with_hx, close):
    ours, theirs = spec.build(dtype=dtype, num_layers=num_layers, bidirectional=bidirectional,
                              batch_first=batch_first, bias=bias)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=dtype, generator=gen)
    hx = random_hx(spec, num_layers, bidirectional, B, dtype, gen) if with_hx else None
    out, _ = assert_parity(spec, ours, theirs, x, hx, close)
    d = 2 if bidirectional else 1
    assert out.shape == ((B, T, d * spec.out_size) if batch_first else (T, B, d * spec.out_size))


@spec_param
def test_three_layers_bidirectional(spec, close):
    ours, theirs = spec.build(num_layers=3, bidirectional=True)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(T, B, I, dtype=torch.float64, generator=gen)
    assert_parity(spec, ours, theirs, x, random_hx(spec, 3, True, B, torch.float64, gen), close)


@spec_param
@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, True)], ids=["L1", "L2-bi"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["zero-hx", "hx"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_unbatched_matches_torch(spec, num_layers, bidirectional, with_hx, dtype, close):
    ours, theirs = spec.build(dtype=dtype, num_layers=num_layers, bidirectional=bidirectional)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(T, I, dtype=dtype, generator=gen)
    hx = random_hx(spec, num_layers, bidirectional, None, dtype, gen) if with_hx else None
    out, _ = assert_parity(spec, ours, theirs, x, hx, close)
    assert out.shape == (T, (2 if bidirectional else 1) * spec.out_size)


# --------------------------------------------------------------------------------------
# PackedSequence and lengths=
# --------------------------------------------------------------------------------------
def _packed_grid():
    rows = []
    for s, enforce_sorted, bidirectional, num_layers, with_hx in itertools.product(
            SPECS, [False, True], [False, True], [1, 2], [False, True]):
        rows.append(pytest.param(s, torch.float64, enforce_sorted, bidirectional, num_layers, with_hx, False,
                                 id=f"{s.id}-{'sorted' if enforce_sorted else 'unsorted'}-L{num_layers}"
                                    f"{'-bi' if bidirectional else ''}{'-hx' if with_hx else ''}"))
    for s in SPECS:
        rows.append(pytest.param(s, torch.float32, False, True, 2, True, True, id=f"{s.id}-float32-unsorted-bf"))
    return rows


@pytest.mark.parametrize("spec, dtype, enforce_sorted, bidirectional, num_layers, with_hx, batch_first",
                         _packed_grid())
def test_packed_sequence_matches_torch(spec, dtype, enforce_sorted, bidirectional, num_layers, with_hx,
                                       batch_first, close):
    ours, theirs = spec.build(dtype=dtype, num_layers=num_layers, bidirectional=bidirectional,
                              batch_first=batch_first)
    gen = torch.Generator().manual_seed(4)
    lengths = torch.tensor(SORTED_LENGTHS if enforce_sorted else UNSORTED_LENGTHS)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=dtype, generator=gen)
    hx = random_hx(spec, num_layers, bidirectional, B, dtype, gen) if with_hx else None

    def call(module, x_leaf, hx_):
        packed = pack_padded_sequence(x_leaf, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)
        out, hn = module(packed, hx_)
        assert isinstance(out, PackedSequence)
        return out.data, hn_leaves(hn), out

    out_o, out_t = assert_parity(spec, ours, theirs, x, hx, close, call_ours=call, call_theirs=call)
    assert torch.equal(out_o.batch_sizes, out_t.batch_sizes)
    for field in ("sorted_indices", "unsorted_indices"):
        a, b = getattr(out_o, field), getattr(out_t, field)
        assert (a is None and b is None) or torch.equal(a, b), field
    if enforce_sorted:
        assert out_o.sorted_indices is None
    padded, lens = pad_packed_sequence(out_o, batch_first=batch_first)
    assert lens.tolist() == lengths.tolist()


@spec_param
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tb", "bf"])
@pytest.mark.parametrize("num_layers, with_hx", [(1, False), (2, True)], ids=["L1", "L2-hx"])
@pytest.mark.parametrize("lengths_as", ["tensor", "list"])
def test_lengths_keyword_matches_torch_on_packed_input(spec, bidirectional, batch_first, num_layers, with_hx,
                                                       lengths_as, close):
    """``ours(padded, lengths=L)`` is torch's pack -> run -> pad_packed (zeros past each length)."""
    ours, theirs = spec.build(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=torch.float64, generator=gen)
    # Garbage in the padding: it must influence nothing.
    for b, n in enumerate(UNSORTED_LENGTHS):
        if batch_first:
            x[b, n:] = 1e3
        else:
            x[n:, b] = 1e3
    hx = random_hx(spec, num_layers, bidirectional, B, torch.float64, gen) if with_hx else None
    lengths = torch.tensor(UNSORTED_LENGTHS) if lengths_as == "tensor" else list(UNSORTED_LENGTHS)

    def call_ours(module, x_leaf, hx_):
        out, hn = module(x_leaf, hx_, lengths=lengths)
        return out, hn_leaves(hn), out

    def call_theirs(module, x_leaf, hx_):
        packed = pack_padded_sequence(x_leaf, torch.tensor(UNSORTED_LENGTHS), batch_first=batch_first,
                                      enforce_sorted=False)
        out, hn = module(packed, hx_)
        padded, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
        return padded, hn_leaves(hn), padded

    out, _ = assert_parity(spec, ours, theirs, x, hx, close, call_ours=call_ours, call_theirs=call_theirs)
    for b, n in enumerate(UNSORTED_LENGTHS):
        tail = out[b, n:] if batch_first else out[n:, b]
        assert not tail.any(), "outputs past a sequence's length should be exactly zero"


# --------------------------------------------------------------------------------------
# Initialization and the torch.nn attribute surface
# --------------------------------------------------------------------------------------
@spec_param
@pytest.mark.parametrize("num_layers, bidirectional, bias", [(1, False, True), (2, True, True), (2, True, False)],
                         ids=["L1", "L2-bi", "L2-bi-nobias"])
def test_same_seed_same_parameters_as_torch(spec, num_layers, bidirectional, bias):
    kw = {**dict(spec.options), "num_layers": num_layers, "bidirectional": bidirectional, "bias": bias}
    torch.manual_seed(0)
    theirs = spec.theirs(I, H, **kw)
    after_theirs = torch.rand(8)
    torch.manual_seed(0)
    ours = spec.ours(I, H, **kw)
    after_ours = torch.rand(8)
    sd_t, sd_o = theirs.state_dict(), ours.state_dict()
    assert list(sd_o) == list(sd_t)
    for k in sd_t:
        assert sd_o[k].shape == sd_t[k].shape, k
        assert torch.equal(sd_o[k], sd_t[k]), k
    assert torch.equal(after_ours, after_theirs), "construction should consume the same random numbers"


@spec_param
def test_torch_names_are_attributes_and_flat_weights(spec):
    ours, theirs = spec.build(num_layers=2, bidirectional=True)
    sd = ours.state_dict(keep_vars=True)
    assert list(sd) == list(theirs.state_dict())
    assert ours._flat_weights_names == theirs._flat_weights_names
    for name in theirs._flat_weights_names:
        p = getattr(ours, name)
        assert isinstance(p, nn.Parameter) and p is sd[name]
    assert [p for p in ours._flat_weights] == [sd[n] for n in theirs._flat_weights_names]
    # Every parameter of ours is reachable by exactly one torch name.
    assert {id(p) for p in ours.parameters()} == {id(p) for p in sd.values()}
    assert len(list(ours.parameters())) == len(sd)
    with pytest.raises(AttributeError):
        ours.weight_ih_l7


@spec_param
def test_all_weights_match_torch(spec):
    ours, theirs = spec.build(num_layers=2, bidirectional=True)
    ours_w, theirs_w = ours.all_weights, theirs.all_weights
    assert len(ours_w) == len(theirs_w) == 4
    assert [[tuple(p.shape) for p in group] for group in ours_w] == \
        [[tuple(p.shape) for p in group] for group in theirs_w]
    for group_o, group_t in zip(ours_w, theirs_w):
        for p_o, p_t in zip(group_o, group_t):
            assert isinstance(p_o, nn.Parameter)
            assert torch.equal(p_o, p_t)
    flat = [p for group in ours_w for p in group]
    assert [id(p) for p in flat] == [id(getattr(ours, n)) for n in theirs._flat_weights_names]


@spec_param
def test_flatten_parameters_is_harmless(spec, close):
    ours, _ = spec.build(num_layers=2)
    x = torch.randn(T, B, I, dtype=torch.float64)
    before, _ = ours(x)
    assert ours.flatten_parameters() is None
    after, _ = ours(x)
    close(after, before)


@spec_param
def test_repr_mentions_sizes_and_options(spec):
    ours, theirs = spec.build(num_layers=2, bidirectional=True, bias=False, batch_first=True)
    text = repr(ours)
    assert text.startswith(f"{spec.ours.__name__}(")
    extra = ours.extra_repr()
    assert extra.startswith(f"{I}, {H}")
    for option in ("num_layers=2", "bias=False", "batch_first=True", "bidirectional=True"):
        assert option in extra
    for key, value in spec.options:
        assert f"{key}={value!r}" in extra
    plain = spec.ours(I, H)
    assert plain.extra_repr() == f"{I}, {H}" == spec.theirs(I, H).extra_repr()


@spec_param
@pytest.mark.parametrize("convert", ["double", "to"])
def test_double_keeps_working_and_torch_names(spec, convert, close):
    ours, theirs = spec.build(dtype=torch.float32, num_layers=2, bidirectional=True)
    ours = ours.double() if convert == "double" else ours.to(torch.float64)
    theirs = theirs.double()
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    assert ours.weight_ih_l0.dtype == torch.float64
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert all(v.dtype == torch.float64 for v in ours.state_dict().values())
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(T, B, I, dtype=torch.float64, generator=gen)
    assert_parity(spec, ours, theirs, x, random_hx(spec, 2, True, B, torch.float64, gen), close)
    with pytest.raises(TypeError, match=re.escape(spec.name)):
        ours(x.float())


@spec_param
def test_state_dict_loads_into_torch(spec, close):
    """Ours -> torch works as well as torch -> ours."""
    kw = {**dict(spec.options), "num_layers": 2, "bidirectional": True}
    ours = spec.ours(I, H, dtype=torch.float64, **kw)
    theirs = spec.theirs(I, H, dtype=torch.float64, **kw)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    out_o, hn_o = ours(x)
    out_t, hn_t = theirs(x)
    close(out_o, out_t)
    close(hn_leaves(hn_o), hn_leaves(hn_t))


class _Parent(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.embed = nn.Linear(I, I, dtype=torch.float64)
        self.rnn = rnn
        self.head = nn.Linear(2 * rnn.hidden_size if rnn.proj_size == 0 else 2 * rnn.proj_size, 2,
                              dtype=torch.float64)

    def forward(self, x):
        out, _ = self.rnn(self.embed(x))
        return self.head(out)


@spec_param
def test_nested_in_a_parent_module(spec, close):
    kw = {**dict(spec.options), "num_layers": 2, "bidirectional": True, "dtype": torch.float64}
    torch.manual_seed(0)
    theirs = _Parent(spec.theirs(I, H, **kw))
    ours = _Parent(spec.ours(I, H, **kw))
    keys = list(ours.state_dict())
    assert keys == list(theirs.state_dict())
    assert "rnn.weight_ih_l0" in keys and "rnn.weight_hh_l1_reverse" in keys
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    close(ours(x), theirs(x))
    # And back: torch's parent loads ours.
    theirs2 = _Parent(spec.theirs(I, H, **kw))
    theirs2.load_state_dict(ours.state_dict())
    close(theirs2(x), theirs(x))


@spec_param
@pytest.mark.parametrize("nested", [False, True], ids=["top", "nested"])
def test_missing_and_unexpected_keys_use_torch_names(spec, nested):
    kw = {**dict(spec.options), "num_layers": 2, "bidirectional": True}
    ours = spec.ours(I, H, **kw)
    theirs = spec.theirs(I, H, **kw)
    prefix = ""
    if nested:
        ours, theirs, prefix = _Parent(ours.double()), _Parent(theirs.double()), "rnn."
    sd = theirs.state_dict()
    missing = f"{prefix}weight_hh_l1_reverse"
    del sd[missing]
    with pytest.raises(RuntimeError, match=rf'Missing key\(s\) in state_dict: "{re.escape(missing)}"') as info:
        ours.load_state_dict(sd)
    assert "stack." not in str(info.value) and ".cell." not in str(info.value)
    result = ours.load_state_dict(sd, strict=False)
    assert result.missing_keys == [missing] and result.unexpected_keys == []

    sd = theirs.state_dict()
    sd[f"{prefix}weight_ih_l9"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=rf'Unexpected key\(s\) in state_dict: "{re.escape(prefix)}weight_ih_l9"'):
        ours.load_state_dict(sd)


@spec_param
def test_wrong_shape_in_state_dict_names_the_torch_key(spec):
    ours = spec.ours(I, H, **dict(spec.options))
    sd = spec.theirs(I, H, **dict(spec.options)).state_dict()
    sd["weight_hh_l0"] = torch.zeros(1, 1)
    with pytest.raises(RuntimeError, match=r"size mismatch for weight_hh_l0"):
        ours.load_state_dict(sd)


# --------------------------------------------------------------------------------------
# Dropout
# --------------------------------------------------------------------------------------
@spec_param
def test_dropout_in_eval_mode_matches_torch(spec, close):
    ours, theirs = spec.build(num_layers=2, dropout=0.5)
    ours.eval(), theirs.eval()
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(T, B, I, dtype=torch.float64, generator=gen)
    assert_parity(spec, ours, theirs, x, None, close)


@spec_param
def test_dropout_in_train_mode_is_active_between_layers(spec):
    ours, _ = spec.build(num_layers=2, dropout=0.5)
    ours.train()
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.manual_seed(1)
    first, _ = ours(x)
    second, _ = ours(x)
    assert not torch.equal(first, second), "dropout=0.5 in training should make two calls differ"
    torch.manual_seed(1)
    replay, _ = ours(x)
    assert torch.equal(replay, first), "the same seed should give the same dropout masks"
    ours.eval()
    e1, _ = ours(x)
    e2, _ = ours(x)
    assert torch.equal(e1, e2)


@spec_param
def test_no_dropout_in_train_mode_is_deterministic(spec, close):
    ours, theirs = spec.build(num_layers=2, dropout=0.0)
    ours.train(), theirs.train()
    x = torch.randn(T, B, I, dtype=torch.float64)
    first, _ = ours(x)
    second, _ = ours(x)
    assert torch.equal(first, second)
    close(first, theirs(x)[0])


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="dropout"):
        nn.LSTM(I, H, dropout=0.5)
    with pytest.warns(UserWarning, match=r"LSTM: dropout=0\.5.*num_layers=1"):
        tc.LSTM(I, H, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tc.LSTM(I, H, num_layers=2, dropout=0.5)


# --------------------------------------------------------------------------------------
# Constructor errors
# --------------------------------------------------------------------------------------
CONSTRUCTOR_ERRORS = [
    pytest.param(tc.LSTM, nn.LSTM, (0, 4), {}, "input_size", id="lstm-I=0"),
    pytest.param(tc.GRU, nn.GRU, (3, 0), {}, "hidden_size", id="gru-H=0"),
    pytest.param(tc.LSTM, nn.LSTM, (3, 0), {}, "hidden_size", id="lstm-H=0"),
    pytest.param(tc.RNN, nn.RNN, (3, 4), {"num_layers": 0}, "num_layers", id="rnn-L=0"),
    pytest.param(tc.GRU, nn.GRU, (3, 4), {"dropout": 1.5}, "dropout", id="gru-dropout>1"),
    pytest.param(tc.LSTM, nn.LSTM, (3, 4), {"dropout": -0.1}, "dropout", id="lstm-dropout<0"),
    pytest.param(tc.LSTM, nn.LSTM, (3, 4), {"proj_size": 4}, "proj_size", id="lstm-proj=H"),
    pytest.param(tc.LSTM, nn.LSTM, (3, 4), {"proj_size": -1}, "proj_size", id="lstm-proj<0"),
    pytest.param(tc.RNN, nn.RNN, (3, 4), {"nonlinearity": "sigmoid"}, "nonlinearity", id="rnn-nonlinearity"),
]


@pytest.mark.parametrize("ours, theirs, args, kwargs, arg", CONSTRUCTOR_ERRORS)
def test_constructor_errors_like_torch(ours, theirs, args, kwargs, arg):
    with pytest.raises(ValueError):
        theirs(*args, **kwargs)
    with pytest.raises(ValueError, match=rf"^{ours.__name__}: {arg} "):
        ours(*args, **kwargs)


@pytest.mark.parametrize("kwargs, arg", [({"hidden_size": 2.5}, "hidden_size"), ({"num_layers": 1.5}, "num_layers"),
                                         ({"proj_size": 1.5}, "proj_size"), ({"dropout": "a"}, "dropout")],
                         ids=["H-float", "L-float", "proj-float", "dropout-str"])
def test_constructor_rejects_wrong_types_by_name(kwargs, arg):
    args = {"input_size": 3, "hidden_size": 4, **kwargs}
    with pytest.raises((TypeError, ValueError), match=rf"^LSTM: {arg} "):
        tc.LSTM(**args)


# --------------------------------------------------------------------------------------
# Bad input to forward: named errors
# --------------------------------------------------------------------------------------
def _bad_calls(spec: ModelSpec):
    """(call(module), error, regex after the module's name) for ``num_layers=1`` unidirectional modules."""
    out, hid = spec.state_sizes()[0], H
    good_h = lambda b=B: torch.zeros(1, b, out)  # noqa: E731
    good_c = lambda b=B: torch.zeros(1, b, hid)  # noqa: E731
    if spec.is_lstm:
        def hx_of(h, c=None):
            return (h, good_c() if c is None else c)
    else:
        def hx_of(h, c=None):
            return h
    x = lambda: torch.randn(T, B, I)  # noqa: E731
    cases = [
        ("features", lambda m: m(torch.randn(T, B, I + 4)), ValueError, rf"input has {I + 4} features.*expected {I}"),
        ("features-unbatched", lambda m: m(torch.randn(T, I + 4)), ValueError, rf"input has {I + 4} features"),
        ("rank-4", lambda m: m(torch.randn(T, B, I, 1)), ValueError, r"input should have 3 or 2 dimensions.*got 4"),
        ("rank-1", lambda m: m(torch.randn(I)), ValueError, r"input should have 3 or 2 dimensions.*got 1"),
        ("integer", lambda m: m(torch.ones(T, B, I, dtype=torch.int64)), TypeError, r"input has dtype torch\.int64"),
        ("not-a-tensor", lambda m: m([[0.0] * I] * T), TypeError, r"input should be a tensor"),
        ("dtype-mismatch", lambda m: m(torch.randn(T, B, I, dtype=torch.float64)), TypeError,
         r"input has dtype torch\.float64 but the weights are torch\.float32"),
        ("h0-batch", lambda m: m(x(), hx_of(good_h(B + 1))), ValueError, r"h_0 should have shape \(1, 3, \d\)"),
        ("h0-size", lambda m: m(x(), hx_of(torch.zeros(1, B, out + 1))), ValueError, r"h_0 should have shape"),
        ("h0-layers", lambda m: m(x(), hx_of(torch.zeros(2, B, out))), ValueError, r"h_0 should have shape"),
        ("h0-dtype", lambda m: m(x(), hx_of(good_h().double())), TypeError, r"h_0 has dtype torch\.float64"),
        ("hx-unbatched-for-batched", lambda m: m(x(), hx_of(torch.zeros(1, out), torch.zeros(1, hid))),
         ValueError, r"h_0 should have shape \(1, 3, \d\)"),
        ("hx-batched-for-unbatched", lambda m: m(torch.randn(T, I), hx_of(good_h(), good_c())), ValueError,
         r"h_0 should have shape \(1, \d\) .*unbatched"),
        ("lengths-count", lambda m: m(x(), lengths=[1, 2]), ValueError, r"lengths"),
        ("lengths-too-long", lambda m: m(x(), lengths=[T + 1, 1, 1]), ValueError, r"lengths"),
        ("lengths-float", lambda m: m(x(), lengths=torch.tensor([1.0, 2.0, 3.0])), TypeError, r"lengths"),
        ("lengths-unbatched", lambda m: m(torch.randn(T, I), lengths=[T]), ValueError, r"lengths"),
        ("lengths-and-packed", lambda m: m(pack_padded_sequence(x(), [T, 2, 1]), lengths=[T, 2, 1]), ValueError,
         r"lengths"),
    ]
    if spec.is_lstm:
        cases += [
            ("hx-bare-tensor", lambda m: m(x(), good_h()), TypeError, r"hx should be a tuple \(h_0, c_0\)"),
            ("hx-one-tuple", lambda m: m(x(), (good_h(),)), TypeError, r"hx should be a tuple \(h_0, c_0\)"),
            ("c0-size", lambda m: m(x(), (good_h(), torch.zeros(1, B, hid + 1))), ValueError,
             r"c_0 should have shape"),
            ("c0-not-tensor", lambda m: m(x(), (good_h(), None)), TypeError, r"c_0 should be a tensor"),
        ]
    else:
        cases += [("hx-tuple", lambda m: m(x(), (good_h(),)), TypeError, r"hx should be a tensor h_0")]
    return [pytest.param(spec, *c[1:], id=f"{spec.id}-{c[0]}") for c in cases]


@pytest.mark.parametrize("spec, call, error, problem", [p for s in SPECS for p in _bad_calls(s)])
def test_bad_input_names_the_module_and_the_argument(spec, call, error, problem):
    module = spec.ours(I, H, **dict(spec.options))
    with pytest.raises(error, match=rf"^{re.escape(spec.name)}: .*{problem}"):
        call(module)


# --------------------------------------------------------------------------------------
# Zero sizes
# --------------------------------------------------------------------------------------
@spec_param
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tb", "bf"])
def test_empty_batch_like_torch(spec, bidirectional, batch_first):
    ours, theirs = spec.build(num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
    x = torch.randn((0, T, I) if batch_first else (T, 0, I), dtype=torch.float64)
    out_o, hn_o = ours(x)
    out_t, hn_t = theirs(x)
    assert out_o.shape == out_t.shape
    assert [h.shape for h in hn_leaves(hn_o)] == [h.shape for h in hn_leaves(hn_t)]
    assert out_o.numel() == 0 and out_o.dtype == torch.float64


@spec_param
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tb", "bf"])
def test_zero_steps_return_empty_outputs_and_the_initial_state(spec, bidirectional, batch_first):
    """A documented departure: torch.nn raises on T = 0; we return the initial state."""
    ours, _ = spec.build(num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
    d = 2 if bidirectional else 1
    x = torch.randn((B, 0, I) if batch_first else (0, B, I), dtype=torch.float64)
    out, hn = ours(x)
    assert out.shape == ((B, 0, d * spec.out_size) if batch_first else (0, B, d * spec.out_size))
    want = [(2 * d, B, size) for size in spec.state_sizes()]
    assert [tuple(h.shape) for h in hn_leaves(hn)] == want
    assert all(not h.any() for h in hn_leaves(hn))

    gen = torch.Generator().manual_seed(8)
    hx = random_hx(spec, 2, bidirectional, B, torch.float64, gen)
    _, hn = ours(x, as_hx(spec, hx))
    for got, given in zip(hn_leaves(hn), hx):
        assert torch.equal(got, given)

    out, hn = ours(torch.randn(0, I, dtype=torch.float64))  # unbatched, zero steps
    assert out.shape == (0, d * spec.out_size)
    assert [tuple(h.shape) for h in hn_leaves(hn)] == [(2 * d, size) for size in spec.state_sizes()]


# --------------------------------------------------------------------------------------
# Every engine path of the composed pieces matches torch.nn (the default may use torch's kernel)
# --------------------------------------------------------------------------------------
@spec_param
@pytest.mark.parametrize("engine", ["loop", "fused"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_generic_engines_match_torch(spec, engine, packed, close):
    ours, theirs = spec.build(num_layers=2, bidirectional=True)
    for module in ours.modules():
        if isinstance(module, tc.Recurrent):
            module.engine = engine
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(T, B, I, dtype=torch.float64, generator=gen)
    hx = random_hx(spec, 2, True, B, torch.float64, gen)
    lengths = torch.tensor(UNSORTED_LENGTHS)

    def call(module, x_leaf, hx_):
        if not packed:
            out, hn = module(x_leaf, hx_)
            return out, hn_leaves(hn), out
        out, hn = module(pack_padded_sequence(x_leaf, lengths, enforce_sorted=False), hx_)
        return out.data, hn_leaves(hn), out

    assert_parity(spec, ours, theirs, x, hx, close, call_ours=call, call_theirs=call)
    layer = ours.stack.layers[0].forward_layer
    assert layer.engine == engine
