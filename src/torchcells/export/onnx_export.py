"""``export_onnx``: a model of torchcells layers as an ONNX file that runs any length and batch.

``torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=...)`` already exports these
layers (under torch.export every layer runs on the engine's ``export`` path: the time loop
is one ``scan`` operator, an ONNX ``Scan``). What this adds is what is easy to get wrong by
hand: the sequence length and the batch are declared dynamic (a file whose graph is fixed
to the example's length would give wrong results at every other one), the lengths and the
initial state become inputs of the file, the file is checked with onnxruntime at another
length and batch against the eager model before it is written, and it is written
atomically. Where the model cannot be exported so, the error names the layer or cell and
why; no file is written.

Names in the file: inputs ``input``, ``lengths`` (if given), ``state_in_0 …`` (the initial
state's tensors, in order, if given); outputs ``output``, then ``state_out_0 …`` (the final
state's tensors, in the order the model returns them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map

from ..cell import cell_name
from ..files import write_atomic

__all__ = ["OnnxCheckError", "export_onnx"]

#: (rtol, atol) of the onnxruntime check, by the example's dtype (others: float16's)
TOLERANCES = {torch.float64: (1e-7, 1e-9), torch.float32: (1e-4, 1e-5), torch.float16: (1e-2, 1e-2)}


class OnnxCheckError(RuntimeError):
    """The exported file, run by onnxruntime, did not give the eager model's results."""


class _Exported(nn.Module):
    """The model with flat inputs and outputs: ``forward(input, lengths=None, state=None)``
    returns ``(outputs, *final state tensors)``, whatever nesting the model's state has."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input: Tensor, lengths: Optional[Tensor] = None, state: Any = None) -> tuple[Tensor, ...]:
        result = self.model(input, state, lengths=lengths) if state is not None else self.model(input, lengths=lengths)
        return tuple(tree_flatten(tuple(result[:2]))[0])


def export_onnx(model: nn.Module, example_input: Tensor, path: Union[str, os.PathLike], *,
                lengths: Optional[Tensor] = None, state: Any = None, check: bool = True,
                overwrite: bool = False, opset_version: Optional[int] = None) -> Path:
    """Export ``model`` to an ONNX file at ``path`` with a dynamic sequence length and batch.

    Args:
        model: a torchcells layer (``Recurrent``, ``Stack``, ``Bidirectional``, ``LSTM``/``GRU``/``RNN``)
            or any module called ``model(x, state, lengths=...)`` that returns ``(outputs, final_state, ...)``.
            Exported as it is: call ``model.eval()`` first for inference (dropout).
        example_input: ``(T, B, ...)`` (``(B, T, ...)`` where ``model.batch_first``), ``T ≥ 2`` and
            ``B ≥ 2`` (torch.export fixes a size of 0 or 1 to that value).
        path: where the ``.onnx`` file is written (atomically, after the check).
        lengths: ``(B,)`` int64 valid lengths; given, the file has a ``lengths`` input (any values
            ``0 … T`` at run time; the file does not check them).
        state: an initial state, as the model takes it; given, the file has ``state_in_*`` inputs.
        check: run the file with onnxruntime (when installed) at a longer sequence (and a larger
            batch, without ``state``) and compare it with the eager model; a difference raises
            :class:`OnnxCheckError` and nothing is written.
        overwrite: replace a file already at ``path`` (else ``FileExistsError``).
        opset_version: the ONNX opset, or ``None`` for torch's default.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    owner, target = cell_name(model), Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"export_onnx: {target} exists; pass overwrite=True to replace it")
    time_dim, batch_dim = _dims(owner, model, example_input)
    inputs: dict[str, Any] = {"lengths": lengths, "state": state}
    inputs = {k: v for k, v in inputs.items() if v is not None}
    shapes = _dynamic_shapes(example_input, time_dim, batch_dim, inputs)
    wrapper = _Exported(model)
    program = _export(owner, wrapper, example_input, inputs, shapes, opset_version)
    data = program.model_proto.SerializeToString()
    if check:
        _check(owner, model, data, example_input, time_dim, batch_dim, inputs)
    return write_atomic(target, data)


def _dims(owner: str, model: nn.Module, x: Any) -> tuple[int, int]:
    """The time and batch dimensions of ``x`` (from the model's ``batch_first``), checked."""
    if not isinstance(x, Tensor) or x.dim() < 3:
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"export_onnx: {owner}: example_input should be a batched sequence (T, B, ...) "
                         f"or (B, T, ...) with batch_first, got {got}")
    time_dim, batch_dim = (1, 0) if getattr(model, "batch_first", False) else (0, 1)
    if x.shape[time_dim] < 2 or x.shape[batch_dim] < 2:
        raise ValueError(f"export_onnx: {owner}: example_input should have at least 2 steps and 2 sequences "
                         f"(torch.export fixes a size of 0 or 1 to that value), got {x.shape[time_dim]} steps "
                         f"and {x.shape[batch_dim]} sequences")
    return time_dim, batch_dim


