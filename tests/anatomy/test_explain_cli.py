"""`torchcells explain SPEC`: built-in descriptions, a user's factory, files written, clear errors."""

import json
import textwrap
import xml.etree.ElementTree as ET

import pytest
import torch
from torch import nn

import torchcells
from torchcells.cli_spec import build
from torchcells.cli import main


@pytest.mark.parametrize("spec, cls, total", [
    ("lstm:input=10,hidden=20,layers=2,bidirectional", nn.LSTM, 15_040),
    ("lstm:input=10,hidden=20,layers=2,bidirectional,torchcells", torchcells.LSTM, 15_040),
    ("gru:input=8,hidden=16,batch_first,nobias", nn.GRU, 3 * 16 * (8 + 16)),
    ("rnn:input=8,hidden=16,relu", nn.RNN, 16 * (8 + 16) + 32),
    ("lstm:input=6,hidden=8,proj=3", nn.LSTM, 4 * 8 * (6 + 3) + 64 + 3 * 8),
    ("mlp:input=20,hidden=8/4,output=2", nn.Sequential, 20 * 8 + 8 + 8 * 4 + 4 + 4 * 2 + 2),
    ("cnn:channels=1,size=8,filters=2,kernel=3,classes=3", nn.Sequential, 2 * 9 + 2 + 2 * 9 * 3 + 3),
])
def test_built_in_specs(spec, cls, total):
    model, example = build(spec, seq_len=7, batch=2)
    assert isinstance(model, cls) and sum(p.numel() for p in model.parameters()) == total
    model(example)  # the example input fits the model
    if spec.startswith(("lstm", "gru")):
        assert example.shape[1 if "batch_first" in spec else 0] == 7


def test_explain_prints_the_table_and_writes_svg_and_html(tmp_path, capsys):
    html = tmp_path / "out" / "lstm.html"
    assert main(["explain", "lstm:input=10,hidden=20,layers=2,bidirectional", "--seq-len", "5",
                 "--html", str(html), "--svg", str(tmp_path / "svg")]) == 0
    captured = capsys.readouterr()
    assert "15,040 parameters" in captured.out and "l1_reverse ←" in captured.out
    assert "20 (recurrent)" in captured.out
    assert f"wrote {html}" in captured.err and html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    for name in ("cell", "unrolled", "model"):
        ET.parse(tmp_path / "svg" / f"{name}.svg")


def test_explain_json(capsys):
    assert main(["explain", "gru:input=3,hidden=4", "--seq-len", "9", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total_parameters"] == 3 * 4 * (3 + 4) + 24
    assert [(la["cell"], la["units"], la["applications"]) for la in data["layers"]] == [("GRU", 4, 9)]


def test_explain_a_users_factory(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        import torch
        from torchcells import GRUCell, Recurrent

        def with_input():
            return Recurrent(GRUCell(5, 6)), torch.randn(4, 1, 5)

        def module_only():
            return torch.nn.Linear(3, 2)

        def not_a_model():
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["explain", "my_models:with_input"]) == 0
    assert "GRUCell(5→6)" in capsys.readouterr().out
    assert main(["explain", "my_models:module_only", "--input-shape", "2,3"]) == 0
    assert "Neuron(3→1) ×2" in capsys.readouterr().out
    assert main(["explain", "my_models:module_only", "--input-shape", "2,x"]) == 2
    assert "--input-shape should be positive integers separated by commas, like 5,1,10; got '2,x'" in \
        capsys.readouterr().err
    assert main(["explain", "my_models:module_only"]) == 2
    assert "give its shape with --input-shape" in capsys.readouterr().err
    assert main(["explain", "my_models:not_a_model"]) == 2
    assert "should return a torch.nn.Module or (module, example_input), got int" in capsys.readouterr().err


@pytest.mark.parametrize("spec, message", [
    ("lstm:inptu=3", "lstm: unknown option(s) inptu; lstm takes hidden, input, layers, proj=N"),
    ("gru:hidden=many", "gru: hidden should be an integer, got 'many'"),
    ("gru:proj=2", "gru: unknown option(s) proj"),
    ("lstm:hidden=0", "lstm: hidden should be at least 1, got 0"),
    ("transformer", "unknown SPEC 'transformer': SPEC should be NAME[:key=value,flag,...] with NAME one of lstm"),
    ("no_such_module_xyz:make", "cannot import 'no_such_module_xyz'"),
    ("torch.nn:nothing_here", "torch.nn has no callable 'nothing_here'"),
])
def test_bad_specs_name_the_grammar(spec, message, capsys):
    assert main(["explain", spec]) == 2
    assert message in capsys.readouterr().err


def test_an_input_the_model_rejects_is_reported_with_context(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "my_lstm.py").write_text("import torch\ndef make():\n    return torch.nn.LSTM(4, 5)\n")
    assert main(["explain", "my_lstm:make", "--input-shape", "3,1,7"]) == 2
    err = capsys.readouterr().err
    assert "LSTM could not run on the example input (a tensor of shape (3, 1, 7)" in err
    assert "input.size(-1) must be equal to input_size. Expected 4, got 7" in err


def test_seq_len_must_be_positive():
    with pytest.raises(ValueError, match="--seq-len and --batch should be at least 1, got 0 and 1"):
        build("lstm", seq_len=0)
    assert torch.is_tensor(build("lstm")[1])


FACTORIES = """
import torch

def pair():
    return torch.nn.GRU(3, 4), torch.randn(5, 1, 3)

def raises():
    raise RuntimeError("the weights file is missing")

def needs(size):
    return torch.nn.Linear(size, size)
"""

EXPLAIN_CASES = [
    (["my_factories:raises"], "SPEC 'my_factories:raises': raises() raised RuntimeError: the weights file is missing"),
    (["my_factories:needs"], "SPEC 'my_factories:needs': needs() should need no arguments, but missing a required "
                             "argument: 'size'"),
    (["broken_import:make"], "SPEC 'broken_import:make': importing 'broken_import' raised RuntimeError: no GPU here"),
    (["bad_syntax:make"], "SPEC 'bad_syntax:make': importing 'bad_syntax' raised SyntaxError"),
    (["my_factories:pair", "--html", "."], "--html . is a folder; it should be the path of the page to write"),
    (["my_factories:pair", "--svg", "notes.txt"], "--svg notes.txt is a file; it should be the folder"),
    (["my_factories:pair", "--html", "notes.txt/page.html"], "--html notes.txt/page.html: cannot write in notes.txt"),
]


@pytest.mark.parametrize("argv, message", EXPLAIN_CASES, ids=[" ".join(a) for a, _ in EXPLAIN_CASES])
def test_a_bad_factory_or_output_path_is_one_line_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    (tmp_path / "my_factories.py").write_text(FACTORIES)
    (tmp_path / "broken_import.py").write_text("raise RuntimeError('no GPU here')\n")
    (tmp_path / "bad_syntax.py").write_text("def make(:\n")
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    assert main(["explain", *argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("torchcells explain: ") and message in lines[0], captured.err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_the_current_folder_is_on_the_import_path(tmp_path, monkeypatch, capsys):
    import sys

    (tmp_path / "here_only.py").write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert main(["explain", "here_only:pair"]) == 0
    assert "GRU" in capsys.readouterr().out
    assert str(tmp_path) not in sys.path                     # added for the import only
