"""The table of cells every cell test runs over: one :class:`CellRow` per cell or wrapper.

A new cell joins with one row in ``ROWS``: its factory and its step written out from the
paper's equations (``reference``), independently of the library; then every check that
applies to it runs. What a row says decides which checks apply:

* every row (tests/cells/test_zoo.py): one step equals ``reference`` (outputs, states,
  gradients, float64); gradcheck; ``Recurrent`` forwards and reversed, ``Stack`` and
  ``Bidirectional`` with lengths equal the ``reference_loop`` fixture; gradients reach every
  parameter; the fused engine equals the loop; eval mode is deterministic; bad input and a
  bad state get errors naming the cell; an unbatched step is one row of a batch;
* ``torch_make`` (torch.nn has the cell; tests/cells/test_cells.py): outputs, states and
  gradients equal torch.nn's cell after a state-dict copy (float64 and float32, with and
  without bias, batched and not); the same seed gives the same parameters; state dicts
  load both ways;
* ``gates`` (the cell has torch's parameter layout -- ``weight_ih``, ``weight_hh``,
  ``bias_ih``, ``bias_hh`` by gate rows -- and takes ``bias=``, ``dtype=``, ``device=``;
  tests/cells/test_cells.py): ``reference`` with and without bias in float64 and float32,
  gradcheck with and without bias, the parameter layout and torch's initialization range,
  ``init_state``, the default state, batch-row independence, ``y = h``, repr, and named
  errors for every kind of bad input and state;
* ``random`` (the step draws random numbers in training): the layer falls back to the
  loop with a warning there, and ``engine="fused"`` is a named error;
* ``image`` (steps are ``(C, height, width)`` maps of ``IMAGE``), ``spike`` (the output is
  a step function: gradcheck the state only), ``state`` (a factory of a valid initial
  state where random numbers would not be one), ``output`` (output features for ``I``
  inputs and ``H`` hidden units, if not ``H``) adjust the checks to the cell.

References are written here through other torch functions where the library's code would
be the obvious transcription: convolutions as ``unfold`` products, the sLSTM without its
stabilizer, the surrogate spike as an ``autograd.Function``. ``p`` is the cell's named
parameters; states are tensors or plain (nested) tuples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import torchcells as tc
from torchcells.cell import map_state

DT = torch.float64
IMAGE = (3, 3)  # spatial size of the convolutional rows (channels: I in, H hidden)
P = 2           # the projected LSTM's output size (at most H - 1)


# --------------------------------------------------------------------------------------
# References, written from the equations.
# --------------------------------------------------------------------------------------
def lin(x: Tensor, w: Tensor, b: Optional[Tensor] = None) -> Tensor:
    out = x @ w.T
    return out if b is None else out + b


def rows_of(w: Optional[Tensor], k: int, n: int) -> Optional[Tensor]:
    """Rows ``k·n … (k+1)·n − 1`` of ``w`` (gate ``k`` of a torch-layout weight or bias)."""
    return None if w is None else w[k * n:(k + 1) * n]


def elman_ref(nonlinearity: str) -> Callable[..., tuple]:
    """``h = φ(W_ih x + b_ih + W_hh h + b_hh)``, ``φ`` tanh or relu (nn.RNNCell)."""
    phi = {"tanh": torch.tanh, "relu": torch.relu}[nonlinearity]

    def step(cell, p, x, h):
        h = phi(lin(x, p["weight_ih"], p.get("bias_ih")) + lin(h, p["weight_hh"], p.get("bias_hh")))
        return h, h
    return step


def lstm_ref(p: dict, x: Tensor, h: Tensor, c: Tensor, prefix: str = "", w_hh: Optional[Tensor] = None):
    """torch's LSTM (gate rows i, f, g, o; biases optional), optionally with another ``W_hh``; with
    ``weight_hr``, Sak et al. 2014's projection ``h_t = W_hr (o_t ⊙ tanh(c_t))``. Returns ``(h, c)``."""
    w_ih, b_ih, b_hh = p[prefix + "weight_ih"], p.get(prefix + "bias_ih"), p.get(prefix + "bias_hh")
    w_hh = p[prefix + "weight_hh"] if w_hh is None else w_hh
    n = w_hh.shape[0] // 4  # H, the number of memory cells

    def gate(k):
        return lin(x, rows_of(w_ih, k, n), rows_of(b_ih, k, n)) + lin(h, rows_of(w_hh, k, n), rows_of(b_hh, k, n))
    i, f, g, o = torch.sigmoid(gate(0)), torch.sigmoid(gate(1)), torch.tanh(gate(2)), torch.sigmoid(gate(3))
    c = f * c + i * g
    h = o * torch.tanh(c)
    if prefix + "weight_hr" in p:
        h = h @ p[prefix + "weight_hr"].T
    return h, c


