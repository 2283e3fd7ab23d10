"""`torchcells train` and `torchcells compare` from the command line: output, files, one-line errors."""

import subprocess
import sys

import pytest

from torchcells.cli import main
from torchcells.tasks.base import recurrent_cells
from torchcells.tasks.checkpoint import CHECKPOINT

TINY = ["--hidden", "8", "--limit", "48", "--batch-size", "16", "--no-progress"]


def test_train_writes_checkpoint_config_and_plots_and_summarizes(tmp_path, capsys):
    assert main(["train", "vowels", "--cell", "gru", "--epochs", "2", "--out", str(tmp_path), *TINY]) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and "a trivial predictor" in out
    accuracy = float(out.split("held-out accuracy ")[1].split()[0])
    assert 0.0 <= accuracy <= 1.0
    for name in (CHECKPOINT, "config.json", "training.png", "training.svg"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "training.svg").read_bytes()[:2000]
    assert "The trained model's cells" in out and "GRUCell(12→8)" in out       # the anatomy of the model
    assert "a sample from the model" not in out                                # charlm's extra_report only


def test_charlm_prints_a_sample_of_known_characters(capsys):
    assert main(["train", "charlm", "--cell", "mingru", "--epochs", "1", *TINY]) == 0
    out = capsys.readouterr().out
    assert "bits/char" in out
    sample = out.split("temperature 0.8):\n")[1]
    assert sample.startswith("The ") and len(sample) > 100


def test_progress_bar_shows_loss_and_metric(capsys):
    options = [o for o in TINY if o != "--no-progress"]
    assert main(["train", "sunspots", "--cell", "lstm", "--epochs", "1", *options]) == 0
    err = capsys.readouterr().err
    assert "loss=" in err and "test_MAE=" in err


@pytest.mark.parametrize("argv, expected", [
    (["train", "digits", "--cell", "transformer"], "unknown cell 'transformer'; choose one of: "),
    (["train", "imagenet", "--cell", "gru"], "unknown task 'imagenet'; choose one of: digits, sunspots, vowels, charlm"),
    (["train", "charlm", "--cell", "gru", "--bidirectional"], "a backward direction would read it"),
    (["train", "digits", "--cell", "gru", "--epochs", "0"], "--epochs should be at least 1"),
    (["compare", "digits", "--cells", "gru,nope"], "unknown cell 'nope'"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, expected):
    assert main(argv + TINY) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and lines[0].startswith("torchcells ")


def test_unknown_cell_lists_every_recurrent_zoo_cell(capsys):
    assert main(["train", "digits", "--cell", "nope", *TINY]) == 2
    err = capsys.readouterr().err
    for name in recurrent_cells():
        assert name in err
    assert {"lstm", "gru", "mingru", "slstm", "zoneout"} <= set(recurrent_cells())
    assert "conv-lstm" not in recurrent_cells() and "neuron" not in recurrent_cells()


def test_resume_with_damaged_checkpoint_exits_2_and_keeps_the_file(tmp_path):
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    done = subprocess.run([sys.executable, "-m", "torchcells", "train", "digits", "--cell", "gru", "--resume",
                           "--out", str(tmp_path), *TINY], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "damaged" in done.stderr
    assert (tmp_path / CHECKPOINT).read_bytes() == b"not a checkpoint"


def test_compare_prints_a_table_and_plots(tmp_path, capsys):
    assert main(["compare", "sunspots", "--cells", "gru,mingru", "--epochs", "2", "--out", str(tmp_path), *TINY]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "cell" not in line]
    assert [r.split("|")[1].split()[0] for r in rows] == ["gru", "mingru"]
    assert sum("(best)" in r for r in rows) == 1
    assert "| cell | held-out MAE | parameters | seconds |" in out
    for name in ("compare.png", "compare.svg", "gru/checkpoint.safetensors", "mingru/training.png"):
        assert (tmp_path / name).is_file(), name
    assert main(["compare", "sunspots", "--cells", "gru", "--epochs", "2", "--out", str(tmp_path), *TINY]) == 2


def test_interrupt_keeps_the_finished_epochs_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    import torchcells.tasks.training as training

    real = training._train_epoch
    calls = []

    def interrupted_in_the_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(training, "_train_epoch", interrupted_in_the_second_epoch)
    assert main(["train", "digits", "--cell", "gru", "--epochs", "3", "--out", str(tmp_path), *TINY]) == 130
    assert "add --resume to continue" in capsys.readouterr().err
    from torchcells.tasks.checkpoint import load_checkpoint
    assert load_checkpoint(tmp_path).meta["epochs_done"] == 1
    monkeypatch.setattr(training, "_train_epoch", real)
    assert main(["train", "digits", "--cell", "gru", "--epochs", "3", "--out", str(tmp_path), "--resume", *TINY]) == 0
    assert load_checkpoint(tmp_path).meta["epochs_done"] == 3


@pytest.mark.parametrize("cell, why", [("conv-lstm", "reads an image per step"), ("neuron", "is feed-forward"),
                                       ("residual", "needs as many hidden units as inputs")])
def test_zoo_cells_that_cannot_train_here_say_why(capsys, cell, why):
    assert main(["train", "digits", "--cell", cell, *TINY]) == 2
    err = capsys.readouterr().err
    assert why in err and "choose one of: elman, lstm" in err and err.count("\n") == 1


def test_out_that_is_a_file_is_refused_and_kept(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    assert main(["train", "digits", "--cell", "gru", "--out", str(path), *TINY]) == 2
    assert "is a file" in capsys.readouterr().err and path.read_text() == "mine"
