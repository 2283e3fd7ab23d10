"""Two processes on 127.0.0.1 (gloo): DistributedDataParallel keeps the ranks' weights identical and
reproduces the one-process loss with the same global batch."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from torchcells.tasks import resolve_config, train
from torchcells.tasks.checkpoint import CHECKPOINT, load_checkpoint

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_two_processes_match_one_process(tmp_path):
    torchrun(str(HERE / "ddp_worker.py"), str(tmp_path), cwd=tmp_path)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), k          # the ranks never drift apart
    # one process, same global batch of 16: each step sees the same 16 examples in one piece
    single = train(resolve_config("vowels", "gru", hidden=8, batch_size=16, limit=37, epochs=2, lr=1e-2),
                   progress=False)
    two = ranks[0]["step_loss"].tolist()
    assert len(two) == len(single.step_loss) == 2 * 3               # 37 examples: batches of 16, 16 and 5 (split 3 + 2)
    torch.testing.assert_close(torch.tensor(two, dtype=torch.float64), torch.tensor(single.step_loss, dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(ranks[0][f"model/{k}"], v, rtol=1e-4, atol=1e-5)
    # only rank 0 wrote the checkpoint; it says 2 processes wrote it and holds both ranks' generators
    checkpoint = load_checkpoint(tmp_path / "run")
    assert checkpoint.meta["world_size"] == 2
    assert {k for k in checkpoint.tensors if k.startswith("rng/torch/")} == {"rng/torch/0", "rng/torch/1"}


@pytest.mark.slow
def test_torchrun_cli_trains_and_resumes(tmp_path):
    base = ["-m", "torchcells", "train", "digits", "--cell", "mingru", "--hidden", "8", "--limit", "64",
            "--batch-size", "16", "--no-progress", "--out", str(tmp_path / "run")]
    done = torchrun(*base, "--epochs", "1", cwd=tmp_path)
    assert done.stdout.count("held-out accuracy") == 1                 # rank 0 alone reports
    assert (tmp_path / "run" / CHECKPOINT).is_file() and (tmp_path / "run" / "training.png").is_file()
    done = torchrun(*base, "--epochs", "2", "--resume", cwd=tmp_path)
    assert load_checkpoint(tmp_path / "run").meta["epochs_done"] == 2
