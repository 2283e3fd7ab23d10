"""What ``torchcells train`` and ``compare`` print: the closing summary and the comparison table."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .training import TrainResult

__all__ = ["anatomy_text", "compare_table", "summary"]


def anatomy_text(result: TrainResult) -> str:
    """The trained model's anatomy (``explain(...).to_text()``), or one line on why it cannot be read."""
    from ..anatomy import explain

    x, lengths = result.task.example(result.held_out)
    model: Any = result.model
    try:
        args = (x,) if lengths is None else (x, lengths)
        return str(explain(model, args, batch_size=1).to_text())
    except Exception as e:  # the summary of a finished run does not fail on its last, optional part
        return f"(explain() could not read this model: {type(e).__name__}: {e})"


def summary(result: TrainResult, *, anatomy: bool = True) -> str:
    """A few lines on a finished run: held-out metric against a trivial baseline, size, time, files."""
    c, task = result.config, result.task
    what, baseline = result.baseline
    shape = f"hidden {c.hidden}, {c.layers} layer{'s' if c.layers > 1 else ''}" + \
        (", bidirectional" if c.bidirectional else "")
    lines = [f"{task.name}: {c.cell} ({shape}) -- held-out {task.metric} {result.metric:.4f} after "
             f"{len(result.history)} epoch{'s' if len(result.history) != 1 else ''} on "
             f"{len(result.held_out):,} held-out {task.sequence}s "
             f"(a trivial predictor, {what}: {baseline:.4f})",
             f"{result.parameters:,} parameters; {result.seconds:.1f} s of training; {result.world_size} process"
             f"{'es' if result.world_size > 1 else ''}, {torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''} each"]
    if result.written:
        lines.append("written: " + ", ".join(str(p) for p in result.written))
    lines += task.extra_report(result.model, seed=c.seed)
    if anatomy:
        lines += ["", "The trained model's cells:", anatomy_text(result)]
    return "\n".join(lines)


def compare_table(results: Sequence[TrainResult]) -> str:
    """A Markdown table: one row per cell with its held-out metric, parameters and seconds."""
    if not results:
        return ""
    task = results[0].task
    best = max if task.higher_is_better else min
    winner = best(results, key=lambda r: r.metric).config.cell
    c = results[0].config
    lines = [f"{task.name}: hidden {c.hidden}, {c.layers} layer(s), {c.epochs} epochs, batch {c.batch_size}, "
             f"lr {c.lr}, seed {c.seed} ({'higher' if task.higher_is_better else 'lower'} is better)",
             "", f"| cell | held-out {task.metric} | parameters | seconds |", "|---|---:|---:|---:|"]
    for r in results:
        mark = " (best)" if r.config.cell == winner and len(results) > 1 else ""
        lines.append(f"| {r.config.cell}{mark} | {r.metric:.4f} | {r.parameters:,} | {r.seconds:.1f} |")
    return "\n".join(lines)
