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
from typing import Union

__all__ = ["write_atomic"]


def write_atomic(path: Union[str, Path], data: Union[str, bytes]) -> Path:
    """Write ``data`` (``str`` as UTF-8, or ``bytes``) to ``path`` atomically; return ``path``.

    Missing folders are created. The file gets the permissions a plain ``open`` would give
    it (``0666`` less the umask), not the temporary file's private ``0600``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
