"""Checkpoints: safetensors for every tensor, JSON for everything else; never a pickle.

One file, ``DIR/checkpoint.safetensors``, holds the model's weights (``model/…``), the
optimizer's tensors (``optimizer/…``), every process's random-number-generator state
(``rng/torch/<rank>``, ``rng/cuda/<rank>``) and the per-step training losses
(``history/step_loss``); its safetensors metadata holds, as JSON, the training
configuration, the epochs done, the per-epoch history and the optimizer's non-tensor
structure. ``DIR/config.json`` is a readable copy of that JSON (not read back), written together
with the checkpoint (both temporary files first, then both put in place), so it is never an
epoch behind. Both are standard JSON: a number that is not finite is written ``null``.

Writes are atomic (:func:`torchcells.files.write_atomic`): the bytes go to a temporary file
in the same folder, are flushed to disk, then ``os.replace`` puts them in place, so a crash
leaves the previous checkpoint whole. Loading reads only tensors and JSON (``safetensors`` +
``json``), so a checkpoint cannot run code; a damaged or foreign file is a
:class:`CheckpointError` in one line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..files import write_atomic_together
from .base import TaskError

__all__ = ["CHECKPOINT", "CONFIG", "FORMAT", "Checkpoint", "CheckpointError", "check_adam", "check_contents",
           "check_count", "finite_json", "load_checkpoint", "save_checkpoint", "pack", "unpack"]

CHECKPOINT = "checkpoint.safetensors"
CONFIG = "config.json"
FORMAT = "torchcells-checkpoint-1"
_META_KEY = "torchcells"


class CheckpointError(TaskError):
    """A checkpoint that is missing, damaged or made for another model or configuration."""


@dataclass
class Checkpoint:
    """What a checkpoint holds: ``tensors`` by key and ``meta`` (the JSON part)."""

    tensors: dict[str, Tensor]
    meta: dict[str, Any]

    def group(self, prefix: str) -> dict[str, Tensor]:
        """The tensors under ``prefix/``, keys without it."""
        start = prefix + "/"
        return {k[len(start):]: v for k, v in self.tensors.items() if k.startswith(start)}


def pack(value: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """``value`` as JSON, each tensor moved into ``tensors`` under a key starting with ``prefix``.

    Dicts keep their key types (an optimizer's state is keyed by ints), tuples stay tuples.
    """
    if isinstance(value, Tensor):
        key = f"{prefix}#{len(tensors)}"
        tensors[key] = value.detach().to("cpu").contiguous().clone()
        return {"tensor": key}
    if isinstance(value, dict):
        return {"dict": [[k, pack(v, prefix, tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"tuple" if isinstance(value, tuple) else "list": [pack(v, prefix, tensors) for v in value]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise TypeError(f"checkpoint: cannot store a {type(value).__name__} (only tensors and JSON values)")


def unpack(packed: Any, tensors: dict[str, Tensor]) -> Any:
    """The inverse of :func:`pack`."""
    if not isinstance(packed, dict) or len(packed) != 1:
        raise CheckpointError(f"checkpoint: unreadable optimizer entry {str(packed)[:60]!r}")
    (kind, body), = packed.items()
    if kind == "tensor":
        if body not in tensors:
            raise CheckpointError(f"checkpoint: the tensor {body!r} is missing")
        return tensors[body]
    if kind == "dict":
        return {k: unpack(v, tensors) for k, v in body}
    if kind in ("list", "tuple"):
        items = [unpack(v, tensors) for v in body]
        return tuple(items) if kind == "tuple" else items
    if kind == "value":
        return body
    raise CheckpointError(f"checkpoint: unknown entry kind {kind!r}")


def save_checkpoint(directory: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Write ``DIR/checkpoint.safetensors`` (tensors + ``meta`` as JSON) and ``DIR/config.json``."""
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = finite_json({"format": FORMAT, **meta})
    text = json.dumps(meta, allow_nan=False)
    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata={_META_KEY: text})
    path = directory / CHECKPOINT
    readable = {k: v for k, v in meta.items() if k != "optimizer"}
    write_atomic_together({path: data, directory / CONFIG: json.dumps(readable, indent=2, allow_nan=False) + "\n"})
    return path


def finite_json(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by ``None`` (JSON has no NaN or Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(finite_json(v) for v in value)
    return value


def load_checkpoint(directory: Path) -> Checkpoint:
    """Read ``DIR/checkpoint.safetensors``; :class:`CheckpointError` if missing or damaged."""
    from safetensors.torch import load

    path = Path(directory) / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"no checkpoint to resume in {directory} (expected {path})")
    try:
        data = path.read_bytes()
        tensors = load(data)
        meta_text = _metadata(data).get(_META_KEY)
        meta = json.loads(meta_text) if meta_text is not None else None
    except CheckpointError:
        raise
    except Exception as e:  # safetensors' own error type, JSON, OS errors: all mean "damaged"
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is damaged or not a safetensors file ({first})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a torchcells training checkpoint (no {FORMAT!r} metadata)")
    return Checkpoint(tensors, meta)


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes (the header is 8 bytes of length, then JSON)."""
    size = int.from_bytes(data[:8], "little")
    if len(data) < 8 or size > len(data) - 8:
        raise CheckpointError("the safetensors header is cut short")
    header = json.loads(data[8:8 + size])
    return dict(header.get("__metadata__") or {})


def rng_states() -> dict[str, Tensor]:
    """This process's generator states: torch's CPU one and, where there is CUDA, each device's."""
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"cuda{i}"] = s
    return states