def gru_ref(p: dict, x: Tensor, h: Tensor, prefix: str = "", reset_after: bool = True) -> Tensor:
    """torch's GRU (gate rows r, z, n; biases optional): the reset gate after the recurrent product
    (``b_hn`` inside it), or before it as Cho et al. 2014."""
    w_ih, w_hh = p[prefix + "weight_ih"], p[prefix + "weight_hh"]
    b_ih, b_hh = p.get(prefix + "bias_ih"), p.get(prefix + "bias_hh")
    n = w_hh.shape[1]

    def gate(k):
        return lin(x, rows_of(w_ih, k, n), rows_of(b_ih, k, n)) + lin(h, rows_of(w_hh, k, n), rows_of(b_hh, k, n))
    r, z = torch.sigmoid(gate(0)), torch.sigmoid(gate(1))
    if reset_after:
        cand = torch.tanh(lin(x, rows_of(w_ih, 2, n), rows_of(b_ih, 2, n))
                          + r * lin(h, rows_of(w_hh, 2, n), rows_of(b_hh, 2, n)))
    else:
        cand = torch.tanh(lin(x, rows_of(w_ih, 2, n), rows_of(b_ih, 2, n))
                          + lin(r * h, rows_of(w_hh, 2, n), rows_of(b_hh, 2, n)))
    return (1 - z) * cand + z * h


def ref_lstm(cell, p, x, state):
    h, c = lstm_ref(p, x, *state)
    return h, (h, c)


def ref_gru(cell, p, x, h):
    h = gru_ref(p, x, h)
    return h, h


def ref_lstm_variant(cell, p, x, state):
    """Peepholes (Gers & Schmidhuber 2000) and/or coupled gate (Greff et al. 2017)."""
    h, c = state
    n = cell.hidden_size
    names = ("f", "g", "o") if cell.coupled else ("i", "f", "g", "o")
    pre = {g: lin(x, rows_of(p["weight_ih"], k, n), rows_of(p["bias_ih"], k, n))
           + lin(h, rows_of(p["weight_hh"], k, n), rows_of(p["bias_hh"], k, n)) for k, g in enumerate(names)}
    peep = cell.peepholes
    f = torch.sigmoid(pre["f"] + (p["weight_cf"] * c if peep else 0))
    i = 1 - f if cell.coupled else torch.sigmoid(pre["i"] + (p["weight_ci"] * c if peep else 0))
    c_new = f * c + i * torch.tanh(pre["g"])
    o = torch.sigmoid(pre["o"] + (p["weight_co"] * c_new if peep else 0))
    h = o * torch.tanh(c_new)
    return h, (h, c_new)


def ref_gru_before(cell, p, x, state):
    h = gru_ref(p, x, state, reset_after=False)
    return h, h


def ref_mgu(cell, p, x, h):
    n = cell.hidden_size
    f = torch.sigmoid(lin(x, p["weight_ih"][:n], p["bias_ih"][:n]) + lin(h, p["weight_hh"][:n], p["bias_hh"][:n]))
    cand = torch.tanh(lin(x, p["weight_ih"][n:], p["bias_ih"][n:]) + lin(f * h, p["weight_hh"][n:], p["bias_hh"][n:]))
    h = (1 - f) * h + f * cand
    return h, h


