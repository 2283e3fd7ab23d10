"""Module → layer rows: what each kind of module is, in cells.

Counts are per example (one sequence): the batch is divided out. A row's
``parameters`` counts only parameters not already counted by an earlier row.

Only a layer made of cells names one (``cell``) and counts ``units``: a neuron, a kernel,
a pool window, a recurrent step function. Activations, reshapes, dropout, normalization,
embeddings and opaque modules are functions of the layer as a whole: ``cell`` is ``""``
and ``units`` is 0 (the renderers print "–").
Recurrent layers and cells are read by :mod:`.rnn_rows`; everything else here.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from torch import nn

from ..cell import Cell
from ..layers import Bidirectional, Recurrent, Stack
from .context import Calls, Context
from .kinds import LayerKind
from .records import Layer
from .rnn_rows import cell_row, recurrent_rows, torch_rnn_rows

__all__ = ["batch_of", "map_module", "opaque_row"]


def batch_of(module: nn.Module, rec: Calls) -> Optional[int]:
    """The batch size a recurrent or convolution layer saw, where its layout tells it."""
    shape = rec.inputs[0] if rec.inputs else None
    if not shape:
        return None
    if shape[0] == "packed":
        return int(shape[2])
    if isinstance(module, nn.RNNBase):
        return (shape[0] if module.batch_first else shape[1]) if len(shape) == 3 else 1
    if isinstance(module, Recurrent):
        rank = getattr(module.cell, "step_rank", 1)
        return (shape[0] if module.batch_first else shape[1]) if len(shape) == rank + 2 else 1
    if isinstance(module, (nn.RNNCellBase, Cell)):
        return shape[0] if len(shape) == 2 else 1
    conv = _spatial_dims(module)
    if conv:
        return shape[0] if len(shape) == conv + 2 else 1
    return None


_CONV = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3, nn.ConvTranspose1d: 1, nn.ConvTranspose2d: 2, nn.ConvTranspose3d: 3}
_POOL = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3,
         nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3, nn.AdaptiveAvgPool1d: 1,
         nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3, nn.LPPool1d: 1, nn.LPPool2d: 2}
_NORM = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_DROPOUT = (nn.modules.dropout._DropoutNd, nn.AlphaDropout, nn.FeatureAlphaDropout)
_RESHAPE = (nn.Flatten, nn.Unflatten, nn.Identity)


def _spatial_dims(module: nn.Module) -> int:
    for cls, n in list(_CONV.items()) + list(_POOL.items()):
        if type(module) is cls or isinstance(module, cls):
            return n
    return 0


def _base(ctx: Context, module: nn.Module, path: str, params: list[nn.Parameter], **kw: Any) -> Layer:
    new, shared = ctx.count(params)
    rec = ctx.calls.get(module)
    return Layer(name=path or "(model)", module=type(module).__name__, parameters=new, shared_parameters=shared,
                 weights=tuple((ctx.name(p), tuple(p.shape)) for p in params), order=ctx.order(module),
                 input_shape=rec.inputs[0] if rec and rec.inputs and rec.inputs[0] and rec.inputs[0][0] != "packed"
                 else None,
                 output_shape=rec.outputs[0] if rec and rec.outputs else None, **kw)


def opaque_row(ctx: Context, module: nn.Module, path: str, params: list[nn.Parameter], *,
               what: str = "") -> Layer:
    """A module torchcells cannot see into: its parameters and how often it ran."""
    rec = ctx.calls.get(module)
    label = f"{type(module).__name__} ({what})" if what else type(module).__name__
    return _base(ctx, module, path, params, cell="", kind=LayerKind.OPAQUE, step_function=label, units=0,
                 applications=rec.count if rec and not what else 0)


def map_module(ctx: Context, module: nn.Module, path: str) -> Optional[list[Layer]]:
    """The rows for ``module`` if it is of a known kind, else ``None`` (walk into it)."""
    rec = ctx.calls.get(module)
    if isinstance(module, Recurrent):
        return recurrent_rows(ctx, module, path)
    if isinstance(module, nn.RNNBase):
        return torch_rnn_rows(ctx, module, path)
    if isinstance(module, (Cell, nn.RNNCellBase)):
        return [cell_row(ctx, module, path)]
    if isinstance(module, (Stack, Bidirectional)):
        return None
    params = list(module.parameters())
    if isinstance(module, nn.Linear):
        apps = sum(ctx.per_example(s) // module.in_features for s in rec.inputs) if rec else 0
        return [_base(ctx, module, path, params, cell="neuron", kind=LayerKind.DENSE, units=module.out_features,
                      step_function=f"Neuron({module.in_features}→1) ×{module.out_features}",
                      applications=apps, input_size=module.in_features,
                      macs_per_application=module.in_features * module.out_features)]
    dims = _spatial_dims(module)
    if dims and isinstance(module, nn.modules.conv._ConvNd):
        return [_conv_row(ctx, module, path, params, dims)]
    if dims:
        positions = sum(ctx.per_example(s) for s in rec.outputs) if rec else 0
        channels = (rec.outputs[0][-dims - 1] if rec and rec.outputs and len(rec.outputs[0]) > dims else 0)
        window = getattr(module, "kernel_size", None) or getattr(module, "output_size", "")
        return [_base(ctx, module, path, params, cell="pool window", kind=LayerKind.POOL, units=channels,
                      step_function=f"{type(module).__name__[:-2]} window {window}",
                      applications=positions // max(channels, 1))]
    for classes, kind in ((_NORM, "normalization"), (_DROPOUT, "dropout"), (_RESHAPE, "reshape")):
        if isinstance(module, classes):
            return [_elementwise(ctx, module, path, params, kind)]
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        lookups = sum(ctx.per_example(s) for s in rec.inputs) if rec else 0
        return [_base(ctx, module, path, params, cell="", kind=LayerKind.EMBEDDING, units=0,
                      step_function=f"lookup of {module.num_embeddings} rows × {module.embedding_dim}",
                      applications=lookups)]
    if type(module).__module__ == "torch.nn.modules.activation" and not isinstance(module, nn.MultiheadAttention):
        return [_elementwise(ctx, module, path, params, "activation")]
    return None


def _elementwise(ctx: Context, module: nn.Module, path: str, params: list[nn.Parameter], kind: str) -> Layer:
    """Activation, dropout, normalization, reshape: one function over each example's features, not made
    of cells (no ``cell``, no ``units``). A normalization is applied once per normalized group of features."""
    rec = ctx.calls.get(module)
    features = ctx.per_example(rec.inputs[0]) if rec and rec.inputs else 0
    if kind == "normalization":
        shape = getattr(module, "normalized_shape", None)
        group = math.prod(shape) if shape else int(getattr(module, "num_features", 0)
                                                  or getattr(module, "num_channels", 0) or features)
        apps = sum(ctx.per_example(s) // max(group, 1) for s in rec.inputs) if rec else 0
    else:
        apps = rec.count if rec else 0
    return _base(ctx, module, path, params, cell="", kind=LayerKind(kind), units=0, applications=apps,
                 step_function=type(module).__name__)


def _conv_row(ctx: Context, module: Any, path: str, params: list[nn.Parameter], dims: int) -> Layer:
    rec = ctx.calls.get(module)
    transposed = bool(module.transposed)
    kernel = math.prod(module.kernel_size)
    per_kernel = (module.in_channels // module.groups) * kernel
    if transposed:  # each input position scatters through every kernel
        shapes = rec.inputs if rec else []
        per_kernel = (module.out_channels // module.groups) * kernel
        channels = module.in_channels
    else:
        shapes = rec.outputs if rec else []
        channels = module.out_channels
    positions = sum(ctx.per_example(s) // channels for s in shapes if s)
    ks = "×".join(str(k) for k in module.kernel_size)
    return _base(ctx, module, path, params, cell="kernel", kind=LayerKind.CONV, units=module.out_channels,
                 step_function=f"Kernel({module.in_channels // module.groups}×{ks}→1) ×{module.out_channels}",
                 applications=positions, input_size=module.in_channels,
                 macs_per_application=per_kernel * (module.in_channels if transposed else module.out_channels))
