"""Checkpoints: safetensors for every tensor, JSON for everything else; never a pickle.

One file, ``DIR/checkpoint.safetensors``, holds the model's weights (``model/…``), the
optimizer's tensors (``optimizer/…``), every process's random-number-generator state
(``rng/torch/<rank>``, ``rng/cuda/<rank>``) and the per-step training losses
(``history/step_loss``); its safetensors metadata holds, as JSON, the training
configuration, the epochs done, the per-epoch history and the optimizer's non-tensor
structure. ``DIR/config.json`` is a readable copy of that JSON (not read back).

Writes are atomic (:func:`torchcells.files.write_atomic`): the bytes go to a temporary file
in the same folder, are flushed to disk, then ``os.replace`` puts them in place, so a crash
leaves the previous checkpoint whole. Loading reads only tensors and JSON (``safetensors`` +
``json``), so a checkpoint cannot run code; a damaged or foreign file is a
:class:`CheckpointError` in one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..files import write_atomic
from .base import TaskError

__all__ = ["CHECKPOINT", "CONFIG", "FORMAT", "Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint",
           "pack", "unpack"]

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
    meta = {"format": FORMAT, **meta}
    text = json.dumps(meta)
    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata={_META_KEY: text})
    path = directory / CHECKPOINT
    write_atomic(path, data)
    readable = {k: v for k, v in meta.items() if k != "optimizer"}
    write_atomic(directory / CONFIG, (json.dumps(readable, indent=2) + "\n").encode())
    return path


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
