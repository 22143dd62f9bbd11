"""Hooks into the one training loop (:func:`lipschitz_rnn.train.loop.train`).

Everything that takes part in a run besides the loop itself (the command line's progress display
and Ctrl-C, TensorBoard logging, a sweep's reporting, a phase of extra optimisation) is a
:class:`Callback`. The loop calls, in order:

* :meth:`Callback.load_state_dict` on a resume, with what :meth:`Callback.state_dict` returned
  when the checkpoint was written (callbacks with a ``state_key`` only);
* :meth:`Callback.on_train_start` once the run directory, model and optimizer are ready (after a
  resume: in the restored state);
* for every epoch:

  - :meth:`Callback.on_epoch_start` before its first step (not for the epoch that a mid-epoch
    resume continues: that one started before the checkpoint);
  - after every optimiser step :meth:`Callback.on_step_end` with a :class:`StepInfo`, then
    :meth:`Callback.should_stop`;
  - :meth:`Callback.on_epoch_end` with the epoch's record (what ``metrics.jsonl`` gets) once
    the checkpoints are written, then :meth:`Callback.should_stop`;

* :meth:`Callback.on_train_end` with the final results (``results.json``);
* :meth:`Callback.close` always, also when training stops with an exception.

Under several processes callbacks run on every rank (``RunContext.is_main`` on rank 0, the one
that writes the run directory); the loop stops every rank when one asks to stop.

Observing callbacks must not change the model, the optimizer or any random number generator: the
trajectory of a run is the same with and without them. A callback may take part in training at
:meth:`Callback.on_epoch_start` (optimisation steps of its own, e.g. on a regulariser, before the
epoch's first step; ``start_epoch`` and ``fresh`` of the :class:`RunContext` say whether the run
starts from scratch): it then draws from a random generator of its own and keeps its state, and
that of its optimiser, in :meth:`Callback.state_dict` (saved in ``checkpoints/last.pt`` under its
``state_key``, rank 0's), so that a resumed run repeats exactly what an uninterrupted one does;
under several processes it must do the same on every rank (the same draws, the same steps), since
the loop does not synchronise what it changes. What it returns from ``on_epoch_start`` (its own
timing, say) goes into the epoch's record; the record's ``seconds`` count the task's optimisation
steps alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["Callback", "RunContext", "StepInfo"]


@dataclass
class RunContext:
    """What callbacks may read about the run (do not modify the objects, except as
    :meth:`Callback.on_epoch_start` allows)."""

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
    """One optimiser step. ``global_step`` counts steps over the whole run (1-based); ``loss``
    is the step's (the mean over the global batch); ``grad_norm`` is the total gradient norm
    before clipping, or None when no callback asked for it (``Callback.wants_grad_norm``) and no
    clipping computed it. ``running_loss``, ``running_metric`` (named ``metric_name``) and
    ``seq_per_s`` are the epoch's so far."""

    epoch: int
    step: int
    steps_per_epoch: int
    global_step: int
    loss: float
    lr: float
    grad_norm: float | None
    metric_name: str = ""
    running_loss: float = math.nan
    running_metric: float = math.nan
    seq_per_s: float = math.nan


class Callback:
    """Base class: every hook is a no-op."""

    #: ask the loop to compute the gradient norm every step (costs one pass over the gradients)
    wants_grad_norm: bool = False
    #: the key of this callback's :meth:`state_dict` in the checkpoint (None: it has no state)
    state_key: str | None = None

    def state_dict(self) -> dict[str, Any]:
        """What the checkpoint keeps of this callback (tensors, numbers, strings, lists and
        dicts of them: checkpoints load with ``weights_only=True``)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (on a resume, before :meth:`on_train_start`)."""

    def on_train_start(self, run: RunContext) -> None:
        pass

    def on_epoch_start(self, run: RunContext, epoch: int) -> dict[str, Any] | None:
        """Before the first step of ``epoch`` (1-based); returns entries for the epoch's
        record, or None."""
        return None

    def on_step_end(self, run: RunContext, info: StepInfo) -> None:
        pass

    def should_stop(self, run: RunContext) -> bool:
        """Polled after every step and every epoch: True stops the run with a resumable
        checkpoint (:class:`~lipschitz_rnn.train.loop.RunInterrupted`)."""
        return False

    def on_epoch_end(self, run: RunContext, record: dict) -> None:
        pass

    def on_train_end(self, run: RunContext, results: dict) -> None:
        pass

    def close(self) -> None:
        pass
