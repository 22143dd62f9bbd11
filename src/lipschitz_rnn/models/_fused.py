"""Fused Lipschitz recurrence (placeholder until the fast path lands: never selected)."""

from __future__ import annotations

from torch import Tensor


def fused_available(solver: str, u: Tensor) -> bool:
    return False


def lipschitz_scan(u: Tensor, h0: Tensor, A: Tensor, W: Tensor, eps: float, solver: str) -> Tensor:
    raise NotImplementedError("the fused Lipschitz scan has not landed yet")
