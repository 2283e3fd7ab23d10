"""The fused engine's derivation is generic in the batch size: one trace serves every ``B >= 2``
(a call at a new ``B`` costs a specialization, not a trace), and it still equals the loop at every
``B``, on both executors, gradients included. A cell whose step branches on ``B`` is traced per ``B``."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from fixture_cells import TwoWidthCell, UserLSTMCell

import torchcells as tc
from torchcells.engine import derive
from torchcells.engine.native import available as native_library_available

T, I = 5, 3
BATCHES = (4, 1, 3, 4, 7)


class BatchBranchCell(tc.Cell):
    """A step whose Python branches on the batch size: odd batches take another equation."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.lin = torch.nn.Linear(input_size + hidden_size, hidden_size)

    def forward(self, x, h):
        h = torch.tanh(self.lin(torch.cat([x, h], -1)))
        if x.shape[0] % 2:
            h = 0.5 * h
        return h, h


# H equals a batch size of BATCHES in every row (4, 3, 7): a symbol must not stand for both
CELLS = {
    "user-lstm": lambda: UserLSTMCell(I, 4),
    "gru": lambda: tc.GRUCell(I, 3),
    "two-width": lambda: TwoWidthCell(I, 7),
}


def _executors(native: bool, monkeypatch) -> None:
    if native and not native_library_available():
        pytest.skip("the native runtime is not built here")
    if not native:
        monkeypatch.setenv("TORCHCELLS_NATIVE", "0")


def _check_equal_to_loop(cell, batch: int, masked: bool) -> None:
    torch.manual_seed(batch)
    x = torch.randn(T, batch, I, dtype=torch.float64, requires_grad=True)
    kwargs = {"lengths": torch.randint(1, T + 1, (batch,))} if masked else {}
    outs = {}
    for engine in ("fused", "loop"):
        y, state = tc.Recurrent(cell, engine=engine)(x, **kwargs)
        leaves = torch.utils._pytree.tree_leaves(state)
        loss = y.pow(2).sum() + sum(leaf.sum() for leaf in leaves)
        outs[engine] = [y, *leaves, *torch.autograd.grad(loss, [x, *cell.parameters()])]
    for got, want in zip(outs["fused"], outs["loop"]):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def _count_derivations(monkeypatch) -> list[bool]:
    """Each derivation's ``batch_generic`` flag, in order (a fresh cache)."""
    monkeypatch.setattr(derive, "_CACHE", OrderedDict())
    calls: list[bool] = []
    build = derive._build

    def counted(*args, batch_generic=False):
        calls.append(batch_generic)
        return build(*args, batch_generic=batch_generic)

    monkeypatch.setattr(derive, "_build", counted)
    return calls


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
@pytest.mark.parametrize("masked", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("name", list(CELLS))
def test_one_derivation_serves_every_batch_size_and_equals_the_loop(name, masked, native, monkeypatch):
    _executors(native, monkeypatch)
    calls = _count_derivations(monkeypatch)
    cell = CELLS[name]().double()
    for batch in BATCHES:
        _check_equal_to_loop(cell, batch, masked)
    # the first B (4) is derived for itself (no compiler stack on a first call), as is B = 1 (torch
    # specializes 1); the second B >= 2 (3) brings one batch-generic derivation that serves 3 and 7
    assert calls == [False, False, True], calls


def test_each_batch_size_gets_its_own_native_plan_from_the_one_derivation(monkeypatch):
    if not native_library_available():
        pytest.skip("the native runtime is not built here")
    calls = _count_derivations(monkeypatch)
    cell = UserLSTMCell(I, 4).double()
    for batch in (2, 5, 6):
        _check_equal_to_loop(cell, batch, masked=False)
    generic = [entry[0] for entry in derive._CACHE.values()]
    assert calls == [False, True], calls  # B = 2 for itself, then one generic derivation for 5 and 6
    generic = [kernels for kernels in generic if kernels.batch_symbol is not None]
    assert len(generic) == 1
    kept = generic[0].by_batch
    assert sorted(kept) == [5, 6]
    for batch, kernels in kept.items():
        assert kernels.batch_symbol is None and kernels.tangent_meta[0][0] == (batch, 4)
        assert not isinstance(kernels.lowered.get("native"), str), kernels.lowered


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_a_step_that_branches_on_the_batch_size_is_traced_per_batch_size(native, monkeypatch):
    _executors(native, monkeypatch)
    calls = _count_derivations(monkeypatch)
    cell = BatchBranchCell(I, 4).double()
    for batch in BATCHES:
        _check_equal_to_loop(cell, batch, masked=False)
    # B = 4 and 1 for themselves; at 3 the generic trace guards on B: refused once, then per distinct B
    assert calls == [False, False, True, False, False], calls
    refused = [entry[0] for key, entry in derive._CACHE.items() if key[2][-1]]
    assert len(refused) == 1 and isinstance(refused[0], derive.NotBatchGeneric)
    assert "batch size" in str(refused[0])


def test_a_batch_generic_key_differs_from_every_per_batch_key():
    cell = UserLSTMCell(I, 4)
    x, state = torch.randn(3, I), cell.init_state(3)
    generic = derive._key(cell, x, state, False, batch_generic=True)
    assert generic != derive._key(cell, x, state, False)
    other = derive._key(cell, torch.randn(5, I), cell.init_state(5), False, batch_generic=True)
    assert generic == other
