"""The checkpoint format: tensors in safetensors, structure in JSON, atomic writes."""

import json
import os

import pytest
import torch

from torchcells.tasks.checkpoint import CHECKPOINT, CheckpointError, load_checkpoint, pack, save_checkpoint, unpack


def test_optimizer_state_survives_pack_and_unpack():
    model = torch.nn.Linear(3, 2)
    adam = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.9))
    model(torch.randn(4, 3)).sum().backward()
    adam.step()
    tensors: dict = {}
    packed = pack(adam.state_dict(), "optimizer/", tensors)
    json.dumps(packed)                                              # the structure is plain JSON
    assert all(isinstance(v, torch.Tensor) for v in tensors.values()) and len(tensors) == 6
    again = unpack(json.loads(json.dumps(packed)), tensors)
    assert list(again["state"]) == [0, 1]                          # int keys stay ints
    assert again["param_groups"][0]["betas"] == (0.8, 0.9)         # tuples stay tuples
    twin = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    twin.load_state_dict(again)
    assert torch.equal(twin.state_dict()["state"][0]["exp_avg"], adam.state_dict()["state"][0]["exp_avg"])


def test_pack_refuses_what_json_cannot_hold():
    with pytest.raises(TypeError, match="cannot store a object"):
        pack({"x": object()}, "p/", {})


def test_save_and_load_round_trip(tmp_path):
    tensors = {"model/w": torch.randn(2, 3), "rng/torch/0": torch.get_rng_state()}
    save_checkpoint(tmp_path, tensors, {"config": {"cell": "gru"}, "epochs_done": 1})
    loaded = load_checkpoint(tmp_path)
    assert torch.equal(loaded.tensors["model/w"], tensors["model/w"])
    assert loaded.group("model").keys() == {"w"} and loaded.meta["config"] == {"cell": "gru"}
    assert json.loads((tmp_path / "config.json").read_text())["epochs_done"] == 1


def test_a_failed_save_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"model/w": torch.zeros(2)}, {"epochs_done": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash(*args):
        raise OSError("disk full")
    monkeypatch.setattr("os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, {"model/w": torch.ones(2)}, {"epochs_done": 2})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before    # no temporary file left behind


def test_a_safetensors_file_without_our_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / CHECKPOINT))
    with pytest.raises(CheckpointError, match="not a torchcells training checkpoint"):
        load_checkpoint(tmp_path)


def test_config_json_is_never_an_epoch_behind_the_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"model/w": torch.zeros(2)}, {"epochs_done": 1})
    real_fsync, calls = os.fsync, []

    def fail_on_the_second_file(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError("disk full")
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fail_on_the_second_file)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, {"model/w": torch.ones(2)}, {"epochs_done": 2})
    saved = json.loads((tmp_path / "config.json").read_text())["epochs_done"]
    assert load_checkpoint(tmp_path).meta["epochs_done"] == saved == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT, "config.json"]


def test_config_json_is_standard_json(tmp_path):
    history = [{"epoch": 1, "test_loss": float("inf"), "train_loss": float("nan")}]
    save_checkpoint(tmp_path, {"model/w": torch.zeros(2)}, {"epochs_done": 1, "history": history})

    def refuse(token):
        raise ValueError(f"not standard JSON: {token}")
    config = json.loads((tmp_path / "config.json").read_text(), parse_constant=refuse)
    assert config["history"] == [{"epoch": 1, "test_loss": None, "train_loss": None}]
    assert load_checkpoint(tmp_path).meta["history"] == config["history"]
