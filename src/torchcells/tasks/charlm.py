"""Character-level language model on a text that ships with Python: ``pydoc_data.topics``.

The text is the help pages of Python's ``help()`` topics (about 465,000 characters), joined
in sorted topic order. Its first 90 % trains, the last 10 % is held out. Examples are
non-overlapping windows of ``T = 64`` characters; the model reads each character (as an
``E = 32``-dimensional embedding) and predicts the next at every step. The metric is the
held-out bits per character (lower is better; 0 would be perfect, ``log2(V)`` chance).
:func:`sample` writes new text from a trained model.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .base import SequenceModel, Split, Sums, Task, TaskError, build_encoder

STEPS = 64
EMBEDDING = 32
TRAIN_FRACTION = 0.9
LN2 = 0.6931471805599453


def load_text() -> str:
    """The help text of every ``pydoc_data.topics`` topic, in sorted topic order."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise TaskError("the charlm task reads pydoc_data.topics, which this Python does not ship") from None
    return "\n".join(topics[key] for key in sorted(topics))


class Vocabulary:
    """Characters ↔ ids: the sorted characters of the text."""

    def __init__(self, text: str) -> None:
        self.chars = sorted(set(text))
        self.ids = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> Tensor:
        unknown = sorted(set(text) - set(self.ids))
        if unknown:
            raise TaskError(f"charlm: characters not in the vocabulary: {''.join(unknown)!r}")
        return torch.tensor([self.ids[c] for c in text], dtype=torch.int64)

    def decode(self, ids: Tensor) -> str:
        return "".join(self.chars[i] for i in ids.tolist())


def windows(ids: Tensor, steps: int = STEPS) -> Split:
    """Non-overlapping windows: inputs ``(N, T)`` ids, targets ``(N, T)`` the next ids."""
    n = (len(ids) - 1) // steps
    return Split(ids[:n * steps].view(n, steps), ids[1:n * steps + 1].view(n, steps))


class CharLM(Task):
    """Predict the next character of Python's help text."""

    name = "charlm"
    description = f"character-level language model on Python's help text (pydoc_data.topics), {STEPS}-char windows"
    metric = "bits/char"
    higher_is_better = False
    sequence = "window"
    defaults = {"hidden": 128, "epochs": 5, "lr": 3e-3, "batch_size": 32}

    def load(self, seed: int) -> tuple[Split, Split]:
        text = load_text()
        self.vocabulary = Vocabulary(text)
        ids = self.vocabulary.encode(text)
        split = int(len(ids) * TRAIN_FRACTION)
        return windows(ids[:split]), windows(ids[split:])

    def build(self, cell: str, *, hidden: int, layers: int, bidirectional: bool) -> SequenceModel:
        if bidirectional:
            raise TaskError("charlm predicts the next character; a backward direction would read it, "
                            "so --bidirectional is not allowed for this task")
        encoder, width = build_encoder(cell, EMBEDDING, hidden, layers=layers)
        vocabulary = len(self._vocabulary())
        return SequenceModel(encoder, width, vocabulary, every_step=True, vocabulary=vocabulary, embedding=EMBEDDING)

    def sums(self, model: nn.Module, batch: Split) -> Sums:
        logits = model(batch.inputs)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), reduction="sum")
        return Sums(loss, loss.item() / LN2, batch.targets.numel())

    def baseline(self, train: Split, held_out: Split) -> tuple[str, float]:
        counts = torch.bincount(train.targets.flatten(), minlength=len(self._vocabulary())).double() + 1
        bits = -torch.log2(counts / counts.sum())
        return "character frequencies only", bits[held_out.targets.flatten()].mean().item()

    def extra_report(self, model: SequenceModel, *, seed: int) -> list[str]:
        """160 characters sampled from the trained model after the prompt ``"The "`` (temperature 0.8)."""
        text = sample(model, self._vocabulary(), "The ", 160, generator=torch.Generator().manual_seed(seed))
        return ["", "a sample from the model (prompt 'The ', temperature 0.8):", text]

    def _vocabulary(self) -> Vocabulary:
        if not hasattr(self, "vocabulary"):
            self.vocabulary = Vocabulary(load_text())
        return self.vocabulary


@torch.no_grad()
def sample(model: SequenceModel, vocabulary: Vocabulary, prompt: str, length: int, *,
           temperature: float = 0.8, generator: Optional[torch.Generator] = None) -> str:
    """``prompt`` followed by ``length`` characters drawn one at a time from ``model``.

    The prompt is read in one call; then each drawn character is fed back with the
    encoder's state (``T = 1`` per call). ``temperature`` < 1 sharpens the distribution.
    """
    if not prompt:
        raise TaskError("sample: the prompt should have at least one character")
    if temperature <= 0:
        raise TaskError(f"sample: temperature should be > 0, got {temperature}")
    model.eval()
    logits, state = model.run(vocabulary.encode(prompt).unsqueeze(0))
    drawn = []
    for _ in range(length):
        probabilities = torch.softmax(logits[0, -1] / temperature, dim=-1)
        nxt = torch.multinomial(probabilities, 1, generator=generator)
        drawn.append(nxt)
        logits, state = model.run(nxt.view(1, 1), state)
    return prompt + (vocabulary.decode(torch.cat(drawn)) if drawn else "")
