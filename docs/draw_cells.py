"""Draw every cell of the zoo from its own forward: docs/cells/<name>.svg.

    .venv/bin/python docs/draw_cells.py

The diagrams come from torchcells.explain (the step is traced; nothing here draws a cell by
hand). tests/anatomy/test_zoo_diagrams.py checks that the files are what the code draws now.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

import torchcells as tc
from torchcells.cells.registry import ZOO, make_cell

I, H, T, B = 4, 8, 5, 1
OUT = Path(__file__).resolve().parent / "cells"


def layer_and_input(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """A layer of the zoo's cell ``name`` and an example input (T steps of a batch of B)."""
    size = H if name == "residual" else I  # y = x + cell(x): as many features in as out
    torch.manual_seed(0)
    cell = make_cell(name, size, H)
    spatial = ZOO[name].options.get("spatial_size")
    x = torch.randn(T, B, size, *spatial) if spatial else torch.randn(T, B, size)
    return tc.Recurrent(cell), x


def draw(name: str) -> str:
    layer, x = layer_and_input(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cells that draw random numbers train on the loop
        return tc.explain(layer, x).to_svg("cell")


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name in ZOO:
        (OUT / f"{name}.svg").write_text(draw(name), encoding="utf-8")
    print(f"wrote {len(ZOO)} diagrams to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
