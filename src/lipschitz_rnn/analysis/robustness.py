r"""Robustness of a trained model to input and weight perturbations (paper, Sec. 7 / Table 3).

Two curves, each over a grid of noise levels :math:`\sigma \ge 0` and several seeds:

* **input noise** (:func:`input_noise_curve`): every test input is replaced by
  :math:`x + \sigma\,\varepsilon`, :math:`\varepsilon \sim \mathcal N(0, I)` i.i.d. per entry;
  :math:`\sigma` is absolute, in the inputs' own units.
* **weight noise** (:func:`weight_noise_curve`): every parameter tensor :math:`\theta` (weights and
  biases, trainable or not; buffers untouched) is replaced by
  :math:`\theta + \sigma\,\mathrm{rms}(\theta)\,\varepsilon`, with
  :math:`\mathrm{rms}(\theta) = \sqrt{\mathrm{mean}(\theta^2)}` the tensor's own scale, so
  :math:`\sigma` is a relative noise level comparable across layers and models (a tensor that is
  all zeros stays unperturbed).

For each seed the noise is drawn from a ``torch.Generator`` seeded with that seed (on the CPU, then
moved to the model's device, so values do not depend on the device), re-seeded for every
:math:`\sigma`: one seed uses the same :math:`\varepsilon` at every :math:`\sigma` (common random
numbers, smooth curves). At :math:`\sigma = 0` no noise is drawn and the curve holds the clean
metric exactly.

Metrics aggregate exactly over batches of unequal sizes: ``metric_fn(outputs, targets)`` returns a
``(sum, count)`` pair (see :func:`accuracy_metric`, :func:`mse_metric`) and the metric is
``sum of sums / sum of counts``. A ``metric_fn`` returning a plain number is averaged over batches
with equal weights (exact only for equal batch sizes).

The model is evaluated in eval mode under ``torch.no_grad()``; afterwards each module's train/eval
flag is restored and, for weight noise, every parameter and buffer is copied back bit-exactly from
a snapshot taken before the first perturbation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._model_state import (
    finite_or_none,
    materialise_batches,
    model_device,
    preserved_state,
    to_device,
)

__all__ = [
    "RobustnessCurve",
    "accuracy_metric",
    "mse_metric",
    "evaluate_metric",
    "input_noise_curve",
    "weight_noise_curve",
]

MetricFn = Callable[[Tensor, Tensor], Any]


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------
def accuracy_metric(outputs: Tensor, targets: Tensor) -> tuple[float, int]:
    """``(number correct, number of predictions)``: ``outputs`` are logits ``(..., C)``, targets
    integer classes ``(...)`` (works for ``"last"`` (B, C) and ``"all"`` (T, B, C) readouts)."""
    pred = outputs.argmax(dim=-1)
    if pred.shape != targets.shape:
        raise ValueError(
            f"accuracy_metric: outputs {tuple(outputs.shape)} do not match targets "
            f"{tuple(targets.shape)}"
        )
    return float((pred == targets).sum()), int(targets.numel())


def mse_metric(outputs: Tensor, targets: Tensor) -> tuple[float, int]:
    """``(sum of squared errors, number of entries)``: the mean squared error per entry."""
    if outputs.shape != targets.shape:
        raise ValueError(
            f"mse_metric: outputs {tuple(outputs.shape)} do not match targets "
            f"{tuple(targets.shape)}"
        )
    return float(((outputs - targets) ** 2).sum()), int(targets.numel())


def _metric_name(metric_fn: MetricFn) -> str:
    if metric_fn is accuracy_metric:
        return "accuracy"
    if metric_fn is mse_metric:
        return "mse"
    return getattr(metric_fn, "__name__", type(metric_fn).__name__)


def _evaluate(model: nn.Module, data, metric_fn: MetricFn, noise=None) -> float:
    """Pooled metric over ``data``; ``noise(i, x)`` (optional) perturbs the inputs of batch i."""
    pooled: list[tuple[float, float]] = []
    plain: list[float] = []
    with torch.no_grad():
        for i, (x, y) in enumerate(data):
            if noise is not None:
                x = noise(i, x)
            value = metric_fn(model(x), y)
            if isinstance(value, (tuple, list)) and len(value) == 2:
                pooled.append((float(value[0]), float(value[1])))
            else:
                try:
                    plain.append(float(value))
                except (TypeError, ValueError):
                    raise TypeError(
                        "metric_fn must return a number or a (sum, count) pair, got "
                        f"{type(value).__name__}"
                    ) from None
    if pooled and plain:
        raise TypeError("metric_fn must return the same kind of value (pair or number) each time")
    if pooled:
        count = sum(c for _, c in pooled)
        if count <= 0:
            raise ValueError("metric_fn reported a total count of 0")
        return sum(s for s, _ in pooled) / count
    return float(np.mean(plain))


def evaluate_metric(
    model: nn.Module, batches: Iterable[tuple[Any, Any]], metric_fn: MetricFn
) -> float:
    """The clean metric of ``model`` on ``batches`` (eval mode, no grad, mode restored)."""
    data = materialise_batches(batches, "batches")
    device = model_device(model)
    data = [(to_device(x, device), to_device(y, device)) for x, y in data]
    with preserved_state(model, eval_mode=True):
        return _evaluate(model, data, metric_fn)


# --------------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RobustnessCurve:
    """Metric under noise of level ``sigmas[i]``: ``values[i][j]`` for ``seeds[j]``;
    ``mean[i]`` and ``std[i]`` over seeds (sample std, ``ddof=1``; 0 for one seed or σ = 0).

    ``kind`` is ``"input"`` or ``"weight"``; ``clean`` the metric without noise (equal to the
    entries at σ = 0); ``metric`` the metric's name; ``label`` a free tag (e.g. the model).
    """

    kind: str
    sigmas: list[float]
    mean: list[float]
    std: list[float]
    values: list[list[float]]
    seeds: list[int]
    clean: float
    metric: str = "metric"
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_mapping(self) -> dict[float, tuple[float, float]]:
        """``{sigma: (mean, std)}``, the form :func:`~lipschitz_rnn.analysis.compare.compare_table`
        accepts."""
        return {s: (m, d) for s, m, d in zip(self.sigmas, self.mean, self.std, strict=True)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (non-finite numbers become ``None``)."""
        return {
            "kind": self.kind,
            "metric": self.metric,
            "label": self.label,
            "sigmas": [float(s) for s in self.sigmas],
            "mean": [finite_or_none(v) for v in self.mean],
            "std": [finite_or_none(v) for v in self.std],
            "values": [[finite_or_none(v) for v in row] for row in self.values],
            "seeds": [int(s) for s in self.seeds],
            "clean": finite_or_none(self.clean),
            **dict(self.extra),
        }


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------
def _check_sigmas(sigmas: Any) -> list[float]:
    if isinstance(sigmas, (int, float)) and not isinstance(sigmas, bool):
        sigmas = [sigmas]
    try:
        out = [float(s) for s in sigmas]
    except (TypeError, ValueError):
        raise TypeError("sigmas must be a sequence of numbers") from None
    if not out:
        raise ValueError("sigmas is empty: give at least one noise level")
    bad = [s for s in out if not (0.0 <= s < math.inf)]
    if bad:
        raise ValueError(f"sigmas must be finite and >= 0, got {bad}")
    return out


