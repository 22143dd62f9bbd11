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

Under autograd (the gradient-flossing loss) every QR above is one node, :class:`_RowsQR`,
differentiated by the thin QR's own derivative (:func:`rows_qr_backward`: two GEMMs and a
triangular solve) whichever algorithm ran, not through its steps -- or, for one Elman layer,
that same derivative applied on the tape of :mod:`._taped`; and :class:`AutoBlocks` then plans
for that cost (closer to its bounds, and on the CPU Householder QR for blocks the alignment
would keep short).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "Orthonormalizer",
    "rows_qr_backward",
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


def _householder(V: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Householder QR of the columns ``V^T``: (orthonormal rows, ``log |diag R|``, ``L``) with
    ``V = L V~`` (``L = R^T`` lower triangular, its diagonal made positive)."""
    Q, R = torch.linalg.qr(V.mT, mode="reduced")  # Q (.., n, k), R (.., k, k)
    d = torch.diagonal(R, dim1=-2, dim2=-1)
    sign = torch.where(d < 0, -torch.ones_like(d), torch.ones_like(d))
    return (Q * sign.unsqueeze(-2)).mT, torch.log(d.abs()), (R * sign.unsqueeze(-1)).mT


def _householder_planned(V: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Householder QR of a block planned for it (:class:`AutoBlocks` under autograd). The signs
    of ``diag R`` are left as LAPACK gives them (a row of ``V~`` may be negated: nothing
    downstream depends on it, and :class:`_RowsQR` differentiates ``log |R_jj|`` whatever the
    signs). Returns ``(V~, log |diag R|, L, alignment per sequence)``, ``V = L V~``.

    (``V~ = L^{-1} V`` by a triangular solve instead of forming ``Q`` would save a third of the
    time, but loses orthogonality with the grading of the rows: measured, gradients of a
    10-unit tanh RNN then moved by 1e-9 relative instead of 1e-11.)

    LAPACK's factors as they come (``geqrf``, then ``orgqr`` for ``Q``: what
    ``torch.linalg.qr`` runs, without copying ``R`` out): ``L`` is the top square of
    ``geqrf``'s output, transposed; its lower triangle is ``R^T`` (above it lie reflectors,
    which nothing reads)."""
    A, tau = torch.geqrf(V.mT)
    d = torch.diagonal(A, dim1=-2, dim2=-1).abs()
    Q = torch.linalg.householder_product(A, tau)
    L = A[..., : V.shape[-2], :].mT
    return Q.mT, torch.log(d), L, _alignment(torch.linalg.vector_norm(V, dim=-1), d)


def householder_rows(V: Tensor) -> tuple[Tensor, Tensor]:
    """Householder QR of the columns ``V^T``; return (orthonormal rows, ``log |diag R|``)."""
    Vn, logd, _ = _householder(V)
    return Vn, logd


def _alignment(norms: Tensor, d: Tensor) -> Tensor:
    """``max_j ||v_j|| / R_jj`` per element (nan-propagating; nan/inf marks a bad element)."""
    return (norms / d).amax(-1)


def _chol_pass(V: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    G = V @ V.mT
    L, info = torch.linalg.cholesky_ex(G)
    d = torch.diagonal(L, dim1=-2, dim2=-1)
    norms = torch.diagonal(G, dim1=-2, dim2=-1).sqrt()
    return L, info, d, _alignment(norms, d)


def _factor(
    V: Tensor, two_pass: bool, refine_tol: float, fallback_tol: float, with_factor: bool
) -> tuple[Tensor, Tensor, int, float, Tensor | None]:
    """:func:`orthonormalize_rows` without autograd, plus the factor ``L`` (``V = L V~``) when
    ``with_factor``."""
    L, info, d, align = _chol_pass(V)
    # one host transfer of 2 x batch numbers decides the branches (Python is cheaper than a
    # dozen tiny tensor ops); `not a <= tol` also catches nan
    aligns, infos = torch.stack([align, info.to(align.dtype)]).tolist()
    failed = [i != 0 or not a <= fallback_tol for a, i in zip(aligns, infos, strict=True)]
    refine = [a > refine_tol and not f for a, f in zip(aligns, failed, strict=True)]
    bad = failed if two_pass else [f or r for f, r in zip(failed, refine, strict=True)]
    any_bad, any_refine = any(bad), two_pass and any(refine)
    align_max = max(math.inf if f else a for a, f in zip(aligns, failed, strict=True))
    if any_bad and all(bad):
        Vn, logd, Lh = _householder(V)
        return Vn, logd, V.shape[0], align_max, Lh
    Vn = torch.linalg.solve_triangular(L, V, upper=False, left=True)
    logd = torch.log(d)
    if any_refine:
        L2, info2, d2, align2 = _chol_pass(Vn)
        Vn = torch.linalg.solve_triangular(L2, Vn, upper=False, left=True)
        logd = logd + torch.log(d2)
        if with_factor:
            L = L @ L2  # V = L1 V1, V1 = L2 V2
        # after an accurate first pass the basis is orthonormal to ~alignment^2 u, so the second
        # pass's alignment is ~1; a large one means the first pass was too inaccurate
        aligns2, infos2 = torch.stack([align2, info2.to(align2.dtype)]).tolist()
        bad = [b or i != 0 or not a <= SECOND_PASS_TOL
               for b, a, i in zip(bad, aligns2, infos2, strict=True)]
        any_bad = any(bad)
    if not any_bad:
        return Vn, logd, 0, align_max, L
    # the failed elements' Cholesky factors hold garbage: replaced, as are their rows
    idx = torch.tensor([i for i, b in enumerate(bad) if b], dtype=torch.long, device=V.device)
    Vh, logdh, Lh = _householder(V.index_select(0, idx))
    Vn = Vn.index_copy(0, idx, Vh)
    logd = logd.index_copy(0, idx, logdh)
    if with_factor:
        L = L.index_copy(0, idx, Lh)
    return Vn, logd, int(idx.numel()), align_max, L


class _RowsQR(torch.autograd.Function):
    """``(V~, log diag L) = QR(V)`` (``V = L V~``) by whatever ``factor`` does, differentiated
    by the formula of the thin QR's derivative rather than through the algorithm's steps.

    For ``A = V^T = Q R`` (``Q = V~^T``, ``R = L^T``, full column rank) with upstream gradients
    ``Q~`` and ``R~``, ``A~ = (Q~ + Q copyltu(M)) R^{-T}`` with ``M = R R~^T - Q~^T Q`` and
    ``copyltu(M) = tril(M) + tril(M, -1)^T`` (symmetric). Here only ``log |diag R|`` is an
    output, so ``R~ = diag(g / R_jj)`` and ``tril(R R~^T) = diag(g)`` (whatever the signs of
    ``diag R``); in rows: ``Vbar = L^{-T} (V~bar + S V~)``,
    ``S = copyltu(diag(g) - tril(V~bar V~^T))``: two GEMMs and one triangular solve, whichever
    algorithm (Cholesky-QR, CholeskyQR2, Householder) computed the factors. Only the lower
    triangle of ``L`` is read.
    """

    @staticmethod
    def forward(ctx, V, factor, info):
        Vn, logd, L, *extra = factor(V.detach())
        info.extend(extra)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(Vn, L)
        return Vn, logd

    @staticmethod
    def backward(ctx, gVn, glogd):
        Vn, L = ctx.saved_tensors
        return rows_qr_backward(Vn, L, gVn, glogd), None, None


def rows_qr_backward(
    Vn: Tensor, L: Tensor, gVn: Tensor | None, glogd: Tensor | None
) -> Tensor | None:
    """:class:`_RowsQR`'s derivative: the gradient of ``V = L Vn`` from those of ``Vn`` and
    ``log |diag L|`` (either None: zero; both: None)."""
    if gVn is None and glogd is None:
        return None
    if gVn is None:
        X = glogd.unsqueeze(-1) * Vn
    else:
        # S = copyltu(diag(g) - tril(P)) = diag(g - diag P) - (tril(P, -1) + its transpose)
        P = gVn @ Vn.mT
        low = P.tril(-1)
        c = torch.diagonal(P, dim1=-2, dim2=-1)
        c = -c if glogd is None else glogd - c
        if Vn.dim() == 3:
            X = torch.baddbmm(gVn, low + low.mT, Vn, alpha=-1)
        else:
            X = gVn - (low + low.mT) @ Vn
        X.addcmul_(c.unsqueeze(-1), Vn)
    return torch.linalg.solve_triangular(L.mT, X, upper=True, left=True)


def qr_rows(factor, V: Tensor) -> tuple[Tensor, Tensor, list]:
    """``factor(V) -> (V~, logdiag, L, *extra)`` with ``V = L V~``, returned as
    ``(V~, logdiag, extra)``; when autograd records ``V``, through :class:`_RowsQR` (the QR's
    own derivative, not autograd through the algorithm)."""
    if torch.is_grad_enabled() and V.requires_grad:
        extra: list = []
        Vn, logd = _RowsQR.apply(V, factor, extra)
        return Vn, logd, extra
    Vn, logd, _, *extra = factor(V)
    return Vn, logd, extra


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
    ``-inf`` entries. Differentiable (when autograd records ``V``) by the derivative of the
    thin QR itself (:class:`_RowsQR`), whichever algorithm ran.
    """
    if two_pass is None:
        two_pass = V.device.type != "cpu"
    grad = torch.is_grad_enabled() and V.requires_grad

    def factor(W: Tensor):
        Vn, logd, n_h, align, L = _factor(W, two_pass, refine_tol, fallback_tol, grad)
        return Vn, logd, L, n_h, align

    Vn, logd, (n_h, align) = qr_rows(factor, V)
    return Vn, logd, n_h, align


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

    def _factor(self, V: Tensor, with_factor: bool, householder: bool):
        B = V.shape[0]
        if householder:  # planned (AutoBlocks under autograd), not a fallback: not counted
            return _householder_planned(V)
        if self.householder_mode:
            Vn, logd, L = _householder(V)
            align = float(_alignment(V.norm(dim=-1), logd.exp()).amax())
            if math.isnan(align):
                align = math.inf
            self.householder_count += B
            if align <= REFINE_TOL:
                self.householder_mode = False
            return Vn, logd, L, align
        two_pass = self.two_pass if self.two_pass is not None else V.device.type != "cpu"
        Vn, logd, n_h, align, L = _factor(V, two_pass, REFINE_TOL, FALLBACK_TOL, with_factor)
        self.householder_count += n_h
        if 2 * n_h >= B and B > 0:
            self.householder_mode = True
        return Vn, logd, L, align

    def factored(
        self, V: Tensor, householder: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, float | Tensor]:
        """``(V~, logdiag, L, alignment)`` with ``V = L V~`` (only the lower triangle of ``L``
        is meaningful), outside autograd: for a caller that differentiates the QR itself
        (:func:`rows_qr_backward`)."""
        return self._factor(V, True, householder)

    def __call__(
        self, V: Tensor, householder: bool = False
    ) -> tuple[Tensor, Tensor, float | Tensor]:
        """Return ``(V~, logdiag, alignment)`` (see :func:`orthonormalize_rows`);
        differentiable as it is. ``householder``: a block planned for Householder QR by
        :class:`AutoBlocks` (not counted as a fallback), whose alignment comes per sequence,
        as a tensor (:meth:`AutoBlocks.measure` takes both)."""
        grad = torch.is_grad_enabled() and V.requires_grad
        Vn, logd, (align,) = qr_rows(lambda W: self._factor(W, grad, householder), V)
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
#: under autograd, the fraction of the acceptance bounds that a block is planned to use (a
#: rejected block costs only its forward there; see AutoBlocks).
GRAD_PLAN_FRACTION = 0.9
#: the cost of a Householder QR block over a Cholesky-QR one under autograd on the CPU, forward
#: and backward (:class:`_RowsQR`'s backward is the same for both). Measured with one thread:
#: ~1.5 at N=80, k=75, batch 1 and ~1.8 at N=128, k=64, batch 8.
HOUSEHOLDER_COST = 1.75


def _fit(budget: float, rate: float) -> int:
    """The longest block over which a quantity growing by ``rate`` per step stays within
    ``budget``; 0 when nothing fits (an infinite rate)."""
    if rate <= budget / AUTO_MAX_BLOCK:
        return AUTO_MAX_BLOCK
    return int(budget / rate)  # 0 for an infinite rate


def _nanmax(values: list[float]) -> float:
    """``max`` that is nan when any value is (as ``Tensor.amax``)."""
    return math.nan if any(v != v for v in values) else max(values)


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

    **Under autograd** (``differentiable=True``, the gradient-flossing loss) a rejected block
    costs only its forward (its graph is dropped) while an accepted one costs forward and
    backward, so the plan aims closer to the bounds: ``GRAD_PLAN_FRACTION`` (0.9) of each
    acceptance bound, with the rates of ``ln a`` and of the spread remembered separately.
    With ``householder=True`` (the CPU, where LAPACK's QR is fast) a block may be planned for
    Householder QR, whose ``R`` loses ``eps a`` rather than ``eps a^2``: its ``ln a`` bound is
    ``P / 4`` (the spread's, unchanged: the products' own rounding does not depend on the QR).
    Householder is planned when its longest block is at least ``HOUSEHOLDER_COST`` times
    Cholesky-QR's (the ratio of their costs per block, forward and backward): blocks about
    twice as long where the alignment limits them (wide spectra), Cholesky-QR otherwise.
    ``householder_next`` says which the next block uses; :meth:`accept` is told which ran.
    """

    def __init__(
        self, dtype: torch.dtype, *, differentiable: bool = False, householder: bool = False
    ) -> None:
        nats = -math.log(torch.finfo(dtype).eps)
        log_max = math.log(torch.finfo(dtype).max)
        self.accept_log_align = nats / 8
        self.accept_log_align_householder = nats / 4
        self.accept_spread = nats / 4
        self.accept_log_norm = log_max / 4
        self.plan_log_align = nats / 16
        self.plan_log_norm = log_max / 8
        self.differentiable = differentiable
        self.householder = householder and differentiable  # Householder blocks allowed
        self.householder_next = False  # the method of the next block
        self.rate = 0.0  # the largest recent growth rate of ln alignment and spread, per step
        self.align_rate = 0.0  # (differentiable) ... of ln alignment alone
        self.spread_rate = 0.0  # (differentiable) ... of the spread alone
        self.norm_rate = 0.0  # ... and of max |ln R_jj|
        self.block = 1  # the planned length of the next block
        self.used: list[int] = []  # the lengths of the accepted blocks
        self.redone_steps = 0  # steps run again after a rejected block

    @staticmethod
    def measure(
        logd: Tensor, align: float | Tensor
    ) -> tuple[tuple[float, float, float], bool]:
        """``((ln alignment, spread, max |ln R_jj|), overflow)`` of a block's QR in one host
        sync (``align``: the largest alignment, or a tensor of it per sequence); ``overflow``:
        some ``ln R_jj`` is nan or +inf (``-inf``, a direction annihilated exactly, is not an
        overflow)."""
        # per sequence max and min (nan-propagating), 2 x batch numbers to the host
        lo, hi = torch.aminmax(logd.detach(), dim=-1)
        if isinstance(align, Tensor):  # per sequence (a planned Householder block)
            los, his, aligns = torch.stack([lo, hi, align.detach()]).tolist()
            align = _nanmax(aligns)
        else:
            los, his = torch.stack([lo, hi]).tolist()
        overflow = any(h != h or h == math.inf for h in his)  # nan or +inf
        spread = _nanmax([h - lo_ for lo_, h in zip(los, his, strict=True)])
        log_norm = _nanmax([abs(v) for v in los + his])
        log_align = math.log(max(align, 1.0)) if align == align else math.nan
        return (log_align, float(spread), float(log_norm)), overflow

    def accept(
        self,
        since: int,
        log_align: float,
        spread: float,
        log_norm: float,
        householder: bool = False,
    ) -> bool:
        """Whether the block of ``since`` steps is kept (nan never passes); ``householder``:
        its QR was Householder's (the larger ``ln a`` bound)."""
        if since <= 1:
            return True
        bound = self.accept_log_align_householder if householder else self.accept_log_align
        return (
            log_align <= bound
            and spread <= self.accept_spread
            and log_norm <= self.accept_log_norm
        )

    def _longest_differentiable(self, since: int, log_align: float, spread: float) -> int:
        """The plan under autograd (see the class): separate rates, ``GRAD_PLAN_FRACTION`` of
        the bounds, and the choice of Householder QR; sets ``householder_next``."""
        nan = math.isnan(log_align + spread)
        cap = 4 * self.accept_spread  # nan/inf: blocks of one until it has faded
        fade = RATE_MEMORY**since
        rate = cap if nan else _capped(log_align / since, cap)
        self.align_rate = max(rate, self.align_rate * fade)
        rate = cap if nan else _capped(spread / since, cap)
        self.spread_rate = max(rate, self.spread_rate * fade)
        f = GRAD_PLAN_FRACTION
        common = min(
            _fit(f * self.accept_spread, self.spread_rate),
            _fit(self.plan_log_norm, self.norm_rate),
        )
        chol = min(_fit(f * self.accept_log_align, self.align_rate), common)
        house = min(_fit(f * self.accept_log_align_householder, self.align_rate), common)
        self.householder_next = self.householder and house >= HOUSEHOLDER_COST * max(chol, 1)
        return house if self.householder_next else chol

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
        if self.differentiable:
            longest = self._longest_differentiable(since, log_align, spread)
        else:
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
