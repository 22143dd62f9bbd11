"""Gradient flossing in training: the ``[flossing]`` settings and one flossing phase.

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

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_float
from ..analysis import flossing_loss, lyapunov_spectrum
from ..analysis._systems import resolve_system

__all__ = ["FlossingConfig", "Flossing"]

#: which parameters a phase changes: the recurrent layer's (recurrent and input weights,
#: biases), or every parameter of the model (readout and embedding included)
PARAM_SETS = ("recurrent", "all")


@dataclass
class FlossingConfig:
    """The ``[flossing]`` table of a run configuration (all off by default).

    ``k`` exponents (0: all of the state) are pushed toward ``target`` on ``batch`` sequences of
    ``warmup + steps`` time steps (``warmup`` transient steps not averaged, ``steps`` averaged);
    ``before`` steps before training; ``during`` steps at the start of every ``every``-th epoch
    (epochs ``every + 1``, ``2 every + 1``, ...: the phase before training covers the first);
    Adam at ``lr`` with gradient-norm clipping at ``clip_grad_norm`` (0: none) on ``params``
    (``"recurrent"``: the recurrent layer; ``"all"``: every parameter).
    """

    k: int = 0
    target: float = 0.0
    warmup: int = 16
    steps: int = 55
    batch: int = 16
    before: int = 0
    every: int = 0
    during: int = 0
    lr: float = 1e-3
    clip_grad_norm: float = 0.0
    params: str = "recurrent"

    @property
    def enabled(self) -> bool:
        return self.before > 0 or (self.every > 0 and self.during > 0)

    def validate(self) -> FlossingConfig:
        """Check every key (ValueError / TypeError naming ``flossing.KEY``); returns self."""
        for name, low in (("k", 0), ("warmup", 0), ("steps", 1), ("batch", 1), ("before", 0),
                          ("every", 0), ("during", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"flossing.{name} must be an int, got {v!r}")
            if v < low:
                raise ValueError(f"flossing.{name} must be >= {low}, got {v}")
        self.target = check_float("flossing.target", self.target)
        self.lr = check_float("flossing.lr", self.lr, gt=0)
        self.clip_grad_norm = check_float("flossing.clip_grad_norm", self.clip_grad_norm, ge=0)
        if self.params not in PARAM_SETS:
            raise ValueError(f"flossing.params must be one of {list(PARAM_SETS)}, got "
                             f"{self.params!r}")
        if (self.every > 0) != (self.during > 0):
            raise ValueError(
                f"flossing.every and flossing.during go together (a phase every `every` epochs "
                f"of `during` steps), got every={self.every}, during={self.during}"
            )
        return self

    def check_against(self, state_size: int, sequence_length: int | None) -> None:
        """The checks that need the model and the task: ``k`` within the state, sequences
        long enough for ``warmup + steps``."""
        if self.k > state_size:
            raise ValueError(f"flossing.k={self.k} is larger than the model's state size "
                             f"{state_size}")
        if sequence_length is not None and self.warmup + self.steps > sequence_length:
            raise ValueError(
                f"flossing.warmup + flossing.steps = {self.warmup + self.steps} exceeds the "
                f"task's {sequence_length} time steps"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FlossingConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown flossing keys {unknown}; known: {sorted(known)}")
        return cls(**d).validate()


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
