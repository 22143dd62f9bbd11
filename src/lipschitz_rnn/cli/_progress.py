"""What the command line shows and hears during training, as callbacks of the loop: rank 0's
progress bar and epoch lines (:class:`TrainingDisplay`), and Ctrl-C (:class:`StopOnSigint`).

Imported when a command trains (it loads the training package)."""

from __future__ import annotations

import signal

from tqdm import tqdm

from ..train.callbacks import Callback, RunContext, StepInfo
from ._console import console

__all__ = ["TrainingDisplay", "StopOnSigint"]


class TrainingDisplay(Callback):
    """A tqdm bar per epoch (on stderr, none when it is not a terminal) with the epoch's running
    loss, metric and speed, and one line per finished epoch on the console. Shows nothing on
    the ranks other than 0."""

    def __init__(self) -> None:
        self._bar = None
        self._epoch: int | None = None

    def on_step_end(self, run: RunContext, info: StepInfo) -> None:
        if not run.is_main:
            return
        if self._epoch != info.epoch:
            self._close_bar()
            self._bar = tqdm(total=info.steps_per_epoch, desc=f"epoch {info.epoch}", unit="batch",
                             initial=info.step - 1, leave=False, dynamic_ncols=True, disable=None)
            self._epoch = info.epoch
        self._bar.update(1)
        self._bar.set_postfix(loss=f"{info.running_loss:.4f}",
                              **{info.metric_name: f"{info.running_metric:.4f}"},
                              seq_s=f"{info.seq_per_s:.0f}")

    def on_epoch_end(self, run: RunContext, record: dict) -> None:
        if not run.is_main:
            return
        self._close_bar()
        parts = [f"epoch {record['epoch']:3d}"]
        for k, v in record.items():
            if k in ("epoch", "lyapunov", "flossing"):
                continue
            parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
        if "lyapunov" in record:
            parts.append(f"lambda_max {record['lyapunov']['max']:.4f}")
        if "flossing" in record:
            parts.append(_flossing_part(record["flossing"]))
        console.print("  ".join(parts))

    def close(self) -> None:
        self._close_bar()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._epoch = None, None


class StopOnSigint(Callback):
    """Within ``with``: the first Ctrl-C asks the loop to stop after the current step (it then
    saves a checkpoint); a second one aborts at once."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self) -> StopOnSigint:
        self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.requested = True
        console.print("[yellow]stopping after this step (Ctrl-C again to abort)...[/]")

    def __exit__(self, *exc) -> bool:
        signal.signal(signal.SIGINT, self._old)
        return False

    def should_stop(self, run: RunContext) -> bool:
        return self.requested


def _flossing_part(phase: dict) -> str:
    """``flossing before 500 steps 12.3 s lambda_1 0.41 -> 0.02`` (the monitor's largest
    exponent before and after the phase)."""
    top = [max(s) if s else float("nan")
           for s in (phase.get("spectrum_before"), phase.get("spectrum_after"))]
    return (f"flossing {phase.get('phase', '')} {phase.get('steps')} steps "
            f"{phase.get('seconds', float('nan')):.3g} s lambda_1 {top[0]:.3g} -> {top[1]:.3g}")
