r"""The discretisation schemes of the continuous-time units, as data.

A scheme is an explicit Runge-Kutta method given by its Butcher tableau (strictly lower
triangular ``a``, weights ``b``). One step of size ``eps`` of ``dh/dt = f(h)``::

    k_i = f(h + eps * sum_{j<i} a_ij k_j)        i = 1 .. s
    h'  = h + eps * sum_i b_i k_i

* ``"euler"``: ``a = []``, ``b = (1,)``: ``h' = h + eps f(h)``;
* ``"rk2"`` (explicit midpoint): ``a_21 = 1/2``, ``b = (0, 1)``: ``h' = h + eps f(h + eps/2 f(h))``;
* ``"heun"`` (explicit trapezoid): ``a_21 = 1``, ``b = (1/2, 1/2)``:
  ``h' = h + eps/2 (f(h) + f(h + eps f(h)))``.

Everything else about a scheme is derived from the tableau here, once:

* :func:`rk_step` runs one step for any ``f`` (tensors, or tuples of tensors such as a state
  and its tangent vectors, see :mod:`lipschitz_rnn.analysis`);
* :func:`stability_polynomial`: ``R(z) = 1 + sum_{k>=1} z^k b^T a^{k-1} 1``, so that the step
  maps ``h -> R(eps lambda) h`` on ``dh/dt = lambda h`` (Euler ``1 + z``; rk2 and heun
  ``1 + z + z^2/2``);
* :func:`max_stable_step`: the largest ``eps`` with ``|R(e lambda)| < 1`` for every ``e`` in
  ``(0, eps)`` and every eigenvalue ``lambda`` of the linear part;
* :func:`affine_step`: the step on ``dh/dt = A h + tau_i`` (``tau_i`` the forcing seen by
  stage ``i``) as the matrices of ``h' = R(eps A) h + eps sum_i Q_i tau_i``;
* :func:`two_stage_form`: the coefficients with which the fused scan's kernels write a
  two-stage scheme.

The order of floating-point operations in :func:`rk_step` is part of the contract: equal
non-zero weights are factored (``h + (eps b) (k_1 + k_2)``), otherwise ``h + (eps c_j) k_j`` term by
term, and the fused kernels follow the same order (so that they match the plain loop to
round-off).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

__all__ = [
    "Scheme",
    "SCHEMES",
    "get_scheme",
    "rk_step",
    "stability_polynomial",
    "STABILITY_POLYNOMIALS",
    "max_stable_step",
    "affine_step",
    "two_stage_form",
]

State = TypeVar("State")


@dataclass(frozen=True)
class Scheme:
    """An explicit Runge-Kutta scheme: ``a[i]`` holds the coefficients ``a_ij`` (``j < i``) of
    stage ``i``; ``b`` the weights of the update."""

    name: str
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    description: str = ""

    @property
    def stages(self) -> int:
        return len(self.b)


#: solver name -> :class:`Scheme`, in the order documented; its keys are the accepted ``solver``
#: values (``tuple(SCHEMES)`` lists them)
SCHEMES: dict[str, Scheme] = {
    "euler": Scheme("euler", ((),), (1.0,), "forward Euler"),
    "rk2": Scheme("rk2", ((), (0.5,)), (0.0, 1.0), "explicit midpoint (RK2)"),
    "heun": Scheme("heun", ((), (1.0,)), (0.5, 0.5), "Heun's method (explicit trapezoid)"),
}


def get_scheme(solver: Any) -> Scheme:
    """The :class:`Scheme` called ``solver``; ValueError naming the known ones otherwise."""
    if isinstance(solver, Scheme):
        return solver
    if not isinstance(solver, str):
        raise TypeError(f"solver must be one of {tuple(SCHEMES)}, got {type(solver).__name__}")
    try:
        return SCHEMES[solver]
    except KeyError:
        raise ValueError(f"solver must be one of {tuple(SCHEMES)}, got {solver!r}") from None


# ----------------------------------------------------------------------------------------------
# one step
def _tree(fn: Callable[..., Any], *xs: Any) -> Any:
    """``fn`` applied leaf-wise to tensors or to tuples of tensors of the same structure."""
    if isinstance(xs[0], tuple):
        return tuple(fn(*leaves) for leaves in zip(*xs, strict=True))
    return fn(*xs)


def _combine(h: State, eps: float, coeffs: Sequence[float], ks: Sequence[State]) -> State:
    """``h + eps * sum_j c_j k_j`` (equal non-zero weights factored out, see module docstring)."""
    terms = [(c, k) for c, k in zip(coeffs, ks, strict=True) if c != 0.0]
    if not terms:
        return h
    c0 = terms[0][0]
    if all(c == c0 for c, _ in terms):
        s = terms[0][1]
        for _, k in terms[1:]:
            s = _tree(lambda x, y: x + y, s, k)
        return _tree(lambda x, y: x + (eps * c0) * y, h, s)
    out = h
    for c, k in terms:
        out = _tree(lambda x, y, c=c: x + (eps * c) * y, out, k)
    return out


def rk_step(f: Callable[[State], State], h: State, eps: float, solver: str | Scheme) -> State:
    """One step of ``dh/dt = f(h)`` of size ``eps`` with the scheme ``solver``.

    ``h`` is a tensor or a tuple of tensors (then ``f`` maps such tuples to such tuples, e.g.
    ``(h, V) -> (f(h), Jf(h) V)`` to push tangent vectors through the same step).
    """
    scheme = get_scheme(solver)
    ks: list[State] = []
    for row in scheme.a:
        ks.append(f(_combine(h, eps, row, ks)))
    return _combine(h, eps, scheme.b, ks)


# ----------------------------------------------------------------------------------------------
# linear stability
def stability_polynomial(solver: str | Scheme) -> tuple[float, ...]:
    """Coefficients (lowest degree first) of ``R(z) = 1 + sum_k z^k b^T a^{k-1} 1``."""
    scheme = get_scheme(solver)
    s = scheme.stages
    A = np.zeros((s, s))
    for i, row in enumerate(scheme.a):
        A[i, : len(row)] = row
    b = np.asarray(scheme.b, dtype=np.float64)
    coeffs = [1.0]
    v = np.ones(s)
    for _ in range(s):  # a is nilpotent: degree at most s
        coeffs.append(float(b @ v))
        v = A @ v
    while len(coeffs) > 1 and coeffs[-1] == 0.0:
        coeffs.pop()
    return tuple(coeffs)


#: solver name -> coefficients (lowest degree first) of its stability polynomial R(z)
STABILITY_POLYNOMIALS: dict[str, tuple[float, ...]] = {
    name: stability_polynomial(name) for name in SCHEMES
}


def _smallest_positive_root(coeffs_high_first: np.ndarray) -> float:
    roots = np.roots(coeffs_high_first)
    pos = [r.real for r in roots if abs(r.imag) <= 1e-9 * max(1.0, abs(r)) and r.real > 1e-15]
    return min(pos) if pos else math.inf


def max_stable_step(eigenvalues: Any, solver: str | Scheme) -> float:
    """Largest ``eps`` with ``|R(e lambda)| < 1`` for all ``e`` in ``(0, eps)`` and all eigenvalues.

    ``eigenvalues`` is a sequence of complex numbers. Returns 0.0 if an eigenvalue has
    ``Re lambda >= 0`` (no positive step is stable) and ``inf`` for an empty sequence.
    """
    c = np.asarray(stability_polynomial(solver), dtype=np.float64)
    best = math.inf
    for lam in np.asarray(eigenvalues, dtype=np.complex128).ravel():
        if lam.real >= 0.0:
            return 0.0
        # p_k = c_k lam^k: R(e lam) = sum_k p_k e^k;  |R|^2 - 1 = sum_{j,k} p_j conj(p_k) e^{j+k} - 1
        p = c * lam ** np.arange(len(c))
        sq = np.convolve(p, np.conj(p)).real  # coefficients of |R(e lam)|^2, lowest first
        sq[0] -= 1.0  # constant term is 1: it cancels, leaving e * (...)
        poly = sq[1:]  # divide by e
        best = min(best, _smallest_positive_root(poly[::-1]))
    return best


def affine_step(A: Any, eps: float, solver: str | Scheme) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(R, [Q_1 .. Q_s])`` with one step of ``dh/dt = A h + tau`` equal to
    ``h' = R h + eps sum_i Q_i tau_i``, where ``tau_i`` is the forcing evaluated by stage ``i``.

    ``R = R(eps A)`` is the stability polynomial at the matrix (float64 numpy arrays). For the
    Lipschitz unit ``tau_i = tanh(...)`` has ``||tau_i||_2 <= sqrt(H)``, so
    ``||h'|| <= ||R|| ||h|| + eps sqrt(H) sum_i ||Q_i||``.
    """
    scheme = get_scheme(solver)
    A = np.asarray(A, dtype=np.float64)
    n = A.shape[0]
    eye = np.eye(n)
    s = scheme.stages
    # stage i: k_i = A (h + eps sum_j a_ij k_j) + tau_i = Kh_i h + sum_m Kt_i[m] tau_m
    Kh: list[np.ndarray] = []
    Kt: list[list[np.ndarray]] = []
    for i, row in enumerate(scheme.a):
        arg_h = eye + eps * sum((a * Kh[j] for j, a in enumerate(row)), np.zeros((n, n)))
        Kh.append(A @ arg_h)
        Kt.append([
            A @ (eps * sum((a * Kt[j][m] for j, a in enumerate(row)), np.zeros((n, n))))
            + (eye if m == i else 0.0)
            for m in range(s)
        ])
    R = eye + eps * sum(b * Kh[i] for i, b in enumerate(scheme.b))
    Q = [sum(b * Kt[i][m] for i, b in enumerate(scheme.b)) for m in range(s)]
    return R, Q


# ----------------------------------------------------------------------------------------------
# the form the fused kernels use
def two_stage_form(solver: str | Scheme, eps: float) -> tuple[float, float, float, float, bool]:
    """``(a, c_h, c_y, b, sum_both)`` of a two-stage scheme written as the fused kernels run it.

    Forward: ``y = h + a f(h)``, then ``h' = h + b f(y)``, or ``h' = h + b (f(h) + f(y))`` when
    ``sum_both`` (equal weights). Backward differentiates the equivalent
    ``h' = c_h h + c_y y + b f(y)`` (``f(h) = (y - h) / a``).
    """
    scheme = get_scheme(solver)
    if scheme.stages != 2:
        raise ValueError(f"solver must be a two-stage scheme, got {scheme.name!r}")
    a21 = scheme.a[1][0]
    b1, b2 = scheme.b
    if b1 != 0.0 and b1 != b2:
        raise ValueError(f"solver {scheme.name!r}: the fused kernels need b1 = 0 or b1 = b2")
    a = eps * a21
    b = eps * b2
    c_y = b1 / a21
    return a, 1.0 - c_y, c_y, b, b1 != 0.0