def set_rng_states(states: dict[str, Tensor]) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    cuda = [states[k] for k in sorted(states) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


HISTORY_KEYS = ("epoch", "train_loss", "train_metric", "test_loss", "test_metric", "seconds")


def check_count(meta: dict[str, Any], key: str, minimum: int, where: str) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CheckpointError(f"{where}: {key} should be a whole number >= {minimum}, got {value!r}")
    return value


def check_contents(checkpoint: Checkpoint, *, steps_per_epoch: int, where: str) -> tuple[int, int]:
    """The counters, history and generator states of ``checkpoint`` agree with each other:
    ``epochs_done`` rows of history numbered 1, 2, ..., ``epochs_done · steps_per_epoch``
    per-step losses, one generator state per process. Returns ``(epochs_done, world_size)``;
    :class:`CheckpointError` naming what disagrees."""
    meta = checkpoint.meta
    done = check_count(meta, "epochs_done", 0, where)
    world = check_count(meta, "world_size", 1, where)
    history = meta.get("history")
    if not isinstance(history, list) or len(history) != done:
        got = f"{len(history)} rows" if isinstance(history, list) else type(history).__name__
        raise CheckpointError(f"{where}: the history should have one row per epoch done ({done}), got {got}")
    for i, row in enumerate(history):
        if not isinstance(row, dict) or sorted(row) != sorted(HISTORY_KEYS) or row["epoch"] != i + 1 or \
                any(isinstance(v, bool) or not isinstance(v, (int, float, type(None))) for v in row.values()):
            raise CheckpointError(f"{where}: history row {i + 1} should be numbers for {', '.join(HISTORY_KEYS)} "
                                  f"with epoch {i + 1}, got {str(row)[:80]}")
    losses = checkpoint.tensors.get("history/step_loss", torch.zeros(0))
    if losses.dim() != 1 or losses.numel() != done * steps_per_epoch:
        raise CheckpointError(f"{where}: history/step_loss should hold {done * steps_per_epoch} losses "
                              f"({done} epochs of {steps_per_epoch} steps), got shape {tuple(losses.shape)}")
    size = torch.get_rng_state().numel()
    for rank in range(world):
        state = checkpoint.tensors.get(f"rng/torch/{rank}")
        if state is None or state.dtype != torch.uint8 or tuple(state.shape) != (size,):
            got = "none" if state is None else f"{tuple(state.shape)} {state.dtype}"
            raise CheckpointError(f"{where}: rng/torch/{rank} should be a generator state ({size},) torch.uint8, "
                                  f"got {got}")
    return done, world


def check_adam(state: Any, params: list[Tensor], steps: int, where: str) -> None:
    """``state`` (an ``Adam.state_dict()``) fits ``params`` after ``steps`` optimizer steps:
    one parameter group over all of them, and for each parameter with state a step count of
    ``steps`` and moments of the parameter's shape and dtype. :class:`CheckpointError` otherwise."""
    groups = state.get("param_groups") if isinstance(state, dict) else None
    if not isinstance(groups, list) or len(groups) != 1 or not isinstance(groups[0], dict) or \
            groups[0].get("params") != list(range(len(params))):
        raise CheckpointError(f"{where}: the optimizer should have one parameter group over the model's "
                              f"{len(params)} parameters, got {str(groups)[:80]}")
    per_param = state.get("state")
    if not isinstance(per_param, dict) or not set(per_param) <= set(range(len(params))):
        raise CheckpointError(f"{where}: the optimizer's state should be keyed by parameter 0..{len(params) - 1}, "
                              f"got {str(per_param)[:80]}")
    for i, entry in per_param.items():
        p = params[i]
        if not isinstance(entry, dict) or set(entry) != {"step", "exp_avg", "exp_avg_sq"}:
            raise CheckpointError(f"{where}: optimizer state {i} should hold step, exp_avg and exp_avg_sq, "
                                  f"got {sorted(entry) if isinstance(entry, dict) else type(entry).__name__}")
        step = entry["step"]
        if not isinstance(step, Tensor) or step.numel() != 1 or float(step) != steps:
            raise CheckpointError(f"{where}: optimizer state {i} should have taken {steps} steps, got "
                                  f"{step.tolist() if isinstance(step, Tensor) else step!r}")
        for key in ("exp_avg", "exp_avg_sq"):
            m = entry[key]
            if not isinstance(m, Tensor) or m.shape != p.shape or m.dtype != p.dtype:
                got = f"{tuple(m.shape)} {m.dtype}" if isinstance(m, Tensor) else type(m).__name__
                raise CheckpointError(f"{where}: optimizer state {i} {key} should be {tuple(p.shape)} {p.dtype} "
                                      f"like its parameter, got {got}")
