"""The training CLI tried as an adversary would (issue 13): each case a row of a table.

Bad numbers, folders it did not write, locks, leftovers of killed runs, tampered checkpoints:
each is one line on stderr and exit status 2, before anything is made or changed.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch

import torchcells.tasks.training as training
from torchcells.cli import main
from torchcells.tasks.checkpoint import CHECKPOINT, load_checkpoint, pack, save_checkpoint, unpack
from torchcells.tasks.rundir import LOCK

TINY = ["--hidden", "4", "--limit", "32", "--batch-size", "16", "--no-progress"]
TRAIN = ["train", "digits", "--cell", "gru", *TINY]


def run(argv, capsys):
    """``torchcells ARGV`` in this process: (exit status, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as e:            # argparse's own refusals
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(code, out, err, expected):
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, (code, out, err)
    assert lines[0].startswith("torchcells ") and expected in lines[0], lines[0]


BAD_NUMBERS = [
    (["--lr", "nan"], "--lr should be a number > 0 and <= 1"),
    (["--lr", "inf"], "got inf"),
    (["--lr", "1e300"], "got 1e+300"),
    (["--lr", "-1"], "got -1.0"),
    (["--threads", "0"], "--threads should be from 1 to"),
    (["--threads", "-1"], "got -1"),
    (["--threads", "100000"], "got 100000"),
    (["--seed", "-1"], "--seed should be a whole number from 0 to 4294967295, got -1"),
    (["--seed", str(2**63)], f"got {2**63}"),
    (["--seed", str(2**70)], f"got {2**70}"),
    (["--hidden", "1e9"], "argument --hidden: invalid int value: '1e9'"),
    (["--hidden", str(10**9)], "GB with gradients and Adam's moments, more than this machine's"),
    (["--layers", str(10**8)], "with --layers 100000000 makes a gru model of about"),
    (["--epochs", "-1"], "--epochs should be at least 1, got -1"),
    (["--batch-size", "0"], "--batch-size should be at least 1, got 0"),
]


@pytest.mark.parametrize("extra, expected", BAD_NUMBERS, ids=[" ".join(e) for e, _ in BAD_NUMBERS])
def test_a_bad_number_is_one_line_exit_2_and_makes_nothing(tmp_path, capsys, extra, expected):
    out = tmp_path / "run"
    refused(*run([*TRAIN, "--out", str(out), *extra], capsys), expected)
    assert not out.exists()


def test_the_parameter_estimate_is_exact():
    task = training.get_task("digits")
    for cell, hidden, layers, bi in (("gru", 40, 3, False), ("lstm", 5, 1, True), ("slstm", 12, 2, False)):
        config = training.resolve_config("digits", cell, hidden=hidden, layers=layers, bidirectional=bi)
        built = task.build(cell, hidden=hidden, layers=layers, bidirectional=bi)
        assert training.estimate_parameters(task, config) == sum(p.numel() for p in built.parameters())


def _someones_config(d):
    (d / "config.json").write_text('{"project": "mine"}\n')


def _someones_plot(d):
    (d / "training.png").write_bytes(b"my own figure")


def _notes(d):
    (d / "notes.txt").write_text("mine")


def _a_folder(d):
    (d / "data").mkdir()
    (d / "data" / "x.csv").write_text("1,2")


FOREIGN = [(_someones_config, "config.json"), (_someones_plot, "training.png"),
           (_notes, "notes.txt"), (_a_folder, "data/")]


@pytest.mark.parametrize("command", ["train", "compare"])
@pytest.mark.parametrize("make, expected", FOREIGN, ids=[m.__name__ for m, _ in FOREIGN])
def test_a_folder_with_files_it_did_not_write_is_refused_and_kept(tmp_path, capsys, make, expected, command):
    make(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    argv = [*TRAIN, "--epochs", "1"] if command == "train" else ["compare", "digits", "--cells", "gru", *TINY]
    code, out, err = run([*argv, "--epochs", "1", "--out", str(tmp_path)], capsys)
    refused(code, out, err, "holds files torchcells did not write")
    assert expected in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny run of 2 epochs: its folder (copied by each test that changes it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    torch.set_num_threads(1)
    assert main([*TRAIN, "--epochs", "2", "--out", str(out)]) == 0
    return out


def test_its_own_folder_is_accepted_and_resume_tolerates_a_users_notes(finished, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    (run_dir / CHECKPOINT).unlink()                        # its own config.json and plots: accepted again
    assert run([*TRAIN, "--epochs", "1", "--out", str(run_dir)], capsys)[0] == 0
    (run_dir / "notes.txt").write_text("mine")             # --resume finds its own checkpoint: accepted
    assert run([*TRAIN, "--epochs", "2", "--out", str(run_dir), "--resume"], capsys)[0] == 0
    assert (run_dir / "notes.txt").read_text() == "mine" and not (run_dir / LOCK).exists()


def _lock(directory, pid):
    directory.mkdir(exist_ok=True)
    (directory / LOCK).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))


def test_a_folder_locked_by_a_live_run_is_refused(tmp_path, capsys):
    _lock(tmp_path, os.getppid())                           # a live process that is not this one
    refused(*run([*TRAIN, "--epochs", "1", "--out", str(tmp_path)], capsys), f"is in use by process {os.getppid()}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK]


def test_a_stale_lock_and_a_killed_runs_temporary_files_are_cleared(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _lock(tmp_path, dead.pid)
    (tmp_path / ".checkpoint.safetensors.k9x2q1.tmp").write_bytes(b"half a checkpoint")
    assert run([*TRAIN, "--epochs", "1", "--out", str(tmp_path)], capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT, "config.json", "training.png", "training.svg"]


def test_two_runs_at_once_one_refused(tmp_path):
    """A real second process while the first holds the lock (it waits in its first epoch)."""
    gate = tmp_path / "gate"
    first = subprocess.Popen([sys.executable, "-c", f"""
import pathlib, sys, time, torchcells.tasks.training as t
real = t._train_epoch
def waiting(*a, **k):
    pathlib.Path({str(gate)!r}).write_text("in")
    while pathlib.Path({str(gate)!r}).read_text() != "go":
        time.sleep(0.01)  # not spinning: the second process needs the CPU meanwhile
    return real(*a, **k)
t._train_epoch = waiting
from torchcells.cli import main
sys.exit(main({[*TRAIN, "--epochs", "1", "--out", str(tmp_path / "run")]!r}))
"""], stderr=subprocess.PIPE, text=True)
    try:
        while not gate.exists() or gate.read_text() != "in":
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            time.sleep(0.01)  # not spinning: the first process needs the CPU to get there
        second = subprocess.run([sys.executable, "-m", "torchcells", *TRAIN, "--epochs", "1", "--out",
                                 str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
        gate.write_text("go")
        assert first.wait(timeout=120) == 0
    finally:
        first.kill()
    assert second.returncode == 2 and f"is in use by process {first.pid}" in second.stderr
    assert load_checkpoint(tmp_path / "run").meta["epochs_done"] == 1


def test_an_unwritable_out_is_refused_before_the_first_epoch(tmp_path, capsys, monkeypatch):
    target = str(tmp_path / "run")
    real_open, epochs = os.open, []

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(target) and flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, "open", read_only)
    real_epoch = training._train_epoch
    monkeypatch.setattr(training, "_train_epoch", lambda *a, **k: epochs.append(1) or real_epoch(*a, **k))
    refused(*run([*TRAIN, "--epochs", "1", "--out", target], capsys), f"cannot write in --out {target}")
    assert epochs == []


def test_ctrl_c_before_the_first_epoch_says_nothing_was_saved(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(training, "_train_epoch", interrupted)
    code, _, err = run([*TRAIN, "--epochs", "2", "--out", str(tmp_path / "run")], capsys)
    assert code == 130 and "nothing was saved" in err and "--resume" not in err
    assert not (tmp_path / "run").exists()


def test_a_loss_that_becomes_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    task_class = type(training.get_task("digits"))
    real, calls = task_class.sums, []

    def nan_in_epoch_two(self, model, batch):
        sums = real(self, model, batch)
        calls.append(1)
        if len(calls) > 2 and model.training:        # 2 steps per epoch; held-out evaluation stays finite
            sums.loss = sums.loss * float("nan")
        return sums
    monkeypatch.setattr(task_class, "sums", nan_in_epoch_two)
    code, out, err = run([*TRAIN, "--epochs", "3", "--out", str(tmp_path)], capsys)
    refused(code, out, err, "the training loss became nan at step 3 (epoch 2)")
    assert f"{tmp_path} keeps the checkpoint of epoch 1" in err
    assert load_checkpoint(tmp_path).meta["epochs_done"] == 1


def _exp_avg_shape(tensors, meta, optimizer):
    optimizer["state"][0]["exp_avg"] = torch.zeros(3)


def _no_exp_avg_sq(tensors, meta, optimizer):
    del optimizer["state"][1]["exp_avg_sq"]


def _step_count(tensors, meta, optimizer):
    optimizer["state"][0]["step"] = torch.tensor(99.0)


def _two_groups(tensors, meta, optimizer):
    optimizer["param_groups"].append(dict(optimizer["param_groups"][0]))


def _history_row_missing(tensors, meta, optimizer):
    meta["history"] = meta["history"][:1]


def _history_text(tensors, meta, optimizer):
    meta["history"][0]["test_loss"] = "low"


def _epochs_done_text(tensors, meta, optimizer):
    meta["epochs_done"] = "2"


def _world_size_zero(tensors, meta, optimizer):
    meta["world_size"] = 0


def _step_losses_cut(tensors, meta, optimizer):
    tensors["history/step_loss"] = tensors["history/step_loss"][:1]


def _rng_cut(tensors, meta, optimizer):
    tensors["rng/torch/0"] = tensors["rng/torch/0"][:10]


def _config_not_a_dict(tensors, meta, optimizer):
    meta["config"] = ["gru"]


TAMPERED = [
    (_exp_avg_shape, "optimizer state 0 exp_avg should be"),
    (_no_exp_avg_sq, "optimizer state 1 should hold step, exp_avg and exp_avg_sq"),
    (_step_count, "optimizer state 0 should have taken 4 steps, got 99.0"),
    (_two_groups, "the optimizer should have one parameter group"),
    (_history_row_missing, "the history should have one row per epoch done (2), got 1 rows"),
    (_history_text, "history row 1 should be numbers"),
    (_epochs_done_text, "epochs_done should be a whole number >= 0, got '2'"),
    (_world_size_zero, "world_size should be a whole number >= 1, got 0"),
    (_step_losses_cut, "history/step_loss should hold 4 losses (2 epochs of 2 steps)"),
    (_rng_cut, "rng/torch/0 should be a generator state"),
    (_config_not_a_dict, "should hold its configuration"),
]


@pytest.mark.parametrize("tamper, expected", TAMPERED, ids=[t.__name__ for t, _ in TAMPERED])
def test_a_tampered_checkpoint_is_one_line_exit_2_and_nothing_changes(finished, tmp_path, capsys, tamper, expected):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    checkpoint = load_checkpoint(run_dir)
    tensors = {k: v for k, v in checkpoint.tensors.items() if not k.startswith("optimizer/")}
    optimizer = unpack(checkpoint.meta["optimizer"], checkpoint.tensors)
    meta = {k: v for k, v in checkpoint.meta.items() if k != "format"}
    tamper(tensors, meta, optimizer)
    meta["optimizer"] = pack(optimizer, "optimizer/", tensors)
    save_checkpoint(run_dir, tensors, meta)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    refused(*run([*TRAIN, "--epochs", "3", "--out", str(run_dir), "--resume"], capsys), expected)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
