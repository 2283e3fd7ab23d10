"""Several threads making the first call of one model: every result equals the reference
loop, and the model keeps its own parameters (tracing runs on a copy, one trace at a time)."""

from __future__ import annotations

import threading

import pytest
import torch

import torchcells as tc
from fixture_cells import UserLSTMCell
from torchcells.graph import trace_step


def _in_threads(fn, args: list) -> list:
    results: list = [None] * len(args)
    errors: list = []

    def work(i: int) -> None:
        try:
            results[i] = fn(args[i])
        except Exception as e:  # collected: a thread's exception would otherwise be lost
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


@pytest.mark.parametrize("make, grad", [(lambda: UserLSTMCell(6, 12), True), (lambda: tc.GRUCell(6, 12), False)],
                         ids=["user-lstm-grad", "gru-no-grad"])
def test_four_threads_first_call(make, grad):
    torch.manual_seed(0)
    layer = tc.Recurrent(make().double())
    before = {n: (p, p.detach().clone()) for n, p in layer.named_parameters()}
    xs = [torch.randn(5, b, 6, dtype=torch.float64) for b in (2, 2, 3, 3)]  # two threads per new shape

    def call(x):
        with torch.set_grad_enabled(grad):
            return layer(x)[0].detach()

    outs = _in_threads(call, xs)
    loop = tc.Recurrent(layer.cell, engine="loop")
    for out, x in zip(outs, xs):
        torch.testing.assert_close(out, loop(x)[0], atol=1e-12, rtol=1e-10)
    for name, p in layer.named_parameters():
        same, value = before[name]
        assert p is same and type(p) is torch.nn.Parameter and p.device.type == "cpu", name
        torch.testing.assert_close(p.detach(), value, atol=0, rtol=0)


def test_tracing_leaves_the_live_module_alone():
    """The trace runs a copy: while it runs, the live module's parameters stay its own real tensors."""
    live: list = []
    during: list = []

    class Watching(tc.Cell):
        def __init__(self) -> None:
            super().__init__(3, 4)
            self.lin = torch.nn.Linear(7, 4)

        def forward(self, x, h):
            during.append((self is live[0], live[0].lin.weight is live[1]))
            h = torch.tanh(self.lin(torch.cat([x, h], -1)))
            return h, h

    cell = Watching()
    weight = cell.lin.weight
    live.extend([cell, weight])
    trace_step(cell, torch.randn(2, 3), cell.init_state(2))
    assert during == [(False, True)]
    assert cell.lin.weight is weight and type(cell.lin.weight.data) is torch.Tensor
