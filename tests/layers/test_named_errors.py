"""Library errors name the layer, the argument, what was expected and what came (issue 13, item 13)."""

import pytest
import torch
from torch import nn

from torchcells import Bidirectional, GRUCell, Recurrent, Stack


class NotAPair(GRUCell):
    def forward(self, x, state):
        return super().forward(x, state)[0]


class Widening(GRUCell):
    def forward(self, x, state):
        y, h = super().forward(x, state)
        return y, torch.cat([h, h], -1)


def _gru(**kw):
    return Recurrent(GRUCell(3, 4), **kw)


CASES = [
    ("huge length", lambda: _gru()(torch.randn(5, 2, 3), lengths=[2**70, 1]), ValueError,
     "Recurrent(GRUCell(3→4)): lengths should be <= the number of steps (5), got 1180591620717411303424"),
    ("huge negative length", lambda: _gru()(torch.randn(5, 2, 3), lengths=[-2**64, 1]), ValueError,
     "Recurrent(GRUCell(3→4)): lengths should be >= 0, got -18446744073709551616"),
    ("meta lengths", lambda: _gru()(torch.randn(5, 2, 3), lengths=torch.tensor([1, 2], device="meta")), ValueError,
     "Recurrent(GRUCell(3→4)): lengths should hold values (on the CPU or the input's device), got a tensor on the "
     "meta device"),
    ("non-pair, loop", lambda: Recurrent(NotAPair(3, 4), engine="loop")(torch.randn(5, 2, 3)), TypeError,
     "Recurrent(NotAPair(3→4)): the cell's forward should return a pair (y, state), got a tensor of shape (2, 4)"),
    ("non-pair, auto", lambda: Recurrent(NotAPair(3, 4))(torch.randn(5, 2, 3)), TypeError,
     "Recurrent(NotAPair(3→4)): the cell's forward should return a pair (y, state), got a tensor of shape (2, 4)"),
    ("widened state", lambda: Recurrent(Widening(3, 4), engine="loop")(torch.randn(5, 2, 3)), ValueError,
     "Recurrent(Widening(3→4)): the cell's forward returned a new state whose leaf 0 has shape (2, 8); "
     "expected (2, 4)"),
    ("Stack of a Linear", lambda: Stack([_gru(), nn.Linear(4, 4)]), TypeError,
     "Stack: layers[1] should be a recurrent layer (Recurrent, Bidirectional, Stack, or a module with "
     "forward(x, state, *, lengths, all_states)), got Linear"),
    ("merge returns a tuple", lambda: Bidirectional(_gru(), merge=lambda a, b: (a, b))(torch.randn(5, 2, 3)),
     TypeError, "Bidirectional(Recurrent(GRUCell(3→4))): merge should return a tensor of shape (5, 2) + "
     "(features,) from the two directions' outputs (5, 2, 4), got tuple"),
    ("merge drops the batch", lambda: Bidirectional(_gru(), merge=lambda a, b: a.sum(1))(torch.randn(5, 2, 3)),
     ValueError, "merge should return a tensor of shape (5, 2) + (features,) from the two directions' outputs "
     "(5, 2, 4), got a tensor of shape (5, 4)"),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_error_names_the_layer_and_says_what_came(call, error, message):
    with pytest.raises(error) as caught:
        call()
    assert message in str(caught.value)


def test_a_stack_of_recurrent_layers_is_still_accepted():
    out, _ = Stack([_gru(), Bidirectional(Recurrent(GRUCell(4, 4)))])(torch.randn(5, 2, 3))
    assert out.shape == (5, 2, 8)
