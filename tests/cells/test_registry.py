"""The zoo's catalogue: every entry builds, its parameter formula is its parameter count,
every zoo class is listed, and ``torchcells zoo`` prints them all."""

from __future__ import annotations

import pytest

import torchcells as tc
from torchcells.cells.registry import ZOO, evaluate_formula, make_cell
from torchcells.cli import main

SIZES = [(3, 5), (7, 2)]


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", list(ZOO))
@pytest.mark.parametrize("i, h", SIZES, ids=[f"I{i}-H{h}" for i, h in SIZES])
def test_formula_is_the_parameter_count(name, i, h):
    entry = ZOO[name]
    if name in ("residual", "noisy-input", "pool"):
        h = i  # these keep the input's size
    cell = entry.make(i, h)
    assert isinstance(cell, tc.Cell)
    assert entry.count(I=i, H=h) == count(cell), f"{name}: {entry.params}"


def test_formulas_of_wrappers_follow_the_wrapped_cell():
    gru = ZOO["gru"].count(I=4, H=6)
    assert count(make_cell("zoneout", 4, 6, cell="gru", p=0.2)) == gru == ZOO["zoneout"].count(I=4, H=6, cell="gru")
    assert count(make_cell("stacked", 4, 6, cell="gru")) == gru + ZOO["gru"].count(I=6, H=6)


def test_formula_depends_on_the_kernel_size():
    cell = make_cell("conv-lstm", 2, 3, kernel_size=5)
    assert ZOO["conv-lstm"].count(I=2, H=3, kernel_size=5) == count(cell) == 4 * 3 * 5 * 25 + 8 * 3


def test_every_zoo_class_is_listed():
    listed = {type(entry.make(4, 4)).__name__ for entry in ZOO.values()}
    classes = {n for n in tc.cells.__all__ if n not in ("LSTMState", "SLSTMState", "MaskedState")}
    assert classes == listed


def test_every_entry_says_what_it_holds():
    for entry in ZOO.values():
        assert entry.kind in ("recurrent", "feed-forward", "wrapper")
        assert entry.description and entry.state and entry.params and entry.engine
        assert len(entry.description) <= 100, f"{entry.name}: one line"


def test_unknown_cell_and_bad_formula_are_clear_errors():
    with pytest.raises(ValueError, match=r"make_cell: unknown cell 'lstn'; the zoo has elman, lstm"):
        make_cell("lstn", 3, 4)
    with pytest.raises(ValueError, match=r"cannot evaluate"):
        evaluate_formula("__import__('os').getcwd()", I=1, H=1)
    assert evaluate_formula("4*H*(I + H) + 8*H", I=3, H=5) == 4 * 5 * 8 + 40


def test_cli_zoo_lists_every_cell(capsys):
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    for entry in ZOO.values():
        assert f"  {entry.name} " in out
        assert entry.params in out and entry.state in out and entry.description in out
    assert "recurrent cells" in out and "wrappers (cell -> cell)" in out


def test_cli_zoo_kind_filter(capsys):
    assert main(["zoo", "--kind", "wrapper"]) == 0
    out = capsys.readouterr().out
    assert "  zoneout " in out and "  lstm " not in out
