"""Each task is learned: the held-out metric beats a trivial predictor by a wide margin."""

import pytest

from torchcells.tasks import resolve_config, train

pytestmark = pytest.mark.slow


def test_vowels_speakers_are_recognized():
    result = train(resolve_config("vowels", "gru"), progress=False)          # the task's defaults: 30 epochs
    assert result.metric >= 0.9, result.metric                              # chance 1/9, majority 0.08


def test_sunspots_forecast_beats_persistence():
    result = train(resolve_config("sunspots", "lstm"), progress=False)
    _, persistence = result.baseline
    assert result.metric < 0.75 * persistence, (result.metric, persistence)


def test_charlm_beats_character_frequencies_in_one_epoch():
    result = train(resolve_config("charlm", "gru", epochs=1), progress=False)
    _, unigram = result.baseline
    assert result.metric < unigram - 1.0, (result.metric, unigram)            # bits per character
