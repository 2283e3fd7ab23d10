"""The anatomy part of ``torchcells train``'s summary: ``explain(...).to_text()``, or one line on why not."""

from types import SimpleNamespace

import torch
from torch import nn

import torchcells as tc
from torchcells.tasks.report import anatomy_text


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = tc.Recurrent(tc.GRUCell(3, 4), batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x, lengths=None):
        return self.head(self.rnn(x, lengths=lengths)[0][:, -1])


def result(model, with_lengths: bool):
    x = torch.randn(1, 6, 3)
    lengths = torch.tensor([6]) if with_lengths else None
    return SimpleNamespace(model=model, held_out=None, task=SimpleNamespace(example=lambda split: (x, lengths)))


def test_the_summary_shows_explains_table():
    for with_lengths in (False, True):
        text = anatomy_text(result(Classifier(), with_lengths))
        assert text == tc.explain(Classifier(), torch.randn(1, 6, 3), batch_size=1).to_text()
        assert "GRUCell(3→4)" in text


def test_a_model_explain_cannot_read_is_one_line_not_a_failure():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("no")
    text = anatomy_text(result(Broken(), False))
    assert text.startswith("(explain() could not read this model: ValueError: explain: Broken could not run")
    assert text.endswith("The model said: RuntimeError: no)") and "\n" not in text
