"""The package as users get it: the wheel and the sdist build, and the wheel installed into a fresh venv
pulls no package of the ``tasks`` extra, carries ``py.typed`` and the native runtime's source, reports
the version from its one place, and runs a layer on the native runtime from the installed package."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import torchcells

ROOT = Path(__file__).resolve().parents[1]
TASK_PACKAGES = {"scikit-learn", "statsmodels", "sktime", "matplotlib", "pandas"}


def run(*argv: str, cwd: Path = ROOT, isolated: bool = False) -> str:
    """Run a command; ``isolated``: without PYTHONPATH, so a fresh venv sees only what it installed."""
    env = {k: v for k, v in os.environ.items() if not (isolated and k == "PYTHONPATH")}
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, f"{' '.join(argv)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def with_this_torch(venv: Path, folder: Path) -> None:
    """Give ``venv`` this environment's torch and what torch requires (transitively), and nothing
    else: each distribution's files are linked into ``folder``, which a ``.pth`` file puts on the
    venv's path. pip in the venv then finds ``torch`` of this version installed -- as after
    ``pip install torch==<this version>``, without unpacking torch's wheel again (half a minute) --
    and installs every other requirement of the wheel itself."""
    from importlib.metadata import distribution

    from packaging.requirements import Requirement

    folder.mkdir()
    seen, todo = set(), ["torch"]
    while todo:
        dist = distribution(todo.pop())
        if dist.metadata["Name"].lower() in seen:
            continue
        seen.add(dist.metadata["Name"].lower())
        needs = map(Requirement, dist.requires or [])
        todo += [r.name for r in needs if r.marker is None or r.marker.evaluate({"extra": ""})]  # not extras
        for top in {Path(str(f)).parts[0] for f in dist.files or []} - {"..", "__pycache__"}:
            if Path(dist.locate_file(top)).exists() and not (folder / top).exists():
                (folder / top).symlink_to(Path(dist.locate_file(top)))
    (site_packages,) = (venv / "lib").glob("python*/site-packages")
    (site_packages / "this-torch.pth").write_text(f"{folder}\n", encoding="utf-8")


@pytest.mark.slow
def test_wheel_and_sdist_install_light_into_a_fresh_venv(tmp_path):
    pytest.importorskip("build", reason='the test extra is not installed: pip install -e ".[test]"')
    dist = tmp_path / "dist"
    # --no-isolation: the build uses the setuptools already installed (no download of a build env)
    run(sys.executable, "-m", "build", "--sdist", "--wheel", "--no-isolation", "--outdir", str(dist))
    (wheel,) = dist.glob("torchcells-*.whl")
    (sdist,) = dist.glob("torchcells-*.tar.gz")
    assert wheel.name.startswith(f"torchcells-{torchcells.__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    assert "torchcells/py.typed" in names and "torchcells/engine/native/runtime.cpp" in names
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    core = [line for line in meta.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert {line.split()[1].split(">")[0].split("=")[0].split("[")[0].lower() for line in core} <= {
        "torch", "numpy", "tqdm", "safetensors", "ninja"}, core
    assert "Provides-Extra: tasks" in meta
    with tarfile.open(sdist) as tar:
        members = tar.getnames()
    for needed in ("src/torchcells/py.typed", "src/torchcells/engine/native/runtime.cpp", "pyproject.toml"):
        assert any(m.endswith(needed) for m in members), needed

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv))  # pip runs from here, on the venv (--python)
    py = str(venv / "bin" / "python")
    pip = (sys.executable, "-m", "pip", "--python", py)
    with_this_torch(venv, tmp_path / "torch-and-its-requirements")
    run(*pip, "install", "--quiet", str(wheel), isolated=True)
    installed = {re.split(r"==| @ ", line)[0].lower() for line in run(*pip, "freeze", isolated=True).splitlines()}
    assert not installed & TASK_PACKAGES, installed & TASK_PACKAGES
    assert {"torchcells", "torch", "ninja"} <= installed

    check = (
        "import torch, torchcells, pathlib\n"
        "from torchcells import GRUCell, Recurrent\n"
        "from torchcells.engine.native.build import library\n"
        "assert 'site-packages' in torchcells.__file__, torchcells.__file__\n"
        "lib = library()\n"
        "layer = Recurrent(GRUCell(3, 5), engine='fused')\n"
        "out, h = layer(torch.randn(4, 2, 3))\n"
        "print(torchcells.__version__, lib is not None, tuple(out.shape))\n"
    )
    # run outside the checkout, so the installed package (not src/) is imported
    printed = run(py, "-c", check, cwd=tmp_path, isolated=True).strip().splitlines()[-1]
    from torchcells.engine.native.build import library
    built_here = library() is not None        # a machine without a C++ compiler has no native runtime
    assert printed == f"{torchcells.__version__} {built_here} (4, 2, 5)", printed


def test_the_version_has_one_place():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in text and 'attr = "torchcells.__version__"' in text
    assert "\nversion =" not in text.split("[project]")[1].split("\n[")[0]
    assert f"## {torchcells.__version__}" in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert (Path(torchcells.__file__).parent / "py.typed").is_file()
