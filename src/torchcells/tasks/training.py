"""The training loop behind ``torchcells train``: progress, held-out evaluation, checkpoints, exact resume.

Determinism: the model is built right after ``torch.manual_seed(seed)``; epoch ``e``'s
order of examples comes from its own generator seeded by ``(seed, e)``; everything else
random (dropout masks, zoneout) draws from torch's global generator, whose state is saved
in every checkpoint with the optimizer's. So ``--resume`` from the end of epoch ``k``
continues exactly as the uninterrupted run would have.

Several processes (torchrun): ``batch_size`` is the global batch. Each step, every process
takes every ``size``-th example of the same global batch, its loss sum is divided by the
global count and multiplied by ``size``; DistributedDataParallel averages the gradients
over processes, which gives the one-process gradient of the global mean.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor, nn

from .base import SequenceModel, Split, Task, TaskError, check_cell
from .checkpoint import (CHECKPOINT, CONFIG, Checkpoint, CheckpointError, check_adam, check_contents, check_count,
                         load_checkpoint, pack, rng_states, save_checkpoint, set_rng_states, unpack)
from .distributed import World, join, shard
from .registry import get_task
from .rundir import check_ours, hold

__all__ = ["TrainConfig", "TrainResult", "resolve_config", "train"]

EVAL_BATCH = 512
MAX_LR = 1.0
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``epochs`` is the total to reach (a resumed run may raise it)."""

    task: str
    cell: str
    hidden: int
    epochs: int
    lr: float
    batch_size: int
    layers: int = 1
    bidirectional: bool = False
    seed: int = 0
    limit: Optional[int] = None           # at most this many training and held-out examples

    def fixed(self) -> dict[str, Any]:
        """What must not change on resume (everything but ``epochs``)."""
        return {k: v for k, v in asdict(self).items() if k != "epochs"}


def resolve_config(task: str, cell: str, **given: Any) -> TrainConfig:
    """A :class:`TrainConfig` from the options given (``None`` = the task's default)."""
    defaults = get_task(task).defaults
    check_cell(cell)
    values: dict[str, Any] = {f.name: given.get(f.name) for f in fields(TrainConfig) if f.name not in ("task", "cell")}
    values = {k: (defaults.get(k) if v is None else v) for k, v in values.items()}
    values = {k: v for k, v in values.items() if v is not None}
    config = TrainConfig(task=task, cell=cell, **values)
    for name in ("hidden", "epochs", "batch_size", "layers"):
        if getattr(config, name) < 1:
            raise TaskError(f"--{name.replace('_', '-')} should be at least 1, got {getattr(config, name)}")
    if not (math.isfinite(config.lr) and 0 < config.lr <= MAX_LR):
        raise TaskError(f"--lr should be a number > 0 and <= {MAX_LR:g} (Adam moves every weight by about "
                        f"--lr per step), got {config.lr!r}")
    if not 0 <= config.seed <= MAX_SEED:
        raise TaskError(f"--seed should be a whole number from 0 to {MAX_SEED}, got {config.seed}")
    if config.limit is not None and config.limit < 1:
        raise TaskError(f"--limit should be at least 1, got {config.limit}")
    return config


def estimate_parameters(task: Task, config: TrainConfig) -> int:
    """The parameter count of ``config``'s model, without building it.

    The count is a polynomial of degree 2 in ``hidden`` for each layer count and grows linearly
    with ``layers``: it is read off models of 8, 16 and 24 units with 1 and 2 layers (built
    here, tiny) and evaluated at the size asked."""
    sizes = (8, 16, 24)
    counts = {(n, h): sum(p.numel() for p in task.build(config.cell, hidden=h, layers=n,
                                                        bidirectional=config.bidirectional).parameters())
              for n in (1, 2) for h in sizes}

    def at(n: int) -> Fraction:        # Lagrange's polynomial through the three sizes, at config.hidden
        total = Fraction(0)
        for i, hi in enumerate(sizes):
            term = Fraction(counts[n, hi])
            for hj in sizes[:i] + sizes[i + 1:]:
                term *= Fraction(config.hidden - hj, hi - hj)
            total += term
        return total
    return int(at(1) + (config.layers - 1) * (at(2) - at(1)))


