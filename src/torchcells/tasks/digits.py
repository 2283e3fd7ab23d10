"""The main job: scikit-learn's handwritten digits read row by row.

Each 8×8 image (``sklearn.datasets.load_digits``, shipped with scikit-learn, no
download) becomes a sequence of ``T = 8`` steps with ``I = 8`` features (one pixel row
per step). A ``Recurrent`` layer of a zoo cell reads the rows; a dense layer
classifies its final output into 10 digits.

:class:`Digits` is this data as a task of ``torchcells train``; ``torchcells demo``
(``make demo``) trains it with a GRU and shows the model's cells.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import SequenceModel, Split, Sums, Task, build_encoder, classification_sums, majority_accuracy, \
    missing_extra


def load_digit_sequences(seed: int = 0, test_fraction: float = 0.25):
    """``(x_train, y_train, x_test, y_test)``: images as ``(N, 8, 8)`` float32 in [0, 1]."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise missing_extra("the digits task", "scikit-learn (it ships the data)") from None

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(range(len(y)), test_size=test_fraction, random_state=seed,
                                           stratify=data.target)
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


class Digits(Task):
    """``torchcells train digits`` (and ``torchcells demo``): any zoo cell over the rows of an image."""

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
