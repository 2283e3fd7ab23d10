"""The examples run and do what their docstrings say."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_autoencoder_matches_its_input_better_than_the_mean_image():
    example = load("autoencoder")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = example.train(epochs=15)
    finally:
        torch.set_num_threads(threads)
    assert result.test_mse < 0.75 * result.baseline_mse, (result.test_mse, result.baseline_mse)
    x = torch.rand(3, 8, 8)
    model = result.model.eval()
    rows, kl = model(x)
    assert rows.shape == x.shape and kl.shape == (3,) and (kl >= 0).all()
    assert torch.equal(model(x)[0], rows), "eval mode: no input noise, z is the mean"
