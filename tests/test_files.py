"""``torchcells.files.write_atomic``: whole files or none, for the anatomy, the CLI and the checkpoints."""

import os
import stat
import subprocess
import sys

import pytest

from torchcells.files import write_atomic


def test_text_and_bytes_are_written_and_folders_made(tmp_path):
    page = write_atomic(tmp_path / "a" / "b" / "page.html", "héllo\n")
    assert page == tmp_path / "a" / "b" / "page.html" and page.read_bytes() == "héllo\n".encode()
    blob = write_atomic(str(tmp_path / "blob.bin"), b"\x00\x01")
    assert blob.read_bytes() == b"\x00\x01"
    assert write_atomic(blob, b"new").read_bytes() == b"new"                # replaces an existing file


def test_the_temporary_file_is_synced_in_the_same_folder_then_replaced(tmp_path, monkeypatch):
    seen = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr("os.fsync", lambda fd: (seen.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr("os.replace", lambda a, b: (seen.append(("replace", os.path.dirname(a), b)),
                                                    real_replace(a, b))[1])
    path = tmp_path / "x.txt"
    write_atomic(path, "data")
    assert seen == ["fsync", ("replace", str(tmp_path), path)]


def test_a_failed_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "file.bin"
    write_atomic(path, b"old")

    def crash(*args):
        raise OSError("disk full")
    monkeypatch.setattr("os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]    # no temporary file left behind


def test_the_file_gets_plain_permissions_not_the_temporary_files(tmp_path):
    mask = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "page.html", "x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_the_module_needs_no_torch():
    # the package's __init__ imports torch, so the file is loaded on its own
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('f', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, write_atomic.__code__.co_filename], check=True)
