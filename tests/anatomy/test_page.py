"""The HTML page: self-contained, written atomically, and rendered by a real browser (headless Chromium)."""

import os
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn

from torchcells import GRUCell, Recurrent
from torchcells.anatomy import explain

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium; .ci/run does it), "
                             "so the anatomy page was NOT opened in a browser")


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(6, 8, 3, padding=1)
        self.rnn = nn.LSTM(8, 20, num_layers=2, bidirectional=True)
        self.head = nn.Linear(40, 5)

    def forward(self, x):  # (T, B, 6)
        h = torch.relu(self.conv(x.permute(1, 2, 0))).permute(2, 0, 1)
        return self.head(self.rnn(h)[0])


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("page") / "sub" / "anatomy.html"
    explain(Tagger(), torch.randn(5, 1, 6)).save_html(path)
    return path


def test_page_is_self_contained_with_three_diagrams_tables_and_glossary(page):
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    # nothing is loaded from anywhere: no scripts, links, sources or URLs but the SVG namespace
    assert not re.search(r"<script|<link|<img|<iframe|\ssrc=|\shref=|@import", html, flags=re.I)
    assert set(re.findall(r"https?://[^\s\"')]+", html)) == {"http://www.w3.org/2000/svg"}
    assert all(u.startswith("#") for u in re.findall(r"url\(([^)]*)\)", html))
    for ident in ("model-diagram", "unrolled-diagram", "cell-diagram-0", "cell-diagram-1"):
        assert f'id="{ident}"' in html
    for svg in re.findall(r"<svg.*?</svg>", html, flags=re.S):
        ET.fromstring(svg)
    # the glossary answers "cell or layer?" with this model's numbers
    assert "<code>LSTMCell(8→20)</code>" in html and "<b>20 units</b>, each with one neuron in each of its 3 gates (i, f, o) and the candidate g" in html
    assert "applies its cell <b>5 times</b>" in html and "makes 20 applications per sequence" in html
    assert "Its twin <code>rnn.l0_reverse</code> reads the sequence from the end" in html
    assert "<code>head</code> is 5 neuron cells side by side" in html and "8 kernel cells" in html
    assert "<code>conv</code> → <code>rnn.l0</code> → <code>rnn.l1</code> → <code>head</code>" in html
    assert '<table class="layers">' in html and html.count('<table class="gates">') == 4
    assert "weight_hh_l1_reverse" in html and "60 … 79" in html


def test_page_is_written_atomically_and_readable(page):
    assert [p.name for p in page.parent.iterdir()] == ["anatomy.html"]  # no temporary file left behind
    assert page.stat().st_mode & 0o044  # group/others may read it, as with any file written by open()


def test_a_failed_write_leaves_the_old_page(tmp_path, monkeypatch):
    path = tmp_path / "a.html"
    path.write_text("old page")
    a = explain(nn.Linear(2, 3), torch.randn(1, 2))

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        a.save_html(path)
    assert path.read_text() == "old page" and [p.name for p in tmp_path.iterdir()] == ["a.html"]


def test_svg_files_are_the_diagrams_that_apply(tmp_path):
    rec = explain(Recurrent(GRUCell(3, 4)), torch.randn(6, 1, 3)).save_svg(tmp_path / "rec")
    assert sorted(p.name for p in rec) == ["cell.svg", "model.svg", "unrolled.svg"]
    dense = explain(nn.Linear(3, 4), torch.randn(1, 3)).save_svg(tmp_path / "dense")
    assert sorted(p.name for p in dense) == ["cell.svg", "model.svg"]
    for p in rec + dense:
        ET.parse(p)


def test_the_page_and_the_svgs_are_what_the_string_forms_say(tmp_path):
    a = explain(Recurrent(GRUCell(3, 4)), torch.randn(6, 1, 3))
    assert a.save_html(tmp_path / "p.html").read_text(encoding="utf-8") == a.to_html()
    for path in a.save_svg(tmp_path / "svg"):
        assert path.read_text(encoding="utf-8") == a.to_svg(path.stem)


# -- in a browser ------------------------------------------------------------------------------------

def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                           *args], capture_output=True, text=True, timeout=120)


def console_lines(stderr: str) -> list[str]:
    """What the page wrote to the console (Chromium logs it as ``...:CONSOLE...``)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def read_png(path: Path) -> tuple[int, int, int, list[bytes]]:
    """``(width, height, channels, rows)`` of an 8-bit RGB/RGBA PNG, decoded in plain Python."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, []
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
        elif kind == b"IDAT":
            idat.append(body)
    ch = 3 if ctype == 2 else 4
    raw, stride = zlib.decompress(b"".join(idat)), w * ch
    prev, rows, i = bytearray(stride), [], 0
    for _ in range(h):
        f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride) if f else ():
            a = line[x - ch] if x >= ch else 0
            b, c = prev[x], (prev[x - ch] if x >= ch else 0)
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + ((a + b) >> 1)) & 255
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, ch, rows


def colour_counts(rows: list[bytes], ch: int, colours: dict[str, tuple[int, int, int]]) -> dict[str, int]:
    counts = dict.fromkeys(colours, 0)
    counts["not white"] = 0
    wanted = {v: k for k, v in colours.items()}
    for row in rows:
        for x in range(0, len(row), ch):
            px = (row[x], row[x + 1], row[x + 2])
            if px != (255, 255, 255):
                counts["not white"] += 1
                if px in wanted:
                    counts[wanted[px]] += 1
    return counts


@needs_chromium
def test_the_page_renders_in_headless_chromium(page, tmp_path):
    shot = tmp_path / "page.png"  # one browser run: the screenshot and the DOM it rendered
    done = chromium(f"--screenshot={shot}", "--window-size=1200,3400", "--dump-dom", page.as_uri(),
                    profile=tmp_path / "p")
    assert shot.exists(), done.stderr[-2000:]
    assert console_lines(done.stderr) == []  # no errors or messages of any kind
    w, h, ch, rows = read_png(shot)
    assert (w, h) == (1200, 3400)
    counts = colour_counts(rows, ch, {"learned (yellow)": (255, 224, 138), "pointwise (pink)": (247, 193, 204),
                                      "state (blue)": (47, 109, 181)})
    assert counts["not white"] > 0.05 * w * h, counts        # not blank
    assert counts["learned (yellow)"] > 5_000, counts         # gate boxes and cells were drawn
    assert counts["pointwise (pink)"] > 1_000, counts
    assert counts["state (blue)"] > 300, counts
    dom = done.stdout
    for ident in ("model-diagram", "unrolled-diagram", "cell-diagram-0"):
        assert f'id="{ident}"' in dom
    assert dom.count("<svg") >= 4 and "What is a cell, what is a layer" in dom


@needs_chromium
def test_the_console_check_catches_errors(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><p>x</p><script>console.error("boom-42")</script></body></html>')
    done = chromium("--dump-dom", bad.as_uri(), profile=tmp_path / "p")
    assert any("boom-42" in line for line in console_lines(done.stderr))
