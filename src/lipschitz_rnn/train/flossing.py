"""Gradient flossing in training: a flossing phase, and the callback that runs the phases of
the ``[flossing]`` table (:class:`~lipschitz_rnn.runs.config.FlossingConfig`) in the loop.

A phase is ``n`` optimisation steps of :func:`lipschitz_rnn.analysis.flossing_loss` on fresh
sequences of the task's training split, with its own optimiser (Adam) over the chosen
parameters, before training (``before`` steps) and at the start of every ``every``-th epoch
(``during`` steps). Each phase records its wall time apart from the task's optimisation, and the
first ``k`` exponents before and after it on one fixed batch of flossing sequences (the
*monitor*), so that a run shows what flossing did.

Everything random is drawn from one ``torch.Generator`` (seeded from the run's seed), whose
state, the optimiser's state and the number of steps done go into the run's checkpoint: a
resumed run floss-trains exactly as an uninterrupted one. Under ``torchrun`` every rank draws the
same sequences and computes the same gradient, so the parameters stay identical without
communication (the flossing loss is cheap next to an epoch).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

from ..analysis import flossing_loss, lyapunov_spectrum
from ..analysis._systems import resolve_system
from ..runs.config import FlossingConfig
from .callbacks import Callback, RunContext

__all__ = ["Flossing", "FlossingCallback", "sequence_sampler", "check_flossing"]



def _state_size(model: nn.Module) -> int:
    """The state size as the estimator counts it (an LSTM's (h, c), every layer)."""
    return int(resolve_system(model, torch.float64, True).n)


class Flossing:
    """The flossing phases of one run: draws sequences, steps its optimiser, keeps its state.

    ``model``: the run's ``SequenceModel`` (or any system ``flossing_loss`` accepts with a
    ``parameters()`` method); ``sample(n, length, generator)`` returns ``n`` training sequences
    of ``length`` steps, time-major, as the model takes them (:func:`sequence_sampler`).
    """

    def __init__(self, cfg: FlossingConfig, model: nn.Module, sample, seed: int) -> None:
        self.cfg = cfg
        self.model = model
        self.sample = sample
        self.generator = torch.Generator().manual_seed(int(seed) + 0x5EED)
        params = (model.rnn.parameters() if cfg.params == "recurrent" and hasattr(model, "rnn")
                  else model.parameters())
        self.params = [p for p in params if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.lr)
        self.steps_done = 0
        self.k = cfg.k or _state_size(model)
        # the monitor: one fixed batch, drawn first, on which every phase is measured
        self.monitor = sample(cfg.batch, cfg.warmup + cfg.steps, self.generator)

    def _kw(self) -> dict[str, Any]:
        return {"k": self.k, "warmup": self.cfg.warmup, "steps": self.cfg.steps}

    def spectrum(self) -> list[float]:
        """The mean first ``k`` exponents on the monitor batch."""
        return [float(v) for v in lyapunov_spectrum(self.model, self.monitor, **self._kw()).mean]

    def phase(self, n: int) -> dict[str, Any]:
        """``n`` flossing steps; returns the record of the phase (time, loss, spectra)."""
        before = self.spectrum()
        t0 = time.perf_counter()
        losses = []
        was_training = self.model.training
        self.model.eval()  # no dropout in the Jacobians
        try:
            for _ in range(n):
                x = self.sample(self.cfg.batch, self.cfg.warmup + self.cfg.steps, self.generator)
                self.optimizer.zero_grad(set_to_none=True)
                loss = flossing_loss(self.model, x, target=self.cfg.target, **self._kw())
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"flossing loss became non-finite at flossing step {self.steps_done} "
                        f"(value {float(loss)}); lower flossing.lr"
                    )
                loss.backward()
                if self.cfg.clip_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip_grad_norm)
                self.optimizer.step()
                losses.append(float(loss.detach()))
                self.steps_done += 1
        finally:
            self.model.train(was_training)
        seconds = time.perf_counter() - t0
        return {"steps": n, "seconds": seconds, "loss_first": losses[0] if losses else None,
                "loss_last": losses[-1] if losses else None, "spectrum_before": before,
                "spectrum_after": self.spectrum()}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "steps_done": self.steps_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.steps_done = int(state["steps_done"])


