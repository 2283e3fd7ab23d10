"""A damaged cached build of the native runtime is never loaded into the process (loading a
truncated shared library kills it with SIGBUS/SIGSEGV, past any ``except``): it is detected
by its recorded checksum, or by a probe process when none is recorded, and rebuilt."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from torchcells.engine.native import build


def built_runtime() -> Path:
    lib = build.library()
    if lib is None:
        pytest.skip(f"no native runtime here: {build.notice()}")
    return Path(lib.__file__)


@pytest.fixture(scope="module")
def probed(tmp_path_factory) -> tuple[Path, Optional[str]]:
    """A copy of the sound build, without a checksum, and what ``damaged`` said of it the first time
    (the probe process's verdict, which records the checksum): one probe for the tests below."""
    copy = tmp_path_factory.mktemp("probed") / built_runtime().name
    shutil.copyfile(built_runtime(), copy)
    return copy, build.damaged(copy)


def test_a_sound_build_passes_the_probe_and_gets_a_checksum(probed):
    copy, first = probed
    assert first is None
    assert copy.with_name(copy.name + ".sha256").read_text().strip() == build._checksum(copy)
    assert build.damaged(copy) is None  # now by its checksum, without a probe


def test_a_truncated_build_is_refused_by_its_checksum(probed, tmp_path):
    sound, first = probed
    assert first is None
    copy = tmp_path / sound.name
    for path in (sound, sound.with_name(sound.name + ".sha256")):  # the build and the checksum its probe recorded
        shutil.copyfile(path, tmp_path / path.name)
    data = copy.read_bytes()
    copy.write_bytes(data[: len(data) // 2])
    assert build.damaged(copy) == "its checksum differs from the one recorded when it was last loaded"


def test_a_damaged_build_without_a_checksum_is_refused_by_the_probe(tmp_path):
    copy = tmp_path / built_runtime().name
    copy.write_bytes(built_runtime().read_bytes()[:4096])
    why = build.damaged(copy)
    assert why is not None and why.startswith("a process loading it failed")
    assert not (tmp_path / (copy.name + ".sha256")).exists()


def test_a_damaged_cached_build_is_probed_once_before_the_lock_and_once_under_it(monkeypatch, tmp_path):
    """Each probe is a process (up to minutes for a library that hangs as it loads): the light lookup
    and cpp_extension's find the same file, which is probed once before the build lock, and once
    more under it (another process may have rebuilt it meanwhile)."""
    name = "torchcells_native_probe_count"
    folder = tmp_path / "py_cpu" / name
    folder.mkdir(parents=True)
    damaged_copy = folder / f"{name}.so"
    damaged_copy.write_bytes(built_runtime().read_bytes()[:4096])
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "py_cpu"))
    probes: list[Path] = []
    real = build.damaged

    def counted(path: Path):
        probes.append(path)
        return real(path)

    def no_build(*args, **kwargs):
        raise RuntimeError("no build in this test")

    from torch.utils import cpp_extension

    monkeypatch.setattr(build, "damaged", counted)
    monkeypatch.setattr(cpp_extension, "load", no_build)
    with pytest.warns(RuntimeWarning, match="unusable"), pytest.raises(RuntimeError, match="no build in this test"):
        build._load(name)
    assert probes == [damaged_copy, damaged_copy]


def object_reusing_compiler(folder: Path, sound_build: Path, stderrs: list[Path]) -> Path:
    """A ``g++`` for ``CXX`` that answers the compile step of ``runtime.cpp`` with the object file of
    ``sound_build`` -- made from the same source, flags and torch, which is what the build's name
    says -- and runs the real compiler for everything else (the link, its version checks). A rebuild
    through ``cpp_extension`` and ninja is then a real link of a fresh library, in seconds.

    The compile step returns only once one of ``stderrs`` says a process is waiting for the build
    (or after a minute): the half-minute compile this stands in for held the build lock long enough
    for the other process to meet it; here that meeting is awaited rather than timed."""
    real, made = shutil.which("c++"), sound_build.parent / "runtime.o"
    if real is None or not made.is_file():
        pytest.skip(f"no C++ compiler or no object file of the cached build ({made})")
    wrapper = folder / "g++"  # cpp_extension accepts a compiler whose name says g++
    wrapper.write_text(
        f"#!{sys.executable}\n"
        "import os, pathlib, shutil, sys, time\n"
        "args = sys.argv[1:]\n"
        "if '-c' in args and args[args.index('-c') + 1].endswith('runtime.cpp'):\n"
        "    deadline = time.monotonic() + 60\n"
        f"    while not any({build.WAITING!r} in pathlib.Path(e).read_text() for e in {[str(e) for e in stderrs]!r}):\n"
        "        if time.monotonic() > deadline:\n"
        "            break\n"
        "        time.sleep(0.01)\n"
        "    source, out = args[args.index('-c') + 1], args[args.index('-o') + 1]\n"
        f"    shutil.copyfile({str(made)!r}, out)\n"
        "    pathlib.Path(args[args.index('-MF') + 1]).write_text(out + ': ' + source + '\\n')  # ninja reads it\n"
        "    sys.exit(0)\n"
        f"os.execv({real!r}, [{real!r}, *args])\n")
    wrapper.chmod(0o755)
    return wrapper


@pytest.mark.slow
def test_processes_meeting_a_truncated_cache_rebuild_it_once_and_run(tmp_path):
    """End to end, two fresh processes at once with their own extensions folder: the runtime's
    cached build is truncated; one rebuilds it through cpp_extension and ninja (saying so in one
    line), the other waits for that build (saying so), and both run on the rebuilt library. The
    compile step of the rebuild reuses the sound build's object file (``object_reusing_compiler``),
    so the rebuild is a link of a fresh library (seconds) rather than a compile (half a minute);
    what the test checks -- the damage found, one rebuild, one wait, both processes on the
    native runtime -- is the same."""
    source = built_runtime().parent
    cache = tmp_path / "extensions"
    shutil.copytree(source, cache / source.name, ignore=lambda d, names: [n for n in names if n.startswith(".")])
    target = cache / source.name / built_runtime().name
    target.write_bytes(target.read_bytes()[:100_000])
    stderrs = [tmp_path / f"stderr-{i}" for i in range(2)]
    for path in stderrs:
        path.touch()
    (tmp_path / "bin").mkdir()
    compiler = object_reusing_compiler(tmp_path / "bin", built_runtime(), stderrs)
    code = ("import torch, torchcells as tc\n"
            "layer = tc.GRU(3, 4)\n"
            "print(layer(torch.randn(5, 2, 3))[0].shape)\n"
            "from torchcells.engine.native import library; print(library() is not None)\n")
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(cache), CXX=str(compiler))
    with stderrs[0].open("w") as err0, stderrs[1].open("w") as err1:
        runs = [subprocess.Popen([sys.executable, "-W", "always", "-c", code], stdout=subprocess.PIPE,
                                 stderr=err, text=True, env=env) for err in (err0, err1)]
        outs = [run.communicate(timeout=600)[0] for run in runs]
    errs = [path.read_text() for path in stderrs]
    for run, out, err in zip(runs, outs, errs):
        assert run.returncode == 0, err[-2000:]
        assert out.split() == ["torch.Size([5,", "2,", "4])", "True"]
    assert sum(build.BUILDING in e for e in errs) == 1, errs
    assert sum(build.WAITING in e for e in errs) == 1, errs
    assert any("is unusable (its checksum differs" in e for e in errs)
    assert target.stat().st_size > 100_000 and build.damaged(target) is None  # a whole library, rebuilt


