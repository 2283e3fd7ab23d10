"""``torchcells compare``: several cells on one task with the same budget, a table and a plot."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

from .base import TaskError
from .rundir import check_ours, hold
from .training import TrainConfig, TrainResult, train

__all__ = ["compare"]


def compare(config: TrainConfig, cells: Sequence[str], *, out: Optional[Path] = None,
            progress: bool = True) -> tuple[list[TrainResult], list[Path]]:
    """Train ``config`` once per cell (same data, seed, epochs, batch, learning rate and width).

    With ``out``, each run keeps its checkpoint and plot in ``out/CELL`` and the held-out
    metric curves of all cells go to ``out/compare.png`` and ``.svg``; ``out`` is refused if it
    holds files this tool did not write, and held (locked) while the runs last. Returns the
    results in the order of ``cells`` and the plot files written.
    """
    if not cells:
        raise TaskError("--cells should name at least one cell, e.g. --cells lstm,gru,mingru")
    if len(set(cells)) != len(cells):
        raise TaskError(f"--cells names a cell twice: {','.join(cells)}")
    configs = [replace(config, cell=cell) for cell in cells]
    from .training import resolve_config
    for c in configs:                                   # every name is checked before anything trains
        resolve_config(c.task, c.cell)
    if out is not None:
        taken = [str(Path(out) / c.cell) for c in configs if (Path(out) / c.cell / "checkpoint.safetensors").exists()]
        if taken:
            raise TaskError(f"{', '.join(taken)} already hold checkpoints; choose another --out")
        if Path(out).exists() and not Path(out).is_dir():
            raise TaskError(f"--out {out} is a file; it should be a folder")
        check_ours(Path(out), compare=True)
    from .distributed import join
    world = join()                      # one process group for all the runs (torchrun), left at the end
    try:
        with hold(Path(out), compare=True) if out is not None and world.main else nullcontext():
            return _train_all(configs, out, progress)
    finally:
        world.leave()


def _train_all(configs: list[TrainConfig], out: Optional[Path], progress: bool) -> tuple[list[TrainResult], list[Path]]:
    results = [train(c, out=None if out is None else Path(out) / c.cell, progress=progress) for c in configs]
    written: list[Path] = []
    if out is not None and results and results[0].rank == 0:
        from .plot import plot_compare
        task = results[0].task
        written = plot_compare({r.config.cell: r.history for r in results}, Path(out) / "compare",
                               title=f"{task.name}: same budget per cell", metric=task.metric)
    return results, written
