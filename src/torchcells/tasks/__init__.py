"""Real tasks on offline data."""

from .base import SequenceModel, Split, Task, TaskError
from .checkpoint import CheckpointError
from .digits import load_digit_sequences
from .registry import TASKS, get_task
from .training import TrainConfig, TrainResult, resolve_config, train

__all__ = ["CheckpointError", "SequenceModel", "Split", "TASKS", "Task", "TaskError", "TrainConfig", "TrainResult",
           "get_task", "load_digit_sequences", "resolve_config", "train"]
