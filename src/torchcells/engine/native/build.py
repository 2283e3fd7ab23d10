"""Building and loading the native runtime (once per machine, cached by torch).

``library()`` compiles ``runtime.cpp`` with ``torch.utils.cpp_extension.load`` the
first time (about half a minute; ``make install`` does it ahead of time) and loads
the cached build afterwards. The vector width follows torch's own CPU capability
(AVX512, AVX2, or plain C++). Without a working compiler -- or with
``TORCHCELLS_NATIVE=0`` -- it returns ``None`` and the fused engine keeps its
Python-driven loop; a failed build says so once, in one line (a ``RuntimeWarning``
with ``notice()``'s text). A build whose enums (opcodes, layouts, argument and saved-value
kinds, operand sources) differ from the IntEnums of :mod:`.records` is not used either, and
the notice names the enum that differs.

A build is named after what it is made of -- the source's content, the compiler flags, torch's
version and the CPU capability -- and a build of that name, once made, is loaded directly, without
asking ``cpp_extension``/ninja (whose build file records the checkout's and the virtualenv's paths,
so a moved checkout, another venv activation or another ninja binary would rebuild it). The first
use prints one line while it builds; processes building at once wait for one build (a file lock),
saying so in one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional

_SOURCE = Path(__file__).with_name("runtime.cpp")
_STATE: dict[str, Any] = {}
_LOADING = threading.Lock()  # one thread builds or loads; the others wait for its answer
#: what the first use prints (stderr) while the build runs
BUILDING = "torchcells: building the native runtime, once for this torch and CPU (about 30 s) ..."
WAITING = "torchcells: waiting for another process that is building the native runtime ..."


def _flags(openmp: bool = True) -> list[str]:
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", "-std=c++20", "-fno-math-errno"]
    if openmp:
        # at::parallel_for is inline OpenMP in torch's headers: without it a fused group runs on
        # one thread. The libgomp torch already loaded is the one used (same soname).
        flags.append("-fopenmp")
    if capability == "AVX512":
        flags += ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mavx2",
                  "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    elif capability == "AVX2":
        flags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return flags


def _disabled() -> bool:
    return os.environ.get("TORCHCELLS_NATIVE", "1").strip().lower() in {"0", "false", "no", "off"}


def library(*, verbose: bool = False) -> Optional[Any]:
    """The loaded runtime module, building it on first use; ``None`` where it cannot be built."""
    if _disabled():
        return None
    if "lib" in _STATE:
        return _STATE["lib"]
    with _LOADING:
        if "lib" not in _STATE:
            _STATE["lib"] = _find_or_build(verbose)
            if _STATE["lib"] is None:
                warnings.warn(notice() or "", RuntimeWarning, stacklevel=2)
    return _STATE["lib"]


def build_name(flags: list[str], *, serial: bool = False) -> str:
    """The build's name: a digest of the source's content, the flags and torch's version, and the
    CPU capability -- nothing about where the checkout, the venv or ninja are."""
    import torch

    made_of = _SOURCE.read_bytes() + " ".join(flags).encode() + torch.__version__.encode()
    digest = hashlib.sha1(made_of).hexdigest()[:10]
    return f"torchcells_native_{torch.backends.cpu.get_cpu_capability().lower()}_{digest}" + ("_serial" * serial)


def _find_or_build(verbose: bool) -> Optional[Any]:
    lib = None
    try:
        try:
            lib = _load(build_name(_flags()), extra_cflags=_flags(), extra_ldflags=["-fopenmp"], verbose=verbose)
        except Exception:  # a compiler without OpenMP: the same runtime, fused groups on one thread
            serial = _flags(openmp=False)
            lib = _load(build_name(serial, serial=True), extra_cflags=serial, verbose=verbose)
    except Exception as e:  # no compiler, no ninja, a failed build: the Python path runs
        first = (str(e).strip().splitlines() or [""])[-1][:200]
        _STATE["why"] = f"{type(e).__name__}: {first}"
        return None
    mismatch = _enum_mismatch(lib)
    if mismatch is not None:  # the build reads plans differently from how plan.py writes them
        _STATE["why"] = mismatch
        return None
    return lib


def _load(name: str, **options: Any) -> Any:
    """The runtime built as ``name``: the cached build when it is there and sound, else built now.

    Loading a damaged shared library (truncated by a full disk or a killed build, or built
    for another machine) kills the process with SIGBUS/SIGSEGV, past any ``except``. So a
    cached build is loaded only if it matches the checksum recorded when it was last
    loaded, or -- when there is none -- if a separate process loaded it; otherwise it is
    deleted and built again."""
    probed = _cached_build(name)
    if probed is not None and damaged(probed) is None:
        return _import(name, probed)
    from torch.utils import cpp_extension  # imports setuptools (~0.1 s): only where a build may run

    folder = Path(cpp_extension._get_build_directory(name, verbose=False))
    built = folder / f"{name}.so"
    if built.exists() and built != probed and damaged(built) is None:  # each probe is a process: once here
        return _import(name, built)
    with _build_lock(folder.with_name(folder.name + ".lock")):
        if built.exists():  # built by the process this one waited for, or damaged
            why = damaged(built)
            if why is None:
                return _import(name, built)
            warnings.warn(f"torchcells: the cached native runtime {built} is unusable ({why}); rebuilding it",
                          RuntimeWarning, stacklevel=4)
            built.unlink(missing_ok=True)
            _checksum_file(built).unlink(missing_ok=True)
        print(BUILDING, file=sys.stderr, flush=True)
        lib = cpp_extension.load(name=name, sources=[str(_SOURCE)], **options)
        if built.exists():
            from ...files import write_atomic
            write_atomic(_checksum_file(built), _checksum(built))
    return lib


def _cached_build(name: str) -> Optional[Path]:
    """The cached build ``name``, found without importing ``torch.utils.cpp_extension`` (and with it
    setuptools): where that module puts it for a CPU build -- ``$TORCH_EXTENSIONS_DIR/name``, else
    ``<torch's user cache>/torch_extensions/py<version>_cpu/name``. ``None`` if it is not there; the
    caller then asks ``cpp_extension`` itself, so a different layout in another torch costs that
    import, never a rebuild."""
    import torch

    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is None:
        if torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None:
            return None
        try:
            from torch import _appdirs

            cache = os.path.realpath(_appdirs.user_cache_dir(appname="torch_extensions"))
        except (ImportError, AttributeError, TypeError):  # a torch without it: ask cpp_extension
            return None
        python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
        root = os.path.join(cache, f"{python}_cpu")
    built = Path(root) / name / f"{name}.so"
    return built if built.exists() else None


def _import(name: str, built: Path) -> Any:
    """Load the extension module at ``built`` (what ``cpp_extension.load`` does once it is built)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, str(built))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {built}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` across processes (``flock``; released when the holder dies, so a
    killed build never blocks the next one), saying in one line when this process has to wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): cpp_extension's own lock still serializes the build
        yield
        return
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(WAITING, file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def damaged(built: Path) -> Optional[str]:
    """Why the cached build ``built`` must not be loaded into this process, or ``None`` (also when
    there is none yet). Records the checksum of a build that a probe process loaded."""
    if not built.exists():
        return None
    recorded = _checksum_file(built)
    if recorded.exists():
        if recorded.read_text(encoding="utf-8").strip() != _checksum(built):
            return "its checksum differs from the one recorded when it was last loaded"
        return None
    probe = (f"import importlib.util, torch\n"
             f"spec = importlib.util.spec_from_file_location({built.stem!r}, {str(built)!r})\n"
             f"lib = importlib.util.module_from_spec(spec); spec.loader.exec_module(lib); lib.enums()\n")
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "a process loading it did not finish"
    if done.returncode != 0:
        return f"a process loading it failed (exit status {done.returncode})"
    from ...files import write_atomic
    write_atomic(recorded, _checksum(built))
    return None


def _checksum_file(built: Path) -> Path:
    return built.with_name(built.name + ".sha256")


def _checksum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _enum_mismatch(lib: Any) -> Optional[str]:
    """Why ``lib``'s enums (``enums()``) differ from the IntEnums of :mod:`.records`, or ``None``."""
    from .records import enum_mismatch

    if not hasattr(lib, "enums"):
        return "the build exports no enum table"
    return enum_mismatch(lib.enums())


def available() -> bool:
    return library() is not None


def notice() -> Optional[str]:
    """One line saying why the native runtime is not in use (``None`` when it is)."""
    if _disabled():
        return "torchcells: native runtime disabled (TORCHCELLS_NATIVE=0); the fused engine loops in Python"
    if library() is not None:
        return None
    return f"torchcells: native runtime unavailable ({_STATE.get('why', 'unknown')}); the fused engine loops in Python"


def main() -> int:
    """``python -m torchcells.engine.native``: build the runtime now (make install runs it)."""
    library(verbose="-v" in sys.argv)
    print(notice() or "torchcells: native runtime built and cached")
    return 0

