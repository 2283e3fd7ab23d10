"""Several processes on ``torch.distributed``: who am I, sums across processes, each process's shard.

``torchrun --nproc_per_node=N -m torchcells train ...`` sets ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`join` reads them and starts
the process group (gloo on CPU, nccl on GPU). Without them there is one process and every
function here is the identity.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["World", "join", "shard"]


@dataclass
class World:
    """``size`` processes; this one is ``rank``, computing on ``device``."""

    size: int = 1
    rank: int = 0
    device: torch.device = torch.device("cpu")
    started_group: bool = False

    @property
    def main(self) -> bool:
        """Rank 0: the only process that prints, plots and writes checkpoints."""
        return self.rank == 0

    def sum(self, values: Tensor) -> Tensor:
        """``values`` summed over every process (all ranks get the sum)."""
        if self.size > 1:
            values = values.to(self.device)
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            values = values.cpu()
        return values

    def gather(self, value: Tensor) -> list[Tensor]:
        """Every process's ``value`` (same shape on each), by rank."""
        if self.size == 1:
            return [value]
        local = value.to(self.device)
        parts = [torch.empty_like(local) for _ in range(self.size)]
        dist.all_gather(parts, local)
        return [p.cpu() for p in parts]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def leave(self) -> None:
        """End the process group if :func:`join` started it."""
        if self.started_group and dist.is_initialized():
            gc.collect()            # a DistributedDataParallel left in a cycle must not outlive its group
            dist.destroy_process_group()
            self.started_group = False


def join(*, timeout_s: float = 300.0) -> World:
    """This process's place: from an existing process group, from torchrun's variables, or alone."""
    cuda = torch.cuda.is_available()
    started = False
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
        started = True
    if not (dist.is_available() and dist.is_initialized()):
        return World(device=torch.device("cuda") if cuda else torch.device("cpu"))
    rank, size = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count())))
        torch.cuda.set_device(device)
    return World(size, rank, device, started)


def shard(global_batch: Tensor, world: World) -> Tensor:
    """This process's part of one global batch of example indices: every ``size``-th from ``rank``.

    Across processes the parts make up exactly the global batch, so ``N`` processes see
    the same examples per step as one process would (with ``DistributedSampler`` the
    last batch would be padded with repeated examples instead). Parts may differ by one
    example; the training loop normalizes by the global count, so gradients still match.
    """
    return global_batch[world.rank::world.size]
