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

:class:`AutoBlocks` is the ``reorth_every="auto"`` schedule: it plans each block from the
growth of the alignment and of the spread of ``log diag R`` seen so far, accepts a block only
when its QR shows that no direction was lost to round-off, and has a rejected block redone,
shorter, from its start.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "Orthonormalizer",
    "orthonormalize_rows",
    "householder_rows",
    "AutoBlocks",
    "AUTO_MAX_BLOCK",
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
    # under autograd a mixed batch goes to Householder QR whole: the failed elements' Cholesky
    # factors hold garbage whose backward (0 * nan) would poison the gradient
    if any_bad and (bool(bad.all()) or V.requires_grad):
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
        if any_bad and V.requires_grad:
            Vn, logd = householder_rows(V)
            return Vn, logd, V.shape[0], align_max
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
#: the longest block ``reorth_every="auto"`` takes.
AUTO_MAX_BLOCK = 32


#: how much longer than the last block the next one may be.
AUTO_GROWTH = 4
#: how much of the largest recent growth rate the plan keeps per step (see AutoBlocks.after).
RATE_MEMORY = 0.9


def _fit(budget: float, rate: float) -> int:
    """The longest block over which a quantity growing by ``rate`` per step stays within
    ``budget``; 0 when nothing fits (an infinite rate)."""
    if rate <= budget / AUTO_MAX_BLOCK:
        return AUTO_MAX_BLOCK
    return int(budget / rate)  # 0 for an infinite rate


def _capped(rate: float, cap: float) -> float:
    return rate if rate <= cap else cap  # nan -> cap


