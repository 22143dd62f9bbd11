"""Shared problems and the dense reference for the Lyapunov-spectrum tests (tests/test_lyapunov.py).

* maps with published spectra: Hénon, logistic, Lorenz-63 (RK4 step as a map), linear maps
  (non-normal, and with exponents spread over +-5 per step), a linear map that switches from a
  rotation to a wide spectrum;
* :func:`dense_reference`: the textbook QR method written independently of the library -- the
  full Jacobian of the model's own one-step forward by torch.autograd.functional.jacobian, J @ Q,
  Householder QR (torch.linalg.qr) every step, float64;
* flat-state <-> torch-style ``hx`` conversions of the documented state layout (per layer
  ``[h, c]`` / ``[y, z]``, layers concatenated in order).
"""

from __future__ import annotations

import math

import torch
from torch import nn

# --- published values ---------------------------------------------------------------------------
HENON_A, HENON_B = 1.4, 0.3
HENON_EXPONENTS = (0.41922, -1.62319)  # Sprott, "Chaos and Time-Series Analysis" (2003)
LOGISTIC_EXPONENT = math.log(2.0)  # r = 4, exactly
LORENZ_SIGMA, LORENZ_RHO, LORENZ_BETA = 10.0, 28.0, 8.0 / 3.0
LORENZ_EXPONENTS = (0.9056, 0.0, -14.5723)  # Sprott (2003); sum = -(sigma + 1 + beta)
LORENZ_SUM = -(LORENZ_SIGMA + 1.0 + LORENZ_BETA)


def henon(h: torch.Tensor) -> torch.Tensor:
    x, y = h[:, 0], h[:, 1]
    return torch.stack([1.0 - HENON_A * x * x + y, HENON_B * x], -1)


def logistic(h: torch.Tensor) -> torch.Tensor:
    return 4.0 * h * (1.0 - h)


def lorenz_field(s: torch.Tensor) -> torch.Tensor:
    x, y, z = s.unbind(-1)
    return torch.stack(
        [LORENZ_SIGMA * (y - x), x * (LORENZ_RHO - z) - y, x * y - LORENZ_BETA * z], -1
    )


def lorenz_rk4(dt: float):
    """The classical RK4 step of Lorenz-63 as a map ``step(h)``."""

    def step(s: torch.Tensor) -> torch.Tensor:
        k1 = lorenz_field(s)
        k2 = lorenz_field(s + (0.5 * dt) * k1)
        k3 = lorenz_field(s + (0.5 * dt) * k2)
        k4 = lorenz_field(s + dt * k3)
        return s + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

    return step


def linear_map(M: torch.Tensor):
    """``h -> h M^T`` (column maths ``h' = M h``), called as ``step(h, None)``."""

    def step(h, x):
        return h @ M.T.to(h.dtype)

    return step


def nonnormal_matrix() -> tuple[torch.Tensor, list[float]]:
    """Block-diagonal 5x5: upper-triangular [[0.9, 40, -25], [0, 0.5, 30], [0, 0, 0.2]] (very
    non-normal) and a rotation by 1 rad scaled by 1.1 (complex pair); exact exponents are the
    log-moduli of the eigenvalues."""
    M = torch.zeros(5, 5, dtype=torch.float64)
    M[:3, :3] = torch.tensor([[0.9, 40.0, -25.0], [0.0, 0.5, 30.0], [0.0, 0.0, 0.2]])
    c, s = math.cos(1.0), math.sin(1.0)
    M[3:, 3:] = 1.1 * torch.tensor([[c, -s], [s, c]])
    exact = sorted(
        [math.log(0.9), math.log(0.5), math.log(0.2), math.log(1.1), math.log(1.1)], reverse=True
    )
    return M, exact


