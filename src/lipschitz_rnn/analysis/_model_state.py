"""Private helpers shared by the Hessian and robustness analyses.

* :func:`materialise_batches` turns an iterable of ``(inputs, targets)`` into a list, with clear
  errors;
* :func:`preserved_state` restores every module's train/eval flag and the parameters' ``.grad``
  after an analysis;
* :func:`fast_rnn_kernels_disabled` switches cuDNN and oneDNN off (no double backward / no
  forward-mode AD there);
* :func:`model_device`, :func:`to_device`, :func:`finite_or_none`: small conversions.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

__all__ = [
    "materialise_batches",
    "preserved_state",
    "fast_rnn_kernels_disabled",
    "model_device",
    "to_device",
    "finite_or_none",
    "nan_for_none",
]


def materialise_batches(batches: Any, name: str = "batches") -> list[tuple[Any, Any]]:
    """Return ``batches`` as a list of ``(inputs, targets)`` pairs; raise on empty / malformed."""
    if batches is None or isinstance(batches, (str, bytes)) or not isinstance(batches, Iterable):
        raise TypeError(f"{name} must be an iterable of (inputs, targets) pairs")
    out: list[tuple[Any, Any]] = []
    for i, item in enumerate(batches):
        try:
            inputs, targets = item
        except (TypeError, ValueError):
            raise TypeError(f"{name}[{i}] must be an (inputs, targets) pair") from None
        out.append((inputs, targets))
    if not out:
        raise ValueError(f"{name} is empty: need at least one (inputs, targets) batch")
    return out


def model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def to_device(x: Any, device: torch.device) -> Any:
    return x.to(device) if isinstance(x, torch.Tensor) else x


@contextlib.contextmanager
def fast_rnn_kernels_disabled() -> Iterator[None]:
    """Switch cuDNN and oneDNN (mkldnn) off, restoring only their ``enabled`` flags afterwards.

    cuDNN RNNs have no double backward and oneDNN's float32 CPU LSTM kernel has no forward-mode
    AD; the native kernels support both. (``torch.backends.*.flags()`` would also reset the
    deterministic / TF32 settings and, for oneDNN, warn on builds without Intel-GPU support.)
    """
    cudnn, mkldnn = torch.backends.cudnn, torch.backends.mkldnn
    saved = (cudnn.enabled, mkldnn.enabled)
    cudnn.enabled = False
    mkldnn.enabled = False
    try:
        yield
    finally:
        cudnn.enabled, mkldnn.enabled = saved


@contextlib.contextmanager
def preserved_state(model: nn.Module, *, eval_mode: bool = True) -> Iterator[None]:
    """Put ``model`` in eval mode (optional) and restore, afterwards, every module's ``training``
    flag and every parameter's ``.grad`` object (``None`` stays ``None``)."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    if eval_mode:
        model.eval()
    try:
        yield
    finally:
        for m, flag in modes:
            m.training = flag
        for p, g in grads:
            if p.grad is not g:
                p.grad = g


def nan_for_none(x: Any) -> Any:
    """Inverse of :func:`finite_or_none` on (nested lists of) JSON values: ``None`` -> nan."""
    if x is None:
        return math.nan
    if isinstance(x, (list, tuple)):
        return [nan_for_none(v) for v in x]
    return x


def finite_or_none(x: Any) -> float | None:
    """``float(x)``, or ``None`` for a missing / non-finite value (strict JSON has no inf/nan)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None