def layer_norm(v: Tensor, gain: Tensor, shift: Tensor, eps: float = 1e-5) -> Tensor:
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)  # biased, as Ba et al.
    return gain * (v - mean) / torch.sqrt(var + eps) + shift


def ref_ln_lstm(cell, p, x, state):
    h, c = state
    pre = (layer_norm(x @ p["weight_ih"].T, p["norm_ih.weight"], p["norm_ih.bias"])
           + layer_norm(h @ p["weight_hh"].T, p["norm_hh.weight"], p["norm_hh.bias"]))
    n = cell.hidden_size
    i, f, g, o = (pre[:, k * n:(k + 1) * n] for k in range(4))
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(layer_norm(c, p["norm_c.weight"], p["norm_c.bias"]))
    return h, (h, c)


def ref_ln_gru(cell, p, x, h):
    a = layer_norm(x @ p["weight_ih"].T, p["norm_ih.weight"], p["norm_ih.bias"])
    b = layer_norm(h @ p["weight_hh"].T, p["norm_hh.weight"], p["norm_hh.bias"])
    n = cell.hidden_size
    r = torch.sigmoid(a[:, :n] + b[:, :n])
    z = torch.sigmoid(a[:, n:2 * n] + b[:, n:2 * n])
    cand = torch.tanh(a[:, 2 * n:] + r * b[:, 2 * n:])
    h = (1 - z) * cand + z * h
    return h, h


def ref_indrnn(cell, p, x, h):
    h = torch.relu(lin(x, p["weight_ih"], p["bias_ih"]) + p["weight_hh"] * h)
    return h, h


def ref_slstm(cell, p, x, state):
    """The paper's unstabilized sLSTM on ``c·e^m``, ``n·e^m``; ``m`` by its definition."""
    h, c, n, m = state
    pre = lin(x, p["weight_ih"], p["bias"]) + h @ p["weight_hh"].T
    k = cell.hidden_size
    i_pre, f_pre, z_pre, o_pre = (pre[:, j * k:(j + 1) * k] for j in range(4))
    i, f = torch.exp(i_pre), torch.sigmoid(f_pre)
    c_raw = f * (c * torch.exp(m)) + i * torch.tanh(z_pre)
    n_raw = f * (n * torch.exp(m)) + i
    h = torch.sigmoid(o_pre) * c_raw / n_raw
    m_new = torch.maximum(torch.log(f) + m, i_pre)
    return h, (h, c_raw * torch.exp(-m_new), n_raw * torch.exp(-m_new), m_new)


class SurrogateSpike(torch.autograd.Function):
    """Heaviside forwards; fast-sigmoid derivative ``1/(1 + 5|u|)²`` backwards."""

    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        return (u > 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        return grad / (1 + 5.0 * u.abs()) ** 2


def ref_lif(cell, p, x, v):
    beta = 1 / (1 + torch.exp(-p["leak"]))
    fired = (v > 1.0).to(v.dtype)
    v = beta * v + lin(x, p["weight_ih"], p["bias_ih"]) - fired
    return SurrogateSpike.apply(v - 1.0), v


def ref_neuron(cell, p, x, state):
    return torch.tanh(lin(x, p["weight"], p["bias"])), ()


def ref_identity(cell, p, x, state):
    return x, ()


def ref_gaussian(cell, p, x, total):
    """Eval mode: the mean; KL from torch.distributions."""
    out = lin(x, p["weight"], p["bias"])
    n = cell.hidden_size
    mean, logvar = out[:, :n], out[:, n:]
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(mean, torch.exp(0.5 * logvar)),
                                           torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean)))
    return mean, total + kl.sum(-1)


def ref_kernel(cell, p, x, window):
    full = torch.cat([window, x.unsqueeze(-1)], -1)
    return F.conv1d(full, p["weight"], p["bias"])[:, :, 0], full[:, :, 1:]


def ref_pool(cell, p, x, window):
    full = torch.cat([window, x.unsqueeze(-1)], -1)
    return F.max_pool1d(full, cell.kernel_size)[:, :, 0], full[:, :, 1:]


def conv_same(v: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    """A 'same' 2-D convolution as a product with unfolded patches."""
    k = w.shape[-1]
    patches = F.unfold(v, k, padding=k // 2)                       # (B, C·k·k, pixels)
    out = (w.flatten(1) @ patches).reshape(v.shape[0], w.shape[0], *v.shape[-2:])
    return out if b is None else out + b.reshape(1, -1, 1, 1)


def ref_conv_lstm(cell, p, x, state):
    h, c = state
    gates = conv_same(x, p["weight_ih"], p["bias_ih"]) + conv_same(h, p["weight_hh"], p["bias_hh"])
    n = cell.hidden_size
    i, f, g, o = (gates[:, k * n:(k + 1) * n] for k in range(4))
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, (h, c)


def ref_conv_gru(cell, p, x, h):
    n = cell.hidden_size
    a = conv_same(x, p["weight_ih"], p["bias_ih"])
    r = torch.sigmoid(a[:, :n] + conv_same(h, p["weight_hh"][:n], p["bias_hh"][:n]))
    z = torch.sigmoid(a[:, n:2 * n] + conv_same(h, p["weight_hh"][n:2 * n], p["bias_hh"][n:2 * n]))
    cand = torch.tanh(a[:, 2 * n:] + conv_same(r * h, p["weight_hh"][2 * n:], p["bias_hh"][2 * n:]))
    h = (1 - z) * cand + z * h
    return h, h


def ref_variational(cell, p, x, state):
    (h, c), (m_in, m_out) = state
    h, c = lstm_ref(p, x * m_in, h, c, "cell.")
    return h * m_out, ((h, c), (m_in, m_out))


def ref_recurrent_dropout(cell, p, x, state):
    (h, c), (m_h,) = state
    h, c = lstm_ref(p, x, h * m_h, c, "cell.")
    return h, ((h, c), (m_h,))


def unprefixed(p: dict, prefix: str = "cell.") -> dict:
    return {k[len(prefix):]: v for k, v in p.items() if k.startswith(prefix)}


def ref_recurrent_dropout_gru(cell, p, x, state):
    """Gal & Ghahramani on a GRU: the recurrent products read ``m ⊙ h``; the update carries ``h`` unmasked."""
    h, (m_h,) = state
    q, n = unprefixed(p), cell.hidden_size
    gi, gh = lin(x, q["weight_ih"], q["bias_ih"]), lin(h * m_h, q["weight_hh"], q["bias_hh"])
    r, z = torch.sigmoid(gi[:, :n] + gh[:, :n]), torch.sigmoid(gi[:, n:2 * n] + gh[:, n:2 * n])
    cand = torch.tanh(gi[:, 2 * n:] + r * gh[:, 2 * n:])
    h = (1 - z) * cand + z * h
    return h, (h, (m_h,))


def ref_candidate_dropout_eval(cell, p, x, state):
    h, c = lstm_ref(p, x, state[0], state[1], "cell.")
    return h, (h, c)


def ref_zoneout_slstm_eval(cell, p, x, state):
    """Zoneout's expectation taken of the sLSTM's true memory ``c·e^m`` and normalizer ``n·e^m``,
    stored against ``max(m_{t−1}, m̃_t)``; ``h`` averaged plainly."""
    h, c, n, m = state
    _, (h_new, c_new, n_new, m_new) = ref_slstm(cell.cell, unprefixed(p), x, state)
    top = torch.maximum(m, m_new)

    def mean(old, new):
        return (cell.p_c * old * torch.exp(m) + (1 - cell.p_c) * new * torch.exp(m_new)) * torch.exp(-top)
    h = cell.p_h * h + (1 - cell.p_h) * h_new
    return h, (h, mean(c, c_new), mean(n, n_new), top)


def ref_weight_drop(cell, p, x, state):
    h, c = state
    h, c = lstm_ref(p, x, h, c, "cell.", w_hh=p["cell.weight_hh"] * cell.mask_weight_hh)
    return h, (h, c)


def ref_zoneout_eval(cell, p, x, state):
    h, c = state
    h_new, c_new = lstm_ref(p, x, h, c, "cell.")
    h = cell.p_h * h + (1 - cell.p_h) * h_new
    return h, (h, cell.p_c * c + (1 - cell.p_c) * c_new)


def ref_residual(cell, p, x, h):
    h = gru_ref(p, x, h, "cell.")
    return x + h, h


def ref_stacked(cell, p, x, state):
    h1 = gru_ref(p, x, state[0], "cells.0.")
    h2, c2 = lstm_ref(p, h1, state[1][0], state[1][1], "cells.1.")
    return h2, (h1, (h2, c2))


# --------------------------------------------------------------------------------------
# Initial states where random numbers would not be one
# --------------------------------------------------------------------------------------
def slstm_state(cell, batch, gen):
    """A reachable sLSTM state: normalizer positive, stabilizer at most 0."""
    h, c, n, m = (torch.randn(batch, cell.hidden_size, dtype=DT, generator=gen) for _ in range(4))
    return tc.SLSTMState(h.tanh() * 0.5, c, n.abs() + 0.5, -m.abs())


def drawn_state(cell, batch, gen):
    """The wrapper's own init_state in training mode (masks drawn), with a random cell state."""
    cell.train()
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    state = cell.init_state(batch, dtype=DT)
    inner = map_state(lambda s: torch.randn(s.shape, dtype=DT, generator=gen), state.cell)
    return tc.MaskedState(inner, state.masks)


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------
def hidden(i: int, h: int) -> int:
    return h


def same_as_input(i: int, h: int) -> int:
    return i


def projected(i: int, h: int) -> int:
    return min(P, h - 1)


@dataclass(frozen=True)
class CellRow:
    id: str
    make: Callable[..., nn.Module]          # (I, H, **options) -> the cell; rows with gates take bias=, dtype=, device=
    reference: Callable[..., tuple]         # (cell, params, x, state) -> (y, new state as nested tuples)
    torch_make: Optional[Callable[..., nn.Module]] = None  # torch.nn's equivalent, the same signature as make
    gates: tuple[str, ...] = ()             # torch's parameter layout: gate names in weight-row order
    kwargs_repr: str = ""                   # what extra_repr adds for this row's options (rows with gates)
    extra_params: tuple[str, ...] = ()      # parameters beyond torch's four (rows with gates)
    output: Callable[[int, int], int] = hidden  # output features for I inputs and H hidden units
    random: bool = False       # draws random numbers inside a training step (loop only in training)
    image: bool = False        # steps are (C, height, width) maps
    spike: bool = False        # the output is a step function: gradcheck the state only
    state: Optional[Callable[[nn.Module, int, Any], Any]] = None  # (cell, batch, gen) -> initial state

    def __str__(self) -> str:
        return self.id

    def out(self, i: int, h: int) -> int:
        return self.output(i, h)


ROWS = [
    # torch.nn's cells, in torch's parameter layout
    CellRow("elman-tanh", lambda i, h, **kw: tc.ElmanCell(i, h, **kw), elman_ref("tanh"),
            lambda i, h, **kw: nn.RNNCell(i, h, nonlinearity="tanh", **kw), gates=("h",)),
    CellRow("elman-relu", lambda i, h, **kw: tc.ElmanCell(i, h, nonlinearity="relu", **kw), elman_ref("relu"),
            lambda i, h, **kw: nn.RNNCell(i, h, nonlinearity="relu", **kw), gates=("h",),
            kwargs_repr="nonlinearity='relu'"),
    CellRow("lstm", lambda i, h, **kw: tc.LSTMCell(i, h, **kw), ref_lstm,
            lambda i, h, **kw: nn.LSTMCell(i, h, **kw), gates=("i", "f", "g", "o")),
    CellRow("lstm-proj", lambda i, h, **kw: tc.LSTMCell(i, h, proj_size=projected(i, h), **kw), ref_lstm,
            gates=("i", "f", "g", "o"), kwargs_repr=f"proj_size={P}", extra_params=("weight_hr",), output=projected),
    CellRow("gru", lambda i, h, **kw: tc.GRUCell(i, h, **kw), ref_gru,
            lambda i, h, **kw: nn.GRUCell(i, h, **kw), gates=("r", "z", "n")),
    # the rest of the zoo
    CellRow("lstm-peephole", lambda i, h: tc.LSTMCell(i, h, peepholes=True), ref_lstm_variant),
    CellRow("lstm-cifg", lambda i, h: tc.LSTMCell(i, h, coupled=True), ref_lstm_variant),
    CellRow("lstm-cifg-peephole", lambda i, h: tc.LSTMCell(i, h, coupled=True, peepholes=True, forget_bias=1.0),
            ref_lstm_variant),
    CellRow("gru-reset-before", lambda i, h: tc.GRUCell(i, h, reset_after=False), ref_gru_before),
    CellRow("mgu", tc.MGUCell, ref_mgu),
    CellRow("ln-lstm", tc.LayerNormLSTMCell, ref_ln_lstm),
    CellRow("ln-gru", tc.LayerNormGRUCell, ref_ln_gru),
    CellRow("indrnn", tc.IndRNNCell, ref_indrnn),
    CellRow("slstm", tc.SLSTMCell, ref_slstm, state=slstm_state),
    CellRow("lif", tc.LIFCell, ref_lif, spike=True),
    CellRow("neuron", tc.Neuron, ref_neuron),
    CellRow("noisy-input", lambda i, h: tc.NoisyInput(i, std=0.3), ref_identity, random=True, output=same_as_input),
    CellRow("gaussian", tc.GaussianCell, ref_gaussian, random=True),
    CellRow("kernel", lambda i, h: tc.KernelCell(i, h, kernel_size=3), ref_kernel),
    CellRow("pool", lambda i, h: tc.PoolCell(i, kernel_size=3), ref_pool, output=same_as_input),
    CellRow("conv-lstm", lambda i, h: tc.ConvLSTMCell(i, h, kernel_size=3, spatial_size=IMAGE), ref_conv_lstm,
            image=True),
    CellRow("conv-gru", lambda i, h: tc.ConvGRUCell(i, h, kernel_size=3, spatial_size=IMAGE), ref_conv_gru,
            image=True),
    # wrappers
    CellRow("variational-dropout", lambda i, h: tc.VariationalDropout(tc.LSTMCell(i, h), (0.3, 0.4)),
            ref_variational, state=drawn_state),
    CellRow("recurrent-dropout", lambda i, h: tc.RecurrentDropout(tc.LSTMCell(i, h), 0.4), ref_recurrent_dropout,
            state=drawn_state),
    CellRow("recurrent-dropout-gru", lambda i, h: tc.RecurrentDropout(tc.GRUCell(i, h), 0.4),
            ref_recurrent_dropout_gru, state=drawn_state),
    CellRow("candidate-dropout", lambda i, h: tc.CandidateDropout(tc.LSTMCell(i, h), 0.3), ref_candidate_dropout_eval,
            random=True),
    CellRow("weight-drop", lambda i, h: tc.WeightDrop(tc.LSTMCell(i, h), 0.4), ref_weight_drop),
    CellRow("zoneout", lambda i, h: tc.Zoneout(tc.LSTMCell(i, h), (0.3, 0.2)), ref_zoneout_eval, random=True),
    CellRow("zoneout-slstm", lambda i, h: tc.Zoneout(tc.SLSTMCell(i, h), (0.3, 0.2)), ref_zoneout_slstm_eval,
            random=True, state=slstm_state),
    CellRow("residual", lambda i, h: tc.Residual(tc.GRUCell(i, i)), ref_residual, output=same_as_input),
    CellRow("stacked", lambda i, h: tc.StackedCell([tc.GRUCell(i, h), tc.LSTMCell(h, h)]), ref_stacked),
]
TORCH_LAYOUT = [r for r in ROWS if r.gates]          # the checks of torch's parameter layout and signature
TORCH_PARITY = [r for r in ROWS if r.torch_make]     # the checks against torch.nn's cell
