"""The package type-checks (mypy) and has no dead names (ruff's pyflakes rules)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_finds_no_errors():
    pytest.importorskip("mypy", reason="mypy is in the test extras; install with .[test]")
    done = subprocess.run([sys.executable, "-m", "mypy", "src/torchcells"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_finds_no_undefined_or_unused_names():
    pytest.importorskip("ruff", reason="ruff is in the test extras; install with .[test]")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "F", "--quiet",
                           "src", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
