"""A denoising variational sequence autoencoder built from zoo cells: "match input-output".

The Neural Network Zoo's *match input-output* cell is an output cell trained to
reproduce the network's input. Here every piece is a cell from the zoo:

* the encoder reads each 8×8 handwritten digit row by row (8 steps of 8 pixels)
  through ``Stack([Recurrent(NoisyInput), Recurrent(GRUCell)])``: noise on the input
  in training only (a denoising autoencoder), then a GRU. (As separate layers, only
  the noise layer, whose step draws random numbers, runs on the reference loop; the
  GRU layer runs fused. In one ``StackedCell`` both would run on the loop.)
* its last state goes through one step of a ``GaussianCell`` (the probabilistic
  hidden cell): a latent code ``z = μ + σ ε`` and its KL term;
* the decoder, ``StackedCell([GRUCell, Neuron(sigmoid)])``, reads ``z`` at every step
  and writes the rows back: the ``Neuron`` is the match input-output cell, its target
  the clean input.

The loss is the reconstruction error plus ``β`` times the KL term (a β-VAE). Run it::

    python examples/autoencoder.py   # a few seconds; held-out error ~40% of the mean image's
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchcells import GaussianCell, GRUCell, Neuron, NoisyInput, Recurrent, Stack, StackedCell
from torchcells.tasks.digits import load_digit_sequences


class SequenceAutoencoder(nn.Module):
    """Rows in, rows out: ``(B, T, F)`` -> reconstruction ``(B, T, F)`` and each sequence's KL ``(B,)``."""

    def __init__(self, features: int = 8, hidden: int = 32, latent: int = 8, noise: float = 0.2) -> None:
        super().__init__()
        self.encoder = Stack([Recurrent(NoisyInput(features, std=noise), batch_first=True),
                              Recurrent(GRUCell(features, hidden), batch_first=True)])
        self.latent = GaussianCell(hidden, latent)
        self.decoder = Recurrent(StackedCell([GRUCell(latent, hidden), Neuron(hidden, features, activation="sigmoid")]),
                                 batch_first=True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _, (_, h) = self.encoder(x)                 # the stack's states: () for the noise, h of the GRU
        z, kl = self.latent(h)                      # one step of the Gaussian cell
        steps = z.unsqueeze(1).expand(-1, x.shape[1], -1)
        rows, _ = self.decoder(steps)
        return rows, kl


@dataclass
class Result:
    model: SequenceAutoencoder
    test_mse: float       # reconstruction error on held-out digits (eval mode: no noise, z = μ)
    baseline_mse: float   # error of predicting the mean training image
    seconds: float


def train(epochs: int = 30, beta: float = 0.01, seed: int = 0, batch: int = 64, lr: float = 1e-2) -> Result:
    torch.manual_seed(seed)
    x_train, _, x_test, _ = load_digit_sequences(seed)
    model = SequenceAutoencoder()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"NoisyInput.*runs on the reference loop")  # expected, see above
        for _ in range(epochs):
            model.train()
            for idx in torch.randperm(len(x_train)).split(batch):
                rows, kl = model(x_train[idx])
                loss = F.mse_loss(rows, x_train[idx]) + beta * kl.mean() / x_train[idx][0].numel()
                opt.zero_grad()
                loss.backward()
                opt.step()
    model.eval()
    with torch.no_grad():
        test_mse = float(F.mse_loss(model(x_test)[0], x_test))
        baseline = float(F.mse_loss(x_train.mean(0).expand_as(x_test), x_test))
    return Result(model, test_mse, baseline, time.perf_counter() - start)


if __name__ == "__main__":
    torch.set_num_threads(1)  # matrices this small run fastest on one thread
    result = train()
    print(f"held-out reconstruction MSE {result.test_mse:.4f} (mean image: {result.baseline_mse:.4f}), "
          f"{result.seconds:.1f} s")
