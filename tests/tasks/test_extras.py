"""The light install: the library imports no package of the ``tasks`` extra, and a task that needs
one says which extra to install (one line, exit status 2, nothing written)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from torchcells.cli import main

TASK_PACKAGES = ("sklearn", "statsmodels", "sktime", "matplotlib", "pandas")


def hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``import m`` (and of its submodules already loaded) raise ImportError, as if not installed."""
    for name in list(sys.modules):
        if any(name == m or name.startswith(m + ".") for m in modules):
            monkeypatch.setitem(sys.modules, name, None)
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


@pytest.mark.parametrize("task, module, package", [
    ("digits", "sklearn", "scikit-learn"),
    ("sunspots", "statsmodels", "statsmodels"),
    ("vowels", "sktime", "sktime"),
])
def test_a_task_without_its_data_package_names_the_extra(task, module, package, monkeypatch, capsys):
    hide(monkeypatch, module)
    code = main(["train", task, "--cell", "gru", "--epochs", "1", "--limit", "4", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1, err
    assert err.startswith(f"torchcells train: error: the {task} task needs {package}"), err
    assert 'pip install "torchcells[tasks]"' in err


def test_training_with_out_but_without_matplotlib_names_the_extra_and_writes_nothing(tmp_path, monkeypatch,
                                                                                      capsys):
    hide(monkeypatch, "matplotlib")
    out = tmp_path / "run"
    code = main(["train", "charlm", "--cell", "gru", "--epochs", "1", "--limit", "4", "--no-progress",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "matplotlib" in err and 'pip install "torchcells[tasks]"' in err
    assert not out.exists()


def test_the_demo_without_scikit_learn_names_the_extra(monkeypatch, capsys):
    hide(monkeypatch, "sklearn")
    code = main(["demo", "--epochs", "1", "--no-progress", "--html", ""])
    assert code == 2
    assert 'pip install "torchcells[tasks]"' in capsys.readouterr().err


def test_the_library_imports_no_package_of_the_tasks_extra():
    """A layer, the anatomy, export and the CLI's parser load without scikit-learn, statsmodels, sktime,
    matplotlib or pandas (checked in a fresh process: what a light install can run)."""
    code = (
        "import sys, torch, torchcells\n"
        "from torchcells import LSTMCell, Recurrent, explain\n"
        "from torchcells.cli import build_parser\n"
        "import torchcells.tasks.training, torchcells.tasks.plot\n"
        "layer = Recurrent(LSTMCell(3, 4))\n"
        "explain(layer, torch.randn(2, 1, 3)).to_text()\n"
        "build_parser()\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {TASK_PACKAGES!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
