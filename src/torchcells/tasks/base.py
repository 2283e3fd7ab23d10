"""What every task shares: data splits, the model (encoder of zoo cells plus a head), the task contract.

A task loads an offline dataset into two :class:`Split` s (train, held-out), builds a
:class:`SequenceModel` around an encoder made of zoo cells, and turns a batch into sums
(loss, metric, count) so that a batch split across processes adds up to the same numbers.

Shapes: ``B`` batch, ``T`` steps, ``I`` input features, ``H`` hidden units, ``W`` the
encoder's output width (``H``, or ``2H`` bidirectional), ``C`` outputs (classes, 1 for
regression, the vocabulary for a language model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..cells.registry import ZOO, make_cell
from ..layers import Bidirectional, Recurrent, Stack

__all__ = ["Split", "Sums", "SequenceModel", "Task", "TaskError", "build_encoder", "check_cell", "recurrent_cells"]


class TaskError(ValueError):
    """Bad input to a task or to training, said in one line (the CLI prints it and exits non-zero)."""


#: what to run when a task's data or the plots need a package the light install leaves out
TASKS_EXTRA = 'pip install "torchcells[tasks]"'


def missing_extra(what: str, package: str) -> TaskError:
    """The one-line error for a package of the ``tasks`` extra that is not installed."""
    return TaskError(f"{what} needs {package}, which is not installed: {TASKS_EXTRA}")


@dataclass(frozen=True)
class Split:
    """One part of a dataset: ``N`` examples.

    ``inputs`` is ``(N, T, I)`` float (``(N, T)`` int64 token ids for a language model);
    ``targets`` is ``(N,)`` class ids, ``(N, 1)`` values or ``(N, T)`` next tokens;
    ``lengths`` (``(N,)`` int64, in the dataset's own order, not sorted) or ``None``
    when every sequence has all ``T`` steps.
    """

    inputs: Tensor
    targets: Tensor
    lengths: Optional[Tensor] = None

    def __len__(self) -> int:
        return len(self.targets)

    def take(self, index: Tensor) -> "Split":
        """The examples at ``index`` (a 1-D int64 tensor), in that order."""
        lengths = None if self.lengths is None else self.lengths[index]
        return Split(self.inputs[index], self.targets[index], lengths)

    def to(self, device: torch.device) -> "Split":
        """The same examples on ``device``."""
        lengths = None if self.lengths is None else self.lengths.to(device)
        return Split(self.inputs.to(device), self.targets.to(device), lengths)

    def head(self, n: Optional[int]) -> "Split":
        """The first ``n`` examples (all of them for ``None``)."""
        return self if n is None or n >= len(self) else self.take(torch.arange(n))


@dataclass
class Sums:
    """A batch's totals: ``loss`` (a tensor, differentiable), ``metric`` and ``count``.

    Means are ``loss / count`` and ``metric / count``; sums add across batches and processes.
    """

    loss: Tensor
    metric: float
    count: int


def recurrent_cells() -> list[str]:
    """The zoo names ``--cell`` accepts: recurrent cells over feature vectors and wrappers of them."""
    return [name for name, entry in ZOO.items()
            if (entry.kind == "recurrent" and not name.startswith("conv-")) or
            (entry.kind == "wrapper" and name != "residual")]


def check_cell(cell: str) -> None:
    """:class:`TaskError` unless ``cell`` is one of :func:`recurrent_cells`, saying why and listing them."""
    choices = recurrent_cells()
    if cell in choices:
        return
    entry = ZOO.get(cell)
    if entry is None:
        why = f"unknown cell {cell!r}"
    elif entry.kind == "feed-forward":
        why = f"cell {cell!r} is feed-forward (no recurrence of its own)"
    elif entry.kind == "wrapper":
        why = f"cell {cell!r} needs as many hidden units as inputs (y = x + cell(x)), which these tasks do not have"
    else:
        why = f"cell {cell!r} reads an image per step (B, I, height, width), but these tasks give feature vectors"
    raise TaskError(f"{why}; choose one of: {', '.join(choices)}")


def build_encoder(cell: str, input_size: int, hidden: int, *, layers: int = 1,
                  bidirectional: bool = False, **options: Any) -> tuple[nn.Module, int]:
    """``layers`` ``Recurrent`` layers of the zoo cell ``cell`` (each ``Bidirectional`` if asked).

    Returns ``(encoder, W)``: the encoder reads ``(B, T, I)`` (batch first) and returns
    ``((B, T, W), state)``; ``W = H``, or ``2H`` bidirectional (forward features first).
    """
    check_cell(cell)
    if layers < 1 or hidden < 1:
        raise TaskError(f"--layers and --hidden should be at least 1, got {layers} and {hidden}")
    width = hidden * (2 if bidirectional else 1)
    built: list[nn.Module] = []
    for i in range(layers):
        try:
            step = make_cell(cell, input_size if i == 0 else width, hidden, **options)
        except (TypeError, ValueError) as e:
            raise TaskError(f"cannot build cell {cell!r} with {input_size if i == 0 else width} inputs and "
                            f"{hidden} hidden units: {e}") from None
        layer: nn.Module = Recurrent(step, batch_first=True)  # type: ignore[arg-type]
        built.append(Bidirectional(layer) if bidirectional else layer)
    return (built[0] if layers == 1 else Stack(built)), width


class SequenceModel(nn.Module):
    """``embed`` (or nothing) → ``encoder`` → ``head``, read at every step or once per sequence.

    Args:
        encoder: from :func:`build_encoder`, batch first, ``W`` features out.
        width: ``W``.
        outputs: ``C``.
        every_step: a prediction at every step ``(B, T, C)`` (language model); else one
            per sequence ``(B, C)`` from its last valid step (for a bidirectional encoder,
            the forward half there and the backward half at step 0, each direction's end).
        vocabulary: token ids in, through an ``nn.Embedding(vocabulary, embedding)``.
        bidirectional: the encoder's output is ``[forward, backward]`` halves.
    """

    def __init__(self, encoder: nn.Module, width: int, outputs: int, *, every_step: bool = False,
                 vocabulary: Optional[int] = None, embedding: int = 0, bidirectional: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, embedding) if vocabulary else None
        self.encoder = encoder
        self.head = nn.Linear(width, outputs)
        self.every_step = every_step
        self.bidirectional = bidirectional

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """``x`` ``(B, T, I)`` (or ``(B, T)`` ids) → ``(B, C)``, or ``(B, T, C)`` with ``every_step``."""
        return self.run(x, lengths=lengths)[0]

    def run(self, x: Tensor, state: Any = None, *, lengths: Optional[Tensor] = None) -> tuple[Tensor, Any]:
        """As ``forward``, also taking and returning the encoder's state (for sampling)."""
        if self.embed is not None:
            x = self.embed(x)
        outputs, final = self.encoder(x, state, lengths=lengths)
        if self.every_step:
            return self.head(outputs), final
        batch, steps = outputs.shape[0], outputs.shape[1]
        last = (lengths.to(outputs.device) - 1).clamp(min=0) if lengths is not None else \
            torch.full((batch,), steps - 1, device=outputs.device)
        rows = torch.arange(batch, device=outputs.device)
        summary = outputs[rows, last]
        if self.bidirectional:
            half = outputs.shape[-1] // 2
            summary = torch.cat([summary[:, :half], outputs[:, 0, half:]], dim=-1)
        return self.head(summary), final


class Task:
    """A dataset and what to learn from it. Subclasses set the class attributes and define
    ``load``, ``build``, ``sums`` and ``baseline``; ``example`` and ``extra_report`` have defaults.

    ``metric`` is what the held-out evaluation reports (``higher_is_better`` says which way
    is good); ``defaults`` the training options used when the command line gives none.
    """

    name: str = ""
    description: str = ""
    metric: str = ""
    higher_is_better: bool = True
    sequence: str = "sequence"                 # what one example is called in the summary
    defaults: dict[str, Any] = {}

    def load(self, seed: int) -> tuple[Split, Split]:
        """``(train, held_out)``, the same for the same ``seed``; raises :class:`TaskError` when missing."""
        raise NotImplementedError

    def build(self, cell: str, *, hidden: int, layers: int, bidirectional: bool) -> SequenceModel:
        """The model for this task with an encoder of zoo cell ``cell``."""
        raise NotImplementedError

    def sums(self, model: nn.Module, batch: Split) -> Sums:
        """The batch's loss, metric and count sums (the loss differentiable)."""
        raise NotImplementedError

    def baseline(self, train: Split, held_out: Split) -> tuple[str, float]:
        """A trivial predictor's metric on ``held_out``, for scale: ``(what, value)``."""
        raise NotImplementedError

    def example(self, split: Split) -> tuple[Tensor, Optional[Tensor]]:
        """One example as a batch of one ``(x, lengths)``, for the anatomy summary."""
        one = split.take(torch.tensor([0]))
        return one.inputs, one.lengths

    def extra_report(self, model: SequenceModel, *, seed: int) -> list[str]:
        """Lines this task adds to the closing summary of a run (none by default)."""
        return []


def classification_sums(logits: Tensor, targets: Tensor) -> Sums:
    """Cross-entropy summed over the batch; metric: the number classified right."""
    loss = nn.functional.cross_entropy(logits, targets, reduction="sum")
    right = (logits.argmax(-1) == targets).sum().item()
    return Sums(loss, float(right), len(targets))


def majority_accuracy(train: Split, held_out: Split) -> tuple[str, float]:
    """Accuracy of always answering the training set's most frequent class."""
    common = torch.mode(train.targets).values
    return "always the most frequent class", (held_out.targets == common).float().mean().item()