class AutoBlocks:
    """The ``reorth_every="auto"`` policy: plan each block, verify it, or have it redone.

    Over a block of ``L`` steps the tangent rows are multiplied by ``L`` Jacobians before the
    QR. A direction that contracts at rate ``lambda_j`` relative to ``lambda_1`` shrinks by
    ``e^{-(lambda_1 - lambda_j) L}`` against the rows it is orthogonalised against; each product
    rounds a row to ``eps`` (machine epsilon) of its norm, so the part of row ``j`` that carries
    ``R_jj`` keeps a relative accuracy of about ``eps * a`` (``a = ||v_j|| / R_jj``, the
    alignment; ``ln(1/eps)/ln(10)`` digits lose ``ln(a)/ln(10)``), and none once ``a`` reaches
    ``1/eps`` -- the direction is gone (the symptom: ``-inf`` or a wrong exponent). Cholesky-QR
    squares the loss (``eps a^2``). With ``P = ln(1/eps)`` the precision in nats (36.0 in
    float64, 15.9 in float32), a block is **accepted** only when

    * its Gram matrix was positive definite in working precision (a failed Cholesky makes the
      alignment inf) and ``ln a <= P / 8`` (``a <= 90`` in float64, ``a <= 7.3`` in float32):
      one Cholesky-QR pass is then accurate to ``eps a^2 <= eps^{3/4}`` (2e-12, 6e-6);
    * the spread of its log R diagonal over the block, ``max_j ln R_jj - min_j ln R_jj`` (the
      ratio of the diagonal extremes), is at most ``P / 4`` (9.0 / 4.0 nats: the rows were
      graded by at most ``eps^{-1/4}``). The alignment is measured at the end of the block
      only, and a rotation can line a contracted row up with an axis; the spread records what
      the block did to the norms whatever the angles;
    * every ``|ln R_jj| <= ln(float max) / 4`` (177 / 22 nats: norms whose Gram matrix neither
      overflows nor underflows) and nothing is nan.

    A block of one step is always accepted: it is exactly what ``reorth_every=1`` does. A
    rejected block is redone from the state and basis kept from its start (the trajectory
    does not depend on the basis), at most half as long; its QR is discarded.

    The next block is **planned** from a per-step rate of ``max(ln a, spread)`` (and one of
    ``max |ln R_jj|``): the largest over recent blocks, each remembered with weight
    ``RATE_MEMORY**steps`` (0.9 per step), so that one quiet block between wide ones does not
    plan a long block. The plan keeps ``rate * L <= P / 16`` (2.25 / 1.0 nats, half the
    acceptance bound of ``ln a``) and ``|ln R_jj| <= ln(float max) / 8``, and grows by at most
    ``AUTO_GROWTH`` (4) per block up to ``AUTO_MAX_BLOCK`` (32) steps. Blocks start at one
    step, so a wide spectrum (the Hénon map's ``lambda_1 - lambda_2`` = 2.04 per step, an
    LSTM's ~9 nats) keeps blocks of one -- ``reorth_every=1`` exactly -- while a nearly neutral
    one (a default Lipschitz cell) reaches 32 after three blocks. A nan or infinite rate (a
    failed Cholesky, a direction annihilated exactly) counts as ``4 P / 16`` per step: blocks
    of one until it has faded (~20 steps).
    """

    def __init__(self, dtype: torch.dtype) -> None:
        nats = -math.log(torch.finfo(dtype).eps)
        log_max = math.log(torch.finfo(dtype).max)
        self.accept_log_align = nats / 8
        self.accept_spread = nats / 4
        self.accept_log_norm = log_max / 4
        self.plan_log_align = nats / 16
        self.plan_log_norm = log_max / 8
        self.rate = 0.0  # the largest recent growth rate of ln alignment and spread, per step
        self.norm_rate = 0.0  # ... and of max |ln R_jj|
        self.block = 1  # the planned length of the next block
        self.used: list[int] = []  # the lengths of the accepted blocks
        self.redone_steps = 0  # steps run again after a rejected block

    @staticmethod
    def measure(logd: Tensor, align: float) -> tuple[tuple[float, float, float], bool]:
        """``((ln alignment, spread, max |ln R_jj|), overflow)`` of a block's QR in one host
        sync; ``overflow``: some ``ln R_jj`` is nan or +inf (``-inf``, a direction annihilated
        exactly, is not an overflow)."""
        spread = (logd.amax(-1) - logd.amin(-1)).amax()
        overflow = (torch.isnan(logd) | (logd == math.inf)).any()
        stats = torch.stack([spread, logd.abs().amax(), overflow.to(logd.dtype)]).tolist()
        log_align = math.log(max(align, 1.0)) if align == align else math.nan
        return (log_align, float(stats[0]), float(stats[1])), bool(stats[2])

    def accept(self, since: int, log_align: float, spread: float, log_norm: float) -> bool:
        """Whether the block of ``since`` steps is kept (nan never passes)."""
        if since <= 1:
            return True
        return (
            log_align <= self.accept_log_align
            and spread <= self.accept_spread
            and log_norm <= self.accept_log_norm
        )

    def after(self, since: int, accepted: bool, measured: tuple[float, float, float]) -> None:
        """Plan the next block after one of ``since`` steps was accepted or rejected."""
        log_align, spread, log_norm = measured
        # nan/inf (a failed Cholesky, a direction annihilated exactly) count as 4x the rate
        # that plans one step: blocks of one, until it has faded (~20 steps)
        rate = _capped(max(log_align, spread) / since, 4 * self.plan_log_align)
        if math.isnan(log_align + spread):
            rate = 4 * self.plan_log_align
        norm_rate = _capped(log_norm / since, 4 * self.plan_log_norm)
        # the largest recent rate: it forgets by RATE_MEMORY per step, so one quiet block
        # between wide ones does not plan a long block
        fade = RATE_MEMORY**since
        self.rate = max(rate, self.rate * fade)
        self.norm_rate = max(norm_rate, self.norm_rate * fade)
        longest = min(
            _fit(self.plan_log_align, self.rate), _fit(self.plan_log_norm, self.norm_rate)
        )
        if accepted:
            self.used.append(since)
            block = min(longest, AUTO_GROWTH * max(self.block, since))
        else:
            self.redone_steps += since
            block = min(longest, since // 2)
        self.block = max(1, min(block, AUTO_MAX_BLOCK))

    def median(self) -> int:
        """The median accepted block length (1 if none)."""
        if not self.used:
            return 1
        return int(sorted(self.used)[len(self.used) // 2])