def check_fits(task: Task, config: TrainConfig) -> None:
    """:class:`TaskError` if the model of ``config`` cannot fit in this machine's memory: training
    holds four float32 copies of its parameters (weights, gradients, Adam's two moments)."""
    parameters = estimate_parameters(task, config)
    needed = 16 * parameters
    available = _memory_bytes()
    if needed > available:
        raise TaskError(f"--hidden {config.hidden} with --layers {config.layers} makes a {config.cell} model of about "
                        f"{float(parameters):.3g} parameters: {needed / 1e9:.3g} GB with gradients and Adam's "
                        f"moments, more than this machine's {available / 1e9:.3g} GB of memory")


def _memory_bytes() -> int:
    """This machine's physical memory in bytes (a large number where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 50


@dataclass
class TrainResult:
    """A finished run: the model (unwrapped), per-epoch ``history`` and per-step ``step_loss``."""

    config: TrainConfig
    task: Task
    model: SequenceModel
    history: list[dict[str, float]]
    step_loss: list[float]
    held_out: Split
    seconds: float
    world_size: int = 1
    rank: int = 0
    baseline: tuple[str, float] = ("", float("nan"))
    written: list[Path] = field(default_factory=list)

    @property
    def metric(self) -> float:
        """The held-out metric after the last epoch."""
        return self.history[-1]["test_metric"] if self.history else float("nan")

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def train(config: TrainConfig, *, out: Optional[Path] = None, resume: bool = False, progress: bool = True,
          plot: bool = True, on_epoch: Optional[Callable[[dict[str, float]], None]] = None) -> TrainResult:
    """Train ``config`` (in every process of a torchrun group, if any) and return the result.

    With ``out``, a checkpoint is written after every epoch (rank 0) and a plot at the end;
    an ``out`` that already holds a checkpoint is refused unless ``resume``, and so is one
    holding files this tool did not write (:mod:`.rundir`); the run holds ``out``'s lock. With
    ``resume``, training continues from ``out``'s checkpoint, which must have been made
    with the same configuration (``epochs`` aside) and number of processes.
    Raises :class:`TaskError` / :class:`CheckpointError` before writing anything.
    """
    world = join()
    try:
        result = _train(config, world, out, resume, progress, plot, on_epoch)
        world.barrier()                      # rank 0 has written and plotted: leave together
        return result
    finally:
        world.leave()


def _train(config: TrainConfig, world: World, out: Optional[Path], resume: bool, progress: bool,
           plot: bool, on_epoch: Optional[Callable[[dict[str, float]], None]]) -> TrainResult:
    task = get_task(config.task)
    checkpoint = _check_before_start(task, config, world, out, resume, plot)
    with _holding(out, world):
        return _run(task, config, world, out, checkpoint, progress, plot, on_epoch)


def _check_before_start(task: Task, config: TrainConfig, world: World, out: Optional[Path],
                        resume: bool, plot: bool) -> Optional[Checkpoint]:
    """Everything that can be refused before a file is made: the folder, the checkpoint to resume, the size."""
    if resume and out is None:
        raise TaskError("--resume needs --out DIR, the folder of the checkpoint to continue")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise TaskError(f"--out {out} is a file; it should be a folder (new or holding a checkpoint)")
    checkpoint = _checkpoint_to_resume(config, world, out) if resume else None
    if out is not None and not resume:
        if (Path(out) / CHECKPOINT).exists():
            raise TaskError(f"{out} already holds a checkpoint; pass --resume to continue it, or choose another --out")
        check_ours(Path(out))
    if world.size > config.batch_size:
        raise TaskError(f"--batch-size {config.batch_size} is the global batch; it should be at least the "
                        f"number of processes ({world.size})")
    check_fits(task, config)
    if out is not None and plot and world.main:
        from .plot import require_plots
        require_plots()                      # the plots' extra, before anything is written or trained
    return checkpoint


@contextmanager
def _holding(out: Optional[Path], world: World) -> Iterator[None]:
    """Rank 0 holds ``out`` (made, locked, cleared of a killed run's leftovers) while the run lasts."""
    if out is None or not world.main:
        yield
        return
    with hold(Path(out)):
        yield


class _LossNotFinite(ArithmeticError):
    """The training loss of a step was NaN or infinite (raised before the optimizer step)."""


def _run(task: Task, config: TrainConfig, world: World, out: Optional[Path], checkpoint: Optional[Checkpoint],
         progress: bool, plot: bool, on_epoch: Optional[Callable[[dict[str, float]], None]]) -> TrainResult:
    torch.manual_seed(config.seed)
    train_split, held_out = task.load(config.seed)
    train_split, held_out = train_split.head(config.limit), held_out.head(config.limit)
    model = task.build(config.cell, hidden=config.hidden, layers=config.layers,
                       bidirectional=config.bidirectional).to(world.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    if world.rank:
        torch.manual_seed(config.seed + 1_000_003 * world.rank)   # each process its own dropout masks
    steps_per_epoch = -(-len(train_split) // config.batch_size)
    history: list[dict[str, float]] = []
    step_loss: list[float] = []
    if checkpoint is not None:
        history, step_loss = _restore(checkpoint, model, optimizer, world, steps_per_epoch, Path(str(out)))
    trained: nn.Module = model
    if world.size > 1:
        trained = nn.parallel.DistributedDataParallel(
            model, device_ids=[world.device] if world.device.type == "cuda" else None)

    from tqdm.auto import tqdm
    bar = tqdm(total=config.epochs * steps_per_epoch, initial=len(history) * steps_per_epoch,
               desc=f"{task.name} {config.cell}", unit="step", dynamic_ncols=True,
               disable=not (progress and world.main), leave=True)
    written: list[Path] = []
    spent = history[-1]["seconds"] if history else 0.0
    try:
        for epoch in range(len(history), config.epochs):
            start = time.perf_counter()
            try:
                totals = _train_epoch(task, trained, optimizer, train_split, config, epoch, world, step_loss, bar)
            except _LossNotFinite as e:
                kept = f"{out} keeps the checkpoint of epoch {len(history)}" if out is not None and history \
                    else "nothing was saved"
                raise TaskError(f"{e}; training stopped, {kept} (try a smaller --lr)") from None
            test = evaluate(task, model, held_out, world)
            spent += time.perf_counter() - start
            row = {"epoch": epoch + 1, "train_loss": totals[0], "train_metric": totals[1],
                   "test_loss": test[0], "test_metric": test[1], "seconds": spent}
            history.append(row)
            bar.shown = {f"test_{_short(task.metric)}": f"{test[1]:.4f}"}      # kept on the bar from now on
            bar.set_postfix(epoch=epoch + 1, loss=f"{row['train_loss']:.4f}", **bar.shown)
            if on_epoch is not None and world.main:
                on_epoch(row)
            if out is not None:
                _save(Path(out), config, model, optimizer, history, step_loss, world)
    finally:
        bar.close()
    if out is not None and world.main:
        written += [Path(out) / CHECKPOINT, Path(out) / CONFIG]
        if plot and history:
            from .plot import plot_history
            written += plot_history(history, Path(out) / "training", title=f"{task.name}: {config.cell}",
                                    metric=task.metric)
    return TrainResult(config, task, model, history, step_loss, held_out, spent, world.size, world.rank,
                       task.baseline(train_split, held_out), written)


def _short(metric: str) -> str:
    return metric.replace("/", "_per_").replace(" ", "_")


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The order of the ``n`` training examples in ``epoch`` (the same in every process)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def _train_epoch(task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, data: Split,
                 config: TrainConfig, epoch: int, world: World, step_loss: list[float],
                 bar: Any) -> tuple[float, float]:
    model.train()
    order = epoch_order(len(data), config.seed, epoch)
    loss_sum = metric_sum = count = 0.0
    for first in range(0, len(order), config.batch_size):
        mine = shard(order[first:first + config.batch_size], world)
        batch = data.take(mine).to(world.device)
        sums = task.sums(model, batch)
        totals = world.sum(torch.tensor([sums.loss.item(), sums.metric, float(sums.count)], dtype=torch.float64))
        if not math.isfinite(totals[0].item()):
            raise _LossNotFinite(f"the training loss became {totals[0].item()} at step {len(step_loss) + 1} "
                                 f"(epoch {epoch + 1})")
        optimizer.zero_grad(set_to_none=True)
        (sums.loss * (world.size / totals[2].item())).backward()
        optimizer.step()
        loss_sum += totals[0].item()
        metric_sum += totals[1].item()
        count += totals[2].item()
        step_loss.append(totals[0].item() / totals[2].item())
        bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / count:.4f}", **getattr(bar, "shown", {}), refresh=False)
    return loss_sum / count, metric_sum / count


@torch.no_grad()
def evaluate(task: Task, model: nn.Module, data: Split, world: Optional[World] = None) -> tuple[float, float]:
    """``(mean loss, metric)`` on ``data``; with several processes each evaluates its shard."""
    world = world or World()
    model.eval()
    mine = shard(torch.arange(len(data)), world)
    totals = torch.zeros(3, dtype=torch.float64)
    for first in range(0, len(mine), EVAL_BATCH):
        sums = task.sums(model, data.take(mine[first:first + EVAL_BATCH]).to(world.device))
        totals += torch.tensor([sums.loss.item(), sums.metric, float(sums.count)], dtype=torch.float64)
    totals = world.sum(totals)
    count = max(totals[2].item(), 1.0)
    return totals[0].item() / count, totals[1].item() / count


def _save(out: Path, config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
          history: list[dict[str, float]], step_loss: list[float], world: World) -> None:
    states = rng_states()
    gathered = {name: world.gather(state) for name, state in states.items()}   # every rank takes part
    if not world.main:
        return
    tensors = {f"model/{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()}
    optimizer_meta = pack(optimizer.state_dict(), "optimizer/", tensors)
    for name, per_rank in gathered.items():
        for rank, state in enumerate(per_rank):
            tensors[f"rng/{name}/{rank}"] = state
    tensors["history/step_loss"] = torch.tensor(step_loss, dtype=torch.float64)
    save_checkpoint(out, tensors, {"config": asdict(config), "epochs_done": len(history), "world_size": world.size,
                                   "history": history, "optimizer": optimizer_meta})


def _checkpoint_to_resume(config: TrainConfig, world: World, out: Optional[Path]) -> Checkpoint:
    assert out is not None
    checkpoint = load_checkpoint(Path(out))
    saved = checkpoint.meta.get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"the checkpoint in {out} should hold its configuration, got {str(saved)[:60]}")
    for key, minimum in (("world_size", 1), ("epochs_done", 0)):
        check_count(checkpoint.meta, key, minimum, f"the checkpoint in {out}")
    ours = config.fixed()
    differs = [f"{k} (checkpoint {saved.get(k)!r}, now {v!r})" for k, v in ours.items() if saved.get(k) != v]
    if differs:
        raise CheckpointError(f"the checkpoint in {out} was made with another configuration: {'; '.join(differs)}")
    if checkpoint.meta.get("world_size", 1) != world.size:
        raise CheckpointError(f"the checkpoint in {out} was written by {checkpoint.meta.get('world_size')} "
                              f"process(es); resume it with the same number, not {world.size}")
    if checkpoint.meta.get("epochs_done", 0) > config.epochs:
        raise CheckpointError(f"the checkpoint in {out} has {checkpoint.meta['epochs_done']} epochs done, more than "
                              f"--epochs {config.epochs}")
    return checkpoint


def _restore(checkpoint: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer, world: World,
             steps_per_epoch: int, out: Path) -> tuple[list[dict[str, float]], list[float]]:
    """Load ``checkpoint`` into ``model`` and ``optimizer`` after checking everything in it fits them."""
    where = f"the checkpoint in {out}"
    done, _ = check_contents(checkpoint, steps_per_epoch=steps_per_epoch, where=where)
    weights = checkpoint.group("model")
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or extra:
        raise CheckpointError(f"the checkpoint's weights do not fit the model: missing {missing[:3]}, "
                              f"unexpected {extra[:3]}")
    for k, v in expected.items():
        if weights[k].shape != v.shape or weights[k].dtype != v.dtype:
            raise CheckpointError(f"the checkpoint's {k} is {tuple(weights[k].shape)} {weights[k].dtype}, "
                                  f"the model's {tuple(v.shape)} {v.dtype}")
    state = unpack(checkpoint.meta.get("optimizer"), checkpoint.tensors)
    check_adam(state, list(model.parameters()), done * steps_per_epoch, where)
    try:
        model.load_state_dict(weights)
        optimizer.load_state_dict(state)
        rng = {name.split("/")[0]: t for name, t in checkpoint.group("rng").items()
               if name.endswith(f"/{world.rank}")}
        set_rng_states(rng)
    except CheckpointError:
        raise
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"the checkpoint's optimizer or generator state does not fit: {first}") from None
    history = [{k: float("nan") if v is None else v for k, v in row.items()} for row in checkpoint.meta["history"]]
    step_loss = checkpoint.tensors.get("history/step_loss", torch.zeros(0)).tolist()
    return history, step_loss
