"""The estimator's whole run, for one Elman layer under autograd, as ONE autograd node.

Gradient flossing differentiates the QR estimate of the Lyapunov exponents. For a one-layer
tanh/ReLU ``torch.nn.RNN`` (or ``RNNCell``) the run is a chain of blocks, each a few steps of
the state and its tangent rows (:func:`._units.elman_steps`) followed by a QR of the rows
(:class:`._qr.Orthonormalizer`). Recorded by autograd, every block costs two nodes, their saved
tensors and the engine's scheduling -- at flossing's sizes (N ~ 80, batch 1, blocks of ~5
steps) as much as the QR's own arithmetic. Here the estimator's loop runs once, outside
autograd, inside :class:`_ElmanRun`'s forward; a :class:`Tape` keeps what each *accepted*
block's derivative needs (a block that ``reorth_every="auto"`` rejects and redoes leaves
nothing), and the backward walks the tape in reverse: per block the thin QR's derivative
(:func:`._qr.rows_qr_backward`) and then the steps' (:func:`._units.elman_steps_backward`).

The inputs of the node are the initial state, the projected inputs ``U`` (T, B, n), ``W^T``
and the recurrent bias; its output is the (B, k) float64 sums of ``log |R_jj|`` over the
averaged blocks, the same operations as the per-node path, so the same value to the bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._qr import Orthonormalizer, rows_qr_backward
from ._units import ElmanSaved, elman_steps_backward

__all__ = ["Tape", "taped_elman_run"]


class _Block:
    __slots__ = ("saved", "Vn", "L", "averaged")

    def __init__(self, saved: ElmanSaved, Vn: Tensor, L: Tensor, averaged: bool) -> None:
        self.saved, self.Vn, self.L, self.averaged = saved, Vn, L, averaged


class Tape:
    """What the backward needs, block by block: the steps' intermediates (:meth:`steps`),
    the QR's factors (:meth:`qr`), kept only when the loop :meth:`commit` s the block."""

    def __init__(self) -> None:
        self.blocks: list[_Block] = []
        self._saved: ElmanSaved | None = None
        self._qr: tuple[Tensor, Tensor] | None = None

    def steps(self, saved: ElmanSaved) -> None:
        self._saved = saved

    def qr(
        self, ortho: Orthonormalizer, V: Tensor, householder: bool
    ) -> tuple[Tensor, Tensor, float | Tensor]:
        """``ortho``'s QR of the rows ``V`` as ``(V~, logdiag, alignment)``; its factors are
        kept for the block."""
        Vn, logd, L, align = ortho.factored(V, householder)
        self._qr = (Vn, L)
        return Vn, logd, align

    def commit(self, averaged: bool) -> None:
        """Keep the block just run (its ``log |R_jj|`` summed into the output if
        ``averaged``)."""
        assert self._saved is not None and self._qr is not None
        self.blocks.append(_Block(self._saved, *self._qr, averaged))
        self._saved = self._qr = None


class _ElmanRun(torch.autograd.Function):
    """``acc = run(tape, U)`` (the estimator's loop over the drive ``U``, recording ``tape``),
    differentiated through the tape (see the module)."""

    @staticmethod
    def forward(ctx, h0, U, Wt, b_hh, relu, run):
        tape = Tape()
        acc = run(tape, U)
        ctx.tape, ctx.relu, ctx.bias = tape, relu, b_hh is not None
        ctx.shape = U.shape
        ctx.save_for_backward(Wt)
        return acc

    @staticmethod
    @once_differentiable
    def backward(ctx, gacc):
        (Wt,) = ctx.saved_tensors
        T, B, n = ctx.shape
        W = Wt.mT
        glogd = gacc.to(Wt.dtype)
        gWt = torch.zeros_like(Wt)
        gU = torch.empty(ctx.shape, dtype=Wt.dtype, device=Wt.device)
        g, G = torch.zeros(B, n, dtype=Wt.dtype, device=Wt.device), None
        end = T
        for blk in reversed(ctx.tape.blocks):
            G = rows_qr_backward(blk.Vn, blk.L, G, glogd if blk.averaged else None)
            L = blk.saved.S.shape[0]
            g, G = elman_steps_backward(blk.saved, W, ctx.relu, g, G, gWt, gU[end - L : end])
            end -= L
        gb = gU.sum((0, 1)) if ctx.bias and ctx.needs_input_grad[3] else None
        return g, gU, gWt, gb, None, None


def taped_elman_run(
    block: Any, h0: Tensor, drive: list[Tensor], run: Callable[[Tape, Tensor], Any]
) -> tuple[Tensor, Any]:
    """Run ``run(tape, U)`` (the estimator's loop over ``U``, the ``drive`` stacked (T, B, n):
    ``U[t]`` is step ``t``'s; it returns its sums, whose ``acc`` is the (B, k) float64 output)
    as one autograd node over ``block``'s parameters (``Whh_t``, ``b_hh``), the initial state
    ``h0`` and the drive. Returns the differentiable ``acc`` and the sums."""
    out: list[Any] = []

    def loop(tape: Tape, U: Tensor) -> Tensor:
        out.append(run(tape, U))
        return out[0].acc

    U = torch.stack(drive)
    acc = _ElmanRun.apply(h0, U, block.Whh_t, block.b_hh, block.relu, loop)
    return acc, out[0]
