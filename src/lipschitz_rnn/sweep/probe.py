"""The probe input of a sweep, and the Lyapunov spectrum of a model on it.

Every trial's spectra are computed on the same input: ``batch`` sequences of the validation
split drawn once with ``[lyapunov] seed`` and stored in ``DIR/probe.pt`` (for a language model,
the first segment of ``batch`` parallel validation streams).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._io import atomic_write_bytes, load_checkpoint
from ..analysis import LyapunovSpectrum, lyapunov_spectrum
from ..runs.model import build_model
from ..runs.tasks import TaskRunner
from .spec import LyapunovSpec, SweepSpec

__all__ = ["PROBE_FILE", "draw_probe", "save_probe", "load_probe", "probe_spectrum",
           "check_trials"]

PROBE_FILE = "probe.pt"


def draw_probe(runner: TaskRunner, lyap: LyapunovSpec) -> dict[str, Any]:
    """``{"inputs": (T, batch, features) time-major, "indices": (batch,), "split", "seed"}``."""
    if runner.is_lm:
        inputs = runner.sample_inputs("valid", lyap.batch)
        indices = torch.arange(inputs.shape[1])
    else:
        ds = runner.task.valid
        if len(ds) == 0:
            raise ValueError(f"task {runner.task.name!r} has an empty validation split: no probe")
        g = torch.Generator().manual_seed(lyap.seed)
        indices = torch.randperm(len(ds), generator=g)[: lyap.batch].sort().values
        items = [ds[int(i)] for i in indices]
        if runner.task.collate_fn is not None:
            inputs = runner.task.collate_fn(items)["x"]  # already time-major
        else:
            inputs = torch.stack([x for x, _ in items]).transpose(0, 1).contiguous()
    steps = inputs.shape[0]
    if lyap.warmup + lyap.steps > steps:
        raise ValueError(
            f"[lyapunov] warmup + steps = {lyap.warmup + lyap.steps} exceeds the {steps} steps of "
            "the probe sequences"
        )
    if lyap.warmup >= steps:
        raise ValueError(f"[lyapunov] warmup: {lyap.warmup} leaves none of the probe's {steps} "
                         "steps to average")
    return {"inputs": inputs, "indices": indices, "split": "valid", "seed": lyap.seed}


def save_probe(path: str | Path, probe: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(probe, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_probe(path: str | Path) -> dict[str, Any]:
    return load_checkpoint(path)


def probe_spectrum(model: nn.Module, inputs: Tensor, lyap: LyapunovSpec) -> LyapunovSpectrum:
    """The spectrum of ``model`` (a SequenceModel) driven by the probe ``inputs``."""
    dev = next(model.parameters()).device
    return lyapunov_spectrum(
        model,
        inputs.to(dev),
        k=lyap.k or None,
        steps=lyap.steps or None,
        warmup=lyap.warmup,
    )


def check_trials(spec: SweepSpec, runner: TaskRunner, inputs: Tensor) -> None:
    """Build every distinct model of the sweep once and run a one-step spectrum on the probe:
    a typo in a ``model.*`` key or a ``k`` beyond the state size fails here, before any trial.
    The caller's random number generators are left as they were."""
    seen = set()
    dry = LyapunovSpec(k=spec.lyapunov.k, steps=1, warmup=0)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # construction-time stability notices
        for t in spec.trials:
            c = t.config
            key = (c.model, c.hidden_size, c.num_layers, repr(sorted(c.model_kwargs.items())))
            if key in seen:
                continue
            seen.add(key)
            try:
                model = build_model(c, runner)
            except (TypeError, ValueError) as e:
                raise type(e)(f"trial {t.id} {t.params}: {e}") from None
            if spec.lyapunov.at_epochs:
                try:
                    probe_spectrum(model, inputs[:1, :1], dry)
                except ValueError as e:
                    raise ValueError(f"[lyapunov]: trial {t.id} {t.params}: {e}") from None
