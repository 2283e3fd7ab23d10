"""The benchmark harness runs and reports (tiny sizes; no time is asserted -- speed lives in BENCHMARKS.md)."""

import pytest
import torch

from torchcells import LSTMCell, Recurrent
from torchcells.bench import (ALLOCATORS, GOALS, Goal, Matrix, Row, Run, UserLSTMCell, autocast_rows, compile_rows,
                              cpu, document, lstm_rows, measured, new_batch_rows, onnx_rows, plan, run_matrix,
                              streaming_rows, to_markdown, verdict)


def test_user_lstm_cell_is_an_lstm():
    torch.manual_seed(0)
    user, ref = UserLSTMCell(3, 4), LSTMCell(3, 4)
    with torch.no_grad():
        ref.weight_ih.copy_(user.ih.weight), ref.bias_ih.copy_(user.ih.bias)
        ref.weight_hh.copy_(user.hh.weight), ref.bias_hh.copy_(user.hh.bias)
    x = torch.randn(5, 2, 3)
    a, (h, c) = Recurrent(user)(x)
    b, (h2, c2) = Recurrent(ref, engine="loop")(x)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(c, c2)


def test_rows_count_page_faults_and_name_their_goal():
    rows = lstm_rows(runs=2, shapes={"lstm-b32": (2, 3, 4, 5)})
    assert [r.ours for r in rows] == ["Recurrent(UserLSTMCell)", "Recurrent(UserLSTMCell), TORCHCELLS_NATIVE=0",
                                      "Recurrent(UserLSTMCell, engine='loop')"]
    assert [r.goal for r in rows] == ["lstm-b32", "", ""]
    assert all(r.ms_ours > 0 and r.ms_theirs > 0 and r.runs == 2 for r in rows)
    assert all(r.faults_ours is not None and r.faults_ours >= 0 for r in rows)


def test_quick_run_has_every_goal_row_at_both_thread_counts_and_the_cpu():
    matrix = run_matrix(quick=True, progress=False)
    assert matrix.threads == [1, 2]
    assert sorted((run.allocator, run.threads) for run in matrix.runs) == sorted(
        (a.name, t) for a in ALLOCATORS for t in (1, 2))
    assert {run.settings["threads"] for run in matrix.runs} == {"1", "2"}
    tuned = next(run for run in matrix.runs if run.allocator == ALLOCATORS[1].name)
    assert "MALLOC_MMAP_THRESHOLD_=4294967296" in tuned.settings["allocator"]
    plain = next(run for run in matrix.runs if run.allocator == ALLOCATORS[0].name)
    assert "MALLOC_" not in plain.settings["allocator"]
    for key in ("CPU", "vendor", "ISA", "torch CPU capability", "torch"):
        assert matrix.machine[key]
    assert matrix.machine["torch CPU capability"] == torch.backends.cpu.get_cpu_capability()
    measured_somewhere = {r.goal for run in matrix.runs for r in run.rows}
    has_step = callable(getattr(Recurrent, "step", None))
    for goal in GOALS:
        assert goal.key in measured_somewhere or (goal.key == "stream-step" and not has_step), goal.key
    text = to_markdown(matrix)
    assert text.startswith("### Goals")
    first, per_setting = text.split("\n\n")[1:3]  # the goals table, then the per-setting table's heading
    lines = first.splitlines()[2:]
    assert len(lines) == len(GOALS)
    for line, goal in zip(lines, GOALS):  # every goal row, its goal, a verdict where it was measured
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == goal.what and cells[2] == goal.goal
        unmeasured = {"stream-step"} if not has_step else set()
        for n, cell in enumerate(cells[3:]):
            if goal.key in unmeasured or (n == 1 and goal.key in ("first-call", "memory")):  # --quick: 1st run
                assert cell.startswith("not measured (")
            else:
                assert cell.endswith(": meets") or ": misses by " in cell, (goal.key, cell)
    assert "each allocator setting" in per_setting
    assert "### 1 thread, glibc defaults" in text and "### 2 threads, page-fault-free glibc" in text
    assert "- ISA: " in text and "- vendor: " in text and "--quick" in text


def test_the_native_runtime_is_loaded_before_any_child_runs(monkeypatch):
    """Its one-time build, where there is none yet, is not timed inside a child's first-call row."""
    import subprocess

    import torchcells.engine.native as native
    from torchcells.bench import run_matrix

    order: list[str] = []

    def load() -> None:
        order.append("library")
        raise LookupError("stop here")

    monkeypatch.setattr(native, "library", load)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: order.append("child"))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: order.append("child"))
    with pytest.raises(LookupError, match="stop here"):
        run_matrix(1, progress=False)
    assert order == ["library"]


def test_plan_runs_every_allocator_and_thread_count_in_its_own_process():
    full = plan(quick=False)
    assert [(p.allocator.name, p.threads) for p in full] == [(a.name, (t,)) for a in ALLOCATORS for t in (1, 2)]
    assert [p.memory for p in full] == [True, True, False, False]     # the memory probe clears MALLOC_*
    assert [p.context for p in full] == [False, False, True, True]
    assert all(p.first_call for p in full)


def _run(allocator: str, threads: int, ours: float, theirs: float, goal: str = "lstm-b32") -> Run:
    return Run(allocator, threads, {"threads": str(threads)}, [Row("r", (1, 2, 3, 4), "a", "b", ours, theirs, goal=goal)])


