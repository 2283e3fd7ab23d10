"""``explain(model, example_input)``: find the cells and layers of any model.

One forward runs on the example input (in eval mode, without gradients; the
model's mode is restored) with hooks on every module that record input and
output shapes and how often each module ran. Then the module tree is walked:
a module of a known kind becomes one or more :class:`~.records.Layer` rows (see
:mod:`.mappers` and :mod:`.rnn_rows`); an unknown container is opened and its children walked (its
own parameters, if any, become one row); an unknown module whose children did
not run (a fused block such as ``nn.MultiheadAttention``) is one opaque row.
Recurrent containers (``Stack``, ``Bidirectional``, multi-layer ``nn.LSTM``) are
broken into one row per layer and direction and add no counts of their own.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .context import Calls, Context
from .mappers import batch_of, map_module, opaque_row
from .records import Anatomy, Layer

__all__ = ["explain"]


def explain(model: nn.Module, example_input: Any, *, batch_size: Optional[int] = None) -> Anatomy:
    """Map ``model`` to its cells and layers by running it once on ``example_input``.

    Args:
        model: any ``torch.nn.Module``: torchcells layers and cells, ``nn.LSTM``/``GRU``/``RNN``
            (any options, PackedSequence input too), their ``*Cell`` classes, dense,
            convolution, pooling, activation, dropout, normalization and embedding
            layers; anything else is listed as an opaque layer with its parameters.
        example_input: what ``model(...)`` takes: a tensor or PackedSequence, a tuple of
            positional arguments, or a dict of keyword arguments. Its shapes decide the
            counts (``T`` steps, ``B`` batch): e.g. ``(T, B, I)`` for ``nn.LSTM``.
        batch_size: the batch size of ``example_input``, when it cannot be told from the
            first recurrent or convolution layer (default: the first dimension of a
            tensor input with at least two dimensions, else 1). Counts are per example.

    Returns:
        An :class:`~torchcells.anatomy.Anatomy`; ``total_parameters`` is
        ``sum(p.numel() for p in model.parameters())`` and equals the sum over layers.

    Example::

        >>> a = explain(torch.nn.LSTM(10, 20, num_layers=2, bidirectional=True), torch.randn(5, 1, 10))
        >>> a.total_parameters, [layer.applications for layer in a.layers]
        (15040, [5, 5, 5, 5])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"explain: model should be a torch.nn.Module, got {type(model).__name__}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0):
        raise ValueError(f"explain: batch_size should be a positive int or None, got {batch_size!r}")
    calls, output = _record(model, example_input)
    ctx = Context(model, calls, batch_size or _guess_batch(model, calls, example_input))
    rows: list[Layer] = []
    _walk(ctx, model, "", rows)
    rows.sort(key=lambda r: r.order)
    total = sum(p.numel() for p in model.parameters())
    counted = sum(r.parameters for r in rows)
    if counted != total:  # pragma: no cover - a bug in a mapper, never silent
        raise RuntimeError(f"explain: the layers hold {counted:,} parameters but the model has {total:,}")
    return Anatomy(model=type(model).__name__, total_parameters=total, layers=rows, batch_size=ctx.batch,
                   input_shape=_plain(_shape(_first(example_input))), output_shape=_plain(_shape(output)))


def _first(example: Any) -> Any:
    """The first input: the tensor itself, a tuple's first item, a dict's first value."""
    if isinstance(example, dict):
        return next(iter(example.values()), None)
    if isinstance(example, tuple) and not isinstance(example, PackedSequence):
        return example[0] if example else None
    return example


def _plain(shape: Any) -> Optional[tuple[int, ...]]:
    """A recorded shape as plain ints; a PackedSequence's as its padded ``(T, B, F)``."""
    if not shape:
        return None
    return tuple(shape[1:]) if shape[0] == "packed" else tuple(shape)


def _record(model: nn.Module, example_input: Any) -> tuple[dict[nn.Module, Calls], Any]:
    calls: dict[nn.Module, Calls] = {}
    counter = [0]

    def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
        rec = calls.setdefault(module, Calls(order=counter[0]))
        counter[0] += 1
        first = args[0] if args else next(iter(kwargs.values()), None)
        rec.inputs.append(_shape(first))
        rec.input_kinds.append(type(first).__name__)
        rec.kwargs.append({k: _shape(v) for k, v in kwargs.items()})

    def post(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        calls[module].outputs.append(_shape(out))

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(module.register_forward_hook(post, with_kwargs=True))
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            if isinstance(example_input, dict):
                output = model(**example_input)
            elif isinstance(example_input, tuple) and not isinstance(example_input, PackedSequence):
                output = model(*example_input)
            else:
                output = model(example_input)
    except Exception as e:
        raise ValueError(f"explain: {type(model).__name__} could not run on the example input "
                         f"({_describe(example_input)}); explain runs the model once to learn its shapes, "
                         f"so give an input the model accepts. The model said: {type(e).__name__}: {e}") from e
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.train(mode)
    return calls, output


def _shape(obj: Any) -> Any:
    """A tensor's shape; a PackedSequence's padded ``(T, B, F)`` shape; a tuple's first shape."""
    if isinstance(obj, PackedSequence):
        return ("packed", len(obj.batch_sizes), int(obj.batch_sizes[0]), *obj.data.shape[1:])
    if isinstance(obj, Tensor):
        return tuple(int(s) for s in obj.shape)
    if isinstance(obj, (tuple, list)) and obj:
        return _shape(obj[0])
    return None


def _describe(example: Any) -> str:
    if isinstance(example, Tensor):
        return f"a tensor of shape {tuple(example.shape)}, dtype {example.dtype}"
    if isinstance(example, PackedSequence):
        return f"a PackedSequence of {int(example.batch_sizes[0])} sequences, up to {len(example.batch_sizes)} steps"
    if isinstance(example, tuple):
        return "positional arguments (" + "; ".join(_describe(e) for e in example) + ")"
    if isinstance(example, dict):
        return "keyword arguments (" + "; ".join(f"{k}: {_describe(v)}" for k, v in example.items()) + ")"
    return type(example).__name__


def _guess_batch(model: nn.Module, calls: dict[nn.Module, Calls], example_input: Any) -> int:
    for module, rec in sorted(calls.items(), key=lambda kv: kv[1].order):
        b = batch_of(module, rec)
        if b is not None:
            return b
    shape = _shape(_first(example_input))
    if shape and shape[0] == "packed":
        return int(shape[2])
    return int(shape[0]) if shape and len(shape) >= 2 else 1


def _walk(ctx: Context, module: nn.Module, path: str, rows: list[Layer]) -> None:
    mapped = map_module(ctx, module, path)
    if mapped is not None:
        rows.extend(mapped)
        return
    children = list(module.named_children())
    called = module in ctx.calls
    if children and (not called or any(m in ctx.calls for m in module.modules() if m is not module)):
        # own: not held by a child too (torchcells' drop-ins register their cells' parameters
        # under torch.nn's names; the rows of the cells count them)
        inner = {id(p) for _, child in children for p in child.parameters()}
        own = [p for p in module.parameters(recurse=False) if id(p) not in inner]
        if own:
            row = opaque_row(ctx, module, path, own, what="own parameters")
            rows.append(row)
        for name, child in children:
            _walk(ctx, child, f"{path}.{name}" if path else name, rows)
        return
    rows.append(opaque_row(ctx, module, path, list(module.parameters())))
