"""Rows measured in a fresh Python process each: the first call (set-up + run) and peak memory.

The fresh process inherits this one's environment: its allocator settings and ``OMP_NUM_THREADS``
(which the benchmark's parent sets for each run), so a row here belongs to the run that made it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Mapping, Optional, Sequence, Union

from .rows import Row, Shape, Shapes, _keyed

FIRST_CALL_SIZE = (32, 64, 256)  # B, I, H
FIRST_CALL_STEPS: dict[int, str] = {1000: "first-call", 100: ""}
MEMORY_SHAPES: dict[str, Shape] = {"memory": (32, 100, 64, 256), "": (64, 50, 256, 512)}

_FIRST_CALL_PROBE = """
import sys, time
s = time.perf_counter()
import torch
from torchcells.bench import UserLSTMCell
from torchcells import Recurrent
from torchcells.engine.fused import fused_program
b, t, i, h = (int(v) for v in sys.argv[1:5])
x = torch.randn(t, b, i, requires_grad=True)
layer = Recurrent(UserLSTMCell(i, h))
imports = time.perf_counter() - s
s = time.perf_counter(); fused_program(layer.cell, x[0], layer.cell.init_state(b), masked=False)
trace = time.perf_counter() - s
s = time.perf_counter(); layer(x)[0].sum().backward(); first = time.perf_counter() - s
s = time.perf_counter(); layer(x)[0].sum().backward(); second = time.perf_counter() - s
print(imports, trace, first, second)
"""


def _start(code: str, *args: object, env: Optional[Mapping[str, str]] = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=None if env is None else dict(env))


def _output(probe: subprocess.Popen) -> str:
    out, err = probe.communicate()
    if probe.returncode:
        raise RuntimeError(f"torchcells bench: a fresh-process probe failed:\n{err[-2000:]}")
    return out


def first_call_rows(steps: Union[Mapping[int, str], Sequence[int]] = FIRST_CALL_STEPS,
                    size: tuple[int, int, int] = FIRST_CALL_SIZE) -> list[Row]:
    """The very first call in a fresh process: set-up (tracing and deriving the step's forward
    and backward, including make_fx's one-time import of torch._inductor/_dynamo) plus the run
    itself (whose first run also pays the allocator's first touch of its memory). Importing
    torch itself is not counted: every torch user pays it."""
    b, i, h = size
    rows = []
    for t, goal in (steps.items() if isinstance(steps, Mapping) else [(t, "") for t in steps]):
        imports, trace, first, second = (float(v) for v in _output(_start(_FIRST_CALL_PROBE, b, t, i, h)).split())
        rows.append(Row("first call, fresh process (set-up + run)", (b, t, i, h), "first call", "second call",
                        (trace + first) * 1e3, second * 1e3, "(context)" if not goal else "", 1,
                        note=f"set-up (trace + derive) {trace:.2f} s; importing torch and torchcells, "
                             f"{imports:.2f} s, not counted", goal=goal, kind="first-call"))
    return rows


_MEMORY_PROBE = """
import os, sys, torch, torch.nn as nn
import torch._inductor.config  # make_fx's one-time import, on both sides, so neither pays for it below
from torchcells import Recurrent
from torchcells.bench import UserLSTMCell
b, t, i, h = (int(v) for v in sys.argv[2:6])
torch.manual_seed(0)
module = Recurrent(UserLSTMCell(i, h)) if sys.argv[1] == "ours" else nn.LSTM(i, h)
module(torch.randn(2, b, i, requires_grad=True))[0].sum().backward()  # warm-up (tracing) at T=2
x = torch.randn(t, b, i, requires_grad=True)
def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current resident size
before = status("VmRSS")
module(x)[0].sum().backward()
print(max(status("VmHWM") - before, 0))
"""


def memory_rows(shapes: Optional[Shapes] = None) -> list[Row]:
    """Peak resident memory added by one forward+backward, each side in a fresh process with
    glibc's default allocator (large blocks are returned to the OS when freed, so the
    high-water mark is the peak of live memory). The peak is read from /proc (VmHWM, reset
    just before the call): ``ru_maxrss`` would carry the parent's size over the exec. Linux only:
    elsewhere no rows."""
    if not os.path.exists("/proc/self/clear_refs"):
        return []
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    keyed = _keyed(MEMORY_SHAPES if shapes is None else shapes)
    # every probe at once: a peak of resident memory does not depend on what else runs
    probes = [[_start(_MEMORY_PROBE, side, *shape, env=env) for side in ("ours", "theirs")] for _, shape in keyed]
    rows = []
    for (goal, shape), pair in zip(keyed, probes):
        peaks = [int(_output(probe).split()[-1]) / 2**20 for probe in pair]
        rows.append(Row("peak memory added by forward+backward", shape, "Recurrent(UserLSTMCell)", "nn.LSTM",
                        peaks[0], peaks[1], "" if goal else "(context)", 1, goal=goal, kind="memory", unit="MiB"))
    return rows
