"""The offline datasets: shapes, splits, lengths, and the character model's sampling."""

import pytest
import torch

from torchcells.tasks import TASKS, get_task
from torchcells.tasks.base import SequenceModel, build_encoder
from torchcells.tasks.charlm import Vocabulary, load_text, sample, windows
from torchcells.tasks.sunspots import WINDOW, load_sunspots


def test_every_task_loads_offline_and_builds_a_model_that_reads_its_data():
    for name in TASKS:
        task = get_task(name)
        train, held_out = task.load(seed=0)
        assert len(train) > 100 and len(held_out) > 50
        model = task.build("gru", hidden=4, layers=1, bidirectional=False)
        sums = task.sums(model, train.head(3))
        assert sums.loss.requires_grad and torch.isfinite(sums.loss) and sums.count >= 3
        what, value = task.baseline(train, held_out)
        assert what and value == value


def test_sunspots_are_chronological_windows_and_the_future_is_held_out():
    years, numbers = load_sunspots()
    assert years[0] == 1700 and years[-1] == 2008 and len(numbers) == 309
    task = get_task("sunspots")
    train, held_out = task.load(seed=0)
    assert train.inputs.shape[1:] == (WINDOW, 1) and train.targets.shape[1:] == (1,)
    assert len(train) + len(held_out) == 309 - WINDOW
    z = (numbers - task.center) / task.scale                  # windows are consecutive years, target the next
    assert torch.allclose(train.inputs[5, :, 0].double(), z[5:5 + WINDOW], atol=1e-6)
    assert torch.allclose(held_out.targets[-1].double(), z[-1:], atol=1e-6)
    assert torch.allclose(held_out.inputs[0, 1:, 0], held_out.inputs[1, :-1, 0])


def test_vowels_have_variable_unsorted_lengths_and_zero_padding():
    train, held_out = get_task("vowels").load(seed=0)
    assert (len(train), len(held_out)) == (270, 370)
    assert train.inputs.shape[1:] == held_out.inputs.shape[1:] == (29, 12)
    for split in (train, held_out):
        lengths = split.lengths
        assert lengths.min() >= 7 and lengths.max() <= 29 and len(set(lengths.tolist())) > 5
        assert not torch.equal(lengths, lengths.sort(descending=True).values)          # not sorted
        padded = torch.arange(29) >= lengths.unsqueeze(1)
        assert torch.all(split.inputs[padded] == 0) and torch.all(split.inputs[~padded].abs().sum(-1) > 0)
    assert set(train.targets.tolist()) == set(range(9))


def test_padding_does_not_change_a_vowels_prediction():
    task = get_task("vowels")
    train, _ = task.load(seed=0)
    model = task.build("lstm", hidden=6, layers=1, bidirectional=True)
    batch = train.head(4)
    garbage = batch.inputs.clone()
    garbage[torch.arange(29) >= batch.lengths.unsqueeze(1)] = 1e3                  # what lies past each length
    torch.testing.assert_close(model(garbage, batch.lengths), model(batch.inputs, batch.lengths))
    one = batch.take(torch.tensor([2]))
    alone = model(one.inputs[:, :int(one.lengths[0])], one.lengths)              # no padding at all
    torch.testing.assert_close(alone, model(batch.inputs, batch.lengths)[2:3])


def test_charlm_windows_predict_the_next_character():
    text = load_text()
    assert len(text) > 100_000 and "def" in text
    vocab = Vocabulary(text)
    ids = vocab.encode(text[:1000])
    assert vocab.decode(ids) == text[:1000]
    split = windows(ids, steps=10)
    assert split.inputs.shape == (99, 10)
    assert torch.equal(split.inputs[:, 1:], split.targets[:, :-1])
    assert torch.equal(split.inputs.flatten()[1:], split.targets.flatten()[:-1])


def test_sample_continues_the_prompt_with_known_characters_and_follows_its_generator():
    vocab = Vocabulary("abc ")
    encoder, width = build_encoder("gru", 5, 8)
    model = SequenceModel(encoder, width, len(vocab), every_step=True, vocabulary=len(vocab), embedding=5)
    first = sample(model, vocab, "ab", 30, generator=torch.Generator().manual_seed(1))
    again = sample(model, vocab, "ab", 30, generator=torch.Generator().manual_seed(1))
    assert first == again and first.startswith("ab") and len(first) == 32 and set(first) <= set("abc ")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        sample(model, vocab, "xyz", 3)


def test_bidirectional_summary_reads_each_direction_at_its_own_end():
    torch.manual_seed(0)
    encoder, width = build_encoder("gru", 3, 4, bidirectional=True)
    model = SequenceModel(encoder, width, 2, bidirectional=True)
    x = torch.randn(2, 6, 3)
    lengths = torch.tensor([4, 6])
    outputs, _ = encoder(x, lengths=lengths)
    expected = torch.cat([outputs[0, 3, :4], outputs[0, 0, 4:]])
    torch.testing.assert_close(model(x, lengths)[0], model.head(expected))
