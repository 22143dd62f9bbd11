"""Forward-mode tangents of generic maps, pushed through as rows.

:func:`jvp_rows` returns ``(fn(*primals), J fn . tangents)`` for tangent vectors stored as the
rows of (batch, k, ...) tensors, for any row-wise ``fn`` (batch elements independent): dense
per-row Jacobians by reverse mode for small outputs (``n_out <= DENSE_MAX``), else
``torch.func.jvp`` under ``torch.func.vmap`` over the k tangent rows (falling back to a loop of k
jvps if ``fn`` cannot be vmapped). The Lyapunov estimator uses it for callables and for cells
without a hand-written tangent map (:mod:`._units`, :mod:`._systems`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["DENSE_MAX", "jvp_rows"]


#: output sizes up to this use dense reverse-mode Jacobians for generic maps; larger ones
#: forward-mode jvp under vmap over the k tangent rows.
DENSE_MAX = 16


def jvp_rows(
    fn: Callable[..., Tensor], primals: tuple, tangents: tuple, state: dict, n_out: int
) -> tuple[Tensor, Tensor]:
    """``(fn(*primals), J fn . tangents)`` for tangents given as rows (batch, k, ...).

    ``None`` tangents are zero. ``fn`` must act row-wise (batch elements independent) and
    return (batch, n_out).

    * ``n_out <= DENSE_MAX``: the per-row Jacobians by reverse mode (one backward pass over
      the batch replicated ``n_out`` times with one-hot output cotangents, see
      :func:`_rows_by_reverse`), then ``V @ J^T`` -- the ``jacrev`` route, cheapest for small
      states.
    * otherwise ``torch.func.jvp`` under ``torch.func.vmap`` over the k rows; if vmap fails
      once (an op without a batching rule, data-dependent control flow),
      ``state['loop'] = True`` switches to a Python loop of k jvps for the rest of the run.

    (In current torch, forward-mode AD through an op mixing a dual tensor with a plain one --
    ``eps * h`` -- is ~100x slower than the op itself, which is why small maps go reverse.)

    ``state['differentiable'] = True`` (gradient flossing) always takes the jvp route: its
    results stay differentiable, by ordinary autograd, with respect to the tensors ``fn``
    closes over (the reverse route detaches them).
    """
    live = [i for i, t in enumerate(tangents) if t is not None]
    if n_out <= DENSE_MAX and not state.get("differentiable"):
        return _rows_by_reverse(fn, primals, tangents, live, state, n_out)
    fixed = list(primals)

    def restricted(*args):
        full = list(fixed)
        for i, a in zip(live, args, strict=True):
            full[i] = a
        return fn(*full)

    p = tuple(primals[i] for i in live)
    t = tuple(tangents[i] for i in live)
    out = fn(*primals)
    if not state.get("loop"):
        try:
            return out, torch.func.vmap(
                lambda *tt: torch.func.jvp(restricted, p, tt)[1], in_dims=1, out_dims=1
            )(*t)
        except Exception:  # noqa: BLE001 - any vmap failure: use the loop from now on
            state["loop"] = True
    k = t[0].shape[1]
    cols = [torch.func.jvp(restricted, p, tuple(x[:, j] for x in t))[1] for j in range(k)]
    return out, torch.stack(cols, 1)


def _rows_by_reverse(fn, primals, tangents, live, state, m) -> tuple[Tensor, Tensor]:
    """Dense per-row Jacobians by reverse mode, then ``V @ J^T``.

    First choice: ONE backward pass over the batch replicated ``m`` times (replica ``r`` gets
    the one-hot cotangent ``e_r``), which needs ``fn`` to accept any batch size; if that fails
    once (an exception or a wrong shape), ``state['no_replicas'] = True`` switches to ``m``
    backward passes on the original batch.
    """
    B = primals[live[0]].shape[0]
    out = J = None
    if not state.get("no_replicas"):
        try:
            out, J = _jac_replicated(fn, primals, live, B, m)
        except Exception:  # noqa: BLE001 - any failure: use the per-output passes from now on
            state["no_replicas"] = True
    if J is None:
        out, J = _jac_by_rows(fn, primals, live)
    res = None
    for j, i in enumerate(live):
        term = tangents[i] @ J[j].mT  # (B, k, m)
        res = term if res is None else res + term
    return out, res


def _check_out(out: Any, B: int) -> Tensor:
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != B:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the step function must return a (batch={B}, n) tensor, got {got}")
    return out


def _jac_replicated(fn, primals, live, B, m):
    with torch.enable_grad():
        ps = []
        for i, p in enumerate(primals):
            if isinstance(p, Tensor):
                p = p.detach().repeat((m,) + (1,) * (p.dim() - 1))
                if i in live:
                    p.requires_grad_(True)
            ps.append(p)
        out = _check_out(fn(*ps), m * B)
        if out.shape[1] != m:
            raise ValueError(f"expected {m} outputs, got {out.shape[1]}")
        g = torch.zeros(m, B, m, dtype=out.dtype, device=out.device)
        ar = torch.arange(m, device=out.device)
        g[ar, :, ar] = 1.0
        wrt = [ps[i] for i in live]
        if out.requires_grad:
            grads = torch.autograd.grad(out, wrt, g.reshape(m * B, m), allow_unused=True)
        else:
            grads = [None] * len(wrt)
    Js = []
    for w, gr in zip(wrt, grads, strict=True):
        gr = torch.zeros_like(w) if gr is None else gr
        Js.append(gr.reshape(m, B, -1).transpose(0, 1))  # (B, m, n_i)
    return out[:B].detach(), Js


def _jac_by_rows(fn, primals, live):
    with torch.enable_grad():
        ps = [
            p.detach().requires_grad_(i in live) if isinstance(p, Tensor) else p
            for i, p in enumerate(primals)
        ]
        B = ps[live[0]].shape[0]
        out = _check_out(fn(*ps), B)
        m = out.shape[1]
        wrt = [ps[i] for i in live]
        rows: list[list[Tensor]] = [[] for _ in live]
        for r in range(m):
            g = torch.zeros_like(out)
            g[:, r] = 1.0
            if out.requires_grad:
                grads = torch.autograd.grad(out, wrt, g, retain_graph=r < m - 1, allow_unused=True)
            else:
                grads = [None] * len(wrt)
            for j, gr in enumerate(grads):
                rows[j].append(torch.zeros_like(wrt[j]) if gr is None else gr)
    return out.detach(), [torch.stack(r, 1) for r in rows]
