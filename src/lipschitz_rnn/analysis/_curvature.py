"""The numerical parts of :func:`lipschitz_rnn.analysis.hessian.hessian_spectrum`.

The Hessian operator of a batch-weighted loss (curvlinops), its extreme eigenvalues (scipy's
ARPACK ``eigsh``, or dense for tiny models), its trace (Hutchinson) and spectral density
(curvlinops' stochastic Lanczos quadrature), and the progress reports of a run.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

log = logging.getLogger("lipschitz_rnn.analysis.hessian")

__all__ = [
    "build_operator", "average_loss", "eigsh_extreme", "dense_eigenvalues", "hutchinson_trace",
    "spectral_density", "Progress",
]

# --------------------------------------------------------------------------------------------
# the operator
# --------------------------------------------------------------------------------------------
class _WeightedLoss(nn.Module):
    """``weight * loss_fn(pred, y)``, declared ``reduction="sum"`` so curvlinops adds no factor."""

    reduction = "sum"

    def __init__(self, loss_fn: Callable[[Tensor, Tensor], Tensor], weight: float) -> None:
        super().__init__()
        self._fn = loss_fn  # plain attribute: a loss module's own parameters stay out of the way
        self.weight = weight

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        return self.weight * self._fn(prediction, target)


def _balanced_sum(ops: list[Any]) -> Any:
    """Sum curvlinops operators pairwise (depth log2(B), not B: no deep recursion)."""
    while len(ops) > 1:
        nxt = [ops[i] + ops[i + 1] for i in range(0, len(ops) - 1, 2)]
        if len(ops) % 2:
            nxt.append(ops[-1])
        ops = nxt
    return ops[0]


def build_operator(model, loss_fn, params, data, weights):
    from curvlinops import HessianLinearOperator

    ops = [
        HessianLinearOperator(
            model,
            _WeightedLoss(loss_fn, w),
            params,
            [(x, y)],
            check_deterministic=False,  # eval mode, no cuDNN: the operator is deterministic
            num_data=1,  # irrelevant for reduction="sum"; skips curvlinops' X.shape[0] count
        )
        for (x, y), w in zip(data, weights, strict=True)
        if w > 0
    ]
    return _balanced_sum(ops)


def average_loss(model, loss_fn, data, weights) -> float:
    total = 0.0
    with torch.no_grad():
        for i, ((x, y), w) in enumerate(zip(data, weights, strict=True)):
            value = loss_fn(model(x), y)
            if not isinstance(value, Tensor) or value.numel() != 1:
                raise ValueError(
                    f"loss_fn must return a scalar tensor, got {type(value).__name__}"
                    + (f" of shape {tuple(value.shape)}" if isinstance(value, Tensor) else "")
                    + f" on batch {i}"
                )
            total += w * float(value)
    return total


# --------------------------------------------------------------------------------------------
# eigenvalues, trace, density
# --------------------------------------------------------------------------------------------
def eigsh_extreme(op_scipy, k: int, which: str, tol: float, max_iter: int, v0: np.ndarray) -> np.ndarray:
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    try:
        vals = eigsh(
            op_scipy, k=k, which=which, tol=tol, maxiter=max_iter, v0=v0,
            return_eigenvectors=False,
        )
    except ArpackNoConvergence as e:
        vals = np.asarray(e.eigenvalues)
        if vals.size < k:
            raise RuntimeError(
                f"Lanczos (eigsh, which={which!r}) converged on {vals.size} of {k} eigenvalues "
                f"within max_iter={max_iter}; increase max_iter or tol"
            ) from e
        warnings.warn(
            f"eigsh(which={which!r}) did not fully converge within max_iter={max_iter}; "
            "using the converged Ritz values",
            RuntimeWarning,
            stacklevel=3,
        )
    return np.sort(np.asarray(vals, dtype=np.float64))


def dense_eigenvalues(op, num_params: int, device, dtype) -> np.ndarray:
    eye = torch.eye(num_params, device=device, dtype=dtype)
    h = op @ eye
    h = 0.5 * (h + h.T)
    return np.sort(torch.linalg.eigvalsh(h).double().cpu().numpy())


def hutchinson_trace(op, num_params: int, samples: int, gen: torch.Generator, device, dtype,
                chunk: int = 32) -> tuple[float, float, int]:
    """Trace of ``op`` with its standard error; exact (stderr 0) when ``samples >= num_params``."""
    if samples >= num_params:
        total = 0.0
        for start in range(0, num_params, chunk):
            stop = min(start + chunk, num_params)
            cols = torch.zeros(num_params, stop - start, device=device, dtype=dtype)
            idx = torch.arange(start, stop, device=device)
            cols[idx, idx - start] = 1.0
            total += float((op @ cols)[idx, idx - start].double().sum())
        return total, 0.0, num_params
    quad: list[Tensor] = []
    remaining = samples
    while remaining > 0:
        m = min(chunk, remaining)
        z = torch.randint(0, 2, (num_params, m), generator=gen, dtype=torch.int64)
        z = (2 * z - 1).to(device=device, dtype=dtype)  # Rademacher probes
        quad.append(((op @ z) * z).sum(0).double().cpu())
        remaining -= m
    q = torch.cat(quad)
    return float(q.mean()), float(q.std(unbiased=True) / math.sqrt(samples)), samples


def spectral_density(op, lam_min: float, lam_max: float, ncv: int, points: int, repeats: int,
             seed: int, device) -> tuple[np.ndarray, np.ndarray]:
    """(grid, values) of the spectral density on [lam_min, lam_max] (values clipped at 0)."""
    from curvlinops import lanczos_approximate_spectrum

    lo, hi = lam_min, lam_max
    if not hi - lo > 1e-12 * max(1.0, abs(hi), abs(lo)):  # degenerate spectrum: widen the window
        pad = 1e-3 * max(1.0, abs(hi))
        lo, hi = lo - pad, hi + pad
    devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # curvlinops draws its start vector globally
        torch.manual_seed(seed)
        grid, values = lanczos_approximate_spectrum(
            op, ncv, num_points=points, num_repeats=repeats, boundaries=(lo, hi)
        )
    return (
        grid.detach().double().cpu().numpy(),
        np.clip(values.detach().double().cpu().numpy(), 0.0, None),
    )


class Progress:
    """Reports phases (and Hessian-vector products, counted on the scipy operator) to a
    callback and to the log."""

    def __init__(self, callback, num_params: int, num_batches: int) -> None:
        self.callback = callback
        self.products = 0
        self.what = ""
        self.size = f"{num_params} parameters, {num_batches} batch(es)"

    def phase(self, what: str, products: int = 0) -> None:
        """Start a phase; ``products`` Hessian-vector products it does in bulk (counted now)."""
        self.what = what
        log.info("Hessian (%s): %s", self.size, what)
        self._report()
        self.products += products

    def _report(self) -> None:
        if self.callback is not None:
            self.callback(f"Hessian of {self.size}: {self.what} [{self.products} HVPs]")

    def counting(self, op):
        """``op`` (a scipy LinearOperator) that reports every product."""
        from scipy.sparse.linalg import LinearOperator

        def matvec(v):
            self.products += 1
            self._report()
            return op @ v

        return LinearOperator(op.shape, matvec=matvec, dtype=op.dtype)
