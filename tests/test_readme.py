"""The README's examples run as written and do what the README says."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)


def run_block(marker: str) -> dict:
    (block,) = [b for b in BLOCKS if marker in b]
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    return namespace


def test_readme_shows_the_two_commands():
    assert "make demo" in TEXT and "make test" in TEXT


def test_user_cell_example():
    ns = run_block("class LeakyCell")
    out, states, every_step = ns["out"], ns["states"], ns["every_step"]
    assert out.shape == (10, 4, 16)                      # deep stack, time-major
    assert len(states) == 2 and len(every_step) == 2
    assert every_step[1].h.shape == (10, 4, 16)
    assert torch.equal(every_step[1].h[-1], states[1].h)
    bi_out, _ = ns["layer"](ns["x"], lengths=[10, 3, 7, 1])
    assert bi_out.shape == (4, 10, 32)
    assert torch.all(bi_out[1, 3:] == 0) and torch.all(bi_out[3, 1:] == 0)


def test_drop_in_example_matches_torch():
    ns = run_block("torchcells.LSTM(")
    x = torch.randn(7, 3, 10)
    ours_out, (h, c) = ns["ours"](x)
    theirs_out, (h2, c2) = ns["theirs"](x)
    torch.testing.assert_close(ours_out, theirs_out)
    torch.testing.assert_close(h, h2)
    torch.testing.assert_close(c, c2)


def test_cell_zoo_example():
    ns = run_block("StackedCell([cell, SLSTMCell(32, 32)])")
    out, state = ns["out"], ns["state"]
    assert out.shape == (20, 4, 32)
    assert torch.all(out[5:, 1] == 0) and torch.all(out[1:, 3] == 0)   # padded steps
    assert len(state) == 2 and state[1].h.shape == (4, 32)
