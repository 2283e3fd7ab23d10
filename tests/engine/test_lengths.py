"""Variable lengths: ``check_lengths``, ``step_mask``, ``reverse_padded``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchcells.engine import check_lengths, reverse_padded, step_mask

OWNER = "Recurrent(LSTMCell(3→4))"


# ---------------------------------------------------------------- check_lengths: accepted forms
@pytest.mark.parametrize("lengths", [
    [3, 0, 5, 1], (3, 0, 5, 1),
    torch.tensor([3, 0, 5, 1]), torch.tensor([3, 0, 5, 1], dtype=torch.int32),
    torch.tensor([3, 0, 5, 1], dtype=torch.int16), torch.tensor([3, 0, 5, 1], dtype=torch.uint8),
], ids=["list", "tuple", "int64", "int32", "int16", "uint8"])
def test_accepts_integer_sequences_in_any_order(lengths):
    got = check_lengths(OWNER, lengths, 5, 4)
    assert isinstance(got, torch.Tensor)
    assert got.dtype == torch.int64 and got.device.type == "cpu" and got.shape == (4,)
    assert got.tolist() == [3, 0, 5, 1]


def test_accepts_numpy_integer_array():
    """Lengths often come from numpy (torch's pack_padded_sequence accepts them)."""
    got = check_lengths(OWNER, np.array([3, 0, 5, 1]), 5, 4)
    assert got is not None and got.tolist() == [3, 0, 5, 1]
    got = check_lengths(OWNER, [np.int64(2), np.int32(1)], 5, 2)
    assert got is not None and got.tolist() == [2, 1]


def test_does_not_modify_a_given_tensor():
    lengths = torch.tensor([2, 1], dtype=torch.int32)
    check_lengths(OWNER, lengths, 3, 2)
    assert lengths.dtype == torch.int32 and lengths.tolist() == [2, 1]


@pytest.mark.parametrize("lengths", [None, [5, 5, 5], (5, 5, 5), torch.tensor([5, 5, 5])],
                         ids=["none", "list", "tuple", "tensor"])
def test_all_full_or_none_means_nothing_to_mask(lengths):
    assert check_lengths(OWNER, lengths, 5, 3) is None


def test_zero_steps_and_empty_batch():
    assert check_lengths(OWNER, [0, 0], 0, 2) is None
    empty = check_lengths(OWNER, [], 4, 0)
    assert empty is None or empty.numel() == 0
    with pytest.raises(ValueError, match="<="):
        check_lengths(OWNER, [1, 0], 0, 2)


# ---------------------------------------------------------------- check_lengths: errors
@pytest.mark.parametrize("lengths, error, words", [
    ([3, 2], ValueError, "2 entries"),
    ([3, 2, 1, 0, 1], ValueError, "5 entries"),
    (torch.tensor([3, 2, 1]), ValueError, "3 entries"),
    ([3, -1, 2, 0], ValueError, ">= 0"),
    (torch.tensor([3, -2, 2, 0]), ValueError, ">= 0"),
    ([3, 6, 2, 0], ValueError, "<= the number of steps (5)"),
    (torch.tensor([3, 6, 2, 0]), ValueError, "<= the number of steps (5)"),
    (torch.tensor([3.0, 2.0, 1.0, 0.0]), TypeError, "float"),
    (torch.tensor([True, True, False, True]), TypeError, "bool"),
    (torch.tensor([[3, 2, 1, 0]]), ValueError, "1-D"),
    (torch.tensor(3), ValueError, "1-D"),
    ([3.0, 2, 1, 0], TypeError, "3.0"),
    ([3, True, 1, 0], TypeError, "True"),
    ([3, "2", 1, 0], TypeError, "'2'"),
    ([[3, 2], 1, 0, 1], TypeError, "ints"),
    ([3, None, 1, 0], TypeError, "None"),
    (4, TypeError, "int"),
    (3.5, TypeError, "float"),
], ids=["short", "long", "tensor-count", "negative", "tensor-negative", "too-long", "tensor-too-long",
        "float-tensor", "bool-tensor", "2d-tensor", "0d-tensor", "float-entry", "bool-entry", "str-entry",
        "nested-entry", "none-entry", "bare-int", "bare-float"])
def test_bad_lengths_raise_naming_the_owner(lengths, error, words):
    with pytest.raises(error) as e:
        check_lengths(OWNER, lengths, 5, 4)
    msg = str(e.value)
    assert msg.startswith(OWNER + ":"), msg
    assert "lengths" in msg and words in msg, msg


# ---------------------------------------------------------------- step_mask
def test_step_mask_marks_valid_steps():
    lengths = torch.tensor([3, 0, 5, 1])
    mask = step_mask(lengths, 5, torch.device("cpu"))
    assert mask.dtype == torch.bool and mask.shape == (5, 4)
    want = torch.tensor([[t < L for L in [3, 0, 5, 1]] for t in range(5)])
    assert torch.equal(mask, want)
    assert mask.sum(0).tolist() == [3, 0, 5, 1]
    assert step_mask(lengths, 0, torch.device("cpu")).shape == (0, 4)


# ---------------------------------------------------------------- reverse_padded
def flip_each(x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    out = x.clone()
    for b, L in enumerate(lengths):
        out[:L, b] = x[:L, b].flip(0)
    return out


@pytest.mark.parametrize("lengths", [[3, 0, 5, 1], [5, 5, 5, 5], [0, 0, 0, 0], [1, 2, 4, 5]],
                         ids=["mixed", "full", "empty", "sorted"])
@pytest.mark.parametrize("trailing", [(), (3,), (2, 3)], ids=["TB", "TBI", "TBCW"])
def test_reverse_padded_matches_per_sequence_flip(lengths, trailing):
    x = torch.randn(5, 4, *trailing, dtype=torch.float64)
    lens = torch.tensor(lengths)
    rev = reverse_padded(x, lens)
    assert torch.equal(rev, flip_each(x, lengths))
    assert torch.equal(reverse_padded(rev, lens), x)  # an involution
    for b, L in enumerate(lengths):  # padded steps stay where they are
        assert torch.equal(rev[L:, b], x[L:, b])


def test_reverse_padded_without_lengths_flips_time():
    x = torch.randn(4, 2, 3)
    assert torch.equal(reverse_padded(x, None), x.flip(0))
    assert torch.equal(reverse_padded(reverse_padded(x, None), None), x)


def test_reverse_padded_accepts_int32_lengths_and_passes_gradients():
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    lens = torch.tensor([2, 4, 0], dtype=torch.int32)
    w = torch.randn(4, 3, 2, dtype=torch.float64)
    (reverse_padded(x, lens) * w).sum().backward()
    assert torch.equal(x.grad, flip_each(w, [2, 4, 0]))  # the gradient is reversed the same way
