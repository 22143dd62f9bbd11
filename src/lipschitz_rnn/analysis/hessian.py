r"""Spectrum of the loss Hessian (paper, Sec. 7 and Table 3): top eigenvalues, smallest eigenvalue,
trace, condition number and spectral density, matrix-free.

The Hessian is never formed. Hessian-vector products come from curvlinops'
:class:`~curvlinops.HessianLinearOperator` (forward-over-reverse autodiff through
:func:`torch.func.functional_call`); extreme eigenvalues from ARPACK's Lanczos
(:func:`scipy.sparse.linalg.eigsh`) on its SciPy export; the density from curvlinops' stochastic
Lanczos quadrature (:func:`~curvlinops.lanczos_approximate_spectrum`, Papyan 2020). What curvlinops
lacks and is written here: the loss-averaging convention over batches of unequal sizes, a seeded
Hutchinson trace estimator that also returns its standard error, and the bookkeeping that leaves
the model exactly as it was found.

Loss and averaging convention
-----------------------------
With batches :math:`(X_b, y_b)_{b=1..B}` the analysed loss is

.. math::  \mathcal L(\theta) = \sum_b w_b\, \texttt{loss\_fn}(\texttt{model}(X_b), y_b),
           \qquad w_b = 1/B \text{ by default,}

i.e. the **plain average of the per-batch losses**, whatever the batch sizes. This is *not*
curvlinops' own convention: for a ``reduction="mean"`` loss it weights batch :math:`b` by
:math:`N_b/N` with :math:`N_b` = ``X_b.shape[0]`` -- for time-first RNN input ``(T, B, F)`` that is
the sequence length, not the batch size -- and it requires ``loss_fn`` to carry a ``reduction``
attribute. Here ``loss_fn`` may be any callable returning a scalar; each batch gets its own
curvlinops operator whose loss is ``w_b * loss_fn(...)`` declared ``reduction="sum"`` (so curvlinops
applies no factor of its own), and the operators are summed. Pass ``batch_weights`` (normalised to
sum 1) for another weighting, e.g. the batch sizes to get the per-example mean of a mean-reduced
loss over the whole data set (the two conventions agree when all batches have equal size).

Condition number
----------------
``condition_number`` is :math:`\kappa = \lambda_{\max} / |\lambda_{\min}|`, the largest algebraic
eigenvalue over the magnitude of the smallest algebraic eigenvalue (both computed here by Lanczos).
It is the spectral-width ratio used to compare Hessians in Table 3; at a minimum (Hessian positive
semi-definite) it is the usual :math:`\lambda_{\max}/\lambda_{\min}`; away from one,
:math:`\lambda_{\min} < 0` and :math:`\kappa` compares the sharpest positive curvature with the
strongest negative one. It is ``inf`` when :math:`\lambda_{\min} = 0` exactly. (It is not
:math:`\max|\lambda| / \min|\lambda|`, which would need the eigenvalue of smallest magnitude,
an interior eigenvalue that Lanczos cannot find without shift-invert solves.)

Model state
-----------
The computation runs in eval mode (dropout would make the operator random), with cuDNN and oneDNN
(mkldnn) disabled (cuDNN RNNs have no double backward; the float32 CPU LSTM/GRU kernel of oneDNN has
no forward-mode AD) and on the plain per-step loop of Lipschitz layers
(:func:`lipschitz_rnn.models.fused.fused_disabled`, local to the thread): the fused scan also has
a double backward (rebuilt from autograd ops under ``create_graph=True``), but the loop is the
reference and every Hessian-vector product would pay that rebuild. Afterwards every module's
train/eval flag and every parameter's ``.grad`` are as before; parameters are never
written. Only parameters with ``requires_grad=True`` are differentiated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_float, check_int
from ..models.fused import fused_disabled
from ._curvature import (
    Progress,
    average_loss,
    build_operator,
    dense_eigenvalues,
    eigsh_extreme,
    hutchinson_trace,
    spectral_density,
)
from ._model_state import (
    fast_rnn_kernels_disabled,
    finite_or_none,
    materialise_batches,
    model_device,
    preserved_state,
    to_device,
)

log = logging.getLogger(__name__)

__all__ = ["HessianSpectrum", "SpectralDensity", "hessian_spectrum"]


@dataclass(frozen=True)
class SpectralDensity:
    """Smoothed spectral density :math:`p(\\lambda) = \\frac1P\\sum_i \\delta(\\lambda-\\lambda_i)`
    on ``grid`` (Gaussian-broadened stochastic Lanczos quadrature; integrates to ~1)."""

    grid: np.ndarray
    values: np.ndarray

    def to_dict(self) -> dict[str, list[float]]:
        return {"grid": [float(g) for g in self.grid], "values": [float(v) for v in self.values]}


@dataclass(frozen=True)
class HessianSpectrum:
    """Result of :func:`hessian_spectrum`.

    Attributes:
        eigenvalues: the ``top_k`` largest algebraic eigenvalues, in decreasing order.
        min_eigenvalue: the smallest algebraic eigenvalue.
        condition_number: :math:`\\lambda_{\\max}/|\\lambda_{\\min}|` (``inf`` if
            :math:`\\lambda_{\\min}=0`); see the module docstring.
        trace, trace_stderr: Hutchinson estimate of :math:`\\mathrm{tr}\\,H` and the standard error
            of that mean (``std(ddof=1)/sqrt(trace_samples)``); exact with stderr 0 when
            ``trace_samples >= num_parameters``; ``None`` when ``trace=False``.
        trace_samples: probes used (``num_parameters`` when exact, 0 when not computed).
        density: :class:`SpectralDensity` or ``None``.
        num_parameters: size of the Hessian (trainable parameters).
        loss: the analysed (weighted-average) loss at the current parameters.
        num_batches, seed: bookkeeping.
    """

    eigenvalues: np.ndarray
    min_eigenvalue: float
    condition_number: float
    trace: float | None
    trace_stderr: float | None
    trace_samples: int
    density: SpectralDensity | None
    num_parameters: int
    loss: float
    num_batches: int
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lambda_max(self) -> float:
        """The largest eigenvalue, ``eigenvalues[0]``."""
        return float(self.eigenvalues[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict; non-finite numbers (e.g. an infinite condition number) become
        ``None`` so that the output is strict JSON."""
        return {
            "lambda_max": finite_or_none(self.lambda_max),
            "eigenvalues": [finite_or_none(v) for v in self.eigenvalues],
            "min_eigenvalue": finite_or_none(self.min_eigenvalue),
            "condition_number": finite_or_none(self.condition_number),
            "condition_number_definition": "lambda_max / |lambda_min|",
            "trace": finite_or_none(self.trace),
            "trace_stderr": finite_or_none(self.trace_stderr),
            "trace_samples": int(self.trace_samples),
            "density": None if self.density is None else self.density.to_dict(),
            "num_parameters": int(self.num_parameters),
            "loss": finite_or_none(self.loss),
            "num_batches": int(self.num_batches),
            "seed": int(self.seed),
            **{k: v for k, v in self.extra.items()},
        }


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------
def _check_weights(batch_weights: Sequence[float] | None, n: int) -> list[float]:
    if batch_weights is None:
        return [1.0 / n] * n
    w = np.asarray(list(batch_weights), dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"batch_weights must have one weight per batch ({n}), got {w.shape[0]}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("batch_weights must be finite, >= 0 and not all zero")
    return [float(x) for x in w / w.sum()]


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------
def _extreme_eigenvalues(op, num_params: int, top_k: int, tol: float, max_iter: int,
                         rng: np.random.Generator, say, device, dtype) -> tuple[np.ndarray, float]:
    """(the ``top_k`` largest eigenvalues, decreasing; the smallest) of the Hessian operator:
    ARPACK's Lanczos (``eigsh``), or the dense Hessian where ARPACK cannot (``k >= n``)."""
    if top_k >= num_params:  # ARPACK needs k < n: tiny problem, go dense
        say.phase("all eigenvalues (dense Hessian)", num_params)
        all_vals = dense_eigenvalues(op, num_params, device, dtype)
        return all_vals[::-1][:top_k].copy(), float(all_vals[0])
    op_scipy = say.counting(op.to_scipy(dtype=np.float64))
    say.phase(f"top {top_k} eigenvalue(s) by Lanczos (eigsh)")
    top = eigsh_extreme(op_scipy, top_k, "LA", tol, max_iter, rng.standard_normal(num_params))
    say.phase("smallest eigenvalue by Lanczos (eigsh)")
    lam_min = float(
        eigsh_extreme(op_scipy, 1, "SA", tol, max_iter, rng.standard_normal(num_params))[0]
    )
    return top[::-1].copy(), lam_min


def _streams(seed: int) -> tuple[np.random.Generator, torch.Generator, int]:
    """The independent random streams of one analysis, from ``seed``: ARPACK's start vectors
    (NumPy), the Hutchinson probes (torch) and the seed of the density's Lanczos starts."""
    s_arpack, s_trace, s_density = np.random.SeedSequence(seed).spawn(3)
    gen = torch.Generator().manual_seed(int(s_trace.generate_state(1, np.uint64)[0]) >> 1)
    return (np.random.default_rng(s_arpack), gen,
            int(s_density.generate_state(1, np.uint64)[0]) >> 1)


def _condition_number(lam_max: float, lam_min: float) -> float:
    """``lam_max / |lam_min|`` (signed infinity, or NaN, when ``lam_min`` is 0)."""
    if lam_min == 0.0:
        return math.inf if lam_max > 0 else (math.nan if lam_max == 0 else -math.inf)
    return lam_max / abs(lam_min)


def hessian_spectrum(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    batches: Iterable[tuple[Any, Tensor]],
    *,
    top_k: int = 1,
    trace: bool = True,
    density: bool = False,
    tol: float = 1e-4,
    max_iter: int = 200,
    seed: int = 0,
    trace_samples: int = 100,
    density_ncv: int = 64,
    density_points: int = 512,
    density_repeats: int = 1,
    batch_weights: Sequence[float] | None = None,
    progress: Callable[[str], None] | None = None,
) -> HessianSpectrum:
    r"""Top eigenvalues, smallest eigenvalue, trace, condition number and (optionally) density of
    the Hessian of the batch-averaged loss w.r.t. the model's trainable parameters.

    Args:
        model: maps ``inputs`` to predictions, e.g. a :class:`~lipschitz_rnn.models.SequenceModel`
            (any unit of the registry, LSTM and GRU included).
        loss_fn: ``loss_fn(model(inputs), targets) -> scalar tensor`` (e.g.
            ``torch.nn.functional.cross_entropy``); any callable, no ``reduction`` attribute
            needed.
        batches: iterable of ``(inputs, targets)``; it is materialised into a list (the operator
            sweeps it many times) and moved to the parameters' device.
        top_k: number of largest (algebraic) eigenvalues returned, in decreasing order.
        trace: estimate the trace (Hutchinson, Rademacher probes).
        density: also compute the spectral density by stochastic Lanczos quadrature.
        tol: relative accuracy of the ARPACK Ritz values (``eigsh(tol=...)``).
        max_iter: ARPACK's maximum number of restarts (``eigsh(maxiter=...)``).
        seed: seeds the ARPACK start vectors (NumPy generator), the Hutchinson probes (torch
            generator) and the Lanczos start vectors of the density; the global RNG states are
            left untouched. Same seed, same result.
        trace_samples: Hutchinson probes (>= 2); if it is >= the number of parameters the trace is
            computed exactly with that many unit-vector products instead, stderr 0.
        density_ncv: Lanczos steps per density run (capped at the number of parameters).
        density_points: grid size of the density.
        density_repeats: independent Lanczos runs averaged for the density.
        batch_weights: optional non-negative weights per batch (normalised to sum 1); default
            uniform ``1/B``: see the module docstring for the averaging convention.
        progress: called with a one-line description of the current phase and the number of
            Hessian-vector products so far (every phase is also logged at INFO level); the CLI
            shows it as a status line.

    Returns:
        :class:`HessianSpectrum`. ``condition_number`` is :math:`\lambda_{\max}/|\lambda_{\min}|`.

    Raises:
        ValueError: empty ``batches``; ``top_k < 1`` or larger than the number of parameters;
            ``tol <= 0``; ``max_iter < 1``; ``trace_samples < 2``; bad ``batch_weights``; a model
            without trainable parameters; ``loss_fn`` not returning a scalar.
        RuntimeError: Lanczos did not converge on enough eigenvalues within ``max_iter``.
    """
    # over 80 lines with its signature: 15 documented keyword options, then one pass of phases
    top_k, max_iter, trace_samples, density_ncv, density_points, density_repeats, seed = (
        check_int(name, value, ge=low) for name, value, low in (
            ("top_k", top_k, 1), ("max_iter", max_iter, 1), ("trace_samples", trace_samples, 2),
            ("density_ncv", density_ncv, 2), ("density_points", density_points, 2),
            ("density_repeats", density_repeats, 1), ("seed", seed, 0)))
    tol = check_float("tol", tol, gt=0)
    data = materialise_batches(batches, "batches")
    weights = _check_weights(batch_weights, len(data))

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (requires_grad=True)")
    num_params = sum(p.numel() for p in params)
    if top_k > num_params:
        raise ValueError(f"top_k must be <= the number of parameters ({num_params}), got {top_k}")
    device = model_device(model)
    dtype = params[0].dtype
    data = [(to_device(x, device), to_device(y, device)) for x, y in data]

    rng, gen, density_seed = _streams(seed)

    say = Progress(progress, num_params, len(data))
    with (
        preserved_state(model, eval_mode=True),
        fused_disabled(),
        fast_rnn_kernels_disabled(),
    ):
        loss = average_loss(model, loss_fn, data, weights)
        op = build_operator(model, loss_fn, params, data, weights)

        top, lam_min = _extreme_eigenvalues(op, num_params, top_k, tol, max_iter, rng, say,
                                            device, dtype)
        lam_max = float(top[0])
        lam_min = min(lam_min, float(top[-1]))

        tr = stderr = None
        used = 0
        if trace:
            exact = trace_samples >= num_params
            say.phase("exact trace" if exact else f"trace (Hutchinson, {trace_samples} probes)",
                      num_params if exact else trace_samples)
            tr, stderr, used = hutchinson_trace(op, num_params, trace_samples, gen, device, dtype)

        dens = None
        if density:
            ncv = min(density_ncv, num_params)
            say.phase(f"spectral density (stochastic Lanczos, {density_repeats} x {ncv} steps)",
                      density_repeats * ncv)
            dens = SpectralDensity(*spectral_density(
                op, lam_min, lam_max, max(ncv, 2), density_points, density_repeats, density_seed,
                device,
            ))

    say.phase("done")
    return HessianSpectrum(
        eigenvalues=np.asarray(top, dtype=np.float64),
        min_eigenvalue=lam_min,
        condition_number=_condition_number(lam_max, lam_min),
        trace=tr,
        trace_stderr=stderr,
        trace_samples=used,
        density=dens,
        num_parameters=num_params,
        loss=loss,
        num_batches=len(data),
        seed=seed,
    )
