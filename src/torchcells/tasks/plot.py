"""Plots of training: loss and metric per epoch (PNG and SVG, matplotlib's Agg backend, no display)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..files import write_atomic

__all__ = ["plot_compare", "plot_history", "require_plots"]


def require_plots() -> None:
    """Raise the one-line :class:`TaskError` naming the extra to install when matplotlib is missing."""
    from .base import missing_extra

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise missing_extra("plotting the training curves (--out)", "matplotlib") from None


def _pyplot() -> Any:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _integers() -> Any:
    from matplotlib.ticker import MaxNLocator
    return MaxNLocator(integer=True)


def _save(figure: Any, stem: Path) -> list[Path]:
    """``stem.png`` and ``stem.svg``, each written atomically."""
    paths = []
    for fmt in ("png", "svg"):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, dpi=120, metadata={"Date": None} if fmt == "svg" else None)
        path = stem.with_suffix(f".{fmt}")
        write_atomic(path, buffer.getvalue())
        paths.append(path)
    return paths


def plot_history(history: Sequence[Mapping[str, float]], stem: Path, *, title: str, metric: str) -> list[Path]:
    """Two panels over epochs -- loss (training, held-out) and ``metric`` -- as ``stem.png``/``.svg``."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    for axis, key, label in ((left, "loss", "loss"), (right, "metric", metric)):
        axis.plot(epochs, [row[f"train_{key}"] for row in history], marker=".", label="training (mean over the epoch)")
        axis.plot(epochs, [row[f"test_{key}"] for row in history], marker=".", label="held-out")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(_integers())
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    try:
        return _save(figure, Path(stem))
    finally:
        plt.close(figure)


def plot_compare(histories: Mapping[str, Sequence[Mapping[str, float]]], stem: Path, *, title: str,
                 metric: str) -> list[Path]:
    """Each cell's held-out ``metric`` per epoch, one line per cell, as ``stem.png``/``.svg``."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4), layout="constrained")
    for cell, history in histories.items():
        axis.plot([row["epoch"] for row in history], [row["test_metric"] for row in history], marker=".", label=cell)
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(_integers())
    axis.set_ylabel(f"held-out {metric}")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    try:
        return _save(figure, Path(stem))
    finally:
        plt.close(figure)
