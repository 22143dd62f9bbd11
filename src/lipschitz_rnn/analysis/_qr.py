"""Batched re-orthonormalisation of tangent bases for the Lyapunov-spectrum estimator.

Tangent vectors are stored as the *rows* of ``V`` (batch, k, n), i.e. ``V = Q^T`` for the column
basis ``Q`` (n, k) of the maths. The thin QR factorisation ``Q = Q~ R`` (``R`` upper triangular
with a positive diagonal) then reads ``V = R^T V~`` with ``V~`` having orthonormal rows.

Cholesky-QR (GEMM-based, so fast on GPUs, where batched small Householder QR is slow)::

    G = V V^T = Q^T Q = R^T R = L L^T      (L = R^T lower triangular, torch.linalg.cholesky_ex)
    V~ = L^{-1} V                          (one batched triangular solve)
    log |diag R| = log diag L

One pass loses orthogonality ~ ``kappa^2 u`` (``u`` the unit round-off, ``kappa`` the condition
number of the *row-scaled* basis: Cholesky-QR is invariant to the grading of the row norms,
which is what different growth rates produce, and only suffers from rows that nearly align).
Every batch element is checked through the Cholesky status and the *alignment*
``a = max_j ||v_j|| / R_jj`` (``1 / sin`` of the smallest angle between a row and the span of
the rows before it; ``||v_j||^2 = G_jj`` comes free with the Gram matrix), a lower bound of
``kappa``:

* ``a <= REFINE_TOL`` (100): one pass is accurate to ~1e-12 -- done;
* larger, on accelerators: a second pass (CholeskyQR2, orthogonal to working precision while
  ``kappa < u^{-1/2}``; ``R = R_2 R_1`` so the log diagonals add); on the CPU, LAPACK's
  Householder QR is cheaper than two Cholesky passes, so those elements use it directly;
* Cholesky failure (``info > 0``), ``a > FALLBACK_TOL`` (1e5), non-finite values, or a second
  pass that is not ~orthonormal: Householder QR (``torch.linalg.qr``, signs fixed so that
  ``diag R > 0``).

:class:`Orthonormalizer` adds a memory: when most of the batch needed Householder QR, the next
calls go straight to it (no wasted Cholesky pass) until the alignment falls back below
``REFINE_TOL``. One host synchronisation per call decides the branches.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "Orthonormalizer",
    "orthonormalize_rows",
    "householder_rows",
    "next_block",
    "median_block",
    "REFINE_TOL",
    "FALLBACK_TOL",
    "SECOND_PASS_TOL",
]

#: alignment above which one Cholesky-QR pass is not trusted. One pass loses orthogonality
#: ~ alignment^2 * u (1e-12 in float64 at the threshold), which biases the next step's log R_ii
#: by as much -- negligible next to any statistical error of the exponents.
REFINE_TOL = 100.0
#: alignment above which Householder QR is used even on accelerators (CholeskyQR2 needs
#: kappa < u^{-1/2}; the alignment only bounds kappa from below, hence the margin).
FALLBACK_TOL = 1e5
#: largest alignment accepted in a second pass (it is ~1 after an accurate first pass).
SECOND_PASS_TOL = 10.0


def householder_rows(V: Tensor) -> tuple[Tensor, Tensor]:
    """Householder QR of the columns ``V^T``; return (orthonormal rows, ``log |diag R|``)."""
    Q, R = torch.linalg.qr(V.mT, mode="reduced")  # Q (.., n, k), R (.., k, k)
    d = torch.diagonal(R, dim1=-2, dim2=-1)
    sign = torch.where(d < 0, -torch.ones_like(d), torch.ones_like(d))
    return (Q * sign.unsqueeze(-2)).mT, torch.log(d.abs())


def _alignment(norms: Tensor, d: Tensor) -> Tensor:
    """``max_j ||v_j|| / R_jj`` per element (nan-propagating; nan/inf marks a bad element)."""
    return (norms / d).amax(-1)


def _chol_pass(V: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    G = V @ V.mT
    L, info = torch.linalg.cholesky_ex(G)
    d = torch.diagonal(L, dim1=-2, dim2=-1)
    norms = torch.diagonal(G, dim1=-2, dim2=-1).sqrt()
    return L, info, d, _alignment(norms, d)


def orthonormalize_rows(
    V: Tensor,
    *,
    two_pass: bool | None = None,
    refine_tol: float = REFINE_TOL,
    fallback_tol: float = FALLBACK_TOL,
) -> tuple[Tensor, Tensor, int, float]:
    """Orthonormalise the rows of ``V`` (batch, k, n), batched.

    ``two_pass``: refine mildly ill-conditioned elements with a second Cholesky pass (default on
    accelerators) instead of Householder QR (default on the CPU).

    Returns ``(V~, logdiag, n_householder, alignment)``: ``V~`` has orthonormal rows spanning
    the same nested subspaces, ``logdiag`` (batch, k) is ``log |diag R|`` of ``V^T = V~^T R``,
    ``n_householder`` the number of batch elements done by Householder QR and ``alignment`` the
    largest ``||v_j|| / R_jj`` over the batch (inf when an element's Cholesky failed).
    Non-finite input gives non-finite ``logdiag`` (the caller checks); a singular basis gives
    ``-inf`` entries.
    """
    if two_pass is None:
        two_pass = V.device.type != "cpu"
    L, info, d, align = _chol_pass(V)
    failed = (info != 0) | ~(align <= fallback_tol)  # `~(x <= t)` also catches nan
    refine = (align > refine_tol) & ~failed
    bad = failed if two_pass else failed | refine
    flags = torch.stack(
        [
            bad.any().to(align.dtype),
            (refine.any() & two_pass).to(align.dtype),
            torch.where(failed, math.inf, align).amax(),
        ]
    ).tolist()
    any_bad, any_refine, align_max = bool(flags[0]), bool(flags[1]), float(flags[2])
    if any_bad and bool(bad.all()):
        Vn, logd = householder_rows(V)
        return Vn, logd, V.shape[0], align_max
    Vn = torch.linalg.solve_triangular(L, V, upper=False, left=True)
    logd = torch.log(d)
    if any_refine:
        L2, info2, d2, align2 = _chol_pass(Vn)
        Vn = torch.linalg.solve_triangular(L2, Vn, upper=False, left=True)
        logd = logd + torch.log(d2)
        # after an accurate first pass the basis is orthonormal to ~alignment^2 u, so the second
        # pass's alignment is ~1; a large one means the first pass was too inaccurate
        bad = bad | (info2 != 0) | ~(align2 <= SECOND_PASS_TOL)
        any_bad = bool(bad.any())
    if not any_bad:
        return Vn, logd, 0, align_max
    idx = bad.nonzero().squeeze(-1)
    Vh, logdh = householder_rows(V.index_select(0, idx))
    Vn = Vn.index_copy(0, idx, Vh)
    logd = logd.index_copy(0, idx, logdh)
    return Vn, logd, int(idx.numel()), align_max


class Orthonormalizer:
    """:func:`orthonormalize_rows` with a memory of which method the batch needs.

    After a call in which at least half of the batch needed Householder QR, the next calls use
    Householder QR for the whole batch (skipping a Cholesky pass that would mostly be thrown
    away), until the alignment is back below ``REFINE_TOL`` for every element.
    """

    def __init__(self, two_pass: bool | None = None) -> None:
        self.two_pass = two_pass
        self.householder_mode = False
        self.householder_count = 0

    def __call__(self, V: Tensor) -> tuple[Tensor, Tensor, float]:
        """Return ``(V~, logdiag, alignment)`` (see :func:`orthonormalize_rows`)."""
        B = V.shape[0]
        if self.householder_mode:
            Vn, logd = householder_rows(V)
            align = float(_alignment(V.norm(dim=-1), logd.exp()).amax())
            if math.isnan(align):
                align = math.inf
            self.householder_count += B
            if align <= REFINE_TOL:
                self.householder_mode = False
            return Vn, logd, align
        Vn, logd, n_h, align = orthonormalize_rows(V, two_pass=self.two_pass)
        self.householder_count += n_h
        if 2 * n_h >= B and B > 0:
            self.householder_mode = True
        return Vn, logd, align


# ----------------------------------------------------------------------------------------------
# how often: reorth_every="auto"
# ----------------------------------------------------------------------------------------------
#: ``reorth_every="auto"``: the basis is re-orthonormalised once its alignment (the largest
#: ``||v_j|| / R_jj``, see :mod:`._qr`) is predicted to reach AUTO_ALIGN (one Cholesky-QR pass
#: stays accurate to ~AUTO_ALIGN^2 * u), at most every AUTO_MAX_BLOCK steps, and before any
#: tangent norm could leave [e^-AUTO_LOG_RANGE, e^AUTO_LOG_RANGE].
AUTO_ALIGN = 10.0
AUTO_MAX_BLOCK = 32
AUTO_LOG_RANGE = 200.0


def next_block(align: float, since: int, logd: Tensor) -> int:
    """The next block length for ``reorth_every="auto"`` from the last block's growth."""
    if not math.isfinite(align):
        return 1
    rate = math.log(max(align, 1.0)) / since  # log-alignment growth per step
    block = AUTO_MAX_BLOCK if rate <= 1e-12 else int(math.log(AUTO_ALIGN) / rate)
    ext = logd[torch.isfinite(logd)]
    if ext.numel():
        norm_rate = float(ext.abs().max()) / since  # log-norm change per step
        if norm_rate > 0:
            block = min(block, int(AUTO_LOG_RANGE / norm_rate))
    return max(1, min(block, AUTO_MAX_BLOCK))


def median_block(blocks: list[int]) -> int:
    if not blocks:
        return 1
    return int(sorted(blocks)[len(blocks) // 2])
