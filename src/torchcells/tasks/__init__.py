"""Real tasks on offline data."""

from .digits import RowReader, load_digit_sequences, train_digits

__all__ = ["RowReader", "load_digit_sequences", "train_digits"]

from .base import SequenceModel, Split, Task, TaskError  # noqa: E402
from .checkpoint import CheckpointError  # noqa: E402
from .registry import TASKS, get_task  # noqa: E402
from .training import TrainConfig, TrainResult, resolve_config, train  # noqa: E402

__all__ += ["CheckpointError", "SequenceModel", "Split", "TASKS", "Task", "TaskError", "TrainConfig", "TrainResult",
            "get_task", "resolve_config", "train"]
