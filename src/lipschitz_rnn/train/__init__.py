"""Training: configurations and presets, the loop with exact resume, per-task batching."""

from .config import TrainConfig, list_presets, resolve_config
from .loop import DistributedError, DivergenceError, RunInterrupted, evaluate_run, load_run, train

__all__ = [
    "TrainConfig",
    "list_presets",
    "resolve_config",
    "train",
    "evaluate_run",
    "load_run",
    "DivergenceError",
    "DistributedError",
    "RunInterrupted",
]
