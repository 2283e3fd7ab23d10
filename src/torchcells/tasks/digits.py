"""The main job: scikit-learn's handwritten digits read row by row.

Each 8×8 image (``sklearn.datasets.load_digits``, shipped with scikit-learn, no
download) becomes a sequence of ``T = 8`` steps with ``I = 8`` features (one pixel row
per step). A ``Recurrent`` layer made of one cell reads the rows; a dense layer
classifies its final output into 10 digits.

``train_digits`` is the demo's own short loop (``make demo``); :class:`Digits` is the same
data as a task of ``torchcells train`` (any zoo cell, checkpoints, plots).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..cell import Cell
from ..cells import ElmanCell, GRUCell, LSTMCell
from ..layers import Recurrent
from .base import SequenceModel, Split, Sums, Task, build_encoder, classification_sums, majority_accuracy

CELLS = {"gru": GRUCell, "lstm": LSTMCell, "rnn": ElmanCell}


def load_digit_sequences(seed: int = 0, test_fraction: float = 0.25):
    """``(x_train, y_train, x_test, y_test)``: images as ``(N, 8, 8)`` float32 in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(range(len(y)), test_size=test_fraction, random_state=seed,
                                           stratify=data.target)
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


class RowReader(nn.Module):
    """``Recurrent(cell)`` over the rows, then ``Linear(H, 10)`` on the last output."""

    def __init__(self, cell: Cell, classes: int = 10) -> None:
        super().__init__()
        if cell.hidden_size is None:
            raise ValueError(f"RowReader: the cell {cell.short_name()} should have a hidden_size")
        self.rnn = Recurrent(cell, batch_first=True)
        self.head = nn.Linear(cell.hidden_size, classes)

    def forward(self, images: Tensor) -> Tensor:
        outputs, _ = self.rnn(images)
        return self.head(outputs[:, -1])


@dataclass
class DemoResult:
    model: RowReader
    accuracy: float
    test_size: int
    seconds: float
    losses: list[float]


def train_digits(*, cell: str = "gru", hidden: int = 64, epochs: int = 30, lr: float = 5e-3,
                 batch_size: int = 32, seed: int = 0, progress: bool = True) -> DemoResult:
    """Train a ``RowReader`` and return it with its held-out accuracy."""
    from tqdm.auto import tqdm

    if cell not in CELLS:
        raise ValueError(f"digits demo: cell should be one of {sorted(CELLS)}, got {cell!r}")
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = load_digit_sequences(seed)
    model = RowReader(CELLS[cell](8, hidden))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    losses = []
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc=f"training {model.rnn.cell.short_name()}", unit="epoch",
               disable=not progress, dynamic_ncols=True)
    for _ in bar:
        model.train()
        order = torch.randperm(len(y_train), generator=generator)
        total = 0.0
        for i in range(0, len(order), batch_size):
            batch = order[i:i + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        losses.append(total / len(order))
        bar.set_postfix(loss=f"{losses[-1]:.4f}", test_acc=f"{accuracy(model, x_test, y_test):.3f}")
    seconds = time.perf_counter() - start
    return DemoResult(model, accuracy(model, x_test, y_test), len(y_test), seconds, losses)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    return (model(x).argmax(-1) == y).float().mean().item()


class Digits(Task):
    """``torchcells train digits``: the same data as the demo, for any zoo cell and the full loop."""

    name = "digits"
    description = "handwritten digits (scikit-learn 8x8), read row by row: 8 steps of 8 pixels, 10 classes"
    metric = "accuracy"
    higher_is_better = True
    sequence = "image"
    defaults = {"hidden": 64, "epochs": 30, "lr": 5e-3, "batch_size": 32}

    def load(self, seed: int) -> tuple[Split, Split]:
        x_train, y_train, x_test, y_test = load_digit_sequences(seed)
        return Split(x_train, y_train), Split(x_test, y_test)

    def build(self, cell: str, *, hidden: int, layers: int, bidirectional: bool) -> SequenceModel:
        encoder, width = build_encoder(cell, 8, hidden, layers=layers, bidirectional=bidirectional)
        return SequenceModel(encoder, width, 10, bidirectional=bidirectional)

    def sums(self, model: nn.Module, batch: Split) -> Sums:
        return classification_sums(model(batch.inputs), batch.targets)

    def baseline(self, train: Split, held_out: Split) -> tuple[str, float]:
        return majority_accuracy(train, held_out)
