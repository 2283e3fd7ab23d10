"""The command line: `torchcells demo`, `python -m torchcells`."""

import subprocess
import sys

from torchcells.cli import main


def test_demo_prints_accuracy_and_the_cell_account(capsys, tmp_path):
    page = tmp_path / "demo-anatomy.html"
    assert main(["demo", "--epochs", "2", "--hidden", "16", "--no-progress", "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert f"{page} -- open it in a browser" in out and "GRUCell(8→16)" in page.read_text(encoding="utf-8")
    assert "held-out accuracy: " in out
    accuracy = float(out.split("held-out accuracy: ")[1].split()[0])
    assert 0.1 < accuracy <= 1.0
    for sense in ("step function", "units", "applications"):
        assert sense in out
    words = " ".join(out[out.index("In plain words:"):].split())  # the words explain's table ends with
    assert "one step function (GRUCell(8→16), the step of nn.GRUCell)" in words
    assert "8 applications per image, all with the same weights" in words and "do not share weights" in words


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out


def test_python_dash_m_and_version():
    done = subprocess.run([sys.executable, "-m", "torchcells", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("torchcells ")


def test_bad_option_exits_nonzero():
    done = subprocess.run([sys.executable, "-m", "torchcells", "demo", "--cell", "nope"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "invalid choice" in done.stderr
