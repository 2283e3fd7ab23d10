"""``Recurrent.step``: one time step, the layer's own call at ``T = 1`` without the time axis."""

from __future__ import annotations

import pytest
import torch
from fixture_cells import UserLSTMCell

from torchcells import Cell, GRUCell, LSTMCell, LSTMState, Recurrent

DT = torch.float64
I, H, B = 3, 5, 2

CELLS = [lambda: UserLSTMCell(I, H).to(DT), lambda: GRUCell(I, H, dtype=DT), lambda: LSTMCell(I, H, dtype=DT)]
IDS = ["user-lstm", "gru", "lstm"]


def leaves(state):
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize("make_cell", CELLS, ids=IDS)
@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad"])
@pytest.mark.parametrize("engine", ["auto", "loop", "fused"])
def test_steps_equal_the_cell_and_the_layer_at_one_step(make_cell, grad, engine):
    torch.manual_seed(0)
    cell = make_cell()
    layer = Recurrent(cell, engine=engine, batch_first=True, reverse=True)  # neither plays a part in a step
    xs = torch.randn(4, B, I, dtype=DT)
    state = by_cell = by_layer = None
    with torch.set_grad_enabled(grad):
        for x_t in xs:
            y, state = layer.step(x_t, state)
            y_cell, by_cell = cell(x_t, by_cell if by_cell is not None else cell.init_state(B, dtype=DT))
            out, by_layer = layer(x_t.unsqueeze(1), by_layer)   # (B, T=1, I) with batch_first
            assert y.shape == (B, H)
            torch.testing.assert_close(y, y_cell, atol=1e-12, rtol=0)
            torch.testing.assert_close(y, out[:, 0], atol=1e-12, rtol=0)
            for a, b, c in zip(leaves(state), leaves(by_cell), leaves(by_layer)):
                torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
                torch.testing.assert_close(a, c, atol=1e-12, rtol=0)
    assert y.requires_grad == grad


def test_step_gradients_reach_the_weights_and_the_state():
    cell = LSTMCell(I, H, dtype=DT)
    layer = Recurrent(cell)
    h0 = torch.randn(B, H, dtype=DT, requires_grad=True)
    y, (h, c) = layer.step(torch.randn(B, I, dtype=DT), LSTMState(h0, torch.zeros(B, H, dtype=DT)))
    (y.sum() + c.sum()).backward()
    assert h0.grad is not None and h0.grad.abs().sum() > 0
    assert cell.weight_hh.grad is not None and cell.weight_hh.grad.abs().sum() > 0


def test_unbatched_step_keeps_an_unbatched_state():
    cell = GRUCell(I, H, dtype=DT)
    layer = Recurrent(cell)
    x = torch.randn(I, dtype=DT)
    y, h = layer.step(x)
    assert y.shape == (H,) and h.shape == (H,)
    y2, h2 = layer.step(x, h)
    y_cell, _ = cell(x.unsqueeze(0), h.unsqueeze(0))
    torch.testing.assert_close(y2, y_cell[0], atol=1e-12, rtol=0)
    assert h2.shape == (H,)


def test_step_of_a_wrong_rank_says_what_a_step_takes():
    layer = Recurrent(GRUCell(I, H, dtype=DT))
    with pytest.raises(ValueError, match=r"Recurrent\(GRUCell\(3→5\)\): step input should have 2 or 1 dimensions"):
        layer.step(torch.randn(1, B, I, dtype=DT))   # a (T, B, I) sequence is the layer call's


@pytest.mark.parametrize("bad, error, message", [
    (torch.randn(B, 7, dtype=DT), ValueError, "input has 7 features per step, expected 3"),
    (torch.randn(B, I), TypeError, "input has dtype torch.float32 but the cell's parameters are torch.float64"),
    (torch.zeros(B, I, dtype=torch.int64), TypeError, "input has dtype torch.int64, expected a floating-point tensor"),
    ([[0.0] * I], TypeError, "input should be a tensor"),
], ids=["features", "dtype", "integer", "list"])
def test_step_refuses_what_the_layer_refuses_in_the_same_words(bad, error, message):
    layer = Recurrent(GRUCell(I, H, dtype=DT))
    with pytest.raises(error, match=r"Recurrent\(GRUCell\(3→5\)\): " + message):
        layer.step(bad)
    if isinstance(bad, torch.Tensor):
        with pytest.raises(error, match=r"Recurrent\(GRUCell\(3→5\)\): " + message):
            layer(bad.unsqueeze(0))