def wide_linear_matrix(
    n: int = 5, spread: float = 5.0, seed: int = 3
) -> tuple[torch.Tensor, list[float]]:
    """A non-normal ``S diag(e^{lambda}) S^{-1}`` with exponents evenly spread over
    ``[-spread, spread]`` per step (``S = I + 0.5 N(0, 1)``, seeded); returns (M, exponents
    descending)."""
    g = torch.Generator().manual_seed(seed)
    S = torch.eye(n, dtype=torch.float64) + 0.5 * torch.randn(
        n, n, generator=g, dtype=torch.float64
    )
    exps = torch.linspace(spread, -spread, n, dtype=torch.float64)
    return S @ torch.diag(exps.exp()) @ torch.linalg.inv(S), exps.tolist()


def switching_linear(M: torch.Tensor, seed: int = 4):
    """``step(h, x)``: a random rotation (all exponents 0) where ``x[:, 0] == 0``, ``h -> M h``
    where it is 1 -- a quiet system whose spectrum widens suddenly."""
    n = M.shape[0]
    g = torch.Generator().manual_seed(seed)
    rot, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))

    def step(h, x):
        s = x[:, :1]
        return (1 - s) * (h @ rot.T.to(h.dtype)) + s * (h @ M.T.to(h.dtype))

    return step


# --- state layout -------------------------------------------------------------------------------
def flat_to_hx(h: torch.Tensor, num_layers: int, comp_sizes: list[int]):
    """Flat (B, n) -> torch-style hx: (L, B, H) or a tuple of those, per the documented layout."""
    per = sum(comp_sizes)
    comps: list[list[torch.Tensor]] = [[] for _ in comp_sizes]
    for layer in range(num_layers):
        block = h[:, layer * per : (layer + 1) * per]
        o = 0
        for c, size in enumerate(comp_sizes):
            comps[c].append(block[:, o : o + size])
            o += size
    stacked = [torch.stack(c, 0) for c in comps]
    return stacked[0] if len(stacked) == 1 else tuple(stacked)


def hx_to_flat(hx) -> torch.Tensor:
    parts = hx if isinstance(hx, (tuple, list)) else (hx,)
    L = parts[0].shape[0]
    return torch.cat([torch.cat([p[layer] for p in parts], -1) for layer in range(L)], -1)


def layer_step_fn(layer: nn.Module, num_layers: int, comp_sizes: list[int]):
    """One time step of a torch-interface layer (its own forward) on flat states."""

    def step(h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        _, h_n = layer(x.unsqueeze(0), flat_to_hx(h, num_layers, comp_sizes))
        return hx_to_flat(h_n)

    return step


def cell_step_fn(cell: nn.Module):
    """One step of a package cell via its own three pieces."""
    ctx = cell.recurrence()

    def step(h, x):
        return cell.step(h, cell.input_projection(x), ctx)

    return step


# --- the reference --------------------------------------------------------------------------------
def dense_reference(step, inputs, h0, Q0, *, warmup: int = 0, dt: float = 1.0):
    """Textbook QR method: dense J by autograd, J @ Q, Householder QR every step.

    ``step(h, x)`` on (B, n) float64 states; ``inputs`` (T, B, F) or None (then T = len of a
    list of None); ``Q0`` (n, k) the shared initial basis. Returns (exponents (B, k) sorted
    descending, list of log|det J_t| (B,) per averaged step).
    """
    T = inputs.shape[0]
    B, n = h0.shape
    k = Q0.shape[1]
    h = h0.clone()
    Q = Q0.unsqueeze(0).expand(B, n, k).clone()
    acc = torch.zeros(B, k, dtype=torch.float64)
    logdets = []
    idx = torch.arange(B)
    for t in range(T):
        x = inputs[t]
        J = torch.autograd.functional.jacobian(lambda hh, x=x: step(hh, x), h)  # (B,n,B,n)
        J = J[idx, :, idx, :]  # per-sequence blocks (B, n, n)
        with torch.no_grad():
            h = step(h, x)
        Q, R = torch.linalg.qr(J @ Q)
        if t >= warmup:
            acc += torch.log(torch.diagonal(R, dim1=-2, dim2=-1).abs())
            logdets.append(torch.linalg.slogdet(J)[1])
    ex = acc / ((T - warmup) * dt)
    return ex.sort(-1, descending=True).values, logdets
