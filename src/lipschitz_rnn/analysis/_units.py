"""Per-unit tangent maps: one recurrent layer (one direction) each.

A block advances the state of one layer and pushes its tangent vectors forward:
``tangent(h, u, V, dU) -> (h', V')`` with ``h' = F(h, u)`` and ``V' = (J V^T)^T``, ``J = dF/dh``
(the *forward* Jacobian, never its transpose). Tangent vectors are stored as rows, ``V`` is
(batch, k, n), so a shared matrix acts on all of them as ONE right-multiplication ``V @ M^T``
over ``batch * k`` rows -- the same code shape as the state update; no N x N Jacobian is formed.
``u`` is the projected input of the step and ``dU`` the tangent of ``u``: None for the first
layer, ``dx U^T`` for deeper layers fed by the layer below (see :mod:`._systems`).

Known units (column-vector maths, ``D(z) = diag(1 - tanh(z)^2)``, ``v`` a tangent of ``h``):

* Lipschitz, ``f(h) = A h + tanh(W h + u)``, ``Jf(h)[v, du] = A v + D(W h + u)(W v + du)``: the
  pair ``(h, v)`` takes one step of the cell's own scheme (:func:`models.solvers.rk_step
  <lipschitz_rnn.models.solvers.rk_step>`) with ``(y, v) -> (f(y), Jf(y)[v, du])``, e.g. euler
  ``v' = v + eps Jf(h)[v, du]``. Each stage is one GEMM of the state and one of the tangent rows
  with the stacked ``[A; W]^T`` (A v and W v together).
* ODE-RNN / antisymmetric: ``v' = v + eps D(z)(W v + du)``; gated:
  ``v' = v + eps [s_g (1 - s_a^2) (W_a v + du_a) + s_g (1 - s_g) s_a (W_g v + du_g)]``.
* coRNN on ``[y, z]``: ``s = D(pre)([W, W_z][v_y; v_z] + du)``,
  ``v_z' = v_z + dt (s - gamma v_y - epsilon v_z)``, ``v_y' = v_y + dt v_z'``.
* expRNN: ``v' = m(z) * (Q v + du)`` with ``m = sign(z)^2 [|z| + b > 0]`` (autograd's
  derivative of modReLU).
* torch RNN: ``v' = act'(pre) (W_hh v + du)``; GRU and LSTM by the chain rule through their
  gates (see :class:`_GRUBlock`, :class:`_LSTMBlock`).

Any other :class:`~lipschitz_rnn.models._base.RecurrentCell` (a subclass overriding ``step``
included) goes through autograd, :func:`._jvp.jvp_rows` (:class:`_GenericCellBlock`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models._base import RecurrentCell
from ..models.baselines import AntisymmetricRNNCell, CoRNNCell, ExpRNNCell, ODERNNCell
from ..models.lipschitz import LipschitzRNNCell
from ..models.solvers import get_scheme, rk_step
from ._jvp import jvp_rows

__all__ = ["Block", "block_for_cell", "torch_block"]


class Block:
    """One layer: ``project`` (affine input map, hoistable over time) and ``tangent``.

    ``out_size``: the first ``out_size`` entries of the state are the layer's output (fed to the
    next layer). ``input_size``: features ``project`` expects (None if unknown).
    """

    state_size: int
    out_size: int
    input_size: int | None
    label: str = "?"

    def project(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def project_tangent(self, x: Tensor, dx: Tensor) -> Tensor:
        raise NotImplementedError

    def tangent(self, h: Tensor, u: Tensor, V: Tensor, dU: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


def _dtanh(s: Tensor) -> Tensor:
    # = 1.0 - s * s to the bit, without Tensor.__rsub__'s Python wrapper (~5 us a call)
    return torch.rsub(s * s, 1.0)


class _LinearInputBlock(Block):
    """Blocks whose input map is ``x -> x U^T + b`` with known ``U`` and ``b``."""

    def __init__(self, weight_ih: Tensor, bias_ih: Tensor | None) -> None:
        self.weight_ih = weight_ih
        self.bias_ih = bias_ih
        self.input_size = weight_ih.shape[1]

    def project(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih)

    def project_tangent(self, x: Tensor, dx: Tensor) -> Tensor:
        return dx @ self.weight_ih.T


class _LipschitzBlock(_LinearInputBlock):
    """The Lipschitz unit: the state and its tangent rows advance together through ONE
    :func:`~lipschitz_rnn.models.solvers.rk_step` of the pair ``(h, V)``.

    ``Jf(y) = A + diag(1 - tanh^2(W y + u)) W`` is formed per sequence, (batch, H, H), when it
    fits in :data:`DENSE_JF_BYTES`: applying it costs one batched GEMM per stage (``k H^2`` per
    sequence) where the shared-weight form ``[V A^T | V W^T]`` costs two (``2 k H^2``), and forming
    it only ``H^2``; for euler and rk2 that GEMM also does the stage's update of the tangent rows
    (:func:`chain_coefficients`). Larger states use the shared-weight form.
    """

    def __init__(self, cell: LipschitzRNNCell) -> None:
        super().__init__(cell.weight_ih, cell.bias_ih)
        A, W, AWt = cell.recurrence()
        self.A, self.W = A, W
        self.AWt = AWt.contiguous()  # (H, 2H): z @ AWt = [z A^T | z W^T]
        self.H = cell.hidden_size
        self.state_size = self.out_size = self.H
        self.eps = cell.eps
        self.solver = cell.solver
        self.chain = chain_coefficients(cell.solver)
        self.label = f"lipschitz-{cell.solver}"

    def tangent(self, h, u, V, dU):
        H, AWt = self.H, self.AWt
        dense = h.shape[0] * H * H * h.element_size() <= DENSE_JF_BYTES

        if dense and self.chain is not None:
            # a chain scheme (euler, rk2): stage i starts from (h, V) + eps c_i (its stage's
            # derivative), the last stage's is the step. The state follows rk_step's arithmetic;
            # each tangent stage is ONE batched GEMM accumulating into V (beta = 1), V + eps c Y
            # Jf^T, with no separate pass over the (B, k, H) rows.
            y, Y = h, V
            for c in self.chain:
                zz = y @ AWt
                s = torch.tanh(zz[:, H:] + u)
                d = _dtanh(s)
                Jf = torch.addcmul(self.A, d.unsqueeze(-1), self.W)  # (B, H, H)
                y = h + (self.eps * c) * (zz[:, :H] + s)
                Y = torch.baddbmm(V, Y, Jf.mT, alpha=self.eps * c)
                if dU is not None:
                    Y = torch.addcmul(Y, d.unsqueeze(1), dU, value=self.eps * c)
            return y, Y

        def f_pair(pair: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            # (f(y), Jf(y)[Y, dU]) for tangent rows Y (B, k, H)
            y, Y = pair
            zz = y @ AWt
            s = torch.tanh(zz[:, H:] + u)
            d = _dtanh(s)
            if dense:
                Jf = torch.addcmul(self.A, d.unsqueeze(-1), self.W)  # (B, H, H)
                JY = torch.bmm(Y, Jf.mT)
                if dU is not None:
                    JY = torch.addcmul(JY, d.unsqueeze(1), dU)
            else:
                ZZ = Y @ AWt  # (B, k, 2H): [Y A^T | Y W^T], one GEMM for all batch * k rows
                w = ZZ[..., H:] if dU is None else ZZ[..., H:] + dU
                JY = torch.addcmul(ZZ[..., :H], d.unsqueeze(1), w)
            return zz[:, :H] + s, JY

        return rk_step(f_pair, (h, V), self.eps, self.solver)


def chain_coefficients(solver) -> tuple[float, ...] | None:
    """``(a_21, a_32, ..., b_s)`` of an explicit scheme whose every stage uses only the one before
    it and whose update uses only the last stage (euler ``(1,)``, rk2 ``(0.5, 1)``); else None."""
    scheme = get_scheme(solver)
    rows = [*scheme.a[1:], scheme.b]
    if any(any(c != 0.0 for c in row[:-1]) for row in rows):
        return None
    return tuple(float(row[-1]) for row in rows)


#: the largest per-step (batch, H, H) Jacobian of a Lipschitz unit formed explicitly
DENSE_JF_BYTES = 64 * 2**20


class _ResidualTanhBlock(_LinearInputBlock):
    """ODE-RNN and (ungated / gated) antisymmetric RNN: ``h' = h + eps [sigmoid(g)] tanh(a)``."""

    def __init__(self, cell: ODERNNCell | AntisymmetricRNNCell) -> None:
        super().__init__(cell.weight_ih, cell.bias_ih)
        self.Wt = cell.recurrence()[0].contiguous()  # (H, H) or (H, 2H) for gated
        self.H = cell.hidden_size
        self.state_size = self.out_size = self.H
        self.eps = cell.eps
        self.gated = bool(getattr(cell, "gated", False))
        name = "odernn" if isinstance(cell, ODERNNCell) else "antisymmetric"
        self.label = name + ("-gated" if self.gated else "")

    def tangent(self, h, u, V, dU):
        eps, H = self.eps, self.H
        z = h @ self.Wt + u
        zv = V @ self.Wt
        if dU is not None:
            zv = zv + dU
        if not self.gated:
            s = torch.tanh(z)
            return h + eps * s, torch.addcmul(V, (eps * _dtanh(s)).unsqueeze(1), zv)
        sa, sg = torch.tanh(z[:, :H]), torch.sigmoid(z[:, H:])
        ca = (eps * sg * _dtanh(sa)).unsqueeze(1)
        cg = (eps * sg * (1.0 - sg) * sa).unsqueeze(1)
        Vn = torch.addcmul(V, ca, zv[..., :H])
        Vn = torch.addcmul(Vn, cg, zv[..., H:])
        return h + eps * sg * sa, Vn


class _CoRNNBlock(_LinearInputBlock):
    def __init__(self, cell: CoRNNCell) -> None:
        super().__init__(cell.weight_ih, cell.bias_ih)
        self.Wt = cell.recurrence()[0].contiguous()  # (2H, H)
        self.H = cell.hidden_size
        self.state_size = 2 * self.H
        self.out_size = self.H
        self.dt, self.gamma, self.epsilon = cell.dt, cell.gamma, cell.epsilon
        self.label = "cornn"

    def tangent(self, h, u, V, dU):
        H, dt, gamma, epsilon = self.H, self.dt, self.gamma, self.epsilon
        y, z = h[:, :H], h[:, H:]
        s = torch.tanh(h @ self.Wt + u)
        z2 = z + dt * (s - gamma * y - epsilon * z)
        y2 = y + dt * z2
        sv = V @ self.Wt
        if dU is not None:
            sv = sv + dU
        Vy, Vz = V[..., :H], V[..., H:]
        Vz2 = Vz + dt * (_dtanh(s).unsqueeze(1) * sv - gamma * Vy - epsilon * Vz)
        Vy2 = Vy + dt * Vz2
        return torch.cat([y2, z2], -1), torch.cat([Vy2, Vz2], -1)


class _ExpRNNBlock(_LinearInputBlock):
    def __init__(self, cell: ExpRNNCell) -> None:
        super().__init__(cell.weight_ih, cell.bias_ih)
        self.Qt = cell.recurrence()[0].contiguous()
        self.bias_mod = cell.bias_mod
        self.H = cell.hidden_size
        self.state_size = self.out_size = self.H
        self.label = "exprnn"

    def tangent(self, h, u, V, dU):
        z = h @ self.Qt + u
        zv = V @ self.Qt
        if dU is not None:
            zv = zv + dU
        if self.bias_mod is None:
            return z, zv
        sgn = torch.sign(z)
        m = sgn * sgn * ((z.abs() + self.bias_mod) > 0).to(z.dtype)
        return sgn * torch.relu(z.abs() + self.bias_mod), m.unsqueeze(1) * zv


class _GenericCellBlock(Block):
    """Any other :class:`RecurrentCell`: its own three pieces, tangents by torch.func.jvp."""

    def __init__(self, cell: RecurrentCell, differentiable: bool = False) -> None:
        self.cell = cell
        self.ctx = cell.recurrence()
        self.state_size = cell.state_size
        self.out_size = cell.hidden_size
        self.input_size = cell.input_size
        self.label = f"autograd({type(cell).__name__})"
        self._jvp_state: dict = {"differentiable": differentiable}

    def project(self, x):
        return self.cell.input_projection(x)

    def project_tangent(self, x, dx):
        n_out = self.cell.input_projection(x[:1]).shape[-1]
        return jvp_rows(self.cell.input_projection, (x,), (dx,), self._jvp_state, n_out)[1]

    def tangent(self, h, u, V, dU):
        fn = lambda hh, uu: self.cell.step(hh, uu, self.ctx)
        return jvp_rows(fn, (h, u), (V, dU), self._jvp_state, self.state_size)


# --- torch.nn.RNN / GRU / LSTM layers --------------------------------------------------------
class ElmanSaved:
    """What :func:`elman_steps` keeps for :func:`elman_steps_backward`: the state the steps
    start from, the states of the steps ``S`` (L, B, n), ``act'(pre)`` of every step
    ``D`` (L, B, 1, n), and per step the rows before it and their product with ``W^T``."""

    __slots__ = ("h0", "S", "D", "Vs", "Ps")

    def __init__(self, h0, S, D, Vs, Ps) -> None:
        self.h0, self.S, self.D, self.Vs, self.Ps = h0, S, D, Vs, Ps


def elman_steps(
    h0: Tensor, V0: Tensor, U: Tensor, Wt: Tensor, b_hh: Tensor | None, relu: bool
) -> tuple[Tensor, Tensor, ElmanSaved]:
    """``L`` steps of one Elman layer (``torch.nn.RNN``, tanh or ReLU) with their tangent
    rows, without autograd: the gradient-flossing loop's steps between two QRs
    (:mod:`._taped` differentiates the whole loop with :func:`elman_steps_backward`).

    The same elementwise operations as :class:`_TorchRNNBlock`'s ``tangent`` (so the same
    values to the bit): ``pre = (u_t + b_hh) + h W^T``, ``s = act(pre)``, ``D = act'(pre)``,
    ``V <- D * (V W^T)`` (``D`` scales the columns of the rows ``V``); the states first, then
    ``D`` of all the steps at once, then the rows.

    ``h0`` (B, n), ``V0`` (B, k, n), ``U`` (L, B, n) the projected inputs, ``Wt = W^T``,
    ``b_hh`` (n,) or None. Returns the state and rows after the ``L`` steps and what the
    backward needs (its ``S`` holds the ``L`` states, for the finite-state check too).
    """
    states, pres = [], []
    h = h0
    if b_hh is not None:
        U = U + b_hh
    for t in range(U.shape[0]):
        pre = torch.addmm(U[t], h, Wt)
        if relu:
            pres.append(pre)
            h = torch.relu(pre)
        else:
            h = torch.tanh(pre)
        states.append(h)
    S = torch.stack(states)
    D = ((torch.stack(pres) > 0).to(S.dtype) if relu else _dtanh(S)).unsqueeze(2)
    Vs, Ps = [], []
    V = V0
    for t in range(U.shape[0]):
        Vs.append(V)
        Ps.append(V @ Wt)
        V = D[t] * Ps[t]
    return h, V, ElmanSaved(h0, S, D, Vs, Ps)


def elman_steps_backward(
    saved: ElmanSaved,
    W: Tensor,
    relu: bool,
    g: Tensor,
    G: Tensor | None,
    gWt: Tensor,
    gU: Tensor,
) -> tuple[Tensor, Tensor | None]:
    """The derivative of :func:`elman_steps`, written out: from the gradients ``g`` of the
    final state and ``G`` of the final rows (None: zero), accumulate ``d/dW^T`` into ``gWt``,
    write ``d/dU`` into ``gU`` (L, B, n) and return the gradients of the initial state and
    rows. Per step, backwards: ``dD = rowsum(G * (V W^T))``, ``G <- (D * G) W``,
    ``dWt += V^T (D * G)``; for tanh ``g += -2 s dD`` (``D = 1 - s^2``); ``dpre = g * D``,
    ``du_t = dpre``, ``g <- dpre W``: a few kernels a step; then ``dWt += sum_t h_{t-1}^T
    dpre_t`` in one GEMM."""
    S, D, Vs, Ps = saved.S, saved.D, saved.Vs, saved.Ps
    L, n = S.shape[0], W.shape[0]
    for t in range(L - 1, -1, -1):
        if G is not None:
            gD = (G * Ps[t]).sum(-2)
            GP = D[t] * G
            gWt.addmm_(Vs[t].reshape(-1, n).mT, GP.reshape(-1, n))
            G = GP @ W
            if not relu:
                g = g.addcmul(S[t], gD, value=-2.0)
        torch.mul(g, D[t, :, 0], out=gU[t])
        g = gU[t] @ W
    before = torch.cat([saved.h0.unsqueeze(0), S[:-1]]) if L > 1 else saved.h0.unsqueeze(0)
    gWt.addmm_(before.reshape(-1, n).mT, gU.reshape(-1, n))
    return g, G


class _TorchRNNBlock(_LinearInputBlock):
    def __init__(self, w_ih, w_hh, b_ih, b_hh, relu: bool) -> None:
        super().__init__(w_ih, b_ih)
        self.Whh_t = w_hh.T.contiguous()
        self.b_hh = b_hh
        self.relu = relu
        self.state_size = self.out_size = w_hh.shape[1]
        self.label = "torch-rnn-" + ("relu" if relu else "tanh")

    def _pre(self, h, u):
        # (u + b_hh) + h W^T, as elman_steps (which adds b_hh to a block's inputs at once)
        return torch.addmm(u if self.b_hh is None else u + self.b_hh, h, self.Whh_t)

    def tangent(self, h, u, V, dU):
        pre = self._pre(h, u)
        zv = V @ self.Whh_t
        if dU is not None:
            zv = zv + dU
        if self.relu:
            return torch.relu(pre), (pre > 0).to(pre.dtype).unsqueeze(1) * zv
        s = torch.tanh(pre)
        return s, _dtanh(s).unsqueeze(1) * zv

    def steps(self, h: Tensor, U: Tensor, V: Tensor) -> tuple[Tensor, Tensor, ElmanSaved]:
        """``len(U)`` steps of ``tangent`` at once, without autograd (:func:`elman_steps`)."""
        return elman_steps(h, V, U, self.Whh_t, self.b_hh, self.relu)


class _GRUBlock(_LinearInputBlock):
    """torch.nn.GRU: ``r, z = sigmoid(.)``, ``n = tanh(gi_n + r (gh_n))``, ``h' = (1-z) n + z h``."""

    def __init__(self, w_ih, w_hh, b_ih, b_hh) -> None:
        super().__init__(w_ih, b_ih)
        self.Whh_t = w_hh.T.contiguous()  # (H, 3H)
        self.b_hh = b_hh
        self.H = w_hh.shape[1]
        self.state_size = self.out_size = self.H
        self.label = "torch-gru"

    def _gates(self, h, u):
        H = self.H
        gh = h @ self.Whh_t
        if self.b_hh is not None:
            gh = gh + self.b_hh
        r = torch.sigmoid(u[:, :H] + gh[:, :H])
        z = torch.sigmoid(u[:, H : 2 * H] + gh[:, H : 2 * H])
        n = torch.tanh(u[:, 2 * H :] + r * gh[:, 2 * H :])
        return r, z, n, gh

    def tangent(self, h, u, V, dU):
        H = self.H
        r, z, n, gh = self._gates(h, u)
        dgh = V @ self.Whh_t  # (B, k, 3H)
        dgi = dU
        a_r = dgh[..., :H] if dgi is None else dgh[..., :H] + dgi[..., :H]
        a_z = dgh[..., H : 2 * H] if dgi is None else dgh[..., H : 2 * H] + dgi[..., H : 2 * H]
        e = lambda t: t.unsqueeze(1)
        dr = e(r * (1.0 - r)) * a_r
        dz = e(z * (1.0 - z)) * a_z
        a_n = dr * e(gh[:, 2 * H :]) + e(r) * dgh[..., 2 * H :]
        if dgi is not None:
            a_n = a_n + dgi[..., 2 * H :]
        dn = e(_dtanh(n)) * a_n
        Vn = e(1.0 - z) * dn + e(h - n) * dz + e(z) * V
        return (1.0 - z) * n + z * h, Vn


class _LSTMBlock(_LinearInputBlock):
    """torch.nn.LSTM on the state ``[h, c]`` (``h`` of size proj_size when projecting)."""

    def __init__(self, w_ih, w_hh, b_ih, b_hh, w_hr) -> None:
        super().__init__(w_ih, b_ih)
        self.Whh_t = w_hh.T.contiguous()  # (P, 4H)
        self.b_hh = b_hh
        self.Whr_t = None if w_hr is None else w_hr.T.contiguous()  # (H, P)
        self.H = w_hh.shape[0] // 4
        self.P = w_hh.shape[1]
        self.state_size = self.P + self.H
        self.out_size = self.P
        self.label = "torch-lstm"

    def _fwd(self, h, u):
        H, P = self.H, self.P
        hh, c = h[:, :P], h[:, P:]
        g = u + hh @ self.Whh_t
        if self.b_hh is not None:
            g = g + self.b_hh
        i = torch.sigmoid(g[:, :H])
        f = torch.sigmoid(g[:, H : 2 * H])
        gg = torch.tanh(g[:, 2 * H : 3 * H])
        o = torch.sigmoid(g[:, 3 * H :])
        c2 = f * c + i * gg
        tc = torch.tanh(c2)
        h2 = o * tc
        if self.Whr_t is not None:
            h2 = h2 @ self.Whr_t
        return i, f, gg, o, c, c2, tc, torch.cat([h2, c2], -1)

    def tangent(self, h, u, V, dU):
        H, P = self.H, self.P
        i, f, gg, o, c, c2, tc, out = self._fwd(h, u)
        dg = V[..., :P] @ self.Whh_t
        if dU is not None:
            dg = dg + dU
        Vc = V[..., P:]
        e = lambda t: t.unsqueeze(1)
        di = e(i * (1.0 - i)) * dg[..., :H]
        df = e(f * (1.0 - f)) * dg[..., H : 2 * H]
        dgg = e(_dtanh(gg)) * dg[..., 2 * H : 3 * H]
        do = e(o * (1.0 - o)) * dg[..., 3 * H :]
        dc2 = df * e(c) + e(f) * Vc + di * e(gg) + e(i) * dgg
        dh2 = do * e(tc) + e(o * _dtanh(tc)) * dc2
        if self.Whr_t is not None:
            dh2 = dh2 @ self.Whr_t
        return out, torch.cat([dh2, dc2], -1)


def block_for_cell(cell: RecurrentCell, *, differentiable: bool = False) -> Block:
    """The tangent map of ``cell``: hand-written for the known units whose ``step`` is not
    overridden, torch.func for any other cell (forward mode only when ``differentiable``)."""
    kind = type(cell)
    if isinstance(cell, LipschitzRNNCell) and kind.step is LipschitzRNNCell.step:
        return _LipschitzBlock(cell)
    if isinstance(cell, ODERNNCell) and kind.step is ODERNNCell.step:
        return _ResidualTanhBlock(cell)
    if isinstance(cell, AntisymmetricRNNCell) and kind.step is AntisymmetricRNNCell.step:
        return _ResidualTanhBlock(cell)
    if isinstance(cell, CoRNNCell) and kind.step is CoRNNCell.step:
        return _CoRNNBlock(cell)
    if isinstance(cell, ExpRNNCell) and kind.step is ExpRNNCell.step:
        return _ExpRNNBlock(cell)
    return _GenericCellBlock(cell, differentiable)


def torch_block(mode: str, w_ih: Tensor, w_hh: Tensor, b_ih, b_hh, w_hr=None) -> Block:
    """The tangent map of one layer of ``torch.nn.RNN``/``GRU``/``LSTM`` (``mode`` as in
    ``nn.RNNBase.mode``; ``w_hr`` the LSTM projection or None)."""
    if mode in ("RNN_TANH", "RNN_RELU"):
        return _TorchRNNBlock(w_ih, w_hh, b_ih, b_hh, relu=mode == "RNN_RELU")
    if mode == "GRU":
        return _GRUBlock(w_ih, w_hh, b_ih, b_hh)
    if mode == "LSTM":
        return _LSTMBlock(w_ih, w_hh, b_ih, b_hh, w_hr)
    raise TypeError(f"system: unsupported torch RNN mode {mode!r}")