def _check_seeds(seeds: Any) -> list[int]:
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    out = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"seeds must be non-negative ints, got {s!r}")
        out.append(int(s))
    if not out:
        raise ValueError("seeds is empty: give at least one seed")
    return out


def _std(row: list[float]) -> float:
    return float(np.std(row, ddof=1)) if len(row) > 1 else 0.0


def _curve(kind, sigmas, seeds, clean, evaluate_noisy, metric, label) -> RobustnessCurve:
    values, mean, std = [], [], []
    for sigma in sigmas:
        if sigma == 0.0:
            row = [clean] * len(seeds)
        else:
            row = [evaluate_noisy(sigma, seed) for seed in seeds]
        values.append(row)
        mean.append(clean if sigma == 0.0 else float(np.mean(row)))
        std.append(0.0 if sigma == 0.0 else _std(row))
    return RobustnessCurve(
        kind=kind, sigmas=list(sigmas), mean=mean, std=std, values=values, seeds=list(seeds),
        clean=clean, metric=metric, label=label,
    )


def _randn_like(x: Tensor, gen: torch.Generator) -> Tensor:
    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype, device="cpu")
    return noise.to(x.device)


# --------------------------------------------------------------------------------------------
# curves
# --------------------------------------------------------------------------------------------
def input_noise_curve(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Any]],
    metric_fn: MetricFn,
    sigmas: Sequence[float],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    label: str = "",
) -> RobustnessCurve:
    """Metric under additive Gaussian input noise ``x + sigma * eps`` (``sigma`` absolute).

    Args:
        model: maps ``inputs`` to outputs (evaluated in eval mode, mode restored).
        batches: iterable of ``(inputs, targets)`` with floating-point tensor inputs.
        metric_fn: ``metric_fn(outputs, targets) -> (sum, count)`` (or a number); see the module
            docstring.
        sigmas: noise levels, each finite and >= 0.
        seeds: one noise draw per seed.
        label: free tag stored on the curve.

    Raises:
        ValueError: empty ``batches``, ``sigmas`` or ``seeds``; a negative / non-finite sigma.
        TypeError: non-floating inputs (e.g. integer tokens of a language model, for which
            additive input noise has no meaning) or non-tensor inputs.
    """
    sigmas = _check_sigmas(sigmas)
    seeds = _check_seeds(seeds)
    data = materialise_batches(batches, "batches")
    for i, (x, _) in enumerate(data):
        if not isinstance(x, Tensor):
            raise TypeError(f"input noise needs tensor inputs; batch {i} has {type(x).__name__}")
        if not (x.is_floating_point() or x.is_complex()):
            raise TypeError(
                f"input noise needs floating-point inputs; batch {i} has dtype {x.dtype} "
                "(integer tokens: additive input noise is not meaningful, use weight noise)"
            )
    device = model_device(model)
    data = [(to_device(x, device), to_device(y, device)) for x, y in data]

    with preserved_state(model, eval_mode=True):
        clean = _evaluate(model, data, metric_fn)

        def evaluate_noisy(sigma: float, seed: int) -> float:
            gen = torch.Generator().manual_seed(seed)
            return _evaluate(
                model, data, metric_fn, noise=lambda i, x: x + sigma * _randn_like(x, gen)
            )

        return _curve("input", sigmas, seeds, clean, evaluate_noisy, _metric_name(metric_fn),
                      label)


