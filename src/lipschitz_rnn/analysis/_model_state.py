"""Private helpers shared by the Hessian and robustness analyses.

* :func:`materialise_batches` turns an iterable of ``(inputs, targets)`` into a list, with clear
  errors;
* :func:`preserved_state` restores every module's train/eval flag, the LipschitzRNN ``use_fused``
  switches and the parameters' ``.grad`` after an analysis;
* :func:`fused_disabled` switches the fused (first-order only) Lipschitz scan off so that second
  derivatives work;
* :func:`atomic_savefig` writes a matplotlib figure to a PNG via a temporary file + ``os.replace``.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

__all__ = [
    "materialise_batches",
    "preserved_state",
    "fused_disabled",
    "fast_rnn_kernels_disabled",
    "atomic_savefig",
    "model_device",
    "to_device",
    "finite_or_none",
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
def fused_disabled(model: nn.Module) -> Iterator[None]:
    """Set ``use_fused = False`` on every submodule that has the switch; restore afterwards.

    The instance attribute is removed again when the module only had the class default, so the
    module's ``__dict__`` ends as it started.
    """
    saved: list[tuple[nn.Module, bool, Any]] = []
    for mod in model.modules():
        if hasattr(mod, "use_fused"):
            own = "use_fused" in vars(mod)
            saved.append((mod, own, vars(mod).get("use_fused")))
            mod.use_fused = False
    try:
        yield
    finally:
        for mod, own, value in saved:
            if own:
                mod.use_fused = value
            else:
                with contextlib.suppress(AttributeError):
                    delattr(mod, "use_fused")


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


def finite_or_none(x: Any) -> float | None:
    """``float(x)``, or ``None`` for a missing / non-finite value (strict JSON has no inf/nan)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def atomic_savefig(fig: Any, path: str | os.PathLike[str]) -> str:
    """Save ``fig`` as PNG at ``path`` atomically (temporary file in the same folder, then
    ``os.replace``). Returns the path as a string."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def new_figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.0, 4.0)):
    """A matplotlib Figure with an Agg canvas, without touching pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes
