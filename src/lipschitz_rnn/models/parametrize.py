"""The symmetric-skew parametrisation of the Lipschitz RNN (Erichson et al. 2021, eq. 4).

For a square matrix M and scalars beta in [0, 1], gamma >= 0::

    S(M; beta, gamma) = (1 - beta) (M + M^T) + beta (M - M^T) - gamma I

Its symmetric part ``(S + S^T) / 2 = (1 - beta)(M + M^T) - gamma I`` and its skew part
``(S - S^T) / 2 = beta (M - M^T)`` are controlled separately by ``beta``: ``beta = 1`` gives a
skew-symmetric matrix shifted by ``-gamma I`` (purely oscillatory linear part), ``beta = 0`` a
symmetric one.

:func:`stable_symmetric_skew` is the same matrix pulled back, when needed, inside the step's
stability region (``parametrization="stable"`` of the Lipschitz cell)::

    T = I + eps S(M; beta, gamma),   c = min(1, (1 - eps gamma) / ||T||_2)
    A = c S - ((1 - c) / eps) I,     so that  I + eps A = c T  and  ||I + eps A||_2 <= 1 - eps gamma

It equals ``S`` whenever ``||I + eps S||_2 <= 1 - eps gamma`` already; otherwise it shrinks ``S``
and adds just the damping that brings the Euler update back to norm ``1 - eps gamma``. From
``||I + eps A||_2 <= 1 - eps gamma``: the symmetric part satisfies ``A_sym <= -gamma I`` (negative
definite, so ``A`` is Hurwitz); every eigenvalue has ``|1 + eps lambda| <= 1 - eps gamma`` (inside
the Euler disc, which lies inside the RK2/Heun region, since ``1 + z + z^2/2 = (1 + (1 + z)^2)/2``);
and ``||A||_2 <= 2 / eps`` however large ``M`` grows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_float

__all__ = [
    "symmetric_skew",
    "stable_symmetric_skew",
    "check_beta_gamma",
    "check_stable_margin",
]


def check_beta_gamma(beta: float, gamma: float, *, gamma_name: str = "gamma") -> None:
    """TypeError/ValueError unless ``0 <= beta <= 1`` and ``gamma >= 0`` (both finite numbers)."""
    check_float("beta", beta, ge=0, le=1)
    check_float(gamma_name, gamma, ge=0)


def check_stable_margin(gamma: float, eps: float, *, gamma_name: str = "gamma") -> None:
    """ValueError unless ``gamma > 0`` and ``eps * gamma < 1``: the margin ``eps gamma`` by which
    :func:`stable_symmetric_skew` keeps the update inside the unit disc."""
    check_float(gamma_name, gamma, gt=0, lt=1.0 / eps)


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


def stable_symmetric_skew(M: Tensor, beta: float, gamma: float, eps: float) -> Tensor:
    """``S = symmetric_skew(M, beta, gamma)`` pulled inside ``||I + eps A||_2 <= 1 - eps gamma``.

    Returns ``A = c S - ((1 - c) / eps) I`` with ``c = min(1, (1 - eps gamma) / ||I + eps S||_2)``
    (see the module docstring). Needs ``gamma > 0`` and ``0 < eps gamma < 1`` (the margin: with
    ``gamma = 0`` the bound is only ``<= 1``). Differentiable in ``M`` (through the largest
    singular value of ``I + eps S``; at ``c = 1`` the gradient is that of ``S``).
    """
    check_stable_margin(gamma, eps)
    S = symmetric_skew(M, beta, gamma)
    eye = torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
    norm = torch.linalg.matrix_norm(eye + eps * S, ord=2)
    c = torch.clamp((1.0 - eps * gamma) / norm, max=1.0)
    return c * S - ((1.0 - c) / eps) * eye
