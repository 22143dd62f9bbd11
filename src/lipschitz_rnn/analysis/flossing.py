"""Gradient flossing: a differentiable Lyapunov spectrum, pushed toward a target.

Engelken (NeurIPS 2023, arXiv 2312.17306) regularises a recurrent network through its first
``k`` Lyapunov exponents: the QR estimate of :func:`~lipschitz_rnn.analysis.lyapunov_spectrum`
is differentiable in the network's parameters, so the loss

    L = mean over sequences b and exponents i <= k of (lambda_{b,i} - target)^2

can be minimised by gradient descent ("flossing") before and during training. Exponents near 0
keep the long-term Jacobian ``J_T ... J_1`` well conditioned along ``k`` directions, which lets
backpropagation through time carry gradients over long delays.

:func:`flossing_loss` runs the same estimator loop as ``lyapunov_spectrum`` (the same systems,
the same analytic tangent maps of every unit, the same QR machinery) with autograd recording it:
its value is ``mean((exponents - target)^2)`` of the exponents that ``lyapunov_spectrum``
returns for the same arguments, to round-off. A block of ``L`` steps between QRs has the same
derivative as ``L`` single-step QRs in exact arithmetic (the R factor of a product is the
product of the R factors), so the default ``reorth_every="auto"`` differentiates the textbook
QR-every-step estimate at a fraction of its cost. Under autograd each QR is differentiated by
the thin QR's own derivative (:class:`~lipschitz_rnn.analysis._qr._RowsQR`: two GEMMs and a
triangular solve), not through the algorithm's steps, and ``"auto"`` plans its blocks for that
cost (closer to the precision bounds, and on the CPU Householder QR where the alignment limits
Cholesky-QR's blocks: see :class:`~lipschitz_rnn.analysis._qr.AutoBlocks`); every block still
passes the same checks.

How the parameters reach autograd: for an ``nn.Module`` system the module is called through
``torch.func.functional_call`` with its parameters cast to ``dtype`` (a differentiable cast), so
gradients land on the module's own parameters, in their own dtype; nothing is copied or
modified. A plain callable ``step(h, x)`` is differentiated with respect to whatever tensors it
closes over (they must already be ``dtype``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_float
from .lyapunov import _spectrum_sums

__all__ = ["flossing_loss"]


class _Call(nn.Module):
    """``forward(fn) = fn(module)``: lets ``functional_call`` swap the module's tensors for the
    duration of any computation on it."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, fn):
        return fn(self.module)


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t.to(dtype) if t.is_floating_point() else t


def with_tensors_as(system: Any, dtype: torch.dtype, fn):
    """``fn(system)`` with a module's floating parameters and buffers seen as ``dtype`` by
    autograd-tracked casts (a plain callable is passed as it is)."""
    if not isinstance(system, nn.Module):
        return fn(system)
    swapped = {f"module.{n}": _cast(p, dtype) for n, p in system.named_parameters()}
    swapped.update({f"module.{n}": _cast(b, dtype) for n, b in system.named_buffers()})
    return torch.func.functional_call(_Call(system), swapped, (fn,), strict=False)


def flossing_loss(
    system: Any,
    inputs: Tensor | None = None,
    *,
    target: float = 0.0,
    steps: int | None = None,
    h0: Any = None,
    k: int | None = None,
    warmup: int = 0,
    reorth_every: int | str = "auto",
    dt: float = 1.0,
    batch_first: bool = False,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """The gradient-flossing loss ``mean((lambda_i - target)^2)`` of the first ``k`` exponents.

    Args:
        system: anything :func:`~lipschitz_rnn.analysis.lyapunov_spectrum` accepts: a unit or
            layer of :func:`lipschitz_rnn.models.build` (multi-layer stacks included),
            ``torch.nn.RNN``/``LSTM``/``GRU`` (an LSTM over ``(h, c)``), their cells, a
            ``SequenceModel``, or a callable ``step(h, x)`` whose parameters it closes over.
        inputs: (T, batch, features) driving inputs, as for ``lyapunov_spectrum``.
        target: the value every exponent is pushed toward (0: neither expanding nor
            contracting; per unit time when ``dt`` is set).
        steps: as for :func:`~lipschitz_rnn.analysis.lyapunov_spectrum` (so are all the
            arguments below); the loss averages the same ``(batch, k)`` exponents that it
            returns.
        h0: the initial state.
        k: the number of exponents pushed toward ``target`` (default: all).
        warmup: steps run first and not averaged (they are in the graph).
        reorth_every: steps between re-orthonormalisations, or ``"auto"``.
        dt: the time one step represents.
        batch_first: whether ``inputs`` are batch-major.
        generator: draws the random initial tangent basis (default: seeded with 0).
        dtype: the precision of the run (default float64).

    Returns:
        A scalar tensor (``dtype``) that autograd differentiates with respect to the system's
        parameters (and ``inputs`` / ``h0`` when they require grad). Warmup steps are part of
        the computation graph: the gradient is that of the exponents as estimated.

    Raises:
        TypeError: an argument of the wrong type, named (as ``lyapunov_spectrum``).
        ValueError: an argument out of range, named (``k`` above the state size, ...).
        NonFiniteStateError: the trajectory or the tangent basis became non-finite; the
            message names the step.
    """
    target = check_float("target", target)

    def run(sys_: Any) -> Tensor:
        sums = _spectrum_sums(
            sys_, inputs, steps=steps, h0=h0, k=k, warmup=warmup, reorth_every=reorth_every,
            dt=dt, batch_first=batch_first, generator=generator, dtype=dtype,
            differentiable=True,
        )
        exponents = (sums.acc / (sums.steps * sums.dt)).sort(-1, descending=True).values
        return ((exponents - target) ** 2).mean()

    return with_tensors_as(system, dtype, run)
