"""Hooks into the one training loop (:func:`lipschitz_rnn.train.loop.train`).

Subsystems that observe training (TensorBoard logging, sweep reporting, ...) subclass
:class:`Callback` instead of running a loop of their own. The loop calls, in order:

* :meth:`Callback.on_train_start` once the run directory, model and optimizer are ready (after a
  resume: in the restored state);
* :meth:`Callback.on_step_end` after every optimiser step;
* :meth:`Callback.on_epoch_end` after every epoch with the epoch's record (what
  ``metrics.jsonl`` gets) once the checkpoints are written;
* :meth:`Callback.on_train_end` with the final results (``results.json``);
* :meth:`Callback.close` always, also when training stops with an exception.

Callbacks must not change the model, the optimizer or any random number generator: the
trajectory of a run is the same with and without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["Callback", "RunContext", "StepInfo"]


@dataclass
class RunContext:
    """What callbacks may read about the run (do not modify the objects)."""

    out: Path
    config: Any
    model: nn.Module
    optimizer: Any
    runner: Any
    device: Any
    #: True for a run started from scratch (no checkpoint loaded)
    fresh: bool = True
    #: the (1-based) epoch the loop starts or resumes in
    start_epoch: int = 1
    #: whether this process writes the run directory (rank 0 of a distributed run)
    is_main: bool = True


@dataclass
class StepInfo:
    """One optimiser step. ``global_step`` counts steps over the whole run (1-based);
    ``grad_norm`` is the total gradient norm before clipping, or None when no callback asked for
    it (``Callback.wants_grad_norm``) and no clipping computed it."""

    epoch: int
    step: int
    steps_per_epoch: int
    global_step: int
    loss: float
    lr: float
    grad_norm: float | None


class Callback:
    """Base class: every hook is a no-op."""

    #: ask the loop to compute the gradient norm every step (costs one pass over the gradients)
    wants_grad_norm: bool = False

    def on_train_start(self, run: RunContext) -> None:
        pass

    def on_step_end(self, run: RunContext, info: StepInfo) -> None:
        pass

    def on_epoch_end(self, run: RunContext, record: dict) -> None:
        pass

    def on_train_end(self, run: RunContext, results: dict) -> None:
        pass

    def close(self) -> None:
        pass
