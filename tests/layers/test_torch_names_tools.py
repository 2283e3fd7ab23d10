"""Tools that act on torch.nn's parameter names act on the drop-ins exactly as on torch.nn's modules.

Side by side with ``torch.nn.LSTM/GRU/RNN`` (weights copied, float64): the same tool is applied
to both by name (pruning and its removal, ``parametrizations.weight_norm``,
``parametrizations.orthogonal``, the old ``torch.nn.utils.weight_norm``, an init loop over
``named_parameters()``, optimizer parameter groups chosen by name), then outputs, final states
and the gradient of every parameter -- by its name, which must be torch.nn's -- are compared,
also after a few optimizer steps, on each engine path the drop-in's layers may run
(``"torch"``, ``"fused"``, ``"loop"``).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, prune

import torchcells as tc

I, H, P, T, B = 3, 5, 3, 4, 2
BUILDS = {  # id: (ours, theirs, options)
    "lstm-2-bi-proj": (tc.LSTM, nn.LSTM, dict(num_layers=2, bidirectional=True, proj_size=P)),
    "lstm-nobias": (tc.LSTM, nn.LSTM, dict(bias=False)),
    "gru-2-bi": (tc.GRU, nn.GRU, dict(num_layers=2, bidirectional=True)),
    "rnn-relu-2": (tc.RNN, nn.RNN, dict(num_layers=2, nonlinearity="relu")),
}
ENGINES = ["torch", "fused", "loop"]


def build(kind: str, engine: str) -> tuple[nn.Module, nn.Module]:
    ours_cls, theirs_cls, options = BUILDS[kind]
    torch.manual_seed(0)
    theirs = theirs_cls(I, H, dtype=torch.float64, **options)
    ours = ours_cls(I, H, dtype=torch.float64, **options)
    ours.load_state_dict(theirs.state_dict())
    layers = [m for m in ours.modules() if isinstance(m, tc.Recurrent)]
    assert layers
    for layer in layers:
        layer.engine = engine
    return ours, theirs


def run_both(ours: nn.Module, theirs: nn.Module, seed: int = 1) -> None:
    """One forward and backward of each on the same input; outputs, states, names and gradients equal."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, I, dtype=torch.float64, generator=gen)
    results = []
    for module in (ours, theirs):
        module.zero_grad(set_to_none=True)
        out, hn = module(x)
        leaves = hn if isinstance(hn, tuple) else (hn,)
        (out.sin().sum() + sum((h * h).sum() for h in leaves)).backward()
        results.append((out, leaves))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-10, atol=1e-12)
    ours_named, theirs_named = dict(ours.named_parameters()), dict(theirs.named_parameters())
    assert list(ours_named) == list(theirs_named)
    for name, p in theirs_named.items():
        assert p.grad is not None, name
        torch.testing.assert_close(ours_named[name].grad, p.grad, rtol=1e-10, atol=1e-12, msg=name)


def train_both(ours: nn.Module, theirs: nn.Module, make_opt: Callable[[nn.Module], torch.optim.Optimizer],
               steps: int = 3) -> None:
    opts = [make_opt(ours), make_opt(theirs)]
    for step in range(steps):
        run_both(ours, theirs, seed=step)
        for opt in opts:
            opt.step()
    run_both(ours, theirs, seed=steps)


def sgd(module: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.5)


def prune_weight_hh(m: nn.Module) -> None:
    torch.manual_seed(3)
    prune.l1_unstructured(m, "weight_hh_l0", amount=0.3)


def old_weight_norm(m: nn.Module) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in favour of parametrizations.weight_norm
        torch.nn.utils.weight_norm(m, "weight_hh_l0")


def orthogonal(m: nn.Module) -> None:
    torch.manual_seed(5)  # a tall weight's orthogonal completion draws random columns
    parametrizations.orthogonal(m, "weight_hh_l0")


def orthogonal_init_by_name(m: nn.Module) -> None:
    torch.manual_seed(4)
    for name, p in m.named_parameters():
        if "weight_hh" in name:
            nn.init.orthogonal_(p)
        elif "bias" in name:
            nn.init.constant_(p, 0.1)


