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
