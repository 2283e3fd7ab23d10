"""The README's examples (and the reference examples it moved to docs/) run as written and do what they say."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")
# the long reference lives on the documentation site; its examples are checked here as the README's were
DOCS = "".join(p.read_text(encoding="utf-8") for p in sorted((README.parent / "docs").rglob("*.md")))
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT + DOCS, flags=re.S)


def run_block(marker: str) -> dict:
    (block,) = [b for b in BLOCKS if marker in b]
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    return namespace


def test_readme_shows_the_two_commands():
    assert "make demo" in TEXT and "make test" in TEXT


def test_the_answer_to_cell_or_layer_is_up_front():
    """Issue 15: a learner finds the answer within the README's first 80 lines, in plain words."""
    lines = TEXT.splitlines()
    start = lines.index("## Cell or layer?")
    assert start < 80 - 20, start
    section = "\n".join(lines[start:]).split("\n## ", 1)[0]
    for sense in ("**unit**", "**step function**", "**application**"):
        assert sense in section, sense
    bullets = section.split("\n- ")[1:]
    for answer in ("small network with gates", "equals the sequence length", "mathematical function"):
        (bullet,) = [b for b in bullets if answer in b.split("—")[0]]
        assert "right" in bullet and "Wrong" in bullet, bullet      # where it is right, and where wrong
    assert "share weights" in section and "dense" in section.lower()
    assert len(lines) < 200, "the README stays short: the reference lives in docs/"


def test_user_cell_example():
    ns = run_block("class LeakyCell")
    out, states, every_step = ns["out"], ns["states"], ns["every_step"]
    assert out.shape == (10, 4, 16)                      # deep stack, time-major
    assert len(states) == 2 and len(every_step) == 2
    assert every_step[1].shape == (10, 4, 16)
    assert torch.equal(every_step[1][-1], states[1])
    bi_out, _ = ns["layer"](ns["x"], lengths=[10, 3, 7, 1])
    assert bi_out.shape == (4, 10, 32)
    assert torch.all(bi_out[1, 3:] == 0) and torch.all(bi_out[3, 1:] == 0)


def test_drop_in_example_matches_torch():
    ns = run_block("torchcells.LSTM(")
    x = torch.randn(7, 3, 10)
    ours_out, (h, c) = ns["ours"](x)
    theirs_out, (h2, c2) = ns["theirs"](x)
    torch.testing.assert_close(ours_out, theirs_out)
    torch.testing.assert_close(h, h2)
    torch.testing.assert_close(c, c2)


def test_tools_by_name_example_acts_as_on_torch_nn():
    """The README's block of tools by name, run on ours and on theirs: same names, outputs, gradients."""
    ns = run_block("torchcells.LSTM(")
    (block,) = [b for b in BLOCKS if "prune.l1_unstructured(ours" in b]
    done = []
    for module in (ns["ours"], ns["theirs"]):
        torch.manual_seed(0)  # orthogonal's completion of a tall weight draws random columns
        scope = {"torch": torch, "ours": module}
        exec(compile(block, "README.md", "exec"), scope)
        assert sum(len(g["params"]) for g in scope["optimizer"].param_groups) == len(list(module.parameters()))
        done.append(module)
    ours, theirs = done
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    x = torch.randn(7, 3, 10)
    outs = [m(x)[0] for m in (ours, theirs)]
    torch.testing.assert_close(outs[0], outs[1])
    for out in outs:
        out.sum().backward()
    for (name, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_anatomy_example_and_its_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = run_block("torchcells.explain(")
    anatomy = ns["anatomy"]
    assert anatomy.total_parameters == 15_040 and (tmp_path / "out" / "lstm-anatomy.html").exists()
    assert ns["cell_svg"].startswith("<svg") and [r["applications"] for r in ns["rows"]] == [5, 5, 5, 5]
    text = anatomy.to_text().splitlines()
    table = TEXT.split("```\nlayer ", 1)[1].split("```", 1)[0]
    lines = ("layer " + table).strip().splitlines()
    assert len(lines) == 6
    for line in lines:
        assert line in text, line


def test_anatomy_diagrams_in_docs_are_what_the_code_draws():
    from torchcells.cli_spec import build
    docs = README.parent / "docs" / "anatomy"
    model, example = build("lstm:input=10,hidden=20,layers=2,bidirectional", seq_len=5)
    anatomy = torchcells_explain(model, example)
    for kind in ("cell", "unrolled", "model"):
        assert (docs / f"{kind}.svg").read_text(encoding="utf-8") == anatomy.to_svg(kind), (
            f"docs/anatomy/{kind}.svg is stale: rerun `torchcells explain "
            f"lstm:input=10,hidden=20,layers=2,bidirectional --svg docs/anatomy`")
    assert "](docs/anatomy/cell.svg)" in TEXT


def torchcells_explain(model, example):
    from torchcells import explain
    return explain(model, example)


def test_cell_zoo_example():
    ns = run_block("StackedCell([cell, SLSTMCell(32, 32)])")
    out, state = ns["out"], ns["state"]
    assert out.shape == (20, 4, 32)
    assert torch.all(out[5:, 1] == 0) and torch.all(out[1:, 3] == 0)   # padded steps
    assert len(state) == 2 and state[1].h.shape == (4, 32)


@pytest.mark.usefixtures("onnx_table_once")  # torch.onnx lists its table of onnxscript functions once (conftest)
def test_export_example_runs_every_length_and_writes_a_checked_file(tmp_path, monkeypatch):
    onnxruntime = pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    ns = run_block("torchcells.export_onnx(")
    model, path = ns["model"], ns["path"]
    assert path == Path("out/lstm.onnx") and path.is_file()
    assert ns["out"].shape == (12, 5, 40) and ns["h_n"].shape == (4, 5, 20)
    x, lengths = torch.randn(12, 5, 10), torch.tensor([12, 3, 7, 1, 12])
    want, (h_n, c_n) = model(x, lengths=lengths)
    out, (h, c) = ns["program"].module()(x, lengths=lengths)
    for g, w in zip((out, h, c), (want, h_n, c_n)):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy(), "lengths": lengths.numpy()})
    for g, w in zip(got, (want, h_n, c_n)):
        torch.testing.assert_close(torch.from_numpy(g), w.detach(), atol=1e-5, rtol=1e-5)
