"""TensorBoard logging of a training run, as a :class:`~lipschitz_rnn.train.callbacks.Callback`.

:class:`TensorBoardLogger` writes event files into ``RUN/tb/`` (``tensorboard --logdir RUN``;
for a sweep, ``tensorboard --logdir SWEEP`` shows every trial as its own run). The x-axis of
every scalar is the global optimiser step. Tags:

* every step: ``step/loss``, ``step/lr``, ``step/grad_norm`` (total gradient norm before
  clipping);
* every epoch: the ``metrics.jsonl`` record, ``train/*``, ``valid/*`` and ``test/*`` (e.g.
  ``valid/accuracy``), ``epoch/epoch``, ``epoch/lr``, ``epoch/seconds``, ``epoch/seq_per_s``;
* every epoch, for each Lipschitz cell ``i`` (in :func:`lipschitz_rnn.stability.certify`
  order): ``certificate/cell{i}/A_spectral_abscissa``, ``.../A_sym_eig_max``,
  ``.../max_stable_eps`` and ``.../stable_step_margin`` (largest stable step minus ``eps``;
  negative when the step lies outside the solver's stability region);
* when the epoch has a Lyapunov summary (``lyapunov_every``): ``lyapunov/max``,
  ``lyapunov/mean``, ``lyapunov/median``, ``lyapunov/kaplan_yorke_dimension`` and the spectrum
  as the histogram ``lyapunov/spectrum``;
* when the epoch began with a flossing phase (``[flossing]``): ``flossing/steps``,
  ``flossing/seconds``, ``flossing/loss_first``, ``flossing/loss_last``,
  ``flossing/max_exponent_before``, ``flossing/max_exponent_after`` and the histograms
  ``flossing/spectrum_before``, ``flossing/spectrum_after``;
* at the end: ``final/test_<metric>``, ``final/test_loss``; the configuration as the text
  ``config``.

Only the process that writes the run directory logs (``RunContext.is_main``). A resumed run
appends to the same folder and tells TensorBoard to drop the events of the interrupted session
past the resume point, so that no step appears twice.

TensorBoard is an optional dependency: ``pip install 'lipschitz-rnn[tensorboard]'``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..models import LipschitzRNNCell
from ..stability import certify
from .callbacks import Callback, RunContext, StepInfo

__all__ = ["TensorBoardLogger", "tensorboard_callbacks", "summary_writer_class", "TB_DIR"]

#: the folder of a run directory that holds the event files
TB_DIR = "tb"

_SPLITS = ("train", "valid", "test")


def summary_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``; ImportError naming the extra when the
    ``tensorboard`` package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch raises ImportError when tensorboard is absent
        raise ImportError(
            "TensorBoard logging needs the tensorboard package: "
            "pip install 'lipschitz-rnn[tensorboard]'"
        ) from e
    return SummaryWriter


def tensorboard_callbacks(config: Any, *, force: bool = False) -> list[Callback]:
    """``[TensorBoardLogger()]`` when ``config.tensorboard`` (or ``force``) is true, else ``[]``:
    what a front-end (the ``train`` command, a sweep's trial) passes as ``callbacks=``."""
    return [TensorBoardLogger()] if force or getattr(config, "tensorboard", False) else []


class TensorBoardLogger(Callback):
    """Log a run to TensorBoard (see the module docstring for the tags).

    Args:
        log_dir: where the event files go; default ``RUN/tb`` of the run being trained.
        flush_secs: how often the writer flushes on its own (it also flushes every epoch).

    Raises ImportError naming ``lipschitz-rnn[tensorboard]`` at construction when the
    ``tensorboard`` package is missing, so that a run fails before it starts.
    """

    wants_grad_norm = True

    def __init__(self, log_dir: str | Path | None = None, *, flush_secs: int = 30) -> None:
        if log_dir is not None and not isinstance(log_dir, (str, Path)):
            raise TypeError(f"log_dir must be a path or None, got {type(log_dir).__name__}")
        if isinstance(flush_secs, bool) or not isinstance(flush_secs, int) or flush_secs < 1:
            raise ValueError(f"flush_secs must be an int >= 1, got {flush_secs!r}")
        self._writer_class = summary_writer_class()
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.flush_secs = flush_secs
        self._writer = None
        self._run: RunContext | None = None
        self._step: int | None = None  # the last global step of this session

    # --- the writer: created at the first event, so a resume knows where it starts -------------
    def _get_writer(self, first_step: int):
        if self._writer is None:
            run = self._run
            log_dir = self.log_dir if self.log_dir is not None else run.out / TB_DIR
            # events at or past the first step of a resumed session are stale: a crash after the
            # checkpoint left them
            purge = None if run.fresh else first_step
            self._writer = self._writer_class(
                log_dir=str(log_dir), purge_step=purge, flush_secs=self.flush_secs
            )
            toml = run.config.to_toml() if hasattr(run.config, "to_toml") else str(run.config)
            text = "    " + toml.replace("\n", "\n    ")  # a Markdown code block
            self._writer.add_text("config", text, first_step)
        return self._writer

    def _scalar(self, tag: str, value: Any, step: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        if math.isfinite(value):
            self._get_writer(step).add_scalar(tag, float(value), step)

    # --- hooks ----------------------------------------------------------------------------------
    def on_train_start(self, run: RunContext) -> None:
        self._run = run if run.is_main else None
        self._step = None

    def on_step_end(self, run: RunContext, info: StepInfo) -> None:
        if self._run is None:
            return
        step = info.global_step
        self._get_writer(step)
        self._step = step
        self._scalar("step/loss", info.loss, step)
        self._scalar("step/lr", info.lr, step)
        if info.grad_norm is not None:
            self._scalar("step/grad_norm", info.grad_norm, step)

    def on_epoch_end(self, run: RunContext, record: dict) -> None:
        if self._run is None or self._step is None:
            return
        step = self._step
        writer = self._get_writer(step)
        for key, value in record.items():
            if key in ("lyapunov", "flossing"):
                continue
            head, _, rest = key.partition("_")
            tag = f"{head}/{rest}" if head in _SPLITS and rest else f"epoch/{key}"
            self._scalar(tag, value, step)
        for i, cert in enumerate(_certificates(run.model)):
            for name, value in cert.items():
                self._scalar(f"certificate/cell{i}/{name}", value, step)
        lyap = record.get("lyapunov")
        if isinstance(lyap, dict):
            for name in ("max", "mean", "median", "kaplan_yorke_dimension"):
                self._scalar(f"lyapunov/{name}", lyap.get(name), step)
            spectrum = np.asarray(
                [v for v in lyap.get("spectrum", []) if v is not None], dtype=np.float64
            )
            spectrum = spectrum[np.isfinite(spectrum)]
            if spectrum.size:
                writer.add_histogram("lyapunov/spectrum", spectrum, step, bins="auto")
        self._flossing(record.get("flossing"), step)
        writer.flush()

    def _flossing(self, phase: Any, step: int) -> None:
        """A flossing phase's time, loss and first exponents before and after it."""
        if not isinstance(phase, dict):
            return
        for name in ("steps", "seconds", "loss_first", "loss_last"):
            self._scalar(f"flossing/{name}", phase.get(name), step)
        for when in ("before", "after"):
            spectrum = np.asarray([v for v in phase.get(f"spectrum_{when}") or []
                                   if v is not None], dtype=np.float64)
            spectrum = spectrum[np.isfinite(spectrum)]
            if spectrum.size:
                self._scalar(f"flossing/max_exponent_{when}", float(spectrum.max()), step)
                self._get_writer(step).add_histogram(f"flossing/spectrum_{when}", spectrum,
                                                     step, bins="auto")

    def on_train_end(self, run: RunContext, results: dict) -> None:
        # a resumed run that had nothing left to train has no step of its own to log at
        if self._run is None or self._step is None:
            return
        step = self._step
        for name, value in (results.get("test") or {}).items():
            self._scalar(f"final/test_{name}", value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


def _certificates(model) -> list[dict[str, float]]:
    """The certificate numbers of every Lipschitz cell of ``model`` ([] when it has none)."""
    if not any(isinstance(m, LipschitzRNNCell) for m in model.modules()):
        return []
    out = []
    for c in certify(model):
        out.append(
            {
                "A_spectral_abscissa": c.A_spectral_abscissa,
                "A_sym_eig_max": c.A_sym_eig_max,
                "max_stable_eps": c.max_stable_eps,
                "stable_step_margin": c.max_stable_eps - c.eps,
            }
        )
    return out
