"""The folder of a run (``--out DIR``): whose files it holds, one run at a time, leftovers of a killed run.

**Whose files.** ``torchcells train`` writes only ``checkpoint.safetensors``, ``config.json``,
``training.png``, ``training.svg``, its lock ``.torchcells.lock`` and, while writing, temporary
files ``.NAME.*.tmp``; every ``config.json`` it writes carries ``"format": "torchcells-checkpoint-1"``.
A folder is the tool's own when it is new or empty, or holds nothing but those names with a
``config.json`` bearing that marker (plots without it are someone else's). ``torchcells
compare`` writes ``compare.png``, ``compare.svg`` and one such run folder per cell. Anything
else -- another file, another folder, a ``config.json`` without the marker -- makes the folder
someone else's, and a run refuses it (unless ``--resume`` finds its own checkpoint there).

**One run per folder.** A run holds ``DIR/.torchcells.lock``, created with
``O_CREAT | O_EXCL`` (only one process can create it) and holding ``{"pid": ..., "host": ...}``;
it is removed when the run ends, however it ends short of ``kill -9``. A lock whose process
is dead (same host, no such PID) is stale and taken over; so is an unreadable one older
than a minute (a process killed between creating and filling it).

**Leftovers.** Temporary files of a killed run are removed by the next run, once it holds
the lock (so no live run is writing them).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from .base import TaskError

__all__ = ["LOCK", "RUN_FILES", "COMPARE_FILES", "foreign_entries", "hold"]

LOCK = ".torchcells.lock"
RUN_FILES = ("checkpoint.safetensors", "config.json", "training.png", "training.svg")
COMPARE_FILES = ("compare.png", "compare.svg")
MARKER = "torchcells-checkpoint-1"
_STALE_UNREADABLE_S = 60.0


def _temporary(name: str, names: tuple[str, ...]) -> bool:
    """``name`` is a temporary file :func:`torchcells.files.write_atomic` makes for one of ``names``."""
    return any(re.fullmatch(rf"\.{re.escape(n)}\..+\.tmp", name) for n in names)


def marked(config: Path) -> bool:
    """``config`` is a ``config.json`` this tool wrote (JSON with our ``format``)."""
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == MARKER


def foreign_entries(directory: Path, *, compare: bool = False) -> list[str]:
    """The entries of ``directory`` this tool did not write (see the module docstring); ``[]`` if none."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    own = COMPARE_FILES if compare else RUN_FILES
    foreign, runs = [], []
    for entry in sorted(directory.iterdir()):
        name = entry.name
        if compare and entry.is_dir() and not entry.is_symlink():
            inside = foreign_entries(entry)
            foreign += [f"{name}/{n}" for n in inside]
            runs.append(not inside and marked(entry / "config.json"))
        elif entry.is_file() and not entry.is_symlink() and (name in own or name == LOCK or _temporary(name, own)):
            continue
        else:
            foreign.append(name + ("/" if entry.is_dir() else ""))
    present = {p.name for p in directory.iterdir()}
    if not compare:
        if "config.json" in present and not marked(directory / "config.json"):
            foreign.append("config.json (not written by torchcells: no \"format\": \"torchcells-checkpoint-1\")")
        elif "config.json" not in present:
            foreign += [n for n in ("training.png", "training.svg") if n in present]
    elif present & set(COMPARE_FILES) and not any(runs):
        foreign += sorted(present & set(COMPARE_FILES))
    return foreign


def check_ours(directory: Path, *, compare: bool = False) -> None:
    """:class:`TaskError` in one line if ``directory`` holds files this tool did not write."""
    foreign = foreign_entries(directory, compare=compare)
    if foreign:
        listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise TaskError(f"--out {directory} holds files torchcells did not write ({listed}); it writes only into "
                        f"a new or empty folder or one of its own runs: choose another --out")


def _owner(lock: Path) -> Optional[dict]:
    try:
        data = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # someone else's live process
        return True
    except (OverflowError, ValueError):
        return False
    return True


def _stale(lock: Path, owner: Optional[dict]) -> bool:
    if owner is None:
        try:
            return time.time() - lock.stat().st_mtime > _STALE_UNREADABLE_S
        except OSError:
            return True
    return owner.get("host") == socket.gethostname() and not _alive(owner["pid"])


def _create(lock: Path) -> bool:
    """Create ``lock`` holding our PID and host; ``False`` if it exists. OSError if the folder is not writable."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
    return True


def _take_over(lock: Path, seen: bytes) -> bool:
    """Move a stale lock aside; ``True`` if what moved was the stale lock seen (not a fresh one)."""
    aside = lock.with_name(f"{LOCK}.stale.{os.getpid()}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return True                  # someone else removed it: try to create ours
    moved = aside.read_bytes()
    if moved != seen:                # a live run took it over in between: put its lock back
        try:
            os.link(aside, lock)
        except FileExistsError:
            pass
        aside.unlink()
        return False
    aside.unlink()
    return True


def acquire(directory: Path) -> Path:
    """Take ``directory``'s lock (see the module docstring); :class:`TaskError` if a live run holds it."""
    lock = Path(directory) / LOCK
    for _ in range(3):
        try:
            if _create(lock):
                return lock
        except OSError as e:
            raise TaskError(f"cannot write in --out {directory}: {e.strerror or e}") from None
        try:
            seen = lock.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise TaskError(f"cannot read the lock {lock}: {e.strerror or e}") from None
        owner = _owner(lock)
        if not _stale(lock, owner) or not _take_over(lock, seen):
            who = f"process {owner['pid']} on {owner.get('host')}" if owner else "another run"
            raise TaskError(f"--out {directory} is in use by {who} ({lock}); wait for it to finish or choose "
                            f"another --out (delete the lock only if no run is using the folder)")
    raise TaskError(f"--out {directory}: could not take the lock {lock}; try again")


def release(lock: Path) -> None:
    """Remove ``lock`` if it is still ours."""
    owner = _owner(lock)
    if owner is not None and owner["pid"] == os.getpid() and owner.get("host") == socket.gethostname():
        try:
            lock.unlink()
        except OSError:
            pass


def remove_leftovers(directory: Path, names: tuple[str, ...]) -> list[str]:
    """Delete temporary files of ``names`` a killed run left in ``directory``; their names."""
    removed = []
    for entry in Path(directory).iterdir():
        if entry.is_file() and _temporary(entry.name, names):
            entry.unlink()
            removed.append(entry.name)
    return removed


@contextmanager
def hold(directory: Path, *, compare: bool = False) -> Iterator[Path]:
    """Make ``directory`` if needed, take its lock, remove leftovers; on leaving, release the lock
    and remove the folder again if this run made it and left nothing in it."""
    directory = Path(directory)
    made = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TaskError(f"cannot make the folder --out {directory}: {e.strerror or e}") from None
    try:
        lock = acquire(directory)
    except TaskError:
        if made:
            _remove_if_empty(directory)
        raise
    try:
        remove_leftovers(directory, COMPARE_FILES if compare else RUN_FILES)
        yield lock
    finally:
        release(lock)
        if made:
            _remove_if_empty(directory)


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass
