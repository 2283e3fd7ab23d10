"""The cell contract: one step function ``(x_t, state) -> (y_t, state)``.

A *cell* is the function a recurrent layer applies once per time step. It knows
nothing of time, sequences, directions or padding; the layer and the engine own
those. A state is a tensor or a NamedTuple of tensors, each with the batch as its
first dimension.

Shapes (one legend for the whole package): ``T`` steps, ``B`` batch, ``I`` input
features, ``H`` hidden units.

Example -- a cell of your own, with a two-tensor state::

    class LeakyCell(Cell):
        def __init__(self, input_size, hidden_size):
            super().__init__(input_size, hidden_size)
            self.lin = nn.Linear(input_size + hidden_size, hidden_size)
            self.leak = nn.Parameter(torch.zeros(hidden_size))

        def init_state(self, batch_size, *, device=None, dtype=None):
            z = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
            return PairState(z, z.clone())

        def forward(self, x, state):
            h, m = state
            a = torch.sigmoid(self.leak)
            m = a * m + (1 - a) * torch.tanh(self.lin(torch.cat([x, h], -1)))
            return m, PairState(m, h)

``Recurrent(LeakyCell(8, 16))`` is then a layer with lengths, reverse and states.

Optional hooks, declared on :class:`Cell` with defaults that declare nothing (a cell
overrides the ones it has, and the engine and anatomy read these names only):

* ``output_size`` -- features of ``y`` per step (default ``hidden_size``);
* ``GATES`` -- names of the gates, in the order of the rows they own (default ``()``);
* ``CANDIDATES`` -- which of those blocks of rows are a candidate (the new content a step
  writes, an LSTM's ``g``, a GRU's ``n``), not a gate (default ``()``);
* ``scan_coefficients(x)`` -- the step is linear in the state; enables the parallel scan;
* ``scan_gates()`` -- those coefficients are a gating the engine knows (minGRU's, minLSTM's)
  of one product of the input: the scan then runs them and the recurrence in one native pass;
* ``torch_kernel()`` -- the cell is one of torch's own recurrences; enables its kernel;
* ``state_roles()`` -- what each state tensor is (:data:`STATE_ROLES`), so that the
  wrappers know what they may touch: zoneout never averages a stabilizer, recurrent
  dropout masks only what feeds the recurrent products (default: not declared);
* ``feedback_step(x, state, fed)`` -- one step whose recurrent products read ``fed``
  in place of ``h_{t−1}`` while the carried state stays whole (``RecurrentDropout``);
* ``candidate_step(x, state, drop)`` -- one step with ``drop`` applied to the candidate
  written into the memory (``CandidateDropout``);
* ``begin_call()`` -- called by a layer once at the start of each call, before any
  step (``WeightDrop`` draws its mask there); a no-op by default.

:func:`declares` tells whether a cell has one of :data:`OPTIONAL_HOOKS`. A module that
is not a ``Cell`` (any module with ``forward(x, state)`` and ``init_state``) may define
them by the same names; without them it declares none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple, Optional, Union

import torch
from torch import Tensor, nn

# A state is a tensor or a (possibly nested) tuple / NamedTuple of tensors.
State = Union[Tensor, tuple]

__all__ = ["Cell", "OPTIONAL_HOOKS", "STATE_ROLES", "ScanGateForm", "State", "TorchKernelForm", "at_least_float32", "cell_name", "check_input", "check_state",
           "declares", "is_namedtuple", "map_state", "state_leaves"]


#: What a state tensor can be, as a cell declares it in ``state_roles()`` (one role per
#: tensor, in :func:`state_leaves` order):
#:
#: * ``"hidden"`` -- ``h_{t−1}`` read by the step only through its recurrent products and
#:   recomputed at every step (an LSTM's or an Elman cell's ``h``);
#: * ``"memory"`` -- carried on: the step reads it other than through a product (an LSTM's
#:   ``c``; a GRU's ``h``, which is both fed back and carried);
#: * ``"normalizer"`` -- a memory that sums the input gates (an sLSTM's ``n``);
#: * ``"stabilizer"`` -- the log scale of the memories and normalizers beside it in the
#:   same state (an sLSTM's ``m``: the true memory is ``c·e^m``); never averaged;
#: * ``"other"`` -- anything else (a mask, a window of past inputs, a running sum): no
#:   wrapper touches it.
STATE_ROLES = ("hidden", "memory", "normalizer", "stabilizer", "other")


def is_namedtuple(obj: Any) -> bool:
    return isinstance(obj, tuple) and hasattr(type(obj), "_fields")


def map_state(fn: Callable[..., Tensor], state: Any, *others: Any) -> Any:
    """Apply ``fn`` leaf-wise to one state (or several of the same structure).

    NamedTuple types are kept, so ``map_state(lambda t: t[:2], LSTMState(h, c))``
    is an ``LSTMState``.

    Args:
        fn: called with one leaf of ``state`` (and the matching leaves of ``others``).
        state: a tensor or a (nested) tuple / NamedTuple of tensors.
        *others: states of the same structure, read leaf by leaf beside ``state``.

    Returns:
        A state of ``state``'s structure holding ``fn``'s results.
    """
    if isinstance(state, Tensor):
        return fn(state, *others)
    if isinstance(state, (tuple, list)):
        parts = [map_state(fn, s, *(o[i] for o in others)) for i, s in enumerate(state)]
        if is_namedtuple(state):
            return type(state)(*parts)
        return type(state)(parts) if isinstance(state, list) else tuple(parts)
    raise TypeError(f"a state is a tensor or a tuple of tensors, got {type(state).__name__}")


def state_leaves(state: Any) -> list[Tensor]:
    """The tensors of a (nested) state, in order."""
    if isinstance(state, Tensor):
        return [state]
    out: list[Tensor] = []
    for s in state:
        out.extend(state_leaves(s))
    return out


def _describe_structure(state: Any) -> str:
    if isinstance(state, Tensor):
        return f"tensor of shape {tuple(state.shape)}"
    if isinstance(state, (tuple, list)):
        inner = ", ".join(_describe_structure(s) for s in state)
        return f"{type(state).__name__}({inner})"
    return type(state).__name__


def check_state(owner: str, expected: Any, got: Any, *, arg: str = "state",
                dtype: Optional[torch.dtype] = None, device: Optional[torch.device] = None) -> Any:
    """Check ``got`` against the structure and shapes of ``expected``; return it normalized.

    ``expected`` usually comes from ``init_state(B, device="meta")`` so no memory is
    touched. A plain tuple is accepted where a NamedTuple is expected and converted.
    Raises ``TypeError``/``ValueError`` naming ``owner`` and ``arg``.
    """
    if isinstance(expected, Tensor):
        if not isinstance(got, Tensor):
            raise TypeError(f"{owner}: {arg} should be a tensor of shape {tuple(expected.shape)}, "
                            f"got {type(got).__name__}")
        if tuple(got.shape) != tuple(expected.shape):
            raise ValueError(f"{owner}: {arg} should have shape {tuple(expected.shape)}, "
                             f"got {tuple(got.shape)}")
        if dtype is not None and got.dtype != dtype and not autocast_allows(got.device.type, got.dtype, dtype):
            raise TypeError(f"{owner}: {arg} has dtype {got.dtype}, expected {dtype} like the input")
        if device is not None and got.device != device:
            raise ValueError(f"{owner}: {arg} is on {got.device}, expected {device} like the input")
        return got
    if isinstance(expected, (tuple, list)):
        fields = getattr(type(expected), "_fields", None)
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            raise TypeError(f"{owner}: {arg} should be {_describe_structure(expected)}, "
                            f"got {_describe_structure(got)}")
        parts = []
        for i, (e, g) in enumerate(zip(expected, got)):
            name = f"{arg}.{fields[i]}" if fields else f"{arg}[{i}]"
            parts.append(check_state(owner, e, g, arg=name, dtype=dtype, device=device))
        if fields:
            return type(expected)(*parts)
        return tuple(parts)
    raise TypeError(f"{owner}: cannot check a state of type {type(expected).__name__}")


def check_input(owner: str, x: Any, *, ranks: tuple[int, ...], features: Optional[int],
                arg: str = "input", layout: str = "") -> None:
    """Common input checks: a floating tensor of an allowed rank and feature count."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner}: {arg} should be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{owner}: {arg} has dtype {x.dtype}, expected a floating-point tensor "
                        f"(convert with .float())")
    if x.dim() not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ValueError(f"{owner}: {arg} should have {want} dimensions{layout}, "
                         f"got {x.dim()} with shape {tuple(x.shape)}")
    if features is not None and x.shape[-1] != features:
        raise ValueError(f"{owner}: {arg} has {x.shape[-1]} features per step, expected {features}")


def step_pair(owner: str, returned: Any) -> tuple[Any, Any]:
    """``(y, new_state)`` from what a cell's ``forward`` returned; ``TypeError`` naming ``owner`` unless a pair."""
    if not isinstance(returned, tuple) or len(returned) != 2:
        what = f"a tensor of shape {tuple(returned.shape)}" if isinstance(returned, Tensor) else \
            f"a {type(returned).__name__}" + (f" of {len(returned)}" if isinstance(returned, (tuple, list)) else "")
        raise TypeError(f"{owner}: forward should return a pair (y, state), got {what}")
    return returned


def check_step(owner: str, x: Tensor, state: Any, y: Any, new: Any) -> None:
    """What one step returned, against what it was given: ``y`` a tensor with the batch of
    ``x`` first; ``new`` a state with the leaves of ``state``, each of the same shape
    (batch included), dtype and device. Raises ``TypeError``/``ValueError`` naming ``owner``.

    Every engine path runs it once per call (the loop on its first step, the traced paths
    when they trace): a cell that shrinks the batch, returns a scalar or changes a dtype is
    an error wherever it runs, never a silent broadcast or cast."""
    if step_fits(x, state, y, new):
        return
    if not isinstance(y, Tensor):
        raise TypeError(f"{owner}: forward should return (y, state) with y a tensor, got {type(y).__name__}")
    if y.dim() == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{owner}: forward returned y of shape {tuple(y.shape)}; expected the batch of the "
                         f"input ({x.shape[0]}) first")
    try:
        got = state_leaves(new)
    except TypeError:
        got = None
    old = state_leaves(state)
    if got is None or len(got) != len(old) or not all(isinstance(t, Tensor) for t in got):
        raise TypeError(f"{owner}: forward returned a new state {_describe_structure(new)}; expected "
                        f"{_describe_structure(state)} like the state it was given")
    for i, (n, o) in enumerate(zip(got, old)):
        if n.shape == o.shape and n.dtype == o.dtype and n.device.type == o.device.type:
            continue  # the usual case, checked without building the messages' tuples
        for what, a, b in (("shape", tuple(n.shape), tuple(o.shape)), ("dtype", n.dtype, o.dtype),
                           ("device", n.device.type, o.device.type)):
            # under autocast a step may legitimately return its state in the autocast dtype
            if a != b and not (what == "dtype" and _autocast_on(x.device.type)):
                raise (ValueError if what == "shape" else TypeError)(
                    f"{owner}: forward returned a new state whose leaf {i} has {what} {a}; expected {b} "
                    f"like the state it was given")


