"""Japanese vowels (sktime ships them; nothing is downloaded): which of 9 speakers said "ae"?

Each utterance is a sequence of 7 to 29 frames of 12 LPC cepstrum coefficients (``I = 12``),
so a batch holds sequences of different lengths: they are padded with zeros to
``T = 29`` and passed with their ``lengths`` (in the data's own order, never sorted).
sktime's split: 270 utterances train, 370 held out. Features are standardized with the
training frames' mean and deviation. The metric is the held-out accuracy (chance 1/9).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .base import SequenceModel, Split, Sums, Task, TaskError, build_encoder, classification_sums, \
    majority_accuracy, missing_extra

SPEAKERS = 9
FEATURES = 12


def load_vowels(split: str) -> Split:
    """sktime's ``"train"`` or ``"test"`` split, padded: inputs ``(N, T, 12)``, lengths ``(N,)``."""
    try:
        from sktime.datasets import load_japanese_vowels
    except ImportError:
        raise missing_extra("the vowels task", "sktime (it ships the Japanese vowels data)") from None
    try:
        frame, labels = load_japanese_vowels(split=split, return_X_y=True)
    except (OSError, ValueError) as e:
        raise TaskError(f"the Japanese vowels data is missing from the installed sktime ({e}); "
                        f"nothing is downloaded: reinstall sktime") from None
    cells = frame.to_numpy()  # one pandas Series (one coefficient over time) per utterance and column
    series = [np.stack([cells[i, j].to_numpy() for j in range(cells.shape[1])], axis=1) for i in range(len(cells))]
    lengths = torch.tensor([len(s) for s in series], dtype=torch.int64)
    inputs = torch.zeros(len(series), int(lengths.max()), FEATURES)
    for i, s in enumerate(series):
        inputs[i, :lengths[i]] = torch.from_numpy(s.astype(np.float32))
    targets = torch.tensor([int(label) - 1 for label in labels], dtype=torch.int64)
    return Split(inputs, targets, lengths)


class Vowels(Task):
    """Speaker classification from variable-length utterances."""

    name = "vowels"
    description = "Japanese vowels (sktime): 9 speakers, 7-29 frames of 12 coefficients, variable lengths"
    metric = "accuracy"
    higher_is_better = True
    sequence = "utterance"
    defaults = {"hidden": 32, "epochs": 30, "lr": 5e-3, "batch_size": 16}

    def load(self, seed: int) -> tuple[Split, Split]:
        train, test = load_vowels("train"), load_vowels("test")
        steps = max(train.inputs.shape[1], test.inputs.shape[1])
        valid = torch.arange(train.inputs.shape[1]) < train.lengths.unsqueeze(1)   # type: ignore[union-attr]
        frames = train.inputs[valid]
        mean, std = frames.mean(0), frames.std(0)

        def standardize(s: Split) -> Split:
            mask = (torch.arange(s.inputs.shape[1]) < s.lengths.unsqueeze(1)).unsqueeze(-1)  # type: ignore[union-attr]
            x = torch.where(mask, (s.inputs - mean) / std, torch.zeros(()))
            x = nn.functional.pad(x, (0, 0, 0, steps - x.shape[1]))
            return Split(x, s.targets, s.lengths)
        return standardize(train), standardize(test)

    def build(self, cell: str, *, hidden: int, layers: int, bidirectional: bool) -> SequenceModel:
        encoder, width = build_encoder(cell, FEATURES, hidden, layers=layers, bidirectional=bidirectional)
        return SequenceModel(encoder, width, SPEAKERS, bidirectional=bidirectional)

    def sums(self, model: nn.Module, batch: Split) -> Sums:
        return classification_sums(model(batch.inputs, batch.lengths), batch.targets)

    def baseline(self, train: Split, held_out: Split) -> tuple[str, float]:
        return majority_accuracy(train, held_out)
