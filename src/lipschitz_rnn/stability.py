"""Stability certificates of Lipschitz RNN cells, computed on the live weights.

For the continuous-time unit ``dh/dt = A h + tanh(W h + U x + b)`` the paper (Erichson et al.
2021, Theorem 1) gives sufficient conditions for global exponential stability: with
``A_sym = (A + A^T) / 2`` negative definite and ``W`` non-singular, and either

* (a) ``sigma_min(A_sym) > L sigma_max(W)`` (``L = 1``, the Lipschitz constant of tanh), or
* (b) ``W + W^T`` negative definite and ``A^T W + W^T A`` positive definite.

For the discrete unit, the step ``eps`` must also keep the solver stable on the linear part:
``|R(eps lambda)| < 1`` for every eigenvalue ``lambda`` of ``A``, where ``R`` is the solver's
stability polynomial (Euler ``1 + z``; RK2 and Heun ``1 + z + z^2/2``; derived from the scheme's
tableau in :mod:`lipschitz_rnn.models.solvers`). ``max_stable_eps`` is the largest ``eps`` such
that every step in ``(0, eps)`` is stable: the smallest positive root in ``e`` of
``|R(e lambda)|^2 = 1`` over all eigenvalues (0 when some ``Re lambda >= 0``).

Eigenvalues inside the region make the linear part of the step asymptotically contracting; its
2-norm ``||R(eps A)||_2 < 1`` makes it contracting at every step, so that with the bounded
``tanh`` term the discrete state stays bounded for any input, any initial state and any number of
steps (a hidden state carried from batch to batch cannot blow up): ``bounded_state``, with
``||h_t|| <= max(||h_0||, state_bound)``, ``state_bound = eps sqrt(H) sum_i ||Q_i|| / (1 - q)``
from the step's affine form ``h' = R h + eps sum_i Q_i tanh(.)_i``
(:func:`~lipschitz_rnn.models.solvers.affine_step`), ``q = ||R||_2``. The
``"stable"`` parametrisation of the cell guarantees ``||I + eps A||_2 <= 1 - eps gamma_A``, hence
all three of ``A_sym`` negative definite, ``eps_stable`` and ``bounded_state``
(``||R(eps A)||_2 <= (1 + (1 - eps gamma_A)^2) / 2`` for RK2 and Heun). Theorem 1 needs more:
``W`` small against ``A_sym`` (condition a) or (b).

All quantities are computed in float64.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from .models.lipschitz import LipschitzRNNCell
from .models.solvers import affine_step, max_stable_step

__all__ = ["StabilityCertificate", "certify", "certify_cell"]


@dataclass(frozen=True)
class StabilityCertificate:
    """What :func:`certify` reports for one cell. Eigenvalues are of the symmetric parts
    ``A_sym = (A + A^T)/2`` and ``W_sym = (W + W^T)/2``; ``step_linear_norm`` is
    ``||R(eps A)||_2``, the 2-norm of the linear part of one step (``I + eps A`` for Euler);
    ``bounded_state`` says it is below 1, and then every trajectory satisfies
    ``||h_t||_2 <= max(||h_0||_2, state_bound)`` whatever the input (``inf`` otherwise)."""

    hidden_size: int
    solver: str
    eps: float
    A_sym_eig_min: float
    A_sym_eig_max: float
    W_sym_eig_min: float
    W_sym_eig_max: float
    A_spectral_abscissa: float
    W_sigma_min: float
    W_sigma_max: float
    A_sym_negative_definite: bool
    W_nonsingular: bool
    condition_a: bool
    condition_b: bool
    globally_stable: bool
    max_stable_eps: float
    eps_stable: bool
    step_linear_norm: float = math.nan
    bounded_state: bool = False
    state_bound: float = math.inf
    parametrization: str = "symmetric_skew"

    def to_dict(self) -> dict:
        return asdict(self)

    def verdict(self) -> str:
        """One line: what is certified, and the first reason why more is not."""
        region = f"eps inside the {self.solver} stability region"
        if self.globally_stable and self.eps_stable:
            return f"certified: globally exponentially stable (Theorem 1), {region}"
        if self.eps_stable and self.bounded_state:
            why = (
                f"sigma_min(-A_sym) = {-self.A_sym_eig_max:.3g} > sigma_max(W) = "
                f"{self.W_sigma_max:.3g}"
                if self.A_sym_negative_definite
                else "A_sym negative definite"
            )
            return (
                f"certified: A Hurwitz, {region}, state bounded for any input; not the global "
                f"exponential stability of Theorem 1, which needs {why}"
            )
        if not self.eps_stable:
            why = (
                f"the spectral abscissa of A is {self.A_spectral_abscissa:.3g} >= 0"
                if self.A_spectral_abscissa >= 0
                else f"eps {self.eps:g} > the largest stable step {self.max_stable_eps:.3g}"
            )
            return f"not certified: {why} (parametrization='stable' keeps A inside)"
        return (
            f"not certified: ||R(eps A)||_2 = {self.step_linear_norm:.6g} >= 1, the state can "
            "grow transiently (parametrization='stable' keeps it below 1)"
        )

    def __str__(self) -> str:
        def yn(b: bool) -> str:
            return "yes" if b else "no"

        lines = [
            f"Lipschitz cell, hidden {self.hidden_size}, solver {self.solver}, eps {self.eps:g}"
            + ("" if self.parametrization == "symmetric_skew"
               else f", parametrization {self.parametrization}"),
            f"  eig(A_sym) in [{self.A_sym_eig_min:.4g}, {self.A_sym_eig_max:.4g}]"
            f"   spectral abscissa of A {self.A_spectral_abscissa:.4g}",
            f"  eig(W_sym) in [{self.W_sym_eig_min:.4g}, {self.W_sym_eig_max:.4g}]"
            f"   sigma(W) in [{self.W_sigma_min:.4g}, {self.W_sigma_max:.4g}]",
            f"  Theorem 1: A_sym negative definite {yn(self.A_sym_negative_definite)},"
            f" W non-singular {yn(self.W_nonsingular)}, (a) {yn(self.condition_a)},"
            f" (b) {yn(self.condition_b)} -> globally exponentially stable: "
            f"{yn(self.globally_stable)}",
            f"  step: largest stable eps {self.max_stable_eps:.4g};"
            f" eps {self.eps:g} inside: {yn(self.eps_stable)}",
            f"  linear part of the step: ||R(eps A)||_2 {self.step_linear_norm:.6g} ->"
            f" state bounded for any input and length: {yn(self.bounded_state)}"
            + (f" (||h_t|| <= max(||h_0||, {self.state_bound:.4g}))" if self.bounded_state
               else ""),
        ]
        return "\n".join(lines)


def certify_cell(cell: nn.Module) -> StabilityCertificate:
    """Certificate of one :class:`~lipschitz_rnn.LipschitzRNNCell` on its current weights."""
    for attr in ("A", "W", "eps", "solver"):
        if not hasattr(cell, attr):
            raise TypeError(
                f"cell_or_layer must be a LipschitzRNNCell or a layer of them; "
                f"{type(cell).__name__} has no {attr!r}"
            )
    with torch.no_grad():
        A = cell.A.detach().to("cpu", torch.float64)
        W = cell.W.detach().to("cpu", torch.float64)
    A_sym = 0.5 * (A + A.T)
    W_sym = 0.5 * (W + W.T)
    ea = torch.linalg.eigvalsh(A_sym)
    ew = torch.linalg.eigvalsh(W_sym)
    eig_A = torch.linalg.eigvals(A).numpy()
    sw = torch.linalg.svdvals(W)
    s_max, s_min = float(sw[0]), float(sw[-1])
    n = A.shape[0]
    A_negdef = bool(ea.max() < 0)
    W_nonsing = s_min > n * np.finfo(np.float64).eps * max(s_max, 1e-300)
    # sigma_min of the negative definite A_sym is its smallest |eigenvalue| = -max eigenvalue
    sigma_min_Asym = float(-ea.max()) if A_negdef else float(ea.abs().min())
    cond_a = A_negdef and W_nonsing and sigma_min_Asym > 1.0 * s_max
    cross = A.T @ W + W.T @ A
    cond_b = (
        A_negdef
        and W_nonsing
        and bool(torch.linalg.eigvalsh(W + W.T).max() < 0)
        and bool(torch.linalg.eigvalsh(0.5 * (cross + cross.T)).min() > 0)
    )
    eps_max = max_stable_step(eig_A, cell.solver)
    R, Q = affine_step(A.numpy(), float(cell.eps), cell.solver)
    step_norm = float(np.linalg.norm(R, 2))
    forcing = float(cell.eps) * np.sqrt(n) * sum(float(np.linalg.norm(q, 2)) for q in Q)
    bound = forcing / (1.0 - step_norm) if step_norm < 1.0 else math.inf
    return StabilityCertificate(
        hidden_size=n,
        solver=cell.solver,
        eps=float(cell.eps),
        A_sym_eig_min=float(ea.min()),
        A_sym_eig_max=float(ea.max()),
        W_sym_eig_min=float(ew.min()),
        W_sym_eig_max=float(ew.max()),
        A_spectral_abscissa=float(eig_A.real.max()),
        W_sigma_min=s_min,
        W_sigma_max=s_max,
        A_sym_negative_definite=A_negdef,
        W_nonsingular=bool(W_nonsing),
        condition_a=bool(cond_a),
        condition_b=bool(cond_b),
        globally_stable=bool(cond_a or cond_b),
        max_stable_eps=float(eps_max),
        eps_stable=bool(cell.eps < eps_max),
        step_linear_norm=step_norm,
        bounded_state=step_norm < 1.0,
        state_bound=bound,
        parametrization=str(getattr(cell, "parametrization", "symmetric_skew")),
    )


def certify(cell_or_layer: nn.Module) -> list[StabilityCertificate]:
    """Certificates for every Lipschitz cell in ``cell_or_layer``.

    Accepts a :class:`~lipschitz_rnn.LipschitzRNNCell`, a :class:`~lipschitz_rnn.LipschitzRNN`
    (one certificate per cell, in ``layer.cells`` order) or any module containing them (e.g. a
    ``SequenceModel``). Always returns a list. Raises TypeError when there is no Lipschitz cell.
    """
    if not isinstance(cell_or_layer, nn.Module):
        raise TypeError(f"cell_or_layer must be an nn.Module, got {type(cell_or_layer).__name__}")
    cells = [m for m in cell_or_layer.modules() if isinstance(m, LipschitzRNNCell)]
    if not cells:
        raise TypeError(
            f"cell_or_layer must contain a LipschitzRNNCell; {type(cell_or_layer).__name__} has none"
        )
    return [certify_cell(c) for c in cells]
