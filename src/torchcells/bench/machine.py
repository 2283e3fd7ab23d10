"""What a benchmark ran on: the CPU (model, vendor, instruction sets), torch, and the process's settings.

Allocator settings are read by the C library when a process starts, so each setting is a separate
process (see ``matrix``); :data:`ALLOCATORS` names the settings every benchmark run compares.
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass, field

import torch

# The instruction-set extensions that decide which kernels run (torch's, oneDNN's, MKL's, ours).
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")


@dataclass(frozen=True)
class Allocator:
    """One allocator setting: environment variables the C library reads at process start."""

    name: str
    env: dict[str, str] = field(default_factory=dict)


# glibc returns blocks over its mmap threshold (128 KiB, growing to 32 MiB) to the OS when freed, so every call
# page-faults its large buffers in again; thresholds above any block this benchmark allocates keep them mapped.
ALLOCATORS = (
    Allocator("glibc defaults"),
    Allocator("page-fault-free glibc", {"MALLOC_MMAP_THRESHOLD_": "4294967296",
                                         "MALLOC_TRIM_THRESHOLD_": "17179869184"}),
)


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (Linux), else {}."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read().split("\n\n")[0]
    except OSError:
        return {}
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    pairs = (line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def cpu() -> dict[str, str]:
    """CPU model, vendor, the ISA extensions of :data:`ISA_FLAGS` it has, and torch's own dispatch level."""
    info, lscpu = _cpuinfo(), _lscpu()
    flags = set((info.get("flags") or info.get("Features") or lscpu.get("Flags", "")).split())
    model = info.get("model name") or lscpu.get("Model name") or platform.processor() or "unknown"
    vendor = info.get("vendor_id") or lscpu.get("Vendor ID") or "unknown"
    return {
        "CPU": f"{model}, {os.cpu_count()} logical CPUs" + (f", {lscpu['Hypervisor vendor']} guest"
                                                            if lscpu.get("Hypervisor vendor") else ""),
        "vendor": vendor,
        "ISA": " ".join(f for f in ISA_FLAGS if f in flags) if flags else "unknown (no CPU flags readable)",
        "torch CPU capability": torch.backends.cpu.get_cpu_capability(),
    }


def machine() -> dict[str, str]:
    """What stays the same across a benchmark's runs: the CPU, Python, torch and its libraries."""
    return {**cpu(),
            "machine": f"{platform.machine()}, {platform.system()}",
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch's libraries": f"MKL {'yes' if torch.backends.mkl.is_available() else 'no'}, "
                                 f"oneDNN {'yes' if torch.backends.mkldnn.is_available() else 'no'}",
            "native runtime": _native_status()}


def settings() -> dict[str, str]:
    """What this process runs under: threads and the allocator settings in its environment."""
    tuned = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k in ("LD_PRELOAD", "GLIBC_TUNABLES")}
    return {"threads": str(torch.get_num_threads()),
            "allocator": ", ".join(f"{k}={v}" for k, v in sorted(tuned.items())) or "glibc malloc's defaults"}


def _native_status() -> str:
    from ..engine.native import library, notice
    lib = library()
    if lib is None:
        return notice() or "unavailable"
    return (f"built ({torch.backends.cpu.get_cpu_capability()}, {lib.vector_width()} float lanes per vector); "
            f"its build is set-up, cached by torch.utils.cpp_extension")
