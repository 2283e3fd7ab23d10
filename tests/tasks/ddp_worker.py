"""Run by test_distributed.py under ``python -m torch.distributed.run``: train, then save this rank's weights."""

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from torchcells.tasks import resolve_config, train

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    options = dict(hidden=8, batch_size=16, limit=37, epochs=2, lr=1e-2)
    result = train(resolve_config("vowels", "gru", **options), out=out / "run", progress=False)
    rank = int(os.environ["RANK"])
    tensors = {f"model/{k}": v.contiguous() for k, v in result.model.state_dict().items()}
    tensors["step_loss"] = torch.tensor(result.step_loss, dtype=torch.float64)
    save_file(tensors, str(out / f"rank{rank}.safetensors"))
