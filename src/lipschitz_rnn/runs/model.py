"""The model of a run: built from its configuration and the task's sizes (``model.json``), and
what ``results.json`` records about it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models import LipschitzRNNCell, SequenceModel, build
from .config import TrainConfig
from .tasks import TaskRunner

__all__ = ["build_model", "model_sizes", "lipschitz_eigs"]


def model_sizes(runner: TaskRunner) -> dict[str, Any]:
    """What :func:`build_model` takes from the task (written to a run's ``model.json``, so that
    the model can be rebuilt without the data, e.g. to certify it)."""
    return {
        "input_size": runner.model_input_size,
        "output_size": runner.output_size,
        "readout": runner.readout,
        "vocab_size": runner.vocab_size,
    }


def build_model(config: TrainConfig, runner: TaskRunner | None = None, *,
                sizes: dict[str, Any] | None = None) -> nn.Module:
    """The run's model from its config and the task's sizes (``runner``, or ``sizes`` as
    :func:`model_sizes` gives them), initialised from torch's global RNG."""
    if sizes is None:
        if runner is None:
            raise ValueError("build_model needs the task's runner or its sizes")
        sizes = model_sizes(runner)
    rnn = build(
        config.model,
        sizes["input_size"],
        config.hidden_size,
        num_layers=config.num_layers,
        **config.model_kwargs,
    )
    return SequenceModel(rnn, sizes["output_size"], mode=sizes["readout"],
                         vocab_size=sizes["vocab_size"])


def lipschitz_eigs(model: nn.Module) -> list[dict] | None:
    """Eigenvalue ranges of every Lipschitz cell's A and W (``results.json``), or None."""
    cells = [m for m in model.modules() if isinstance(m, LipschitzRNNCell)]
    if not cells:
        return None
    out = []
    with torch.no_grad():
        for c in cells:
            ea = torch.linalg.eigvals(c.A.detach().double().cpu())
            ew = torch.linalg.eigvals(c.W.detach().double().cpu())
            out.append(
                {
                    "A_eig_real_min": float(ea.real.min()),
                    "A_eig_real_max": float(ea.real.max()),
                    "A_eig_imag_max": float(ea.imag.abs().max()),
                    "W_eig_real_min": float(ew.real.min()),
                    "W_eig_real_max": float(ew.real.max()),
                    "W_eig_imag_max": float(ew.imag.abs().max()),
                }
            )
    return out
