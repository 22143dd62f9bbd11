"""Scalar features of a Lyapunov spectrum.

The bottom of the analysis package: it imports nothing of it, so that the estimator
(:mod:`.lyapunov`), the plots (:mod:`.plots`) and studies that tabulate spectra (columns such as
``le{epoch}_{feature}``) share one definition of each quantity.

* :func:`kaplan_yorke_dimension`: ``j + (lambda_1 + ... + lambda_j) / |lambda_{j+1}|``;
* :func:`entropy_rate`: the sum of the positive exponents (Pesin's bound of the
  Kolmogorov-Sinai entropy);
* :func:`spectrum_features`: both, with order statistics of the spectrum, as a dict of floats.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._checks import check_int

__all__ = ["kaplan_yorke_dimension", "entropy_rate", "spectrum_features"]


def kaplan_yorke_dimension(exponents: Tensor) -> Tensor:
    """Kaplan-Yorke (Lyapunov) dimension of descending exponents along the last dimension.

    ``D = j + (lambda_1 + ... + lambda_j) / |lambda_{j+1}|`` with ``j`` the largest index whose
    partial sum is >= 0; ``D = 0`` when ``lambda_1 < 0``, and ``D = k`` when all ``k`` partial
    sums are >= 0 (with ``k < n`` computed exponents this is then only a lower bound).
    """
    lam = torch.as_tensor(exponents, dtype=torch.float64)
    k = lam.shape[-1]
    csum = lam.cumsum(-1)
    j = (csum >= 0).sum(-1)  # partial sums of a descending sequence: >= 0 on a prefix
    jc = j.clamp(max=k - 1)
    s_j = torch.where(j > 0, csum.gather(-1, (j - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1), 0.0)
    nxt = lam.gather(-1, jc.unsqueeze(-1)).squeeze(-1).abs()
    d = j.to(lam.dtype) + s_j / nxt
    d = torch.where(j == 0, torch.zeros_like(d), d)
    return torch.where(j >= k, torch.full_like(d, float(k)), d)


def entropy_rate(exponents: Tensor) -> Tensor:
    """The sum of the positive exponents along the last dimension (nats per unit time)."""
    return torch.as_tensor(exponents).clamp(min=0).sum(-1)


def _exponent_vector(exponents: Any) -> Tensor:
    """``exponents`` as a 1-D float64 CPU tensor, sorted descending; TypeError / ValueError
    naming ``exponents`` otherwise."""
    if isinstance(exponents, (str, bytes)):
        raise TypeError(f"exponents must be a 1-D sequence of numbers, got {type(exponents).__name__}")
    try:
        lam = torch.as_tensor(exponents, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"exponents must be a 1-D sequence of numbers, got {type(exponents).__name__}"
        ) from None
    if lam.dim() != 1 or lam.numel() == 0:
        raise ValueError(f"exponents must be a non-empty 1-D sequence, got shape {tuple(lam.shape)}")
    if bool(torch.isnan(lam).any()):
        raise ValueError(f"exponents must not contain NaN, got {lam.tolist()}")
    return lam.sort(descending=True).values


def spectrum_features(exponents: Any, k_top: int = 10) -> dict[str, float]:
    """Scalar features of one spectrum (a 1-D sequence, array or tensor, sorted or not).

    Keys: ``max``, ``mean``, ``median`` (the mean of the two middle values for an even count),
    ``min``, ``top{k_top}_mean`` (``top10_mean`` by default: the mean of the ``k_top`` largest
    exponents, or of all when there are fewer), ``frac_pos`` (the fraction of exponents > 0),
    ``num_pos`` (their number), ``ky_dim`` (:func:`kaplan_yorke_dimension` of the sorted
    exponents) and ``entropy`` (:func:`entropy_rate`, the sum of the positive exponents).
    ``-inf`` exponents (a singular Jacobian) are allowed; NaN raises ValueError.
    """
    k_top = check_int("k_top", k_top, ge=1)
    lam = _exponent_vector(exponents)
    k = lam.numel()
    mid = (k - 1) // 2
    median = float(lam[mid]) if k % 2 else 0.5 * (float(lam[mid]) + float(lam[mid + 1]))
    num_pos = int((lam > 0).sum())
    return {
        "max": float(lam[0]),
        "mean": float(lam.mean()),
        "median": median,
        "min": float(lam[-1]),
        f"top{k_top}_mean": float(lam[:k_top].mean()),
        "frac_pos": num_pos / k,
        "num_pos": float(num_pos),
        "ky_dim": float(kaplan_yorke_dimension(lam)),
        "entropy": float(entropy_rate(lam)),
    }
