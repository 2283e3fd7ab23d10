"""The documentation site: ``mkdocs build --strict`` builds it (at least 8 pages, the API reference from
the docstrings), every Python block on it runs as written, and one page renders in headless Chromium."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once for this module the way ``make docs`` builds it (warnings are errors)."""
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason='the docs extra is not installed: pip install -e ".[docs]" '
                                           "(make test installs it), so the site was NOT built")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_the_site_builds_with_every_page_and_the_api_reference(site):
    pages = [p for p in site.rglob("index.html") if p.parent != site / "search"]
    assert len(pages) >= 8 + 1, sorted(str(p.relative_to(site)) for p in pages)
    for name in ("cell-or-layer", "writing-a-cell", "engine", "zoo/lstm", "anatomy", "training", "export",
                 "benchmarks", "api"):
        assert (site / name / "index.html").is_file(), name
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for ident in ("torchcells.Cell", "torchcells.Recurrent", "torchcells.Stack", "torchcells.Bidirectional",
                  "torchcells.LSTM", "torchcells.GRU", "torchcells.RNN", "torchcells.anatomy.explain.explain",
                  "torchcells.export_onnx", "torchcells.LSTMCell", "torchcells.MinGRUCell", "torchcells.Zoneout"):
        assert f'id="{ident}"' in api, ident
    assert "Args:" not in api and 'doc-section-title">Parameters:' in api     # Google sections rendered
    bench = (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    assert "--8&lt;--" not in bench and "nn.LSTM" in bench                          # BENCHMARKS.md included
    page = (site / "cell-or-layer" / "index.html").read_text(encoding="utf-8")
    for src in re.findall(r'<img[^>]* src="([^"]+)"', page):
        assert (site / "cell-or-layer" / src).resolve().is_file(), src               # every diagram is there


@contextlib.contextmanager
def chdir(path: Path):
    import os
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_page(page: Path, tmp_path: Path) -> str:
    """Run a page's Python blocks in order, in one namespace (as a reader would); what they print."""
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    printed = io.StringIO()
    with chdir(tmp_path), contextlib.redirect_stdout(printed):
        for i, block in enumerate(python_blocks(page)):
            exec(compile(block, f"{page.relative_to(ROOT)} (block {i + 1})", "exec"), namespace)
    return printed.getvalue()


# the pages whose examples tests/test_readme.py already runs and checks in detail (drop-ins, export, zoo)
CHECKED_ELSEWHERE = {"drop-ins.md", "export.md", "wrappers.md"}


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p) and p.name not in CHECKED_ELSEWHERE],
                         ids=lambda p: str(p.relative_to(DOCS)))
def test_every_python_block_runs(page, tmp_path):
    run_page(page, tmp_path)


def test_the_pages_checked_elsewhere_are_run_by_the_readme_test():
    readme_test = (ROOT / "tests" / "test_readme.py").read_text(encoding="utf-8")
    for name in CHECKED_ELSEWHERE:
        (page,) = [p for p in PAGES if p.name == name]
        for block in python_blocks(page):
            first_call = re.search(r"(torchcells\.\w+\(|prune\.l1_unstructured\(ours|StackedCell\(\[)", block)
            assert first_call and first_call.group(0) in readme_test, (name, block[:80])


def test_cell_or_layer_counts_are_what_the_models_say(tmp_path):
    printed = run_page(DOCS / "cell-or-layer.md", tmp_path).splitlines()
    assert printed[0] == "2560 2560 2560"                  # the length does not change the parameters
    assert printed[1] == "[5] [50]"                        # one application per step
    assert printed[2] == "220 440"                         # a dense layer's neurons do not share


def test_the_anatomy_page_shows_what_explain_prints(capsys):
    from torchcells.cli import main

    page = (DOCS / "anatomy.md").read_text(encoding="utf-8")
    shown = page.split("```text\n", 1)[1].split("```", 1)[0]
    spec = re.search(r"`torchcells explain (\S+)` prints", page).group(1)
    assert main(["explain", spec]) == 0
    printed = capsys.readouterr().out
    for line in shown.splitlines():
        assert line in printed.splitlines(), line


# -- in a browser ------------------------------------------------------------------------------------

@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium; "
                                             ".ci/run does it), so the docs page was NOT opened in a browser")
def test_the_cell_or_layer_page_renders_in_headless_chromium(site, tmp_path):
    from anatomy.test_page import chromium, colour_counts, console_lines, read_png

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None  # type: ignore[method-assign]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cell-or-layer/"
    try:
        shot = tmp_path / "page.png"  # one browser run: the screenshot and the DOM it rendered
        done = chromium(f"--screenshot={shot}", "--window-size=1200,3000", "--dump-dom", "--virtual-time-budget=3000",
                        url, profile=tmp_path / "p")
    finally:
        server.shutdown()
        server.server_close()
    assert shot.exists(), done.stderr[-2000:]
    assert console_lines(done.stderr) == []   # no errors of any kind
    w, h, ch, rows = read_png(shot)
    counts = colour_counts(rows, ch, {"learned (yellow)": (255, 224, 138), "pointwise (pink)": (247, 193, 204)})
    assert counts["learned (yellow)"] > 2_000 and counts["pointwise (pink)"] > 500, counts   # the diagrams drew
    assert "Cell or layer?" in done.stdout and done.stdout.count("<img") >= 5


# every public name but the version string and the ``State`` type alias (a Union, not a class or function)
PUBLIC = [n for n in __import__("torchcells").__all__ if n not in ("__version__", "State")]


def _documented_names(doc: str) -> list[str]:
    """The names a Google-style docstring documents: ``name:`` lines indented once (``*others:`` too)."""
    return re.findall(r"^ {4}\*{0,2}(\w+):", doc, flags=re.M)


@pytest.mark.parametrize("name", PUBLIC)
def test_the_public_api_documents_its_arguments(name):
    """Every public class documents its constructor's arguments (a NamedTuple or dataclass its fields,
    under Attributes), every module what ``forward`` returns, every function its arguments and result."""
    import dataclasses
    import inspect

    import torchcells
    from torch import nn

    obj = getattr(torchcells, name)
    doc = inspect.getdoc(obj) or ""
    if isinstance(obj, type) and (hasattr(obj, "_fields") or dataclasses.is_dataclass(obj)):
        section, params = "Attributes:", list(getattr(obj, "_fields", None) or
                                                 [f.name for f in dataclasses.fields(obj)])
    else:
        section, params = "Args:", [p for p in inspect.signature(obj).parameters if p not in ("self", "args", "kwargs")]
        if not isinstance(obj, type) or issubclass(obj, nn.Module):
            assert "Returns:" in doc, name
    if params:
        assert section in doc, (name, section)
    documented = _documented_names(doc)
    for param in params:
        assert param in documented, (name, param)


def test_the_api_page_shows_every_public_name():
    import importlib

    import torchcells

    shown = set()
    for ident in re.findall(r"^::: ([\w.]+)$", (DOCS / "api.md").read_text(encoding="utf-8"), flags=re.M):
        module, _, attr = ident.rpartition(".")
        shown.add(id(getattr(importlib.import_module(module), attr)))
    missing = [n for n in PUBLIC if id(getattr(torchcells, n)) not in shown]
    assert missing == [], missing
