"""Writing a file whole or not at all (no torch here: the CLI, the anatomy and the tasks share it).

The bytes go to a temporary file in the destination's folder, are flushed to disk (``fsync``),
then ``os.replace`` puts the file in place in one step: a reader sees the old file or the new
one, never a part, and a crash or an error leaves the old file as it was and no temporary
file behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping, Union

__all__ = ["write_atomic", "write_atomic_together"]


def write_atomic(path: Union[str, Path], data: Union[str, bytes]) -> Path:
    """Write ``data`` (``str`` as UTF-8, or ``bytes``) to ``path`` atomically; return ``path``.

    Missing folders are created. The file gets the permissions a plain ``open`` would give
    it (``0666`` less the umask), not the temporary file's private ``0600``.
    """
    return write_atomic_together({path: data})[0]


def write_atomic_together(files: Mapping[Union[str, Path], Union[str, bytes]]) -> list[Path]:
    """Write several files, each atomically, and all of them or none: every temporary file is
    written and flushed first, then they are put in place one right after another (no write,
    no flush in between). An error before that leaves every old file as it was."""
    written: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            written.append((_temporary(path, data), path))
        for tmp, path in written:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in written:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise
    return [path for _, path in written]


def _temporary(path: Path, data: Union[str, bytes]) -> str:
    """A temporary file beside ``path`` holding ``data``, flushed to disk, with a plain file's permissions."""
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp
