"""Kernels of the fused Lipschitz scan: forward and hand-derived backward through time.

The PyTorch kernels (``out=``/in-place torch ops into preallocated buffers, no autograd) and the
calls into the native CPU kernels (:mod:`._native`) for the same maths. The autograd Function,
its switches and the public entry point are in :mod:`lipschitz_rnn.models.fused`; the derivation,
what is saved and why it is written this way are in ``docs/fused_scan.md``. Scheme coefficients
come from :mod:`.solvers` (:func:`~.solvers.two_stage_form`).

Entry points: :func:`forward` and :func:`backward` (both called under ``no_grad``). Arrays that
grow with T come from :func:`._workspace.empty` (storage reused across calls once nothing holds
it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _workspace
from .solvers import two_stage_form

__all__ = ["forward", "backward", "BLOCK_BYTES"]

_tanh_backward = torch.ops.aten.tanh_backward.grad_input
#: each backward work buffer holds about this many bytes of (B, H) rows (see _block_steps)
BLOCK_BYTES = 4 << 20


# ---------------------------------------------------------------------------------------------
# forward kernels (no autograd; called under no_grad)
def contiguous(x: Tensor) -> Tensor:
    """``x`` if contiguous, else a contiguous copy in workspace storage (e.g. the stride-0
    gradient of ``out.sum()``)."""
    return x if x.is_contiguous() else _workspace.empty(x.shape, x).copy_(x)


def _t(M: Tensor) -> Tensor:
    """``M^T`` as a contiguous matrix (CPU GEMMs are markedly slower with a transposed view)."""
    return M.t().contiguous()


def _euler_forward(u: Tensor, h0: Tensor, A: Tensor, W: Tensor, eps: float, save: bool):
    T, B, H = u.shape
    Wt, At = _t(W), _t(A)
    hs = _workspace.empty((T, B, H), u)
    S = _workspace.empty((T, B, H), u) if save else None
    s_list = S.unbind(0) if save else [u.new_empty(B, H)] * T
    f = u.new_empty(B, H)
    h = h0
    for u_t, h_t, s in zip(u.unbind(0), hs.unbind(0), s_list, strict=True):
        torch.addmm(u_t, h, Wt, out=s).tanh_()  # s = tanh(h W^T + u_t)
        torch.addmm(s, h, At, out=f)  # f = h A^T + s
        torch.add(h, f, alpha=eps, out=h_t)  # h' = h + eps f
        h = h_t
    return hs, ((S,) if save else ())


def _two_stage_forward(
    u: Tensor, h0: Tensor, A: Tensor, W: Tensor, eps: float, solver: str, save: bool
):
    T, B, H = u.shape
    a, _, _, b, sum_both = two_stage_form(solver, eps)
    Wt, At = _t(W), _t(A)
    f1, f2 = u.new_empty(B, H), u.new_empty(B, H)
    hs = _workspace.empty((T, B, H), u)
    if save:
        S1, Y, S2 = (_workspace.empty((T, B, H), u) for _ in range(3))
        s1l, yl, s2l = S1.unbind(0), Y.unbind(0), S2.unbind(0)
    else:
        s1l, yl, s2l = ([u.new_empty(B, H)] * T for _ in range(3))
    h = h0
    for u_t, h_t, s1, y, s2 in zip(u.unbind(0), hs.unbind(0), s1l, yl, s2l, strict=True):
        torch.addmm(u_t, h, Wt, out=s1).tanh_()
        torch.add(h, torch.addmm(s1, h, At, out=f1), alpha=a, out=y)  # y = h + a f(h)
        torch.addmm(u_t, y, Wt, out=s2).tanh_()
        torch.addmm(s2, y, At, out=f2)  # f(y)
        if sum_both:  # heun: h' = h + (eps/2) (f(h) + f(y))
            f2.add_(f1)
        torch.add(h, f2, alpha=b, out=h_t)  # rk2: h' = h + eps f(y)
        h = h_t
    return hs, ((S1, Y, S2) if save else ())


def _native_forward(native, u, h0, A, W, eps, solver, save):
    AWt = torch.cat([A, W], 0).t().contiguous()  # (H, 2H): one product per stage
    u, h0 = contiguous(u), h0.contiguous()
    if solver == "euler":
        hs, S = native.euler_forward(u, h0, AWt, eps, save)
        return hs, ((S,) if save else ())
    a, _, _, b, sum_both = two_stage_form(solver, eps)
    hs, *acts = native.two_stage_forward(u, h0, AWt, a, b, sum_both, save)
    return hs, tuple(acts)


def forward(u, h0, A, W, eps, solver, save, native=None):
    """``(hs, saved stage values)``: the native kernels when ``native`` is given, else PyTorch's."""
    if native is not None:
        return _native_forward(native, u, h0, A, W, eps, solver, save)
    if solver == "euler":
        return _euler_forward(u, h0, A, W, eps, save)
    return _two_stage_forward(u, h0, A, W, eps, solver, save)


# ---------------------------------------------------------------------------------------------
# backward kernels
def _flat(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1])


def _accumulate_wgrad(acc: Tensor, X: Tensor, states: Tensor) -> None:
    """``acc += sum_t X_t^T states_t``: one GEMM (H, n*B) @ (n*B, H) over a block of steps."""
    acc.addmm_(_flat(X).t(), _flat(states))


def _accumulate_wgrad_prev(acc: Tensor, X: Tensor, hs: Tensor, h0: Tensor, t0: int) -> None:
    """``acc += sum_i X_i^T (state entering step t0 + i)``, without copying ``hs``."""
    if t0 > 0:
        _accumulate_wgrad(acc, X, hs[t0 - 1 : t0 - 1 + X.shape[0]])
        return
    acc.addmm_(X[0].t(), h0)
    if X.shape[0] > 1:
        _accumulate_wgrad(acc, X[1:], hs[: X.shape[0] - 1])


class _Recompute:
    """Rebuilds the stage values of a block of steps from the stored states (``checkpoint_every``):
    the forward's formulas applied to the whole block at once (large GEMMs, no recurrence), into
    buffers allocated once per backward."""

    def __init__(self, solver, eps, A, W, hs, h0, u, k):
        _, B, H = hs.shape
        self.solver, self.hs, self.h0, self.u = solver, hs, h0, u
        self.Wt = _t(W)
        self.prev = _workspace.empty((k, B, H), hs)  # entering states of the first block only
        n_stage = 1 if solver == "euler" else 3
        self.bufs = [_workspace.empty((k, B, H), hs) for _ in range(n_stage)]
        if solver != "euler":
            a = two_stage_form(solver, eps)[0]
            self.a, self.At = a, _t(A)

    def __call__(self, t0: int, t1: int) -> tuple[Tensor, ...]:
        n = t1 - t0
        if t0 > 0:
            hp = self.hs[t0 - 1 : t1 - 1]
        else:
            hp = self.prev[:n]
            hp[0].copy_(self.h0)
            hp[1:].copy_(self.hs[: n - 1])
        hp, u_c = _flat(hp), _flat(self.u[t0:t1])
        out = [buf[:n] for buf in self.bufs]
        if self.solver == "euler":
            torch.addmm(u_c, hp, self.Wt, out=_flat(out[0])).tanh_()
            return (out[0],)
        S1, Y, S2 = (_flat(x) for x in out)
        torch.addmm(u_c, hp, self.Wt, out=S1).tanh_()
        f = torch.addmm(S1, hp, self.At, out=S2)  # f(h), S2 as scratch until overwritten
        torch.add(hp, f, alpha=self.a, out=Y)  # y = h + a f(h)
        torch.addmm(u_c, Y, self.Wt, out=S2).tanh_()
        return tuple(out)


def _block_steps(T: int, B: int, H: int, itemsize: int, every: int | None) -> int:
    """Steps per backward block: ``every`` if set, else about ``BLOCK_BYTES`` of (B, H) buffers."""
    if every is not None:
        return min(every, T)
    return max(1, min(T, BLOCK_BYTES // max(1, B * H * itemsize)))


def _blocks(T: int, k: int) -> list[tuple[int, int]]:
    """``[t0, t1)`` blocks of ``k`` steps covering ``0..T``, last block first."""
    return [(t0, min(t0 + k, T)) for t0 in range(0, T, k)][::-1]


def _euler_backward(G, u, h0, A, W, hs, saved, eps, every, needs):
    T, B, H = hs.shape
    need_u, need_h0, need_w = needs
    # e_t = e_{t+1} + e_{t+1} (eps A) + q_t (eps W) + eps G_{t-1} (identity never folded in)
    MA, MW = eps * A, eps * W
    dA = G.new_zeros(H, H) if need_w else None
    dW = G.new_zeros(H, H) if need_w else None
    dh0 = None
    k = _block_steps(T, B, H, G.element_size(), every)
    recompute = _Recompute("euler", eps, A, W, hs, h0, u, k) if every is not None else None
    E_buf = _workspace.empty((k, B, H), G)  # e_{t+1} = eps dL/dh_{t+1} of one block
    # q_t = dL/du_t is written straight into the returned gradient (a block buffer if unused)
    du = _workspace.empty((T, B, H), G) if need_u else None
    Q_buf = None if need_u else _workspace.empty((k, B, H), G)
    carry = G.new_empty(B, H)  # step t0's share of e_{t0}, handed to the block before
    for t0, t1 in _blocks(T, k):
        n = t1 - t0
        E = E_buf[:n]
        Q = du[t0:t1] if need_u else Q_buf[:n]
        torch.mul(G[t0:t1], eps, out=E)  # e_{t+1} = eps G_t + (step t+1's share, added below)
        if t1 < T:
            E[n - 1].add_(carry)
        (S,) = recompute(t0, t1) if recompute is not None else (saved[0][t0:t1],)
        El, Ql, Sl = E.unbind(0), Q.unbind(0), S.unbind(0)
        for i in range(n - 1, -1, -1):
            _tanh_backward(El[i], Sl[i], grad_input=Ql[i])  # q_t = e_{t+1} (1 - s_t^2)
            if i > 0:
                El[i - 1].add_(El[i]).addmm_(El[i], MA).addmm_(Ql[i], MW)
            elif t0 > 0:
                torch.addmm(El[0], El[0], MA, out=carry).addmm_(Ql[0], MW)
            elif need_h0:
                dh0 = torch.addmm(El[0], El[0], MA).addmm_(Ql[0], MW).div_(eps)
        if need_w:  # dA = sum_t e_{t+1}^T h_t, dW = sum_t q_t^T h_t
            _accumulate_wgrad_prev(dA, E, hs, h0, t0)
            _accumulate_wgrad_prev(dW, Q, hs, h0, t0)
    return du, dh0, dA, dW


def _two_stage_backward(G, u, h0, A, W, hs, saved, eps, solver, every, needs):
    T, B, H = hs.shape
    need_u, need_h0, need_w = needs
    a, c_h, c_y, b, _ = two_stage_form(solver, eps)
    # stage 2 -> 1: e1 = (a c_y / b) e2 + e2 (a A) + q2 (a W)
    M2A, M2W, beta2 = a * A, a * W, a * c_y / b
    # stage 1 -> previous step: e2' = c_h e2 + (b/a) e1 + e1 (b A) + q1 (b W) + b G
    M1A, M1W, r = b * A, b * W, b / a
    dA = G.new_zeros(H, H) if need_w else None
    dW = G.new_zeros(H, H) if need_w else None
    dh0 = None
    k = _block_steps(T, B, H, G.element_size(), every)
    recompute = _Recompute(solver, eps, A, W, hs, h0, u, k) if every is not None else None
    E1_buf, Q1_buf, E2_buf, Q2_buf = (_workspace.empty((k, B, H), G) for _ in range(4))
    du = _workspace.empty((T, B, H), G) if need_u else None
    carry = G.new_empty(B, H)
    for t0, t1 in _blocks(T, k):
        n = t1 - t0
        E1, Q1, E2, Q2 = E1_buf[:n], Q1_buf[:n], E2_buf[:n], Q2_buf[:n]
        torch.mul(G[t0:t1], b, out=E2)
        if t1 < T:
            E2[n - 1].add_(carry)
        if recompute is not None:
            S1, Y, S2 = recompute(t0, t1)
        else:
            S1, Y, S2 = (x[t0:t1] for x in saved)
        E1l, Q1l, E2l, Q2l = E1.unbind(0), Q1.unbind(0), E2.unbind(0), Q2.unbind(0)
        S1l, S2l = S1.unbind(0), S2.unbind(0)
        dul = du[t0:t1].unbind(0) if need_u else None
        for i in range(n - 1, -1, -1):
            _tanh_backward(E2l[i], S2l[i], grad_input=Q2l[i])
            if beta2 == 0.0:
                torch.mm(E2l[i], M2A, out=E1l[i])
            else:
                torch.addmm(E2l[i], E2l[i], M2A, beta=beta2, out=E1l[i])
            E1l[i].addmm_(Q2l[i], M2W)
            _tanh_backward(E1l[i], S1l[i], grad_input=Q1l[i])
            if need_u:
                torch.add(Q1l[i], Q2l[i], out=dul[i])
            if i > 0:
                E2l[i - 1].add_(E2l[i], alpha=c_h).add_(E1l[i], alpha=r)
                E2l[i - 1].addmm_(E1l[i], M1A).addmm_(Q1l[i], M1W)
            elif t0 > 0:
                torch.add(E1l[0], E2l[0], alpha=c_h / r, out=carry).mul_(r)
                carry.addmm_(E1l[0], M1A).addmm_(Q1l[0], M1W)
            elif need_h0:
                dh0 = torch.add(E1l[0], E2l[0], alpha=c_h / r).mul_(r)
                dh0.addmm_(E1l[0], M1A).addmm_(Q1l[0], M1W).div_(b)
        if need_w:  # dA = sum e2^T y + e1^T h, dW = sum q2^T y + q1^T h
            _accumulate_wgrad(dA, E2, Y)
            _accumulate_wgrad(dW, Q2, Y)
            _accumulate_wgrad_prev(dA, E1, hs, h0, t0)
            _accumulate_wgrad_prev(dW, Q1, hs, h0, t0)
    return du, dh0, dA, dW


def _native_backward(native, G, u, h0, A, W, hs, saved, eps, solver, every, needs):
    """Backward with the native kernels: the recurrent adjoint per step and the weight gradients
    per block of steps, in C++ (row blocks in parallel). With ``every`` set, the stage values are
    rebuilt block by block (:class:`_Recompute`) and the kernels run one block at a time,
    handing the adjoint from block to block."""
    _, _, need_w = needs
    T, B, H = hs.shape
    G, h0 = contiguous(G), h0.contiguous()
    AW = torch.cat([A, W], 0)  # (2H, H)
    parts = native.wgrad_buffer(B, H, G) if need_w else None
    du = _workspace.empty(G.shape, G)
    if solver == "euler":
        M, scale = AW * eps, eps
    else:
        a, c_h, c_y, b, _ = two_stage_form(solver, eps)
        M2, M1, scale = AW * a, AW * b, b
    k = _block_steps(T, B, H, G.element_size(), every) if every is not None else T
    recompute = _Recompute(solver, eps, A, W, hs, h0, u, k) if every is not None else None
    carry = None
    for t0, t1 in _blocks(T, k):
        stage = recompute(t0, t1) if recompute is not None else tuple(x[t0:t1] for x in saved)
        block = (G[t0:t1],)
        states = (hs[t0:t1], h0 if t0 == 0 else hs[t0 - 1])
        out = {"carry": carry, "du": du[t0:t1], "parts": parts}
        if solver == "euler":
            _, carry = native.euler_backward(*block, stage[0], M, eps, *states, **out)
        else:
            S1, Y, S2 = stage
            coef = (b, a * c_y / b, c_h, b / a)
            _, carry = native.two_stage_backward(*block, S1, S2, Y, M2, M1, *coef, *states, **out)
    dh0 = carry.div_(scale)
    dA = dW = None
    if need_w:
        dAW = parts.sum(0)
        dA, dW = dAW[:H], dAW[H:]
    return du, dh0, dA, dW


def backward(native, G, u, h0, A, W, hs, saved, eps, solver, every, needs):
    """``(du, dh0, dA, dW)`` for the output gradient ``G`` (entries not in ``needs`` may be
    None): the native kernels when ``native`` is given, else PyTorch's."""
    if native is not None:
        return _native_backward(native, G, u, h0, A, W, hs, saved, eps, solver, every, needs)
    if solver == "euler":
        return _euler_backward(G, u, h0, A, W, hs, saved, eps, every, needs)
    return _two_stage_backward(G, u, h0, A, W, hs, saved, eps, solver, every, needs)
