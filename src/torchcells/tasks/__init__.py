"""Real tasks on offline data."""

from .base import SequenceModel, Split, Task, TaskError
from .checkpoint import CheckpointError
from .digits import RowReader, load_digit_sequences, train_digits
from .registry import TASKS, get_task
from .training import TrainConfig, TrainResult, resolve_config, train

__all__ = ["CheckpointError", "RowReader", "SequenceModel", "Split", "TASKS", "Task", "TaskError", "TrainConfig",
           "TrainResult", "get_task", "load_digit_sequences", "resolve_config", "train", "train_digits"]
