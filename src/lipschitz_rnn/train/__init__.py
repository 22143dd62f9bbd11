"""Training: the one loop with exact resume (one process or many), its callbacks, TensorBoard.

A run's configuration, task and directory are those of :mod:`lipschitz_rnn.runs`.
"""

from .callbacks import Callback, RunContext, StepInfo
from .distributed import DistributedError
from .loop import DivergenceError, RunInterrupted, train

__all__ = [
    "train",
    "Callback",
    "RunContext",
    "StepInfo",
    "DivergenceError",
    "DistributedError",
    "RunInterrupted",
]
