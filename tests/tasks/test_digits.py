"""The main job: digits read row by row (the data, and the task `torchcells demo` trains)."""

import pytest
import torch

from torchcells.tasks import TaskError, resolve_config, train
from torchcells.tasks.digits import load_digit_sequences


def test_digit_sequences_are_rows_of_images():
    x_train, y_train, x_test, y_test = load_digit_sequences(seed=0)
    assert x_train.shape[1:] == (8, 8) and x_test.shape[1:] == (8, 8)
    assert len(x_train) + len(x_test) == 1797
    assert len(x_test) == 450
    assert x_train.dtype == torch.float32 and 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert set(y_test.tolist()) == set(range(10))


def test_unknown_cell_is_a_clear_error():
    with pytest.raises(TaskError, match="unknown cell 'transformer'; choose one of"):
        resolve_config("digits", "transformer", epochs=1)


def test_two_epochs_learn_something():
    # 10 classes: chance is 0.1; two short epochs already reach well above it.
    result = train(resolve_config("digits", "gru", hidden=32, epochs=2), progress=False, plot=False)
    assert result.metric > 0.5
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_demo_reaches_095(cell):
    result = train(resolve_config("digits", cell), progress=False, plot=False)    # the demo's settings
    assert result.metric >= 0.95, result.metric