def test_step_checks_the_state_as_the_layer_does():
    layer = Recurrent(LSTMCell(I, H, dtype=DT))
    x = torch.randn(B, I, dtype=DT)
    with pytest.raises(ValueError, match=r"Recurrent\(LSTMCell\(3→5\)\): state.c should have shape \(2, 5\)"):
        layer.step(x, LSTMState(torch.zeros(B, H, dtype=DT), torch.zeros(B + 1, H, dtype=DT)))
    with pytest.raises(TypeError, match=r"Recurrent\(LSTMCell\(3→5\)\): state should be"):
        layer.step(x, torch.zeros(B, H, dtype=DT))


class Counting(GRUCell):
    """A GRU cell that counts the calls of its ``init_state``."""

    calls = 0

    def init_state(self, batch_size, *, device=None, dtype=None):
        type(self).calls += 1
        return super().init_state(batch_size, device=device, dtype=dtype)


@torch.no_grad()  # a stream
def test_a_state_handed_back_is_not_checked_again_but_a_changed_one_is():
    cell = Counting(I, H, dtype=DT)
    layer = Recurrent(cell)
    x = torch.randn(B, I, dtype=DT)
    _, h = layer.step(x)
    Counting.calls = 0
    for _ in range(3):
        _, h = layer.step(x, h)          # the state the layer returned: vouched for
        _, h = layer(x.unsqueeze(0), h)  # the layer call too
    assert Counting.calls == 0
    layer.step(x, h.clone())                 # another object: checked
    assert Counting.calls == 1
    _, h = layer.step(x, h)
    h.resize_(B + 1, H)                  # changed in place: checked, and refused in the layer's words
    with pytest.raises(ValueError, match=r"Recurrent\(Counting\(3→5\)\): state should have shape \(2, 5\)"):
        layer.step(x, h)
    _, h = layer.step(torch.randn(B, I, dtype=DT))
    with pytest.raises(ValueError, match=r"Recurrent\(Counting\(3→5\)\): state should have shape \(3, 5\)"):
        layer.step(torch.randn(B + 1, I, dtype=DT), h)   # another batch size: checked
    layer.cell = GRUCell(I, 2 * H, dtype=DT)            # another cell: checked
    with pytest.raises(ValueError, match=r"Recurrent\(GRUCell\(3→10\)\): state should have shape \(2, 10\)"):
        layer.step(x, h)


@torch.no_grad()
def test_threads_streaming_through_one_layer_each_get_their_own_results():
    import threading

    cell = GRUCell(I, H, dtype=DT)
    layer = Recurrent(cell)
    xs = torch.randn(4, 20, B, I, dtype=DT)
    got: dict[int, list] = {}

    def stream(k):
        state, ys = None, []
        with torch.no_grad():  # grad mode is per thread
            for x_t in xs[k]:
                y, state = layer.step(x_t, state if k % 2 else (state.clone() if state is not None else None))
                ys.append(y)
        got[k] = ys

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        h = cell.init_state(B, dtype=DT)
        for x_t, y in zip(xs[k], got[k]):
            expected, h = cell(x_t, h)
            assert torch.equal(y, expected)


# --- a stream's step without gradients: one cell call, the engine not consulted -------------------

@pytest.fixture
def engine_watch(monkeypatch):
    """Counts the layer calls that open an engine call (the full path); a streamed step does not."""
    import torchcells.layers.recurrent as recurrent_module

    opened = []

    def counting(real):
        def opens(*args, **kwargs):
            opened.append(1)
            return real(*args, **kwargs)
        return opens

    monkeypatch.setattr(recurrent_module, "run", counting(recurrent_module.run))
    monkeypatch.setattr(recurrent_module, "run_chunked", counting(recurrent_module.run_chunked))
    return opened


