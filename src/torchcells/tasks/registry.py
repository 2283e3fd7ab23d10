"""The tasks by name: ``torchcells train TASK`` looks them up here."""

from __future__ import annotations

from .base import Task, TaskError
from .charlm import CharLM
from .digits import Digits
from .sunspots import Sunspots
from .vowels import Vowels

TASKS: dict[str, type[Task]] = {t.name: t for t in (Digits, Sunspots, Vowels, CharLM)}


def get_task(name: str) -> Task:
    """A fresh task object for ``name``; :class:`TaskError` listing the choices if unknown."""
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name]()