def test_goals_take_each_side_at_its_best_and_say_by_how_much_they_miss():
    goal = next(g for g in GOALS if g.key == "lstm-b32")
    # ours 50 ms under both settings; nn.LSTM 50 ms by default, 36 ms page-fault-free: 50 / 36, not 50 / 50
    runs = [_run("glibc defaults", 2, 50.0, 50.0), _run("page-fault-free glibc", 2, 53.0, 36.0)]
    assert measured(goal, runs) == pytest.approx(50 / 36)
    assert verdict(goal, 50 / 36) == "misses by 26 %"
    assert verdict(goal, 1.05) == "meets"
    scan = Goal("s", "scan", "", "≥ 20×", "speedup", 20.0)
    assert measured(scan, [_run("x", 1, 10.0, 150.0, "s")]) == pytest.approx(15.0)
    assert verdict(scan, 5.0) == "misses by 4.0×" and verdict(scan, 25.0) == "meets"
    matrix = Matrix({"CPU": "x"}, runs)
    text = to_markdown(matrix)
    assert "1.39×: misses by 26 %" in text
    # each run's own ratio beside the ratio to theirs at its best: 50 / 50 own, 50 / 36 at nn.LSTM's best
    assert "| 1.00× | 1.39× |" in text and "| 1.47× | 1.47× |" in text
    assert "not measured" in text  # the goal rows no run measured
    # per setting: ours with glibc's defaults 50 / 36, ours page-fault-free 53 / 36 (nn.LSTM at its best)
    assert "| 2 threads, glibc defaults | 2 threads, page-fault-free glibc |" in text
    assert "| ≤ 1.1× | 1.39× | 1.47× |" in text
    assert document(matrix).startswith("# Benchmarks") and "python benchmarks/run.py" in document(matrix)


def test_streaming_rows_time_one_step_through_the_layer_and_the_cell():
    rows = streaming_rows(runs=2, shape=(1, 1, 3, 4), calls=2)
    assert rows[0].goal == "stream-layer" and rows[0].unit == "µs" and rows[0].theirs == "UserLSTMCell(x, state)"
    assert [r.goal for r in rows] == ["stream-layer"] + (["stream-step"] if hasattr(Recurrent, "step") else [])
    assert all(r.ms_ours > 0 and r.ms_theirs > 0 for r in rows)


def test_cpu_names_model_vendor_and_isa():
    info = cpu()
    assert set(info) == {"CPU", "vendor", "ISA", "torch CPU capability"}
    assert info["torch CPU capability"] == torch.backends.cpu.get_cpu_capability()


def test_python_loop_contender_switches_the_native_runtime_off_only_while_it_runs(monkeypatch):
    import os

    from torchcells.bench.rows import _PythonLoop
    from torchcells.engine.native import available

    monkeypatch.delenv("TORCHCELLS_NATIVE", raising=False)
    layer = _PythonLoop(Recurrent(UserLSTMCell(3, 4)))
    out = layer(torch.randn(5, 2, 3, requires_grad=True))[0]
    names = set()
    fn = out.grad_fn
    while fn is not None:
        names.add(type(fn).__name__)
        fn = fn.next_functions[0][0] if fn.next_functions else None
    assert "_FusedSequenceBackward" in names
    assert "TORCHCELLS_NATIVE" not in os.environ
    if available():
        direct = Recurrent(UserLSTMCell(3, 4))(torch.randn(5, 2, 3, requires_grad=True))[0]
        assert type(direct.grad_fn).__name__ == "NativeSequenceBackward"


def test_autocast_and_new_batch_rows_measure_both_sides():
    rows = autocast_rows(runs=2, shape=(2, 3, 4, 5)) + new_batch_rows(runs=2, shape=(2, 3, 4, 5))
    assert [r.theirs for r in rows] == ["nn.LSTM", "nn.GRU", "nn.LSTM"]
    assert all(r.ms_ours > 0 and r.ms_theirs > 0 and r.runs == 2 for r in rows)
    assert "B = 3, 4" in rows[-1].note


@pytest.mark.usefixtures("onnx_table_once")  # torch.onnx lists its table of onnxscript functions once (conftest)
def test_compile_and_onnx_rows_measure_both_sides():
    pytest.importorskip("onnxruntime")
    rows = compile_rows(runs=2, shape=(2, 3, 4, 5), backend="aot_eager") + onnx_rows(runs=2, shape=(2, 3, 4, 5))
    assert [r.theirs for r in rows] == ["Recurrent(UserLSTMCell), eager", "nn.LSTM", "nn.LSTM (ONNX LSTM node)"]
    assert all(r.ms_ours > 0 and r.ms_theirs > 0 for r in rows)


def test_bench_refuses_zero_runs():
    with pytest.raises(ValueError, match="runs should be at least 1, got 0"):
        run_matrix(0, quick=True)


def test_benchmarks_md_opens_with_the_harness_header():
    from pathlib import Path

    from torchcells.bench.report import HEADER

    text = (Path(__file__).resolve().parents[1] / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert text.startswith(HEADER)  # how to run it, as the harness writes it


def test_cli_bench_refuses_zero_runs(capsys):
    from torchcells.cli import main

    assert main(["bench", "--runs", "0"]) == 2
    assert "torchcells bench: error: --runs should be at least 1, got 0" in capsys.readouterr().err
