"""A damaged cached build of the native runtime is never loaded into the process (loading a
truncated shared library kills it with SIGBUS/SIGSEGV, past any ``except``): it is detected
by its recorded checksum, or by a probe process when none is recorded, and rebuilt."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from torchcells.engine.native import build


def built_runtime() -> Path:
    lib = build.library()
    if lib is None:
        pytest.skip(f"no native runtime here: {build.notice()}")
    return Path(lib.__file__)


def test_a_sound_build_passes_the_probe_and_gets_a_checksum(tmp_path):
    copy = tmp_path / built_runtime().name
    shutil.copyfile(built_runtime(), copy)
    assert build.damaged(copy) is None
    assert (tmp_path / (copy.name + ".sha256")).read_text().strip() == build._checksum(copy)
    assert build.damaged(copy) is None  # now by its checksum, without a probe


def test_a_truncated_build_is_refused_by_its_checksum(tmp_path):
    copy = tmp_path / built_runtime().name
    shutil.copyfile(built_runtime(), copy)
    assert build.damaged(copy) is None
    data = copy.read_bytes()
    copy.write_bytes(data[: len(data) // 2])
    assert build.damaged(copy) == "its checksum differs from the one recorded when it was last loaded"


def test_a_damaged_build_without_a_checksum_is_refused_by_the_probe(tmp_path):
    copy = tmp_path / built_runtime().name
    copy.write_bytes(built_runtime().read_bytes()[:4096])
    why = build.damaged(copy)
    assert why is not None and why.startswith("a process loading it failed")
    assert not (tmp_path / (copy.name + ".sha256")).exists()


@pytest.mark.slow
def test_a_process_meeting_a_truncated_cache_rebuilds_it_and_runs(tmp_path):
    """End to end, in a fresh process with its own extensions folder: the runtime's cached
    build is truncated; the first fused call rebuilds it (about half a minute) and runs."""
    source = built_runtime().parent
    cache = tmp_path / "extensions"
    shutil.copytree(source.parent, cache, ignore=lambda d, names: [n for n in names if n.startswith(".")])
    target = cache / source.name / built_runtime().name
    target.write_bytes(target.read_bytes()[:100_000])
    code = ("import torch, torchcells as tc\n"
            "layer = tc.GRU(3, 4)\n"
            "print(layer(torch.randn(5, 2, 3))[0].shape)\n"
            "from torchcells.engine.native import library; print(library() is not None)\n")
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(cache))
    done = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "is unusable (its checksum differs" in done.stderr
    assert done.stdout.split() == ["torch.Size([5,", "2,", "4])", "True"]
