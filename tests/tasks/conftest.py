"""Task tests train tiny models: one torch thread each, so a busy machine does not slow them down by
oversubscription (two spinning threads on a loaded 2-core machine cost far more than they give)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vowels_parsed_once():
    """The Japanese vowels files parsed once for a test module that trains on them many times
    (sktime's .ts reader and the frames' conversion take about half a second a load); every load
    still returns fresh tensors of the same data. Module-scoped, not session-scoped: tests that
    hide sktime (test_extras.py) must meet the real loader."""
    from torchcells.tasks import vowels

    real, parsed = vowels.load_vowels, {}

    def load_vowels(split: str):
        if split not in parsed:
            parsed[split] = real(split)
        s = parsed[split]
        return type(s)(s.inputs.clone(), s.targets.clone(), None if s.lengths is None else s.lengths.clone())

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vowels, "load_vowels", load_vowels)
        yield
