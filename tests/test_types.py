"""The package type-checks (mypy), so its annotated signatures can be trusted."""

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
