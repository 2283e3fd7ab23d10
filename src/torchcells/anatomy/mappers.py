"""Module → layer rows: what each kind of module is, in cells.

Counts are per example (one sequence): the batch is divided out. A row's
``parameters`` counts only parameters not already counted by an earlier row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from torch import nn

from ..cell import Cell
from ..layers import Bidirectional, Recurrent, Stack
from .records import Layer
from .recurrent import cell_row, recurrent_rows, torch_rnn_rows


@dataclass
class Calls:
    """What the hooks saw of one module: ``order`` of its first call, shapes per call."""

    order: int
    inputs: list[Any] = field(default_factory=list)
    input_kinds: list[str] = field(default_factory=list)
    kwargs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.inputs)


class Context:
    """The walk's shared state: calls, batch size, parameter names, parameters already counted."""

    def __init__(self, model: nn.Module, calls: dict[nn.Module, Calls], batch: int) -> None:
        self.model = model
        self.calls = calls
        self.batch = batch
        self.seen: set[int] = set()
        self.names: dict[int, str] = {}
        for name, p in model.named_parameters():
            self.names.setdefault(id(p), name)
        # torchcells' drop-ins save their parameters under torch.nn's names (weight_ih_l0, ...).
        for path, module in model.named_modules():
            internal = getattr(module, "_internal_names", None)
            if isinstance(internal, dict):
                for inner, torch_name in internal.items():
                    try:
                        p = module.get_parameter(inner)
                    except AttributeError:
                        continue
                    self.names[id(p)] = f"{path}.{torch_name}" if path else torch_name
        self.parents: dict[str, tuple[str, nn.Module]] = {}
        for path, module in model.named_modules():
            for name, child in module.named_children():
                self.parents[f"{path}.{name}" if path else name] = (path, module)

    def name(self, p: nn.Parameter) -> str:
        return self.names.get(id(p), "?")

    def count(self, params: list[nn.Parameter]) -> tuple[int, int]:
        """``(new, shared)``: elements of ``params`` counted here for the first time, and already counted."""
        new = shared = 0
        for p in params:
            if id(p) in self.seen:
                shared += p.numel()
            else:
                self.seen.add(id(p))
                new += p.numel()
        return new, shared

    def order(self, module: nn.Module) -> float:
        rec = self.calls.get(module)
        return float(rec.order) if rec else float("inf")

    def per_example(self, shape: Any) -> int:
        """Elements of one example in a recorded shape (the batch divided out)."""
        if not shape or shape[0] == "packed":
            return 0
        return max(1, math.prod(shape) // max(self.batch, 1)) if len(shape) > 1 else math.prod(shape)


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
    return _base(ctx, module, path, params, cell="opaque", kind="opaque", step_function=label, units=0,
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
        return [_base(ctx, module, path, params, cell="neuron", kind="dense", units=module.out_features,
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
        return [_base(ctx, module, path, params, cell="pool", kind="pool", units=channels,
                      step_function=f"{type(module).__name__[:-2]} window {window}",
                      applications=positions // max(channels, 1))]
    for kinds, cell in ((_NORM, "normalization"), (_DROPOUT, "dropout"), (_RESHAPE, "reshape")):
        if isinstance(module, kinds):
            return [_elementwise(ctx, module, path, params, cell)]
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        lookups = sum(ctx.per_example(s) for s in rec.inputs) if rec else 0
        return [_base(ctx, module, path, params, cell="embedding", kind="embedding", units=module.num_embeddings,
                      step_function=f"lookup of {module.num_embeddings} rows × {module.embedding_dim}",
                      applications=lookups)]
    if type(module).__module__ == "torch.nn.modules.activation" and not isinstance(module, nn.MultiheadAttention):
        return [_elementwise(ctx, module, path, params, "activation")]
    return None


def _elementwise(ctx: Context, module: nn.Module, path: str, params: list[nn.Parameter], cell: str) -> Layer:
    """Activation, dropout, normalization, reshape: one function over each example's features."""
    rec = ctx.calls.get(module)
    features = ctx.per_example(rec.inputs[0]) if rec and rec.inputs else 0
    if cell == "normalization":
        shape = getattr(module, "normalized_shape", None)
        units = math.prod(shape) if shape else int(getattr(module, "num_features", 0)
                                                  or getattr(module, "num_channels", 0) or features)
        apps = sum(ctx.per_example(s) // max(units, 1) for s in rec.inputs) if rec else 0
    else:
        units, apps = features, rec.count if rec else 0
    return _base(ctx, module, path, params, cell=cell, kind=cell, units=units, applications=apps,
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
    return _base(ctx, module, path, params, cell="kernel", kind="conv", units=module.out_channels,
                 step_function=f"Kernel({module.in_channels // module.groups}×{ks}→1) ×{module.out_channels}",
                 applications=positions, input_size=module.in_channels,
                 macs_per_application=per_kernel * (module.in_channels if transposed else module.out_channels))
