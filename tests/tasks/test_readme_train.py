"""The README's "Train on real data" section: its commands parse, its trivial-predictor numbers are the tasks'."""

import re
import shlex
from pathlib import Path

import pytest

from torchcells.cli import build_parser
from torchcells.tasks import TASKS, get_task

TEXT = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
SECTION = TEXT.split("## Train on real data")[1].split("\n## ")[0]


def commands():
    shell = "\n".join(re.findall(r"```bash\n(.*?)```", SECTION, flags=re.S))
    lines = [line.split("#")[0].strip() for line in shell.splitlines()]
    return [shlex.split(line.split("torchcells ", 1)[1]) for line in lines if line.startswith(("torchcells", "torchrun"))]


def test_the_section_exists_with_commands_for_every_task():
    assert len(commands()) >= 6
    assert {argv[1] for argv in commands()} >= set(TASKS)


@pytest.mark.parametrize("argv", commands(), ids=lambda argv: " ".join(argv)[:60])
def test_every_command_parses(argv):
    args = build_parser().parse_args(argv)
    assert args.command in ("train", "compare") and args.task in TASKS


def test_trivial_predictor_column_is_what_the_tasks_compute():
    for name in TASKS:
        task = get_task(name)
        row = next(line for line in SECTION.splitlines() if line.startswith(f"| `{name}` |"))
        shown = float(row.split("|")[-2].split()[0])
        _, value = task.baseline(*task.load(seed=0))
        assert shown == pytest.approx(value, abs=0.006), name