@pytest.mark.parametrize("make_cell", CELLS, ids=IDS)
@pytest.mark.parametrize("how", ["step", "layer", "batch-first", "reverse"])
@torch.no_grad()
def test_a_streamed_step_is_the_cell_call_bit_for_bit_without_opening_the_engine(make_cell, how, engine_watch):
    torch.manual_seed(0)
    cell = make_cell()
    layer = Recurrent(cell, batch_first=how == "batch-first", reverse=how == "reverse")
    xs = torch.randn(6, B, I, dtype=DT)
    state = expected_state = cell.init_state(B, dtype=DT)
    for k, x_t in enumerate(xs):
        if how == "step":
            y, state = layer.step(x_t, state)
        else:
            out, state = layer(x_t.unsqueeze(1 if how == "batch-first" else 0), state)
            assert out.shape == ((B, 1, H) if how == "batch-first" else (1, B, H))
            y = out[:, 0] if how == "batch-first" else out[0]
        expected, expected_state = cell(x_t, expected_state)
        assert torch.equal(y, expected)
        for a, b in zip(leaves(state), leaves(expected_state)):
            assert torch.equal(a, b)
        assert type(state) is type(expected_state)
    assert len(engine_watch) == 1   # only the first call, whose state the layer had not returned
    assert not y.requires_grad


@torch.no_grad()
def test_a_streamed_output_is_its_own_tensor_as_the_full_calls_is():
    cell = GRUCell(I, H, dtype=DT)   # its output is its new state
    layer = Recurrent(cell)
    y, h = layer.step(torch.randn(B, I, dtype=DT))
    y, h = layer.step(torch.randn(B, I, dtype=DT), h)   # streamed
    before = h.clone()
    y.add_(1.0)
    assert torch.equal(h, before)


@pytest.mark.parametrize("what", ["grad", "lengths", "all-states", "two-steps", "fused", "checkpoint", "new-state"])
def test_calls_the_stream_cannot_serve_open_the_engine(what, engine_watch):
    cell = UserLSTMCell(I, H).to(DT)
    layer = Recurrent(cell, engine="fused" if what == "fused" else "auto",
                      checkpoint_steps=1 if what == "checkpoint" else None)
    x = torch.randn(1, B, I, dtype=DT)
    with torch.no_grad():
        _, state = layer(x)
    engine_watch.clear()
    with torch.set_grad_enabled(what == "grad"):
        if what == "lengths":
            layer(x, state, lengths=[1] * B)
        elif what == "all-states":
            layer(x, state, all_states=True)
        elif what == "two-steps":
            layer(torch.cat([x, x]), state)
        elif what == "new-state":
            layer(x, tuple(s.clone() for s in state))
        else:
            layer(x, state)
    assert len(engine_watch) == 1


@torch.no_grad()
def test_a_path_registered_without_short_steps_is_asked_by_a_stream(engine_watch):
    from torchcells.engine.call import Path
    from torchcells.engine.paths import register, unregister

    asked = []

    class Eager(Path):
        name = "eager-test"

        def accepts(self, call):
            asked.append(call.steps)
            return "declines everything"

    layer = Recurrent(GRUCell(I, H, dtype=DT))
    _, h = layer.step(torch.randn(B, I, dtype=DT))
    register(Eager())
    try:
        layer.step(torch.randn(B, I, dtype=DT), h)
    finally:
        unregister("eager-test")
    assert asked == [1] and len(engine_watch) == 2


@torch.no_grad()
def test_a_stream_still_refuses_what_the_layer_refuses():
    layer = Recurrent(GRUCell(I, H, dtype=DT))
    x = torch.randn(B, I, dtype=DT)
    _, h = layer.step(x)
    with pytest.raises(ValueError, match=r"Recurrent\(GRUCell\(3→5\)\): input has 7 features per step, expected 3"):
        layer.step(torch.randn(B, 7, dtype=DT), h)
    _, h = layer.step(x, h)
    with pytest.raises(TypeError, match=r"Recurrent\(GRUCell\(3→5\)\): input has dtype torch.float32 but the cell's "
                                        r"parameters are torch.float64"):
        layer.step(x.float(), h)
    _, h = layer.step(x, h)
    layer.float()   # the weights change dtype; the state the layer returned stays float64
    with pytest.raises(TypeError, match=r"input has dtype torch.float64 but the cell's parameters are torch.float32"):
        layer.step(x, h)


class Breaks(GRUCell):
    """A GRU cell whose step returns a state of the wrong width once ``broken`` is set."""

    broken = False

    def forward(self, x, h):
        y, new = super().forward(x, h)
        return (y, new[:, :-1]) if self.broken else (y, new)


@torch.no_grad()
def test_a_cell_that_goes_wrong_mid_stream_is_named_as_the_layer_names_it():
    cell = Breaks(I, H, dtype=DT)
    layer = Recurrent(cell)
    x = torch.randn(B, I, dtype=DT)
    _, h = layer.step(x)
    _, h = layer.step(x, h)
    cell.broken = True
    with pytest.raises(ValueError, match=r"^Recurrent\(Breaks\(3→5\)\): the cell.s forward returned a new state whose leaf 0 has shape \(2, 4\)") as streamed:
        layer.step(x, h)
    with pytest.raises(ValueError) as full:
        layer(x.unsqueeze(0), h.clone())
    assert str(streamed.value) == str(full.value)


class Drawing(GRUCell):
    """Counts the layer calls that start (``begin_call``)."""

    begun = 0

    def begin_call(self):
        type(self).begun += 1


@torch.no_grad()
def test_each_streamed_step_starts_a_call_of_the_cell():
    layer = Recurrent(Drawing(I, H, dtype=DT))
    x = torch.randn(B, I, dtype=DT)
    Drawing.begun = 0
    _, h = layer.step(x)
    for _ in range(3):
        _, h = layer.step(x, h)
        _, h = layer(x.unsqueeze(0), h)
    assert Drawing.begun == 7


def test_the_loop_runs_short_calls_only_outside_recording_and_transforms():
    from torchcells.engine.paths import get, loop_runs_short

    assert loop_runs_short("auto", 1) and loop_runs_short("loop", 100)
    assert not loop_runs_short("fused", 1)
    longest = min(p.short_steps for p in (get("scan"), get("torch"), get("fused")))
    assert loop_runs_short("auto", longest) and not loop_runs_short("auto", longest + 1)
    seen = []
    torch.func.vmap(lambda t: seen.append(loop_runs_short("auto", 1)) or t)(torch.ones(2))
    assert seen == [False]


class Delay(Cell):
    """Keeps its input as its state and returns the one before: a state that is the input itself."""

    def __init__(self, size):
        super().__init__(size, size)

    def forward(self, x, h):
        return h * 1, x


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@torch.no_grad()
def test_a_stream_into_one_input_buffer_gives_the_full_calls_results(reverse):
    """A real-time loop refills one buffer each step; a cell that keeps its input sees what the
    full call (the reference loop) shows it: a reversed layer's call reads a reversed copy."""
    def outputs(streamed):
        layer = Recurrent(Delay(2), reverse=reverse)
        buf = torch.zeros(1, 1, 2, dtype=DT)
        state, got = None, []
        for k in range(1, 7):
            buf.fill_(float(k))
            out, state = layer(buf, state if streamed else (state.clone() if state is not None else None))
            got.append(out[0, 0, 0].item())
        return got

    assert outputs(streamed=True) == outputs(streamed=False)


@torch.no_grad()
def test_a_loop_registered_in_place_of_the_reference_loop_runs_every_call(engine_watch):
    from torchcells.engine.paths import get, register, unregister
    from torchcells.engine.paths.loop import LoopPath

    ran = []

    class Counted(LoopPath):
        def run(self, call):
            ran.append(call.steps)
            return super().run(call)

    layer = Recurrent(GRUCell(I, H, dtype=DT), engine="loop")
    x = torch.randn(B, I, dtype=DT)
    _, h = layer.step(x)
    stock = unregister("loop")
    try:
        with pytest.raises(ValueError, match="engine should be one of"):
            layer.step(x, h)   # no loop registered: the full call's error
        register(Counted(), before=None)
        _, h = layer.step(x, h)
        _, h = layer.step(x, h)
    finally:
        unregister("loop")
        register(stock, before=None)
    assert ran == [1, 1] and get("loop") is stock


class Picky(GRUCell):
    """Refuses inputs above 100 in its own words."""

    def forward(self, x, h):
        if x.max() > 100:
            raise ValueError(f"{self.short_name()}: forward got an input above 100")
        return super().forward(x, h)


@torch.no_grad()
def test_a_cells_own_error_mid_stream_is_named_as_the_layer_names_it():
    layer = Recurrent(Picky(I, H, dtype=DT))
    x = torch.randn(B, I, dtype=DT)
    _, h = layer.step(x)
    with pytest.raises(ValueError) as streamed:
        layer.step(x + 1000, h)
    with pytest.raises(ValueError) as full:
        layer.step(x + 1000, h.clone())
    assert str(streamed.value) == str(full.value) == "Recurrent(Picky(3→5)): the cell's forward got an input above 100"