def step_fits(x: Tensor, state: Any, y: Any, new: Any) -> bool:
    """Whether a step's ``(y, new)`` passes :func:`check_step` in the usual way: ``y`` a tensor with
    ``x``'s batch first, ``new`` of ``state``'s very structure (container types included) with
    leaves of the same shapes, dtypes and devices. Cheap; ``False`` leaves the verdict (and the
    message) to :func:`check_step`."""
    return (isinstance(y, Tensor) and y.dim() > 0 and y.shape[0] == x.shape[0]
            and _same_leaves(new, state))


def _same_leaves(new: Any, old: Any) -> bool:
    if isinstance(old, Tensor):
        return (isinstance(new, Tensor) and new.shape == old.shape and new.dtype == old.dtype
                and new.device == old.device)
    if type(new) is not type(old) or not isinstance(old, tuple) or len(new) != len(old):
        return False
    return all(_same_leaves(n, o) for n, o in zip(new, old))


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (``False`` for a device without autocast, e.g. meta)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


def at_least_float32(t: Tensor) -> Tensor:
    """``t`` in float32 if its dtype is a lower-precision float (bfloat16, float16), else ``t``."""
    if t.is_floating_point() and torch.finfo(t.dtype).bits < 32:
        return t.float()
    return t


def autocast_casts(x: Tensor, other: Tensor) -> bool:
    """Whether autocast is on for ``x``'s device and ``x`` and ``other`` are both in autocast's
    floating types (its lower dtype, float32): autocast casts them for each product, as torch.nn's
    layers rely on (a stack's next layer gets the previous one's lower-precision output; a step's
    state comes back in the lower dtype)."""
    return autocast_allows(x.device.type, x.dtype, other.dtype)