def sequence_sampler(task, device: torch.device | str = "cpu"):
    """``sample(n, length, generator)``: ``n`` random windows of ``length`` steps from the
    task's training split, time-major (``(length, n, features)``; tokens ``(length, n)``)."""
    train = task.split("train")
    if task.kind == "language_model":
        stream = torch.as_tensor(train, dtype=torch.long).reshape(-1)

        def sample_tokens(n: int, length: int, g: torch.Generator) -> Tensor:
            if stream.numel() <= length:
                raise ValueError(f"flossing: the training stream ({stream.numel()} tokens) is "
                                 f"shorter than warmup + steps = {length}")
            starts = torch.randint(0, stream.numel() - length, (n,), generator=g)
            idx = starts.unsqueeze(0) + torch.arange(length).unsqueeze(1)
            return stream[idx].to(device)

        return sample_tokens

    def sample_items(n: int, length: int, g: torch.Generator) -> Tensor:
        idx = torch.randint(0, len(train), (n,), generator=g).tolist()
        xs = [train[i][0] for i in idx]
        short = min(x.shape[0] for x in xs)
        if short < length:
            raise ValueError(f"flossing: a training sequence has {short} steps, fewer than "
                             f"flossing.warmup + flossing.steps = {length}")
        return torch.stack([x[:length] for x in xs], 1).to(device)

    return sample_items


def check_flossing(cfg: FlossingConfig, model: nn.Module, task) -> None:
    """The checks of ``cfg`` that need the run's model and task (``flossing.k`` within the
    state, sequences long enough): the loop runs them before anything is written."""
    length = None
    if task.kind != "language_model" and len(task.train) > 0:
        length = int(task.train[0][0].shape[0])
    cfg.check_against(_state_size(model), length)


class FlossingCallback(Callback):
    """Runs the flossing phases of ``cfg`` in the training loop: ``before`` steps at the start
    of epoch 1 of a fresh run, ``during`` steps at the start of epochs ``every + 1``,
    ``2 every + 1``, ... Each phase's record (:meth:`Flossing.phase`, with ``phase`` =
    ``"before"`` or ``"during"``) goes into that epoch's ``metrics.jsonl`` line under
    ``flossing``; its seconds are not part of the epoch's ``seconds``. The phase state (generator,
    optimiser, steps done) is saved in every checkpoint under ``flossing``."""

    state_key = "flossing"

    def __init__(self, cfg: FlossingConfig, seed: int) -> None:
        self.cfg, self.seed = cfg, int(seed)
        self.flossing: Flossing | None = None
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return self.flossing.state_dict() if self.flossing is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = state or None

    def on_train_start(self, run: RunContext) -> None:
        sample = sequence_sampler(run.runner.task, run.device)
        self.flossing = Flossing(self.cfg, run.model, sample, self.seed)
        if self._pending is not None:
            self.flossing.load_state_dict(self._pending)
            self._pending = None

    def steps_at(self, epoch: int) -> tuple[str, int]:
        """(phase name, flossing steps) at the start of ``epoch`` (1-based)."""
        if epoch == 1:
            return "before", self.cfg.before
        if self.cfg.every > 0 and (epoch - 1) % self.cfg.every == 0:
            return "during", self.cfg.during
        return "", 0

    def on_epoch_start(self, run: RunContext, epoch: int) -> dict[str, Any] | None:
        name, n = self.steps_at(epoch)
        if n == 0 or self.flossing is None:
            return None
        record = self.flossing.phase(n)
        return {"flossing": {"phase": name, **record}}