def weight_noise_curve(
    model: nn.Module,
    batches: Iterable[tuple[Any, Any]],
    metric_fn: MetricFn,
    sigmas: Sequence[float],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    label: str = "",
) -> RobustnessCurve:
    """Metric under relative Gaussian weight noise ``theta + sigma * rms(theta) * eps`` applied to
    every parameter tensor; parameters and buffers are restored bit-exactly afterwards (also on
    error). Inputs may be of any kind the model accepts (token ids included).

    Raises:
        ValueError: empty ``batches``, ``sigmas`` or ``seeds``; a negative / non-finite sigma;
            a model without parameters.
    """
    sigmas = _check_sigmas(sigmas)
    seeds = _check_seeds(seeds)
    data = materialise_batches(batches, "batches")
    params = list(model.parameters())
    if not params:
        raise ValueError("model has no parameters to perturb")
    device = model_device(model)
    data = [(to_device(x, device), to_device(y, device)) for x, y in data]

    with torch.no_grad():
        saved = [t.detach().clone() for t in params]
        buffers = list(model.buffers())
        saved_buffers = [b.detach().clone() for b in buffers]
        scales = [
            float(t.detach().double().pow(2).mean().sqrt()) if t.numel() else 0.0 for t in saved
        ]

    def restore() -> None:
        with torch.no_grad():
            for t, s in zip(params, saved, strict=True):
                t.copy_(s)
            for b, s in zip(buffers, saved_buffers, strict=True):
                b.copy_(s)

    with preserved_state(model, eval_mode=True):
        clean = _evaluate(model, data, metric_fn)

        def evaluate_noisy(sigma: float, seed: int) -> float:
            gen = torch.Generator().manual_seed(seed)
            try:
                with torch.no_grad():
                    for t, s, scale in zip(params, saved, scales, strict=True):
                        noise = _randn_like(s, gen)  # drawn for every tensor: stable streams
                        if scale > 0.0:
                            t.copy_(s + (sigma * scale) * noise)
                return _evaluate(model, data, metric_fn)
            finally:
                restore()

        try:
            return _curve("weight", sigmas, seeds, clean, evaluate_noisy,
                          _metric_name(metric_fn), label)
        finally:
            restore()
