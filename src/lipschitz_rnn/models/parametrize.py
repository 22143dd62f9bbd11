"""The symmetric-skew parametrisation of the Lipschitz RNN (Erichson et al. 2021, eq. 4).

For a square matrix M and scalars beta in [0, 1], gamma >= 0::

    S(M; beta, gamma) = (1 - beta) (M + M^T) + beta (M - M^T) - gamma I

Its symmetric part ``(S + S^T) / 2 = (1 - beta)(M + M^T) - gamma I`` and its skew part
``(S - S^T) / 2 = beta (M - M^T)`` are controlled separately by ``beta``: ``beta = 1`` gives a
skew-symmetric matrix shifted by ``-gamma I`` (purely oscillatory linear part), ``beta = 0`` a
symmetric one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_float

__all__ = ["symmetric_skew", "check_beta_gamma"]


def check_beta_gamma(beta: float, gamma: float, *, gamma_name: str = "gamma") -> None:
    """TypeError/ValueError unless ``0 <= beta <= 1`` and ``gamma >= 0`` (both finite numbers)."""
    check_float("beta", beta, ge=0, le=1)
    check_float(gamma_name, gamma, ge=0)


def symmetric_skew(M: Tensor, beta: float, gamma: float) -> Tensor:
    """Return ``(1 - beta)(M + M^T) + beta (M - M^T) - gamma I`` for a square ``M``.

    Differentiable in ``M``; ``beta`` and ``gamma`` are plain numbers.
    """
    if M.dim() != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"M must be a square matrix, got shape {tuple(M.shape)}")
    Mt = M.transpose(0, 1)
    # (1-b)(M+Mt) + b(M-Mt) = M + (1-2b) Mt
    S = M + (1.0 - 2.0 * beta) * Mt
    return S - gamma * torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