TOOLS: dict[str, Callable[[nn.Module], Any]] = {
    "prune": prune_weight_hh,
    "weight_norm": lambda m: parametrizations.weight_norm(m, "weight_hh_l0"),
    "orthogonal": orthogonal,
    "old_weight_norm": old_weight_norm,
    "init_by_name": orthogonal_init_by_name,
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("tool", list(TOOLS))
@pytest.mark.parametrize("kind", list(BUILDS))
def test_tool_acts_as_on_torch_nn(kind, tool, engine):
    ours, theirs = build(kind, engine)
    for m in (ours, theirs):
        TOOLS[tool](m)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    train_both(ours, theirs, sgd)


@pytest.mark.parametrize("engine", ENGINES)
def test_prune_remove_leaves_torch_nns_parameters(engine):
    ours, theirs = build("lstm-2-bi-proj", engine)
    for m in (ours, theirs):
        prune_weight_hh(m)
        prune.l1_unstructured(m, "bias_ih_l1_reverse", amount=0.5)
    run_both(ours, theirs)
    for m in (ours, theirs):
        prune.remove(m, "weight_hh_l0")
        prune.remove(m, "bias_ih_l1_reverse")
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert (ours.weight_hh_l0 == 0).sum() == (theirs.weight_hh_l0 == 0).sum() > 0
    # the cell holds the drop-in's Parameter again: the live stack runs, no per-call twin
    assert ours.get_parameter("weight_hh_l0") is ours.get_parameter(ours.torch_parameter_names()["weight_hh_l0"])
    train_both(ours, theirs, sgd)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["lstm-2-bi-proj", "gru-2-bi"])
def test_parameter_groups_by_name(kind, engine):
    ours, theirs = build(kind, engine)

    def adam(m: nn.Module) -> torch.optim.Optimizer:
        named = list(m.named_parameters())
        groups = [{"params": [p for n, p in named if n.startswith("bias")], "weight_decay": 0.0},
                  {"params": [p for n, p in named if "weight_hh" in n], "lr": 0.05},
                  {"params": [p for n, p in named if n.startswith(("weight_ih", "weight_hr"))]}]
        assert sum(len(g["params"]) for g in groups) == len(named)
        return torch.optim.AdamW(groups, lr=0.01, weight_decay=0.1)

    train_both(ours, theirs, adam)


@pytest.mark.parametrize("engine", ENGINES)
def test_parametrized_drop_in_nested_in_a_model(engine):
    """A parent's named_parameters() sees the parametrization's original, not a stale cell weight."""
    ours, theirs = build("gru-2-bi", engine)
    for m in (ours, theirs):
        parametrizations.weight_norm(m, "weight_hh_l1_reverse")
    ours_model, theirs_model = nn.Sequential(ours), nn.Sequential(theirs)
    assert [n for n, _ in ours_model.named_parameters()] == [n for n, _ in theirs_model.named_parameters()]
    assert list(ours_model.state_dict()) == list(theirs_model.state_dict())
    run_both(ours, theirs)


@pytest.mark.parametrize("engine", ["fused", "loop"])
def test_parametrized_drop_in_from_threads_equals_one_thread(engine):
    """The cells get the computed weight through a per-call twin, never by swapping the live module's tensors."""
    from concurrent.futures import ThreadPoolExecutor

    ours, _ = build("gru-2-bi", engine)
    parametrizations.weight_norm(ours, "weight_hh_l0")
    ours.weight_ih_l1 = nn.Parameter(ours.weight_ih_l1.detach() * 2)
    gen = torch.Generator().manual_seed(7)
    inputs = [torch.randn(T, B, I, dtype=torch.float64, generator=gen) for _ in range(16)]

    def grads(x):
        ours_out, _ = ours(x)
        return torch.autograd.grad(ours_out.sum(), [ours.parametrizations.weight_hh_l0.original0, x])

    alone = [grads(x.requires_grad_()) for x in inputs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(grads, inputs))
    for a, b in zip(alone, together):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
