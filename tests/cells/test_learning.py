"""Learning checks: every recurrent cell of the zoo learns a memory task at small T.

The adding problem (Hochreiter & Schmidhuber 1997): each step carries a value in
``[0, 1)`` and a marker; exactly two steps are marked, one in each half of the
sequence, and the target at the end is the sum of the two marked values. Predicting
the mean (1) costs ``Var(v₁ + v₂) = 1/6`` in mean squared error: that is the trivial
baseline. A cell passes when a held-out batch's loss falls below a quarter of it
within a fixed number of Adam steps. The convolutional cells solve one adding
problem per pixel; the spiking cell recalls the sign of a cue given at the first step
from its spikes in the last three steps (a task a spiking readout can express).

Sizes are small (T = 10, 16 units, batch 64) so the whole set takes seconds per cell;
the checks run on one thread (at these sizes a second thread only adds synchronization).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import torchcells as tc
from torchcells.cells.registry import make_cell

pytestmark = pytest.mark.slow

T, H, BATCH, STEPS, LR = 10, 16, 64, 600, 0.01
BASELINE = 1 / 6  # MSE of always predicting the mean sum, 1


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def adding_problem(batch: int, gen: torch.Generator, pixels: tuple[int, ...] = ()) -> tuple[Tensor, Tensor]:
    """``x`` ``(T, batch, 2, *pixels)`` (value, marker) and the target ``(batch, *pixels)``."""
    values = torch.rand(T, batch, *pixels, generator=gen)
    first = torch.randint(0, T // 2, (batch, *pixels), generator=gen)
    second = torch.randint(T // 2, T, (batch, *pixels), generator=gen)
    steps = torch.arange(T).reshape(T, *([1] * (1 + len(pixels))))
    markers = ((steps == first) | (steps == second)).float()
    return torch.stack([values, markers], 2), (values * markers).sum(0)


class Readout(nn.Module):
    """A recurrent layer and a linear readout of its last output (per pixel for feature maps)."""

    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.layer = tc.Recurrent(cell)
        self.out = nn.Linear(H, 1)

    def forward(self, x: Tensor) -> Tensor:
        last = self.layer(x)[0][-1]                     # (B, H) or (B, H, height, width)
        if last.dim() > 2:
            last = last.movedim(1, -1)
        return self.out(last).squeeze(-1)


def train(model: nn.Module, batch_fn, loss_fn, steps: int = STEPS) -> float:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fallback notes for cells that run on the loop
        for _ in range(steps):
            x, y = batch_fn(BATCH, gen)
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            x, y = batch_fn(512, torch.Generator().manual_seed(12345))
            return float(loss_fn(model(x), y))


RECURRENT = ["elman", "lstm", "lstm-peephole", "lstm-cifg", "gru", "gru-reset-before", "mgu", "ln-lstm", "ln-gru",
             "slstm", "mingru", "minlstm"]


@pytest.mark.parametrize("name", RECURRENT)
def test_recurrent_cell_learns_the_adding_problem(name):
    torch.manual_seed(0)
    held_out = train(Readout(make_cell(name, 2, H)), adding_problem, F.mse_loss)
    assert held_out < BASELINE / 4, f"{name}: held-out MSE {held_out:.4f}, baseline {BASELINE:.4f}"


def test_indrnn_learns_the_adding_problem_in_two_layers():
    """IndRNN's units do not see each other within a layer; as in Li et al. 2018 a second
    layer combines them (one layer plateaus near 0.06 here)."""
    torch.manual_seed(0)
    cell = tc.StackedCell([tc.IndRNNCell(2, H), tc.IndRNNCell(H, H)])
    held_out = train(Readout(cell), adding_problem, F.mse_loss)
    assert held_out < BASELINE / 4, f"held-out MSE {held_out:.4f}"


@pytest.mark.parametrize("name", ["zoneout", "variational-dropout", "recurrent-dropout", "weight-drop"])
def test_regularized_lstm_still_learns_the_adding_problem(name):
    torch.manual_seed(0)
    options = {"p": 0.1} if name != "zoneout" else {"p": (0.1, 0.05)}
    held_out = train(Readout(make_cell(name, 2, H, **options)), adding_problem, F.mse_loss)
    assert held_out < BASELINE / 4, f"{name}: held-out MSE {held_out:.4f}"


@pytest.mark.parametrize("name", ["conv-lstm", "conv-gru"])
def test_conv_cell_learns_an_adding_problem_per_pixel(name):
    torch.manual_seed(0)
    cell = make_cell(name, 2, H, kernel_size=3, spatial_size=(3, 3))
    held_out = train(Readout(cell), lambda b, g: adding_problem(b, g, (3, 3)), F.mse_loss, steps=400)
    assert held_out < BASELINE / 4, f"{name}: held-out MSE {held_out:.4f}"


def cue_recall(batch: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """A ±1 cue at step 0 on channel 0, noise on channel 1; the target is the cue's sign."""
    sign = torch.randint(0, 2, (batch,), generator=gen).float()
    x = torch.zeros(T, batch, 2)
    x[:, :, 1] = torch.randn(T, batch, generator=gen) * 0.5
    x[0, :, 0] = sign * 2 - 1
    return x, sign


class SpikeReadout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = tc.Recurrent(tc.LIFCell(2, H))
        self.out = nn.Linear(H, 1)

    def forward(self, x: Tensor) -> Tensor:
        spikes, _ = self.layer(x)
        return self.out(spikes[-3:].sum(0)).squeeze(-1)  # spike counts of the last three steps


def test_lif_cell_learns_to_recall_a_cue_through_its_spikes():
    torch.manual_seed(0)
    model = SpikeReadout()
    before = train(SpikeReadout(), cue_recall, F.binary_cross_entropy_with_logits, steps=0)
    held_out = train(model, cue_recall, F.binary_cross_entropy_with_logits, steps=400)
    chance = float(torch.log(torch.tensor(2.0)))
    assert held_out < chance / 10 and held_out < before / 10, f"BCE {held_out:.4f} (chance {chance:.3f})"