def autocast_allows(device_type: str, *dtypes: torch.dtype) -> bool:
    """Whether autocast is on for ``device_type`` and every one of ``dtypes`` is float32 or its dtype."""
    if not _autocast_on(device_type):
        return False
    allowed = {torch.float32, torch.get_autocast_dtype(device_type)}
    return all(d in allowed for d in dtypes)


class Cell(nn.Module):
    """Base class of every cell: one step ``forward(x, state) -> (y, new_state)``.

    Subclasses set ``input_size`` and ``hidden_size`` (through ``__init__``) and write
    ``forward``. ``init_state`` defaults to zeros of shape ``(B, hidden_size)``;
    override it for any other state (e.g. a NamedTuple of two tensors).

    Args:
        input_size: ``I``, features of ``x`` per step (``None`` if any size is fine).
        hidden_size: ``H``, the number of units (``None`` for a cell whose state is not ``(B, H)``).

    Returns:
        ``forward(x, state)`` returns ``(y, new_state)``: ``y`` ``(B, output_size)`` and a state of the
        structure ``init_state`` makes.

    The optional hooks below (``output_size``, ``GATES``, ``scan_coefficients``,
    ``torch_kernel``) have defaults that declare nothing; a cell overrides what it has.
    """

    input_size: Optional[int]
    hidden_size: Optional[int]
    #: dimensions of one step's input without the batch: 1 for ``(I,)`` vectors,
    #: 3 for ``(C, H, W)`` images in a convolutional cell. ``input_size`` is the
    #: size of the first of them.
    step_rank: int = 1
    #: names of the gates, in the order of the blocks of rows they own in the stacked
    #: weights (``("i", "f", "g", "o")`` for an LSTM); anatomy names the neurons after
    #: them. ``()``: no gate rows to name.
    GATES: tuple[str, ...] = ()
    #: the names in ``GATES`` whose rows make a candidate -- the new content written into the
    #: state (``("g",)`` for an LSTM, ``("n",)`` for a GRU) -- rather than a gate that scales
    #: something; anatomy calls them so. ``()``: every named block is a gate.
    CANDIDATES: tuple[str, ...] = ()

    def __init__(self, input_size: Optional[int] = None, hidden_size: Optional[int] = None) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size

    def init_state(self, batch_size: int, *, device: Optional[torch.device | str] = None,
                   dtype: Optional[torch.dtype] = None) -> State:
        """Zeros of shape ``(B, H)``; override for a different state."""
        if self.hidden_size is None:
            raise NotImplementedError(f"{self.short_name()}: define init_state() or set hidden_size")
        return torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)

    def forward(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must define forward(x, state)")

    @property
    def output_size(self) -> Optional[int]:
        """Features of ``y`` per step: ``hidden_size`` unless the cell sets it
        (``self.output_size = n`` in ``__init__``) or overrides this property (a
        projected LSTM, a wrapper)."""
        return self.__dict__.get("_output_size", self.hidden_size)

    @output_size.setter
    def output_size(self, value: Optional[int]) -> None:
        self.__dict__["_output_size"] = value

    def scan_coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Optional: declare a step linear in the state, for the parallel scan (``engine="scan"``).

        A cell whose state is one tensor ``h`` ``(B, H)``, whose output is ``y_t = h_t`` and
        whose step is ``h_t = a_t ⊙ h_{t−1} + b_t`` with ``a_t, b_t > 0`` computed from the
        inputs alone returns ``(log a, log b)`` ``(..., H)`` for inputs ``x`` ``(..., I)``
        (a whole sequence ``(T, B, I)`` in one call). Not declared here: see :func:`declares`.

        In lower precision (autocast, a ``bfloat16``/``float16`` module) compute them in at
        least float32 from the step's products (:func:`at_least_float32`): in log space a
        rounding of ``log b`` by ``|log b|·ε`` is a relative error of ``b`` many times the one
        the loop's linear ``a ⊙ h + b`` makes (the scan runs in at least float32 and returns
        the loop's dtype, see :mod:`torchcells.engine.scan`).
        """
        raise NotImplementedError(f"{self.short_name()} does not declare scan_coefficients()")

    def scan_gates(self) -> Optional["ScanGateForm"]:
        """Optional: declare that ``scan_coefficients`` is one of the gatings the engine knows
        (:attr:`ScanGateForm.KINDS`) applied to one product of the input, so that the scan
        computes the coefficients and runs the recurrence in one native pass (forward and
        backward) instead of many elementwise operations and their autograd. The engine uses it
        only where the class that defines it also defines ``scan_coefficients`` (a subclass that
        changes one of them and not the other takes the plain scan). Not declared here (``None``)."""
        return None

    def torch_kernel(self) -> Optional["TorchKernelForm"]:
        """Optional: declare that the cell computes one of torch's own recurrences, for
        ``engine="torch"``: its :class:`TorchKernelForm`, or ``None`` where this
        instance's options leave torch's function. Not declared here (``None``)."""
        return None

    #: the roles of the state's tensors (:data:`STATE_ROLES`), ``None``: not declared
    STATE_ROLE_NAMES: Optional[tuple[str, ...]] = None

    def state_roles(self) -> Optional[tuple[str, ...]]:
        """Optional: the role of each state tensor, in :func:`state_leaves` order (:data:`STATE_ROLES`);
        ``None``: not declared. Defaults to the class's ``STATE_ROLE_NAMES``."""
        return self.STATE_ROLE_NAMES

    def feedback_step(self, x: Tensor, state: Any, fed: Tensor) -> tuple[Tensor, Any]:
        """Optional: one step (batched, already checked) in which every recurrent product reads
        ``fed`` (shaped like ``h``) instead of ``h_{t−1}``; what the step carries on (a GRU's
        ``(1 − z) ⊙ n + z ⊙ h_{t−1}``) reads the state. ``forward(x, s)`` is
        ``feedback_step(x, s, h)``. Recurrent dropout (Gal & Ghahramani 2016) passes a masked
        ``h``. Not declared here: see :func:`declares`."""
        raise NotImplementedError(f"{self.short_name()} does not declare feedback_step()")

    def candidate_step(self, x: Tensor, state: Any, drop: Callable[[Tensor], Tensor]) -> tuple[Tensor, Any]:
        """Optional: one step (batched, already checked) with ``drop`` applied to the candidate,
        the new content written into the memory (an LSTM's ``g`` in ``c = f ⊙ c + i ⊙ drop(g)``,
        a GRU's ``n``). ``forward(x, s)`` is ``candidate_step(x, s, identity)``. Not declared
        here: see :func:`declares`."""
        raise NotImplementedError(f"{self.short_name()} does not declare candidate_step()")

    def begin_call(self) -> None:
        """Called by a layer once at the start of each call, before any step; does nothing
        here. A wrapper passes it on to the cell it wraps."""

    def short_name(self) -> str:
        """``LSTMCell(8→16)``: the name used in error messages and diagrams."""
        name = type(self).__name__
        if self.input_size is not None and self.hidden_size is not None:
            return f"{name}({self.input_size}→{self.hidden_size})"
        return name

    def check_step_input(self, x: Tensor) -> None:
        """Checks for a direct call of a cell on one step ``(B, I)`` or ``(I,)``."""
        check_input(self.short_name(), x, ranks=(self.step_rank + 1, self.step_rank),
                    features=None, layout=" for one step (batch first)")
        if self.input_size is not None and x.shape[x.dim() - self.step_rank] != self.input_size:
            raise ValueError(f"{self.short_name()}: input has {x.shape[x.dim() - self.step_rank]} "
                             f"features per step, expected {self.input_size}")


#: the optional hooks :func:`declares` knows: methods whose default declares nothing.
OPTIONAL_HOOKS = ("scan_coefficients", "scan_gates", "torch_kernel", "feedback_step", "candidate_step")


def declares(cell: Any, hook: str) -> bool:
    """Whether ``cell`` declares the optional ``hook`` (one of :data:`OPTIONAL_HOOKS`).

    A :class:`Cell` declares a hook by overriding it; a module that is not a ``Cell``
    declares the hooks it defines (a callable attribute of that name).
    """
    if hook not in OPTIONAL_HOOKS:
        raise ValueError(f"declares: hook should be one of {OPTIONAL_HOOKS}, got {hook!r}")
    if callable(getattr(cell, "__dict__", {}).get(hook)):  # set on the instance
        return True
    # read from the class, not through a bound method's __func__: dynamo traces this under
    # torch.compile and answers what it reads from the class exactly
    on_class = getattr(type(cell), hook, None)
    return callable(on_class) and on_class is not getattr(Cell, hook)


def cell_name(cell: Any) -> str:
    """The name a cell goes by in messages: its ``short_name()``, else its class name."""
    name = getattr(cell, "short_name", None)
    return name() if callable(name) else type(cell).__name__


@dataclass(frozen=True, eq=False)
class TorchKernelForm:
    """A cell as torch's fused recurrent kernels take it (one layer, one direction).

    Attributes:
        kind: which of torch's recurrences: one of :attr:`KINDS` (nn.RNN with tanh or
            relu, nn.LSTM, nn.GRU).
        weights: torch's order: ``weight_ih``, ``weight_hh``, then ``bias_ih``,
            ``bias_hh`` if ``has_bias``, then an LSTM's ``weight_hr`` if projected.
        has_bias: whether the biases are among ``weights``.
        to_hx: the cell's state -> torch's hidden tensors, each ``(B, ·)``:
            ``(h, c)`` for an LSTM, ``(h,)`` otherwise.
        from_hx: torch's final hidden tensors, each ``(B, ·)`` -> the cell's state.
    """

    KINDS: ClassVar[tuple[str, ...]] = ("rnn_tanh", "rnn_relu", "lstm", "gru")
    kind: str
    weights: tuple[Tensor, ...]
    has_bias: bool
    to_hx: Callable[[Any], tuple[Tensor, ...]]
    from_hx: Callable[[tuple[Tensor, ...]], Any]

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"TorchKernelForm: kind should be one of {self.KINDS}, got {self.kind!r}")


