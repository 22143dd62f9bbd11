"""Trial schedulers of a sweep (``[scheduler] kind = ...``), built for Ray Tune.

A factory takes a :class:`SchedulerContext` and returns a Ray Tune ``TrialScheduler``, a
``Stopper``, or None (first in, first out). Every trial reports after each epoch (see
:func:`lipschitz_rnn.sweep.trial.report_metrics`): ``epoch``, ``valid_metric`` (the task's
metric on the validation split, ``mode`` says whether higher is better), ``valid_loss``,
``train_loss`` and the features ``le{e}_{feature}`` of every spectrum computed so far.

* ``fifo``: every trial runs to its last epoch;
* ``asha``: Ray's ``ASHAScheduler`` on ``valid_metric`` with ``time_attr = "epoch"`` (so rungs
  stay right when a trial is resumed), ``max_t`` the longest trial's epochs, options
  ``grace_period`` (default 1) and ``reduction_factor`` (default 4);
* ``lyapunov``: spectrum-guided pruning, a ``Stopper`` running
  :class:`~lipschitz_rnn.sweep.pruning.LyapunovRule` (options ``decision_epoch``, ``fraction``,
  ``min_history``, ``predictor``).

The table of factories is static: every kind works as soon as this module is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .pruning import LyapunovRule
from .spec import SCHEDULER_KINDS, SchedulerSpec

__all__ = ["SchedulerContext", "register_scheduler", "make_scheduler", "METRIC"]

#: the name under which trials report the validation metric
METRIC = "valid_metric"


@dataclass(frozen=True)
class SchedulerContext:
    spec: SchedulerSpec
    mode: str  # "max" or "min"
    max_epochs: int
    at_epochs: tuple[int, ...]
    sweep_dir: Path
    metric: str = METRIC


def _fifo(ctx: SchedulerContext) -> Any:
    return None


def _asha(ctx: SchedulerContext) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    opts = ctx.spec.options
    return ASHAScheduler(
        time_attr="epoch",
        metric=ctx.metric,
        mode=ctx.mode,
        max_t=max(ctx.max_epochs, 1),
        grace_period=int(opts.get("grace_period", 1)),
        reduction_factor=float(opts.get("reduction_factor", 4)),
    )


def _lyapunov(ctx: SchedulerContext) -> Any:
    from ray.tune import Stopper

    rule = LyapunovRule.from_options(ctx.spec.options, at_epochs=ctx.at_epochs,
                                     max_epochs=ctx.max_epochs, mode=ctx.mode, metric=ctx.metric)

    class LyapunovStopper(Stopper):
        """Ray Tune's view of the rule: every report goes through it; never stops them all."""

        def __init__(self, rule: LyapunovRule) -> None:
            self.rule = rule

        def __call__(self, trial_id: str, result: dict) -> bool:
            return self.rule(trial_id, result)

        def stop_all(self) -> bool:
            return False

    return LyapunovStopper(rule)


_FACTORIES: dict[str, Callable[[SchedulerContext], Any]] = {
    "fifo": _fifo,
    "asha": _asha,
    "lyapunov": _lyapunov,
}


def register_scheduler(kind: str, factory: Callable[[SchedulerContext], Any]) -> None:
    """Replace the factory of ``kind`` (one of ``fifo``, ``asha``, ``lyapunov``)."""
    if kind not in SCHEDULER_KINDS:
        raise ValueError(f"kind must be one of {list(SCHEDULER_KINDS)}, got {kind!r}")
    _FACTORIES[kind] = factory


def make_scheduler(ctx: SchedulerContext) -> tuple[Any, Any]:
    """``(scheduler, stopper)`` for Ray Tune (either may be None)."""
    from ray.tune import Stopper

    made = _FACTORIES[ctx.spec.kind](ctx)
    if isinstance(made, Stopper):
        return None, made
    return made, None
