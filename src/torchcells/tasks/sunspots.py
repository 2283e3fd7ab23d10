"""Yearly sunspots, 1700-2008 (statsmodels ships them; nothing is downloaded): forecast next year.

Each example is a window of ``T = 24`` consecutive years (``I = 1`` feature: the yearly
mean sunspot number, standardized with the training years' mean and deviation); the
target is the following year's number. Windows whose target year falls in the first 80 %
of the record train; the rest (targets 1947-2008) are held out -- later years are
never seen in training. The metric is the mean absolute error in sunspot numbers.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import SequenceModel, Split, Sums, Task, TaskError, build_encoder, missing_extra

WINDOW = 24
TRAIN_FRACTION = 0.8


def load_sunspots() -> tuple[torch.Tensor, torch.Tensor]:
    """``(years, numbers)``: two ``(309,)`` float64 tensors, 1700-2008."""
    try:
        from statsmodels.datasets import sunspots
    except ImportError:
        raise missing_extra("the sunspots task", "statsmodels (it ships the data)") from None
    data = sunspots.load_pandas().data
    return (torch.tensor(data["YEAR"].to_numpy(), dtype=torch.float64),
            torch.tensor(data["SUNACTIVITY"].to_numpy(), dtype=torch.float64))


class Sunspots(Task):
    """Forecast next year's sunspot number from the previous 24 years."""

    name = "sunspots"
    description = f"yearly sunspots (statsmodels), 1700-2008: forecast next year from the last {WINDOW}"
    metric = "MAE"
    higher_is_better = False
    sequence = "window"
    defaults = {"hidden": 32, "epochs": 60, "lr": 5e-3, "batch_size": 16}

    def load(self, seed: int) -> tuple[Split, Split]:
        _, numbers = load_sunspots()
        split = int(len(numbers) * TRAIN_FRACTION)
        train_part = numbers[:split]
        self.center, self.scale = train_part.mean().item(), train_part.std().item()
        z = ((numbers - self.center) / self.scale).float()
        windows = z.unfold(0, WINDOW + 1, 1)                          # (N, T + 1): inputs, then target
        target_index = torch.arange(WINDOW, len(numbers))
        x, y = windows[:, :WINDOW].unsqueeze(-1), windows[:, WINDOW:]
        train = target_index < split
        return Split(x[train], y[train]), Split(x[~train], y[~train])

    def build(self, cell: str, *, hidden: int, layers: int, bidirectional: bool) -> SequenceModel:
        encoder, width = build_encoder(cell, 1, hidden, layers=layers, bidirectional=bidirectional)
        return SequenceModel(encoder, width, 1, bidirectional=bidirectional)

    def sums(self, model: nn.Module, batch: Split) -> Sums:
        prediction = model(batch.inputs)
        loss = nn.functional.mse_loss(prediction, batch.targets, reduction="sum")
        error = (prediction.detach() - batch.targets).abs().sum().item() * self._scale()
        return Sums(loss, error, len(batch.targets))

    def baseline(self, train: Split, held_out: Split) -> tuple[str, float]:
        last = held_out.inputs[:, -1]                                 # persistence: next year = this year
        return "next year = this year", (last - held_out.targets).abs().mean().item() * self._scale()

    def _scale(self) -> float:
        if not hasattr(self, "scale"):
            raise TaskError("sunspots: load() the data before computing errors (the scale comes from it)")
        return float(self.scale)
