"""The examples in the cell modules' docstrings run and print what they show."""

from __future__ import annotations

import doctest
import importlib
import warnings

import pytest
import torch

import torchcells as tc

MODULES = ["elman", "gru", "lstm", "minimal", "mgu", "indrnn", "layernorm", "slstm", "spiking", "feedforward",
           "gaussian", "kernel", "conv"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"torchcells.cells.{name}")
    names = {"torch": torch, **{n: getattr(tc, n) for n in tc.__all__}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = doctest.testmod(module, globs=names, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