def _dynamic_shapes(x: Tensor, time_dim: int, batch_dim: int, inputs: dict[str, Any]) -> dict[str, Any]:
    """``T`` and ``B`` dynamic on the input, ``B`` on the lengths; every size of the state left for
    torch.export to find (``Dim.AUTO``: its batch is tied to ``B`` by the cell's arithmetic)."""
    from torch.export import Dim

    steps, batch = Dim("T", min=1), Dim("B", min=1)
    shapes: dict[str, Any] = {"input": {time_dim: steps, batch_dim: batch}}
    if "lengths" in inputs:
        shapes["lengths"] = {0: batch}
    if "state" in inputs:
        shapes["state"] = tree_map(lambda t: {d: Dim.AUTO for d in range(t.dim())}, inputs["state"])
    return shapes


def _export(owner: str, wrapper: nn.Module, x: Tensor, inputs: dict[str, Any], shapes: dict[str, Any],
            opset_version: Optional[int]) -> Any:
    """``torch.onnx.export`` with the dynamic shapes and the file's names; its failure as an error
    that names the model and the first cause (the layer or cell that cannot be exported and why)."""
    state_leaves = tree_flatten(inputs.get("state"))[0] if "state" in inputs else []
    input_names = ["input"] + (["lengths"] if "lengths" in inputs else []) \
        + [f"state_in_{i}" for i in range(len(state_leaves))]
    with torch.no_grad():
        probe = wrapper(x, **inputs)
    output_names = ["output"] + [f"state_out_{i}" for i in range(len(probe) - 1)]
    try:
        return torch.onnx.export(wrapper, (x,), kwargs=inputs, dynamo=True, dynamic_shapes=shapes,
                                 input_names=input_names, output_names=output_names, opset_version=opset_version,
                                 verbose=False)
    except Exception as error:
        cause = _root(error)
        raise RuntimeError(f"export_onnx: {owner} cannot be exported with a dynamic sequence length and batch "
                           f"(no file written): {type(cause).__name__}: {cause}") from error


def _root(error: BaseException) -> BaseException:
    """The first exception of ``error``'s chain (what torch's wrappers were raised from)."""
    seen = {id(error)}
    while True:
        nxt = error.__cause__ or error.__context__
        if nxt is None or id(nxt) in seen:
            return error
        seen.add(id(nxt))
        error = nxt


def _check(owner: str, model: nn.Module, data: bytes, x: Tensor, time_dim: int, batch_dim: int,
           inputs: dict[str, Any]) -> None:
    """Run the file with onnxruntime at ``T + 3`` steps (and ``B + 1`` sequences where no state is
    given: the state's batch dimension is the model's own) and compare it with the eager model."""
    try:
        import onnxruntime
    except ImportError:
        return
    gen = torch.Generator().manual_seed(0)
    steps, batch = x.shape[time_dim] + 3, x.shape[batch_dim] + ("state" not in inputs)
    shape = list(x.shape)
    shape[time_dim], shape[batch_dim] = steps, batch
    new: dict[str, Any] = {}
    x2 = torch.randn(shape, generator=gen, dtype=x.dtype).to(x.device)
    if "lengths" in inputs:
        lens = torch.randint(0, steps + 1, (batch,), generator=gen)
        lens[0] = steps
        new["lengths"] = lens.to(inputs["lengths"].device)
    if "state" in inputs:
        new["state"] = tree_map(lambda t: torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device),
                                inputs["state"])
    with torch.no_grad():
        want = _Exported(model)(x2, **new)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    values = [x2] + ([new["lengths"]] if "lengths" in new else []) + tree_flatten(new.get("state"))[0]
    names = ["input"] + (["lengths"] if "lengths" in new else []) \
        + [f"state_in_{i}" for i in range(len(values) - 1 - ("lengths" in new))]
    wanted = {i.name for i in session.get_inputs()}
    got = session.run(None, {n: v.detach().cpu().numpy() for n, v in zip(names, values) if n in wanted})
    _compare(owner, model, got, want, x.dtype, steps, batch)


def _compare(owner: str, model: nn.Module, got: list, want: tuple[Tensor, ...], dtype: torch.dtype,
             steps: int, batch: int) -> None:
    rtol, atol = TOLERANCES.get(dtype, TOLERANCES[torch.float16])
    where = f"at {steps} steps and {batch} sequences"
    if len(got) != len(want):
        raise OnnxCheckError(f"export_onnx: {owner}: the file returns {len(got)} tensors {where}, the eager model "
                             f"{len(want)}; no file written")
    for i, (g, w) in enumerate(zip(got, want)):
        name = "output" if i == 0 else f"state_out_{i - 1}"
        g_t = torch.from_numpy(g)
        w_t = w.detach().cpu()
        if tuple(g_t.shape) != tuple(w_t.shape):
            raise OnnxCheckError(f"export_onnx: {owner}: {name} has shape {tuple(g_t.shape)} in the file {where}, "
                                 f"{tuple(w_t.shape)} in the eager model; no file written")
        if not torch.allclose(g_t.to(w_t.dtype), w_t, rtol=rtol, atol=atol):
            diff = (g_t.to(w_t.dtype) - w_t).abs().max().item()
            hint = " (the model is in training mode: call model.eval() first)" if model.training else ""
            raise OnnxCheckError(f"export_onnx: {owner}: onnxruntime's {name} differs from the eager model's {where} "
                                 f"by up to {diff:.3g} (allowed: rtol {rtol}, atol {atol}){hint}; no file written")
