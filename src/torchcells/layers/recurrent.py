"""``Recurrent(cell)``: a cell applied across time, sharing its weights at every step.

Shapes: input ``(T, B, I)`` (``(B, T, I)`` with ``batch_first``, ``(T, I)`` unbatched);
outputs ``(T, B, O)`` in the same layout; states as the cell defines them ``(B, ...)``.
"""

from __future__ import annotations

import copy
import warnings
import weakref
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..cell import (Cell, State, autocast_casts, cell_name, check_input, check_state, check_step, map_state,
                    state_leaves, step_pair)
from ..engine import check_lengths, engines, run
from ..engine.paths import loop_runs_short
from ..engine.recompute import run_chunked
from ..engine.lengths import Lengths


class Recurrent(nn.Module):
    """A recurrent layer made of one cell: ``T`` applications of one step function.

    Args:
        cell: any :class:`~torchcells.Cell`.
        batch_first: input and outputs are ``(B, T, ...)`` instead of ``(T, B, ...)``.
        reverse: read each sequence backwards, from its own last valid step.
        engine: ``"auto"`` (default: the first path of the engine's registry that accepts
            the call -- a parallel scan for cells that declare ``scan_coefficients``, torch's
            kernel for cells that declare ``torch_kernel()`` where it is the faster, the fused
            path (input part hoisted out of the loop, one autograd node per sequence) for
            cells that trace, else the reference loop, with a one-time warning saying why),
            or a path by name: ``"loop"``, ``"fused"``, ``"scan"``, ``"torch"``, ``"export"`` (a path
            that cannot run a call raises an error saying why). Under ``torch.export`` (and ONNX
            through it) auto runs the ``"export"`` path, one ``scan`` operator over time valid for
            every length, and a layer named onto another path raises an error. Every path gives the reference
            loop's results, or refuses. Second-order gradients (``create_graph=True``: a
            gradient penalty, ``gradgradcheck``) are the loop's on every path (the fused
            path's backward recomputes the sequence under autograd for such a backward, at
            the loop's cost); ``torch.jit.trace`` records only
            ``"torch"`` (the others would be fixed to one length) and refuses the rest.
        checkpoint_steps: for long sequences, keep only the state every this many steps
            and recompute each chunk's forward during backward (less memory, one more
            forward); ``None`` (default) keeps everything.

    Returns:
        ``forward(x, state=None, *, lengths=None, all_states=False)`` returns ``(outputs, final_state)``
        (``+ (states,)`` with ``all_states``), as said below.

    ``forward(x, state=None, *, lengths=None, all_states=False)`` returns
    ``(outputs, final_state)``, or ``(outputs, final_state, states)`` with
    ``all_states=True``, ``states`` being the cell's state at every step with a time
    axis added to each tensor (``(T, B, ...)``, or ``(B, T, ...)`` with batch_first) --
    both ``h`` and ``c`` for an LSTM.

    With ``lengths`` (one per sequence, any order, each in ``0 … T``): outputs and
    every-step states are exactly zero at padded steps, ``final_state`` is each
    sequence's state after its last valid step, and padded steps influence nothing.
    A sequence of length 0 keeps its initial state. ``T = 0`` returns empty outputs
    and the initial state; an empty batch returns empty outputs.

    Example::

        >>> layer = Recurrent(LSTMCell(8, 16), batch_first=True)
        >>> out, (h, c) = layer(torch.randn(4, 10, 8), lengths=[10, 3, 7, 1])
        >>> out.shape, h.shape
        (torch.Size([4, 10, 16]), torch.Size([4, 16]))
    """

    def __init__(self, cell: Cell, *, batch_first: bool = False, reverse: bool = False,
                 engine: str = "auto", checkpoint_steps: Optional[int] = None) -> None:
        super().__init__()
        if engine not in engines():
            raise ValueError(f"Recurrent: engine should be one of {engines()}, got {engine!r}")
        if checkpoint_steps is not None and (isinstance(checkpoint_steps, bool) or not isinstance(checkpoint_steps, int)
                                             or checkpoint_steps <= 0):
            raise ValueError(f"Recurrent: checkpoint_steps should be a positive int or None, got {checkpoint_steps!r}")
        self.engine = engine
        self.checkpoint_steps = checkpoint_steps
        if not isinstance(cell, nn.Module) or not hasattr(cell, "init_state"):
            raise TypeError(f"Recurrent: cell should be a torchcells.Cell (a module with forward(x, state) "
                            f"and init_state(batch_size)), got {type(cell).__name__}")
        self.cell = cell
        self.batch_first = bool(batch_first)
        self.reverse = bool(reverse)

    def short_name(self) -> str:
        return f"Recurrent({cell_name(self.cell)}{', reverse' if self.reverse else ''})"

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> State:
        return self.cell.init_state(batch_size, device=device, dtype=dtype)

    def reversed_copy(self) -> "Recurrent":
        """A copy reading time the other way, with freshly initialized weights."""
        twin = reversed_copy(self)
        assert isinstance(twin, Recurrent)
        return twin

    def forward(self, x: Tensor, state: Optional[State] = None, *, lengths: Optional[Lengths] = None,
                all_states: bool = False):
        if lengths is None and not all_states:
            streamed = _streamed(self, x, state, self.batch_first)
            if streamed is not None:
                return streamed
        owner = self.short_name()
        x, state, lens, unbatched, known = self._checked(owner, x, state, lengths, batch_first=self.batch_first)
        outputs, final, states = self._run(owner, x, state, lens, all_states, reverse=self.reverse)
        _vouch(self, state, final, x, known)
        if unbatched:
            outputs = outputs.squeeze(1)
            final = map_state(lambda s: s.squeeze(0), final)
            if states is not None:
                states = map_state(lambda s: s.squeeze(1), states)
        elif self.batch_first:
            outputs = outputs.transpose(0, 1)
            if states is not None:
                states = map_state(lambda s: s.transpose(0, 1), states)
        return (outputs, final, states) if all_states else (outputs, final)

    def step(self, x_t: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        """One time step: ``(y_t, new_state)`` for ``x_t`` ``(B, I)`` (``(I,)`` unbatched, its state
        unbatched too) from ``state`` (``None``: the cell's initial state).

        The layer's own call at ``T = 1`` -- the same checks and error messages, the same
        engine, the same results -- without the time axis, for a model that acts as it reads
        (reinforcement learning, real-time audio or control): the returned state goes back in
        with the next input. ``batch_first`` plays no part (there is no time axis); neither does
        ``reverse`` (one step reads the same either way). Without gradients a step runs on the
        reference loop, one call of the cell, with nothing set up for many steps
        (:func:`torchcells.engine.paths.short_call`).

        Example::

            >>> layer = Recurrent(GRUCell(4, 8))
            >>> state = None
            >>> with torch.no_grad():
            ...     for observation in torch.randn(3, 1, 4):   # one (B=1, I=4) at a time
            ...         y, state = layer.step(observation, state)
            >>> y.shape, state.shape
            (torch.Size([1, 8]), torch.Size([1, 8]))
        """
        owner = self.short_name()
        rank = getattr(self.cell, "step_rank", 1)
        if isinstance(x_t, Tensor) and x_t.dim() not in (rank + 1, rank):
            raise ValueError(f"{owner}: step input should have {rank + 1} or {rank} dimensions (B, ...), or (...) "
                             f"unbatched (one step, no time axis), got {x_t.dim()} with shape {tuple(x_t.shape)}")
        x = x_t.unsqueeze(0) if isinstance(x_t, Tensor) else x_t  # (1, B, ...) or (1, ...) unbatched
        streamed = _streamed(self, x, state, False, stepping=True)
        if streamed is not None:
            return streamed[0][0], streamed[1]
        x, state, _, unbatched, known = self._checked(owner, x, state, None, batch_first=False)
        outputs, final, _ = self._run(owner, x, state, None, False, reverse=False)
        _vouch(self, state, final, x, known)
        if unbatched:
            return outputs[0, 0], map_state(lambda s: s.squeeze(0), final)
        return outputs[0], final

    def _checked(self, owner: str, x: Tensor, state: Optional[State], lengths: Optional[Lengths], *,
                 batch_first: bool) -> tuple[Tensor, State, Optional[Tensor], bool, Any]:
        """The call's input time-major ``(T, B, ...)``, its initial state, its lengths (``None``: all
        full), whether it came unbatched, and the state's skeleton where the state is the one the last
        call returned (:func:`_vouched`; else ``None``), after every check a layer call makes."""
        cell = self.cell
        step_rank = getattr(cell, "step_rank", 1)
        layout = "(B, T, ...)" if batch_first else "(T, B, ...)"
        check_input(owner, x, ranks=(step_rank + 2, step_rank + 1), features=None,
                    layout=f" {layout}, or (T, ...) unbatched")
        features = getattr(cell, "input_size", None)
        if features is not None and x.shape[x.dim() - step_rank] != features:
            raise ValueError(f"{owner}: input has {x.shape[x.dim() - step_rank]} features per step, "
                             f"expected {features}")
        weight = first_weight(cell)
        if weight is not None and weight.dtype != x.dtype and not autocast_casts(x, weight):
            raise TypeError(f"{owner}: input has dtype {x.dtype} but the cell's parameters are {weight.dtype}; "
                            f"convert one of them (input.to({weight.dtype}) or layer.to({x.dtype}))")
        unbatched = x.dim() == step_rank + 1
        if unbatched:
            x = x.unsqueeze(1)
            if state is not None:
                state = _unsqueeze_state(owner, state)
        elif batch_first:
            x = x.transpose(0, 1)
        steps, batch = x.shape[0], x.shape[1]
        lens = check_lengths(owner, lengths, steps, batch)
        if unbatched and lengths is not None:
            raise ValueError(f"{owner}: lengths is for batched input; an unbatched input is one sequence")
        known = None
        if state is None:
            state = cell.init_state(batch, device=x.device, dtype=x.dtype)
        else:
            known = _vouched(self, state, batch, x.dtype, x.device)
            if known is None:
                expected = cell.init_state(batch, device="meta", dtype=x.dtype)
                state = check_state(owner, expected, state, dtype=x.dtype, device=x.device)
        return x, state, lens, unbatched, known

    def _run(self, owner: str, x: Tensor, state: State, lens: Optional[Tensor], all_states: bool, *,
             reverse: bool) -> tuple[Tensor, State, Optional[State]]:
        """The engine over a checked, time-major call; its errors about the cell said as the layer's."""
        begin_call = getattr(self.cell, "begin_call", None)
        if callable(begin_call):  # a call starts: a wrapper that draws per call (WeightDrop) does it now
            begin_call()
        try:
            if self.checkpoint_steps is not None:
                return run_chunked(self.cell, x, state, lengths=lens, reverse=reverse, all_states=all_states,
                                   engine=self.engine, chunk=self.checkpoint_steps)
            return run(self.cell, x, state, lengths=lens, reverse=reverse, all_states=all_states,
                       engine=self.engine)
        except (TypeError, ValueError) as e:
            raise _named(owner, cell_name(self.cell), e) from None

    def extra_repr(self) -> str:
        opts = [f"{k}=True" for k in ("batch_first", "reverse") if getattr(self, k)]
        if self.engine != "auto":
            opts.append(f"engine={self.engine!r}")
        if self.checkpoint_steps is not None:
            opts.append(f"checkpoint_steps={self.checkpoint_steps}")
        return ", ".join(opts)


def _named(owner: str, cell: str, error: Exception) -> Exception:
    """``error`` from the engine about what the cell's ``forward`` returned, said as the layer's
    (``Recurrent(GRUCell(8→16)): the cell's forward returned ...``); any other error as it came."""
    message = str(error)
    if type(error) not in (TypeError, ValueError) or not message.startswith(f"{cell}: forward "):
        return error
    return type(error)(f"{owner}: the cell's {message[len(cell) + 2:]}").with_traceback(error.__traceback__)


#: per layer, the final state of its last call, where it passes the state check as it is: a
#: streaming caller hands it straight back, and it is not checked again (:func:`_vouched`)
_RETURNED: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _vouch(layer: nn.Module, given: State, final: State, x: Tensor, known: Any = None) -> None:
    """Remember ``final`` for ``layer``'s next call if it has the structure, shapes, dtypes and
    devices of ``given`` (the call's checked initial state), each leaf in ``x``'s dtype (none let
    through by autocast) and on its device: then the state check would pass it unchanged, and
    :func:`_vouched` may let it through. ``known``: ``given``'s skeleton where :func:`_vouched`
    passed it this call (its leaves are then of ``x``'s dtype and device already). Not while
    recording a graph (the identity would become a guard of it)."""
    if _recording():
        return
    skeleton = _skeleton(final)
    if known is not None:
        fits = skeleton == known
    else:
        fits = skeleton == _skeleton(given) and all(t.dtype == x.dtype and t.device == x.device
                                                    for t in state_leaves(final))
    _remember(layer, final, skeleton if fits else None, x.shape[1], x.dtype, x.device)


def _remember(layer: nn.Module, final: State, skeleton: Any, batch: int, dtype: torch.dtype,
              device: torch.device) -> None:
    """Keep ``final`` (of skeleton ``skeleton``) for ``layer``'s next call with a batch of ``batch`` in
    ``dtype`` on ``device`` (:func:`_vouched`); ``skeleton=None``: forget the last call's."""
    if skeleton is not None:
        _RETURNED[layer] = (final, layer.cell, batch, dtype, device, skeleton)  # one store
    else:
        _RETURNED.pop(layer, None)


def _streamed(layer: Recurrent, x: Any, state: Any, batch_first: bool, stepping: bool = False
              ) -> Optional[tuple[Tensor, State]]:
    """``layer``'s call on ``x``, one batched time step, without gradients, from the state its last
    call returned (:func:`_vouched`), run as the reference loop runs it (one cell call, its result
    checked) without opening a call: ``(outputs, final_state)``, the very values the full call
    gives. ``None`` where the full call must run -- another state, gradients, several steps,
    lengths, a recording mode, an engine that would not run such a call on the loop -- or where it
    might refuse (input of another rank, features, dtype or device; a weight of another dtype):
    its checks then say why. One step of a stream costs the cell's call and a few look-ups.
    ``stepping``: a call of :meth:`Recurrent.step`, which reads forwards (a reversed layer's full
    call hands the cell a reversed copy of its input, so the step gets a copy of its own there)."""
    if torch.is_grad_enabled() or layer.checkpoint_steps is not None or not isinstance(x, Tensor):
        return None
    cell = layer.cell
    rank = getattr(cell, "step_rank", 1)
    if x.dim() != rank + 2 or x.shape[int(batch_first)] != 1:
        return None
    batch, dtype = x.shape[1 - int(batch_first)], x.dtype
    skeleton = _vouched(layer, state, batch, dtype, x.device)
    if skeleton is None:
        return None
    features = getattr(cell, "input_size", None)
    weight = first_weight(cell)
    if ((features is not None and x.shape[x.dim() - rank] != features)
            or (weight is not None and weight.dtype != dtype) or not loop_runs_short(layer.engine, 1)):
        return None
    begin_call = getattr(cell, "begin_call", None)
    if callable(begin_call):
        begin_call()
    x_t = x[:, 0] if batch_first else x[0]
    if layer.reverse and not stepping:  # the full call reads a reversed copy: one step of its own
        x_t = x_t.clone()
    try:
        returned = cell(x_t, state)
        y, final = returned if isinstance(returned, tuple) and len(returned) == 2 else step_pair(cell_name(cell), returned)
        fits = _skeleton(final) == skeleton  # the state's structure, shapes, dtypes and devices
        if not (fits and isinstance(y, Tensor) and y.dim() > 0 and y.shape[0] == batch):
            check_step(cell_name(cell), x_t, state, y, final)  # says what is wrong (the loop's check)
    except (TypeError, ValueError) as e:
        raise _named(layer.short_name(), cell_name(cell), e) from None
    _remember(layer, final, skeleton if fits else None, batch, dtype, x.device)
    return torch.stack([y], int(batch_first)), final


def _vouched(layer: nn.Module, state: Any, batch: int, dtype: torch.dtype, device: torch.device) -> Any:
    """``state``'s skeleton if ``state`` is the very object ``layer``'s last call returned
    (:func:`_vouch`), handed back to the same cell for a call of ``batch`` in the same ``dtype`` on the
    same ``device``, its leaves still of the shapes
    (the batch size among them), dtypes and devices they had (a tensor's can change in place):
    the check it passed then holds now. Saves the cell's ``init_state`` on the meta device at each
    step of a stream, most of the cost of checking a state. ``None`` where not."""
    record = _RETURNED.get(layer)
    if record is None or record[0] is not state or _recording():
        return None
    _, cell, kept_batch, kept_dtype, kept_device, skeleton = record
    if (cell is layer.cell and kept_batch == batch and kept_dtype == dtype and kept_device == device
            and _skeleton(state) == skeleton):
        return skeleton
    return None


def _skeleton(state: Any) -> Any:
    """``state``'s container types and its leaves' shapes, dtypes and devices, nested as the state is."""
    if isinstance(state, Tensor):
        return (state.shape, state.dtype, state.device)
    if isinstance(state, tuple):
        return (type(state),) + tuple(map(_skeleton, state))
    return (type(state), id(state))  # anything else: never equal to another's


def _recording() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def first_weight(module: nn.Module) -> Optional[Tensor]:
    """The first floating-point parameter of ``module`` in ``parameters()`` order (its own, then
    each submodule's, depth first), or ``None``: the dtype a call's input must have. Read from
    the modules' parameter dictionaries at every call (nothing kept: a parameter may be replaced
    between calls), without the generator machinery of ``parameters()``."""
    for p in module._parameters.values():
        if p is not None and p.is_floating_point():
            return p
    for child in module._modules.values():
        if child is not None:
            found = first_weight(child)
            if found is not None:
                return found
    return None


def _unsqueeze_state(owner: str, state: Any) -> Any:
    def add_batch(s: Any) -> Tensor:
        if not isinstance(s, Tensor):
            raise TypeError(f"{owner}: state should hold tensors, got {type(s).__name__}")
        return s.unsqueeze(0)
    try:
        return map_state(add_batch, state)
    except TypeError as e:
        if str(e).startswith(owner):
            raise
        raise TypeError(f"{owner}: {e}") from None


def reversed_copy(layer: nn.Module) -> nn.Module:
    """A deep copy of ``layer`` whose Recurrent layers all read time the other way,
    with every parameter freshly initialized (``reset_parameters``)."""
    twin = copy.deepcopy(layer)
    for module in twin.modules():
        if isinstance(module, Recurrent):
            module.reverse = not module.reverse
    copied = []
    for name, module in twin.named_modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        else:
            own = [n for n, _ in module.named_parameters(recurse=False)]
            copied += [f"{name}.{n}" if name else n for n in own]
    if copied:
        warnings.warn(f"reversed copy of {type(layer).__name__}: {', '.join(copied)} belong to modules without "
                      f"reset_parameters(), so the backward copy starts from the forward's values; define "
                      f"reset_parameters() on the cell to initialize it independently", stacklevel=3)
    return twin