def test_the_build_is_named_by_what_it_is_made_of(monkeypatch, tmp_path):
    """Source content, flags, torch version: the same name from another checkout's path; another
    name for other flags or another torch."""
    name = build.build_name(build._flags())
    moved = tmp_path / "elsewhere" / "runtime.cpp"
    moved.parent.mkdir()
    shutil.copyfile(build._SOURCE, moved)
    monkeypatch.setattr(build, "_SOURCE", moved)
    assert build.build_name(build._flags()) == name
    assert build.build_name(build._flags() + ["-DX"]) != name
    moved.write_text(moved.read_text() + "\n// changed\n")
    assert build.build_name(build._flags()) != name
    shutil.copyfile(build.Path(__file__).parents[2] / "src/torchcells/engine/native/runtime.cpp", moved)
    monkeypatch.setattr("torch.__version__", "0.0.0")
    assert build.build_name(build._flags()) != name


def test_a_cached_build_loads_without_cpp_extension(monkeypatch):
    """Once built, the runtime is loaded directly: neither ninja nor cpp_extension's build file
    (which records the checkout's and the venv's paths) is consulted, so nothing rebuilds."""
    path = built_runtime()
    from torch.utils import cpp_extension

    def no_build(*args, **kwargs):
        raise AssertionError("cpp_extension.load was called for a cached build")

    monkeypatch.setattr(cpp_extension, "load", no_build)
    monkeypatch.setattr(build, "_STATE", {})
    lib = build.library()
    assert lib is not None and Path(lib.__file__) == path and build._enum_mismatch(lib) is None


def test_a_second_process_waits_for_the_build_lock_and_says_so(tmp_path, capsys):
    lock, done = tmp_path / "runtime.lock", tmp_path / "done"
    holder = subprocess.Popen([sys.executable, "-c",
                               "import fcntl, pathlib, sys, time\n"
                               f"f = open({str(lock)!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
                               "print('held', flush=True); time.sleep(1.5)\n"
                               f"pathlib.Path({str(done)!r}).touch()\n"],  # written while still holding it
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with build._build_lock(lock):
        assert done.exists()  # acquired only once the holder let go (at its exit, after the mark)
    holder.wait()
    assert build.WAITING in capsys.readouterr().err
    with build._build_lock(lock):  # free now: no waiting line
        pass
    assert build.WAITING not in capsys.readouterr().err
