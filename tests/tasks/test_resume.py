"""Checkpoints and --resume: an interrupted run continues exactly; nothing written is lost."""

import pytest
import torch

from torchcells.tasks import CheckpointError, TaskError, resolve_config, train
from torchcells.tasks.base import recurrent_cells
from torchcells.tasks.checkpoint import CHECKPOINT, CONFIG

TINY = dict(hidden=8, batch_size=16, limit=48, lr=1e-2)
pytestmark = pytest.mark.usefixtures("vowels_parsed_once")  # parsed once for the module (conftest)


def curve(result):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in result.history]


def weights(result):
    return {k: v.clone() for k, v in result.model.state_dict().items()}


# variational-dropout draws its masks from torch's generator: resuming must restore its state too
@pytest.mark.parametrize("task, cell, extra", [("digits", "gru", {}), ("vowels", "variational-dropout", {}),
                                               ("sunspots", "lstm", {"layers": 2, "bidirectional": True})])
def test_two_plus_two_epochs_equal_four(tmp_path, task, cell, extra):
    straight = train(resolve_config(task, cell, epochs=4, **TINY, **extra), progress=False)
    out = tmp_path / "run"
    first = train(resolve_config(task, cell, epochs=2, **TINY, **extra), out=out, progress=False)
    assert len(first.history) == 2 and (out / CHECKPOINT).is_file() and (out / CONFIG).is_file()
    resumed = train(resolve_config(task, cell, epochs=4, **TINY, **extra), out=out, resume=True, progress=False)
    assert curve(resumed) == curve(straight)                 # every epoch's losses and metrics, bit for bit
    assert resumed.step_loss == straight.step_loss          # and every step's
    assert len(resumed.step_loss) == 4 * 3
    ours, theirs = weights(resumed), weights(straight)
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint to resume"):
        train(resolve_config("digits", "gru", epochs=1, **TINY), out=tmp_path, resume=True, progress=False)


def test_existing_checkpoint_is_not_overwritten(tmp_path):
    train(resolve_config("digits", "gru", epochs=1, **TINY), out=tmp_path, progress=False)
    before = (tmp_path / CHECKPOINT).read_bytes()
    with pytest.raises(TaskError, match="already holds a checkpoint"):
        train(resolve_config("digits", "gru", epochs=1, **TINY), out=tmp_path, progress=False)
    assert (tmp_path / CHECKPOINT).read_bytes() == before


@pytest.mark.parametrize("change, message", [({"cell": "lstm"}, "cell"), ({"hidden": 9}, "hidden"),
                                             ({"seed": 1}, "seed"), ({"epochs": 0}, "should be at least 1")])
def test_mismatched_configuration_is_refused_and_nothing_is_written(tmp_path, change, message):
    train(resolve_config("digits", "gru", epochs=2, **TINY), out=tmp_path, progress=False)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    options = {**TINY, "epochs": 3, **change}
    cell = options.pop("cell", "gru")
    with pytest.raises(TaskError, match=message):
        train(resolve_config("digits", cell, **options), out=tmp_path, resume=True, progress=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


def test_fewer_epochs_than_done_is_refused(tmp_path):
    train(resolve_config("digits", "gru", epochs=2, **TINY), out=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="2 epochs done"):
        train(resolve_config("digits", "gru", epochs=1, **TINY), out=tmp_path, resume=True, progress=False)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_checkpoint_is_one_clear_error_and_stays_as_it_was(tmp_path, damage):
    train(resolve_config("digits", "gru", epochs=1, **TINY), out=tmp_path, progress=False)
    path = tmp_path / CHECKPOINT
    data = path.read_bytes()
    bad = {"truncate": data[:len(data) // 2], "garbage": b"\x80\x04not a safetensors file" * 10, "empty": b""}[damage]
    path.write_bytes(bad)
    with pytest.raises(CheckpointError, match="damaged") as info:
        train(resolve_config("digits", "gru", epochs=2, **TINY), out=tmp_path, resume=True, progress=False)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == bad


def test_tampered_weights_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    train(resolve_config("digits", "gru", epochs=1, **TINY), out=tmp_path, progress=False)
    path = tmp_path / CHECKPOINT
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.startswith("model/") and k.endswith("weight_hh"))
    tensors[key] = torch.zeros(3, 3)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="weight_hh is \\(3, 3\\)"):
        train(resolve_config("digits", "gru", epochs=2, **TINY), out=tmp_path, resume=True, progress=False)


def test_resume_never_unpickles(tmp_path, monkeypatch):
    train(resolve_config("digits", "gru", epochs=1, **TINY), out=tmp_path, progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was read with torch.load / pickle")
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr("pickle.load", refuse)
    monkeypatch.setattr("pickle.loads", refuse)
    resumed = train(resolve_config("digits", "gru", epochs=2, **TINY), out=tmp_path, resume=True, progress=False)
    assert len(resumed.history) == 2


@pytest.mark.slow
@pytest.mark.parametrize("cell", recurrent_cells())
def test_every_accepted_zoo_cell_trains_with_lengths(cell):
    result = train(resolve_config("vowels", cell, epochs=1, hidden=6, batch_size=8, limit=16),
                   progress=False)
    assert len(result.step_loss) == 2 and all(loss == loss and loss < 10 for loss in result.step_loss)
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


@pytest.mark.slow
def test_resume_in_a_new_process_continues_exactly(tmp_path):
    """The CLI's first two epochs run in this process; the resume runs in a fresh one, so all it
    continues from is what the checkpoint holds."""
    import subprocess
    import sys

    from torchcells.cli import main
    from torchcells.tasks.checkpoint import load_checkpoint

    options = ["--hidden", "8", "--limit", "48", "--batch-size", "16", "--lr", "0.01", "--threads", "1", "--no-progress"]
    base = ["train", "vowels", "--cell", "variational-dropout", "--out", str(tmp_path), *options]
    assert main([*base, "--epochs", "2"]) == 0
    done = subprocess.run([sys.executable, "-m", "torchcells", *base, "--epochs", "4", "--resume"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    straight = train(resolve_config("vowels", "variational-dropout", epochs=4, **TINY), progress=False)
    resumed = load_checkpoint(tmp_path)
    assert resumed.tensors["history/step_loss"].tolist() == straight.step_loss
    for k, v in straight.model.state_dict().items():
        assert torch.equal(resumed.tensors[f"model/{k}"], v), k
