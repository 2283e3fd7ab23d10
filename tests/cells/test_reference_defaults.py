"""Issue 13, item 5: each zoo cell whose defaults differ from its reference implementation says so,
naming the source; no page says the 1997 LSTM had a forget gate or calls a candidate a gate."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

import torchcells as tc

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("cls, source, says", [
    (tc.LayerNormLSTMCell, "haste", ["forget-gate bias of ``1.0``", "orthogonal"]),
    (tc.SLSTMCell, "xlstm", ["NX-AI", "powerlaw_blockdependent", "forget_bias"]),
])
def test_defaults_are_stated_against_the_reference_implementation(cls, source, says):
    text = (sys.modules[cls.__module__].__doc__ or "") + (cls.__doc__ or "")
    assert source in text
    for phrase in says:
        assert phrase in text, phrase


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_no_page_gives_the_1997_lstm_a_forget_gate():
    for page in _pages():
        for sentence in re.split(r"(?<=[.!?])\s+", page.read_text(encoding="utf-8")):
            if "1997" in sentence and "forget" in sentence:
                assert re.search(r"no forget gate|input and output gates only|Gers", sentence), (page, sentence)


def test_the_candidate_is_never_called_a_gate():
    pattern = re.compile(r"4 gate neurons|four gates|candidate gate|cell gate", re.IGNORECASE)
    for page in _pages():
        assert not pattern.search(page.read_text(encoding="utf-8")), page
    for module in ("lstm", "gru", "layernorm", "slstm"):
        doc = sys.modules[f"torchcells.cells.{module}"].__doc__ or ""
        assert not pattern.search(doc), module
