"""The zoo's catalogue: every cell and wrapper by name, with how to build it and what it holds.

``ZOO`` maps a name (``"lstm"``, ``"slstm"``, ``"zoneout"``, ...) to a :class:`ZooEntry`:
a factory ``(input_size, hidden_size, **options) -> cell``, a one-line description,
the state, the parameter count as a formula in ``I`` (input features or channels),
``H`` (hidden units or channels) and ``k`` (kernel size), and which engine runs it.
``torchcells zoo`` prints it; ``make_cell(name, I, H, **options)`` builds from it (what
a ``--cell NAME`` option needs). Wrapper entries wrap a cell built from another entry
(``cell="lstm"`` by default): ``make_cell("zoneout", 8, 16, cell="gru", p=0.2)``.

Example::

    cell = make_cell("ln-lstm", 8, 16)                     # LayerNormLSTMCell(8, 16)
    ZOO["ln-lstm"].params                                  # "4*H*(I + H) + 18*H"
    ZOO["ln-lstm"].count(I=8, H=16)                        # 1824 = sum(p.numel() for p in cell.parameters())
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from torch import nn

from .candidate import CandidateDropout
from .compose import Residual, StackedCell
from .conv import ConvGRUCell, ConvLSTMCell
from .dropout import RecurrentDropout, VariationalDropout, WeightDrop
from .elman import ElmanCell
from .feedforward import Neuron, NoisyInput
from .gaussian import GaussianCell
from .gru import GRUCell
from .indrnn import IndRNNCell
from .kernel import KernelCell, PoolCell
from .layernorm import LayerNormGRUCell, LayerNormLSTMCell
from .lstm import LSTMCell
from .mgu import MGUCell
from .minimal import MinGRUCell, MinLSTMCell
from .slstm import SLSTMCell
from .spiking import LIFCell
from .zoneout import Zoneout

__all__ = ["ZOO", "ZooEntry", "describe_zoo", "evaluate_formula", "make_cell"]

_OPS: dict[type, Callable[[Any, Any], Any]] = {ast.Add: operator.add, ast.Sub: operator.sub,
                                               ast.Mult: operator.mul, ast.Pow: operator.pow}


def evaluate_formula(formula: str, **sizes: int) -> int:
    """The value of a parameter formula such as ``"4*H*(I + H) + 8*H"`` for the given sizes.

    Only integers, the names given, ``+``, ``-``, ``*``, ``**`` and parentheses are allowed.
    """
    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in sizes:
            return sizes[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return int(_OPS[type(node.op)](value(node.left), value(node.right)))
        raise ValueError(f"parameter formula {formula!r}: cannot evaluate {ast.dump(node)}")
    return value(ast.parse(formula, mode="eval"))


@dataclass(frozen=True)
class ZooEntry:
    """One cell or wrapper of the zoo."""

    name: str
    kind: str                          # "recurrent", "feed-forward" or "wrapper"
    build: Callable[..., nn.Module]    # (I, H, **options) -> cell
    description: str
    state: str
    params: str                        # formula in I, H, k; "P(cell)" for wrappers: the wrapped cell's
    engine: str                        # which engine runs it (Recurrent(engine="auto"))
    options: dict[str, Any] = field(default_factory=dict)  # defaults the factory is called with

    def make(self, input_size: int, hidden_size: int, **options: Any) -> nn.Module:
        return self.build(input_size, hidden_size, **{**self.options, **options})

    def count(self, *, I: int, H: int, **options: Any) -> int:
        """The formula's parameter count for these sizes (a wrapper: its default wrapped cell's)."""
        opts = {**self.options, **options}
        if self.kind == "wrapper":
            inner = ZOO[opts.get("cell", "lstm")]
            if self.name == "stacked":
                return inner.count(I=I, H=H) + inner.count(I=H, H=H)
            return inner.count(I=I, H=H)
        return evaluate_formula(self.params, I=I, H=H, k=int(opts.get("kernel_size", 1)))


def _wrapping(wrapper: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(i: int, h: int, *, cell: str = "lstm", **options: Any) -> nn.Module:
        return wrapper(make_cell(cell, i, h), **options)
    return build


def _stacked(i: int, h: int, *, cell: str = "lstm") -> nn.Module:
    return StackedCell([make_cell(cell, i, h), make_cell(cell, h, h)])


def _residual(i: int, h: int, *, cell: str = "lstm") -> nn.Module:
    return Residual(make_cell(cell, i, h))


_H = "h (B, H)"
_LSTM = "LSTMState(h, c), each (B, H)"
_FUSED = "fused"
_AS_CELL = "as the wrapped cell (fused for the default LSTM)"
_ENTRIES = [
    # recurrent cells
    ZooEntry("elman", "recurrent", ElmanCell, "simple recurrent cell, h = tanh(W x + U h + b) (nn.RNNCell)",
             _H, "H*(I + H) + 2*H", "torch kernel / fused"),
    ZooEntry("lstm", "recurrent", LSTMCell, "LSTM memory cell with forget gate (nn.LSTMCell; proj_size= as nn.LSTM)",
             _LSTM, "4*H*(I + H) + 8*H", "torch kernel / fused"),
    ZooEntry("lstm-peephole", "recurrent", LSTMCell, "LSTM whose gates also read the memory c (Gers 2000)",
             _LSTM, "4*H*(I + H) + 11*H", _FUSED, {"peepholes": True}),
    ZooEntry("lstm-cifg", "recurrent", LSTMCell, "LSTM with coupled input-forget gate, i = 1 - f (Greff 2017)",
             _LSTM, "3*H*(I + H) + 6*H", _FUSED, {"coupled": True}),
    ZooEntry("gru", "recurrent", GRUCell, "GRU, reset gate after the recurrent product (nn.GRUCell, cuDNN)",
             _H, "3*H*(I + H) + 6*H", "torch kernel / fused"),
    ZooEntry("gru-reset-before", "recurrent", GRUCell, "GRU as Cho et al. 2014: reset gate before the product",
             _H, "3*H*(I + H) + 6*H", _FUSED, {"reset_after": False}),
    ZooEntry("mgu", "recurrent", MGUCell, "minimal gated unit: one forget gate as reset and update (Zhou 2016)",
             _H, "2*H*(I + H) + 4*H", _FUSED),
    ZooEntry("ln-lstm", "recurrent", LayerNormLSTMCell, "LSTM with layer norm on both products and on c (Ba 2016)",
             _LSTM, "4*H*(I + H) + 18*H", _FUSED),
    ZooEntry("ln-gru", "recurrent", LayerNormGRUCell, "GRU with layer norm on both products (Ba 2016)",
             _H, "3*H*(I + H) + 12*H", _FUSED),
    ZooEntry("indrnn", "recurrent", IndRNNCell, "independently recurrent: h = relu(W x + u * h + b) (Li 2018)",
             _H, "H*I + 2*H", _FUSED),
    ZooEntry("slstm", "recurrent", SLSTMCell, "xLSTM's sLSTM: exponential input gate, normalizer n, stabilizer m",
             "SLSTMState(h, c, n, m), each (B, H)", "4*H*(I + H) + 4*H", _FUSED),
    ZooEntry("mingru", "recurrent", MinGRUCell, "minGRU: gates read only the input; linear in h (Feng 2024)",
             _H, "2*H*I + 2*H", "scan"),
    ZooEntry("minlstm", "recurrent", MinLSTMCell, "minLSTM: normalized forget/input gates from the input only",
             _H, "3*H*I + 3*H", "scan"),
    ZooEntry("lif", "recurrent", LIFCell, "spiking leaky integrate-and-fire, surrogate gradient",
             "v (B, H): membrane potential", "H*I + 2*H", _FUSED),
    ZooEntry("conv-lstm", "recurrent", ConvLSTMCell, "ConvLSTM: gates are 2-D convolutions (Shi 2015)",
             "LSTMState(h, c), each (B, H, height, width)", "4*H*(I + H)*k**2 + 8*H", _FUSED,
             {"kernel_size": 3, "spatial_size": (8, 8)}),
    ZooEntry("conv-gru", "recurrent", ConvGRUCell, "ConvGRU: gates are 2-D convolutions (Ballas 2016)",
             "h (B, H, height, width)", "3*H*(I + H)*k**2 + 6*H", _FUSED,
             {"kernel_size": 3, "spatial_size": (8, 8)}),
    # cells of the Neural Network Zoo without recurrence of their own
    ZooEntry("neuron", "feed-forward", Neuron, "H neurons side by side: y = act(W x + b) (hidden or output cell)",
             "() -- none", "H*I + H", _FUSED),
    ZooEntry("noisy-input", "feed-forward", lambda i, h, **kw: NoisyInput(i, **kw),
             "input cell plus Gaussian noise in training (denoising); H = I", "() -- none", "0",
             "loop in training, fused in eval"),
    ZooEntry("gaussian", "feed-forward", GaussianCell, "probabilistic cell: mu + sigma * eps, KL summed in the state",
             "k (B,): KL so far", "2*H*I + 2*H", "loop in training, fused in eval"),
    ZooEntry("kernel", "feed-forward", KernelCell, "convolution kernel sliding along the axis (causal nn.Conv1d)",
             "window (B, I, k - 1)", "H*I*k + H", _FUSED, {"kernel_size": 3}),
    ZooEntry("pool", "feed-forward", lambda i, h, **kw: PoolCell(i, **kw),
             "max or average over the last k inputs (sliding pool); H = I", "window (B, I, k - 1)", "0", _FUSED,
             {"kernel_size": 2}),
    # wrappers: cell -> cell
    ZooEntry("variational-dropout", "wrapper", _wrapping(VariationalDropout),
             "one dropout mask per sequence on inputs and outputs (Gal 2016)",
             "MaskedState(cell's, masks (B, I), (B, H))", "P(cell)", _AS_CELL),
    ZooEntry("recurrent-dropout", "wrapper", _wrapping(RecurrentDropout),
             "one dropout mask per sequence on the h the recurrent products read (Gal 2016)",
             "MaskedState(cell's, mask like h)", "P(cell)", _AS_CELL),
    ZooEntry("candidate-dropout", "wrapper", _wrapping(CandidateDropout),
             "dropout on the candidate update, a new mask per step (Semeniuta 2016)",
             "the cell's", "P(cell)", "loop in training, as the cell in eval"),
    ZooEntry("weight-drop", "wrapper", _wrapping(WeightDrop),
             "DropConnect on the recurrent weights, a new mask per layer call (AWD-LSTM, Merity 2017)",
             "the cell's", "P(cell)", _AS_CELL),
    ZooEntry("zoneout", "wrapper", _wrapping(Zoneout), "units keep their last h (p_h) and memory (p_c) at random",
             "the cell's", "P(cell)", "loop in training, as the cell in eval"),
    ZooEntry("residual", "wrapper", _residual, "y = x + cell(x); needs H = I", "the cell's", "P(cell)", _AS_CELL),
    ZooEntry("stacked", "wrapper", _stacked, "cells run one after another in each step, itself a cell",
             "tuple of the cells' states", "P(cell 1) + P(cell 2)", _AS_CELL),
]
ZOO: dict[str, ZooEntry] = {e.name: e for e in _ENTRIES}


def make_cell(name: str, input_size: int, hidden_size: int, **options: Any) -> nn.Module:
    """Build the zoo's cell ``name`` (see ``ZOO``) with ``input_size``, ``hidden_size`` and options."""
    if name not in ZOO:
        raise ValueError(f"make_cell: unknown cell {name!r}; the zoo has {', '.join(ZOO)}")
    return ZOO[name].make(input_size, hidden_size, **options)


def describe_zoo(entries: Iterable[ZooEntry], *, kind: Optional[str] = None) -> str:
    """A plain-text table of ``entries`` (what ``torchcells zoo`` prints), grouped by kind."""
    lines = ["Sizes: I input features (channels), H hidden units (channels), k kernel size, B batch.",
             "P(cell) is the wrapped cell's parameter count; a wrapper adds none."]
    chosen = [e for e in entries if kind is None or e.kind == kind]
    for group in ("recurrent", "feed-forward", "wrapper"):
        rows = [e for e in chosen if e.kind == group]
        if not rows:
            continue
        lines += ["", f"{group} cells" if group != "wrapper" else "wrappers (cell -> cell)"]
        for e in rows:
            cls = type(e.make(4, 4)).__name__
            opts = ", ".join(f"{k}={v!r}" for k, v in e.options.items())
            lines += [f"  {e.name:<20}{cls}{f'({opts})' if opts else ''}: {e.description}",
                      f"  {'':<20}state: {e.state}; parameters: {e.params}; engine: {e.engine}"]
    return "\n".join(lines)