@dataclass(frozen=True, eq=False)
class ScanGateForm:
    """A scannable cell's coefficients as a known gating of one product (see ``Cell.scan_gates``).

    The step's pre-activations are ``k_t = x_t Wᵀ + b`` ``(..., G·H)``, gate ``q`` in columns
    ``q·H … (q+1)·H − 1``, and ``h_t = a_t ⊙ h_{t−1} + b_t`` with, for ``kind``:

    * ``"min_gru"`` (``G = 2``, ``k = [k_z, k_h]``): ``a = σ(−k_z)``, ``b = σ(k_z) g(k_h)``;
    * ``"min_lstm"`` (``G = 3``, ``k = [k_f, k_i, k_h]``): ``d = log σ(k_f) − log σ(k_i)``,
      ``a = σ(d)``, ``b = σ(−d) g(k_h)``;

    ``g(v) = v + ½`` for ``v ≥ 0``, ``σ(v)`` below (:mod:`torchcells.cells.minimal`).

    Attributes:
        kind: the gating, one of :attr:`KINDS`.
        weight: ``W`` ``(G·H, I)``.
        bias: ``b`` ``(G·H,)``, or ``None``.
        coefficients: ``k`` ``(..., G·H)`` -> ``(log a, log b)`` ``(..., H)`` in torch operations:
            the same numbers, differentiable any number of times (second derivatives run it).
    """

    KINDS: ClassVar[dict[str, int]] = {"min_gru": 2, "min_lstm": 3}  # kind -> G, the gates in k
    kind: str
    weight: Tensor
    bias: Optional[Tensor]
    coefficients: Callable[[Tensor], tuple[Tensor, Tensor]]

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"ScanGateForm: kind should be one of {tuple(self.KINDS)}, got {self.kind!r}")


class PairState(NamedTuple):
    """A generic two-tensor state, for cells that need one (``h`` and ``m``).

    Attributes:
        h: the tensor fed back as the hidden state, ``(B, …)``.
        m: the second tensor (a memory, a running value), ``(B, …)``.
    """

    h: Tensor
    m: Tensor
