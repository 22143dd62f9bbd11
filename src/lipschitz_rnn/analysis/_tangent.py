"""Per-system tangent maps for the Lyapunov-spectrum estimator.

Every supported system is turned into a :class:`TangentSystem`: ``advance(h, x_t, V)`` returns
the next state ``h' = F(h, x_t)`` and the pushed-forward tangent vectors ``V' = (J V^T)^T`` with
``J = dF/dh`` (the *forward* Jacobian, never its transpose). Tangent vectors are stored as rows,
``V`` is (batch, k, n), so a shared matrix acts on all of them as ONE right-multiplication
``V @ M^T`` over ``batch * k`` rows -- the same code shape as the state update, no N x N Jacobian
is ever formed.

Known units (column-vector maths, ``D(z) = diag(1 - tanh(z)^2)``, ``v`` a tangent of ``h`` and
``du`` a tangent of the projected input ``u``, which is zero for the first layer and
``dx U^T`` for deeper layers fed by the layer below):

* Lipschitz, ``f(h) = A h + tanh(W h + u)``, ``Jf(h)[v, du] = A v + D(W h + u)(W v + du)``:
  euler ``v' = v + eps Jf(h)[v, du]``; rk2 ``g = h + eps/2 f(h)``,
  ``v_g = v + eps/2 Jf(h)[v, du]``, ``v' = v + eps Jf(g)[v_g, du]``; heun ``p1 = Jf(h)[v, du]``,
  ``v_2 = v + eps p1``, ``v' = v + eps/2 (p1 + Jf(h + eps f(h))[v_2, du])``. Each stage is one
  GEMM of the tangent rows with the stacked ``[A; W]^T`` (A v and W v together).
* ODE-RNN / antisymmetric: ``v' = v + eps D(z)(W v + du)``; gated:
  ``v' = v + eps [s_g (1 - s_a^2) (W_a v + du_a) + s_g (1 - s_g) s_a (W_g v + du_g)]``.
* coRNN on ``[y, z]``: ``s = D(pre)([W, W_z][v_y; v_z] + du)``,
  ``v_z' = v_z + dt (s - gamma v_y - epsilon v_z)``, ``v_y' = v_y + dt v_z'``.
* expRNN: ``v' = m(z) * (Q v + du)`` with ``m = sign(z)^2 [|z| + b > 0]`` (autograd's
  derivative of modReLU).
* torch RNN: ``v' = act'(pre) (W_hh v + du)``; GRU and LSTM by the chain rule through their
  gates (see :class:`_GRUBlock`, :class:`_LSTMBlock`).

Anything else (other :class:`RecurrentCell` subclasses, plain callables) goes through autograd:
dense per-row Jacobians by reverse mode for small states (``n <= DENSE_MAX``), else
``torch.func.jvp`` under ``torch.func.vmap`` over the k tangent rows (falling back to a loop of
k jvps if the function cannot be vmapped). See :func:`jvp_rows`.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models._base import RecurrentCell, RecurrentLayer
from ..models.baselines import AntisymmetricRNNCell, CoRNNCell, ExpRNNCell, ODERNNCell
from ..models.heads import SequenceModel
from ..models.lipschitz import LipschitzRNNCell

__all__ = ["TangentSystem", "resolve_system", "jvp_rows", "DENSE_MAX"]


# ----------------------------------------------------------------------------------------------
# generic forward-mode tangents
# ----------------------------------------------------------------------------------------------
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
    """
    live = [i for i, t in enumerate(tangents) if t is not None]
    if n_out <= DENSE_MAX:
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


# ----------------------------------------------------------------------------------------------
# blocks: one recurrent layer (one direction) each
# ----------------------------------------------------------------------------------------------
class _Block:
    """One layer: ``project`` (affine input map, hoistable over time), ``step`` and ``tangent``.

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

    def step(self, h: Tensor, u: Tensor) -> Tensor:
        raise NotImplementedError

    def tangent(self, h: Tensor, u: Tensor, V: Tensor, dU: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


def _dtanh(s: Tensor) -> Tensor:
    return 1.0 - s * s


class _LinearInputBlock(_Block):
    """Blocks whose input map is ``x -> x U^T + b`` with known ``U`` and ``b``."""

    def __init__(self, weight_ih: Tensor, bias_ih: Tensor | None) -> None:
        self.weight_ih = weight_ih
        self.bias_ih = bias_ih
        self.input_size = weight_ih.shape[1]

    def project(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih)

    def project_tangent(self, x: Tensor, dx: Tensor) -> Tensor:
        return dx @ self.weight_ih.T


def _cell_copy(cell: nn.Module, dtype: torch.dtype, device) -> nn.Module:
    return copy.deepcopy(cell).to(device=device, dtype=dtype).eval().requires_grad_(False)


class _LipschitzBlock(_LinearInputBlock):
    def __init__(self, cell: LipschitzRNNCell) -> None:
        super().__init__(cell.weight_ih, cell.bias_ih)
        self.cell = cell
        A, W, AWt = cell.recurrence()
        self.AWt = AWt.contiguous()  # (H, 2H): z @ AWt = [z A^T | z W^T]
        self.H = cell.hidden_size
        if cell.solver == "euler":  # [(I + eps A)^T | W^T]
            eye = torch.eye(self.H, dtype=A.dtype, device=A.device)
            self.M_euler = torch.cat([eye + cell.eps * A, W], 0).T.contiguous()
        self.state_size = self.out_size = self.H
        self.eps = cell.eps
        self.solver = cell.solver
        self.label = f"lipschitz-{cell.solver}"

    def _f(self, z: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        zz = z @ self.AWt
        s = torch.tanh(zz[:, self.H :] + u)
        return zz[:, : self.H] + s, _dtanh(s)

    def _jf(self, V: Tensor, d: Tensor, dU: Tensor | None) -> Tensor:
        zz = V @ self.AWt  # (B, k, 2H): the shared A and W matmuls of all tangent rows
        w = zz[..., self.H :]
        if dU is not None:
            w = w + dU
        return torch.addcmul(zz[..., : self.H], d.unsqueeze(1), w)

    def step(self, h, u):
        return self.cell.step(h, u, (None, None, self.AWt))

    def tangent(self, h, u, V, dU):
        eps = self.eps
        f1, d1 = self._f(h, u)
        if self.solver == "euler":
            # v' = v (I + eps A)^T + eps D (v W^T + du): one GEMM with the folded factor
            zz = V @ self.M_euler
            w = zz[..., self.H :]
            if dU is not None:
                w = w + dU
            return h + eps * f1, torch.addcmul(zz[..., : self.H], (eps * d1).unsqueeze(1), w)
        if self.solver == "rk2":
            g = h + (0.5 * eps) * f1
            Vg = V + (0.5 * eps) * self._jf(V, d1, dU)
            f2, d2 = self._f(g, u)
            return h + eps * f2, V + eps * self._jf(Vg, d2, dU)
        # heun
        P1 = self._jf(V, d1, dU)
        h2 = h + eps * f1
        f2, d2 = self._f(h2, u)
        P2 = self._jf(V + eps * P1, d2, dU)
        return h + (0.5 * eps) * (f1 + f2), V + (0.5 * eps) * (P1 + P2)


class _ResidualTanhBlock(_LinearInputBlock):
    """ODE-RNN and (ungated / gated) antisymmetric RNN: ``h' = h + eps [sigmoid(g)] tanh(a)``."""

    def __init__(self, cell: ODERNNCell | AntisymmetricRNNCell) -> None:
        super().__init__(cell.weight_ih, cell.bias_ih)
        self.cell = cell
        self.Wt = cell.recurrence()[0].contiguous()  # (H, H) or (H, 2H) for gated
        self.H = cell.hidden_size
        self.state_size = self.out_size = self.H
        self.eps = cell.eps
        self.gated = bool(getattr(cell, "gated", False))
        name = "odernn" if isinstance(cell, ODERNNCell) else "antisymmetric"
        self.label = name + ("-gated" if self.gated else "")

    def step(self, h, u):
        return self.cell.step(h, u, (self.Wt,))

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
        self.cell = cell
        self.Wt = cell.recurrence()[0].contiguous()  # (2H, H)
        self.H = cell.hidden_size
        self.state_size = 2 * self.H
        self.out_size = self.H
        self.dt, self.gamma, self.epsilon = cell.dt, cell.gamma, cell.epsilon
        self.label = "cornn"

    def step(self, h, u):
        return self.cell.step(h, u, (self.Wt,))

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
        self.cell = cell
        self.Qt = cell.recurrence()[0].contiguous()
        self.bias_mod = cell.bias_mod
        self.H = cell.hidden_size
        self.state_size = self.out_size = self.H
        self.label = "exprnn"

    def step(self, h, u):
        return self.cell.step(h, u, (self.Qt,))

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


class _GenericCellBlock(_Block):
    """Any other :class:`RecurrentCell`: its own three pieces, tangents by torch.func.jvp."""

    def __init__(self, cell: RecurrentCell) -> None:
        self.cell = cell
        self.ctx = cell.recurrence()
        self.state_size = cell.state_size
        self.out_size = cell.hidden_size
        self.input_size = cell.input_size
        self.label = f"autograd({type(cell).__name__})"
        self._jvp_state: dict = {}

    def project(self, x):
        return self.cell.input_projection(x)

    def project_tangent(self, x, dx):
        n_out = self.cell.input_projection(x[:1]).shape[-1]
        return jvp_rows(self.cell.input_projection, (x,), (dx,), self._jvp_state, n_out)[1]

    def step(self, h, u):
        return self.cell.step(h, u, self.ctx)

    def tangent(self, h, u, V, dU):
        fn = lambda hh, uu: self.cell.step(hh, uu, self.ctx)
        return jvp_rows(fn, (h, u), (V, dU), self._jvp_state, self.state_size)


# --- torch.nn.RNN / GRU / LSTM layers --------------------------------------------------------
class _TorchRNNBlock(_LinearInputBlock):
    def __init__(self, w_ih, w_hh, b_ih, b_hh, relu: bool) -> None:
        super().__init__(w_ih, b_ih)
        self.Whh_t = w_hh.T.contiguous()
        self.b_hh = b_hh
        self.relu = relu
        self.state_size = self.out_size = w_hh.shape[1]
        self.label = "torch-rnn-" + ("relu" if relu else "tanh")

    def _pre(self, h, u):
        pre = u + h @ self.Whh_t
        return pre if self.b_hh is None else pre + self.b_hh

    def step(self, h, u):
        pre = self._pre(h, u)
        return torch.relu(pre) if self.relu else torch.tanh(pre)

    def tangent(self, h, u, V, dU):
        pre = self._pre(h, u)
        zv = V @ self.Whh_t
        if dU is not None:
            zv = zv + dU
        if self.relu:
            return torch.relu(pre), (pre > 0).to(pre.dtype).unsqueeze(1) * zv
        s = torch.tanh(pre)
        return s, _dtanh(s).unsqueeze(1) * zv


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

    def step(self, h, u):
        r, z, n, _ = self._gates(h, u)
        return (1.0 - z) * n + z * h

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

    def step(self, h, u):
        return self._fwd(h, u)[-1]

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


# ----------------------------------------------------------------------------------------------
# systems
# ----------------------------------------------------------------------------------------------
class TangentSystem:
    """A map ``h_t = F(h_{t-1}, x_t)`` on flat (batch, n) states with its tangent push-forward.

    ``drive(x)`` turns the (T, B, F) inputs into what ``advance`` consumes per step (for layer
    stacks: the first layer's input projection of all steps at once). ``num_components`` and
    ``flat_h0`` describe how torch-style ``hx`` maps to the flat state.
    """

    n: int
    input_size: int | None = None
    method: str = "?"
    needs_h0: bool = False
    tokens: bool = False

    def drive(self, x: Tensor) -> Tensor | list:
        raise NotImplementedError

    def advance(self, h: Tensor, x_t: Any, V: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def flat_h0(self, h0: Any, batch: int | None) -> Tensor:
        raise NotImplementedError


class _LayerStack(TangentSystem):
    """Unidirectional stacked layers; the state is ``[state of layer 0, state of layer 1, ...]``.

    The Jacobian of the stacked state is block lower-triangular: layer ``l`` sees the *new*
    output of layer ``l - 1`` through its input projection, whose tangent enters as ``du``.
    """

    def __init__(
        self,
        blocks: list[_Block],
        components: list[list[int]],
        dtype,
        device,
        embedding: Tensor | None = None,
    ) -> None:
        self.blocks = blocks
        self.sizes = [b.state_size for b in blocks]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(blocks))]
        self.n = sum(self.sizes)
        self.components = components  # per layer: sizes of the torch-style state components
        self.input_size = blocks[0].input_size
        self.embedding = embedding
        self.tokens = embedding is not None
        self.dtype, self.device = dtype, device
        labels = sorted({b.label for b in blocks})
        self.method = "+".join(labels) + (f" x{len(blocks)} layers" if len(blocks) > 1 else "")

    def drive(self, x):
        if self.embedding is not None:
            x = F.embedding(x, self.embedding)
        return self.blocks[0].project(x)

    def zero_drive(self, steps: int, batch: int) -> Tensor:
        x = torch.zeros(steps, batch, self.input_size, dtype=self.dtype, device=self.device)
        return self.blocks[0].project(x)

    def advance(self, h, u0, V):
        if len(self.blocks) == 1:
            return self.blocks[0].tangent(h, u0, V, None)
        hs, Vs = [], []
        u, dU = u0, None
        for li, blk in enumerate(self.blocks):
            o, s = self.offsets[li], self.sizes[li]
            hl, Vl = blk.tangent(h[:, o : o + s], u, V[..., o : o + s], dU)
            hs.append(hl)
            Vs.append(Vl)
            if li + 1 < len(self.blocks):
                nxt = self.blocks[li + 1]
                out = hl[:, : blk.out_size]
                u = nxt.project(out)
                dU = nxt.project_tangent(out, Vl[..., : blk.out_size])
        return torch.cat(hs, -1), torch.cat(Vs, -1)

    def flat_h0(self, h0, batch):
        L = len(self.blocks)
        if isinstance(h0, (tuple, list)):
            comps = list(h0)
            ncomp = len(self.components[0])
            if len(comps) != ncomp:
                raise ValueError(
                    f"h0 as a tuple must have {ncomp} tensors (torch-style hx), got {len(comps)}"
                )
            parts = []
            for c, size in zip(comps, self.components[0], strict=True):
                if (
                    not isinstance(c, Tensor)
                    or c.dim() != 3
                    or c.shape[0] != L
                    or c.shape[2] != size
                ):
                    got = tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__
                    raise ValueError(
                        f"h0 components must be (num_layers={L}, batch, {size}) tensors, got {got}"
                    )
                parts.append(c)
            # per layer: [component 0, component 1]
            flat = torch.cat([torch.cat([p[li] for p in parts], -1) for li in range(L)], -1)
            return flat
        if isinstance(h0, Tensor) and h0.dim() == 3:
            if len(self.components[0]) != 1:
                raise ValueError(
                    "this system's state has two components: pass h0 as a tuple of two "
                    "(num_layers, batch, hidden) tensors, or flat (batch, state_size)"
                )
            if h0.shape[0] != L or h0.shape[2] != self.components[0][0]:
                raise ValueError(
                    f"h0 must be (num_layers={L}, batch, {self.components[0][0]}), "
                    f"got {tuple(h0.shape)}"
                )
            return torch.cat(list(h0.unbind(0)), -1)
        return _flat_generic_h0(h0, self.n)


def _flat_generic_h0(h0: Any, n: int | None) -> Tensor:
    if not isinstance(h0, Tensor):
        raise TypeError(f"h0 must be a Tensor, got {type(h0).__name__}")
    if h0.dim() == 1:
        h0 = h0.unsqueeze(0)
    if h0.dim() != 2 or (n is not None and h0.shape[1] != n):
        want = f"(batch, {n}) or ({n},)" if n is not None else "(batch, n) or (n,)"
        raise ValueError(f"h0 must have shape {want}, got {tuple(h0.shape)}")
    return h0


class _CallableSystem(TangentSystem):
    """``step(h, x) -> h_next`` (or ``step(h)`` / ``step(h, None)`` without inputs)."""

    needs_h0 = True

    def __init__(self, fn: Callable, autonomous: bool) -> None:
        self.fn = fn
        self.method = "autograd"
        self.n = None  # set from h0
        self._jvp_state: dict = {}
        self.one_arg = autonomous and _accepts_one_arg(fn)

    def call(self, h, x):
        return self.fn(h) if self.one_arg else self.fn(h, x)

    def drive(self, x):
        return x

    def advance(self, h, x_t, V):
        n = h.shape[1]
        self.method = "autograd-dense" if n <= DENSE_MAX else "torch.func.jvp"
        if self.one_arg:
            return jvp_rows(self.fn, (h,), (V,), self._jvp_state, n)
        return jvp_rows(self.fn, (h, x_t), (V, None), self._jvp_state, n)

    def flat_h0(self, h0, batch):
        return _flat_generic_h0(h0, None)


def _accepts_one_arg(fn: Callable) -> bool:
    """Whether ``fn(h)`` is a valid call (then autonomous maps are called with one argument)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    try:
        sig.bind(object())
    except TypeError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# resolution
# ----------------------------------------------------------------------------------------------
def _block_for_cell(cell: RecurrentCell) -> _Block:
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
    return _GenericCellBlock(cell)


def _module_device(m: nn.Module) -> torch.device:
    for p in m.parameters():
        return p.device
    for b in m.buffers():
        return b.device
    return torch.device("cpu")


def _bidirectional_error(what: str) -> ValueError:
    return ValueError(
        f"system: {what} is bidirectional; Lyapunov exponents need a causal map h_t = F(h_{{t-1}},"
        " x_t) and the reverse direction runs backwards in time. Analyse a unidirectional model "
        "(or one direction's cell, e.g. layer.cells[0])"
    )


def resolve_system(system: Any, dtype: torch.dtype, inputs_given: bool) -> TangentSystem:
    """Turn ``system`` into a :class:`TangentSystem` (parameters copied to ``dtype``)."""
    embedding = None
    if isinstance(system, SequenceModel):
        if system.embedding is not None:
            embedding = system.embedding.weight.detach().to(dtype=dtype)
        system = system.rnn
    if isinstance(system, nn.Module):
        device = _module_device(system)
        if embedding is not None:
            embedding = embedding.to(device)
        with torch.no_grad():
            if isinstance(system, RecurrentLayer):
                if system.num_directions != 1:
                    raise _bidirectional_error(type(system).__name__)
                cells = [_cell_copy(c, dtype, device) for c in system.cells]
                blocks = [_block_for_cell(c) for c in cells]
                comps = [[c.hidden_size] * c.num_states for c in cells]
                return _LayerStack(blocks, comps, dtype, device, embedding)
            if isinstance(system, RecurrentCell):
                c = _cell_copy(system, dtype, device)
                return _LayerStack(
                    [_block_for_cell(c)], [[c.hidden_size] * c.num_states], dtype, device, embedding
                )
            if isinstance(system, nn.RNNBase):
                return _torch_rnn_stack(system, dtype, device, embedding)
            if isinstance(system, nn.RNNCellBase):
                return _torch_cell_stack(system, dtype, device)
        if embedding is not None:
            raise TypeError(
                f"system: SequenceModel.rnn of type {type(system).__name__} is not supported"
            )
    if isinstance(system, nn.Module) and not _looks_like_step(system):
        raise TypeError(
            f"system: unsupported module {type(system).__name__}; pass a cell or layer of "
            "lipschitz_rnn, torch.nn.RNN/LSTM/GRU, a SequenceModel, or a callable step(h, x)"
        )
    if callable(system):
        return _CallableSystem(system, autonomous=not inputs_given)
    raise TypeError(
        f"system must be a lipschitz_rnn cell/layer, torch.nn.RNN/LSTM/GRU, a SequenceModel or a "
        f"callable step(h, x) -> h_next; got {type(system).__name__}"
    )


def _looks_like_step(m: nn.Module) -> bool:
    """A custom module is accepted as a step map when its forward takes (h, x) or (h)."""
    try:
        sig = inspect.signature(m.forward)
    except (TypeError, ValueError):
        return False
    # library modules (nn.Linear, nn.Sequential, this package's heads, ...) are not step maps
    root = type(m).__module__.split(".")[0]
    return root not in ("torch", "lipschitz_rnn") and len(sig.parameters) >= 1


def _w(m: nn.Module, name: str, dtype, device) -> Tensor | None:
    t = getattr(m, name, None)
    return None if t is None else t.detach().to(device=device, dtype=dtype)


def _torch_rnn_stack(rnn: nn.RNNBase, dtype, device, embedding) -> _LayerStack:
    if rnn.bidirectional:
        raise _bidirectional_error(f"torch.nn.{type(rnn).__name__}")
    mode = rnn.mode
    proj = getattr(rnn, "proj_size", 0) or 0
    blocks: list[_Block] = []
    comps: list[list[int]] = []
    for layer in range(rnn.num_layers):
        g = lambda n, layer=layer: _w(rnn, f"{n}_l{layer}", dtype, device)
        w_ih, w_hh, b_ih, b_hh = g("weight_ih"), g("weight_hh"), g("bias_ih"), g("bias_hh")
        if mode in ("RNN_TANH", "RNN_RELU"):
            blocks.append(_TorchRNNBlock(w_ih, w_hh, b_ih, b_hh, relu=mode == "RNN_RELU"))
            comps.append([rnn.hidden_size])
        elif mode == "GRU":
            blocks.append(_GRUBlock(w_ih, w_hh, b_ih, b_hh))
            comps.append([rnn.hidden_size])
        elif mode == "LSTM":
            blocks.append(_LSTMBlock(w_ih, w_hh, b_ih, b_hh, g("weight_hr") if proj else None))
            comps.append([proj or rnn.hidden_size, rnn.hidden_size])
        else:  # pragma: no cover - torch has no other modes
            raise TypeError(f"system: unsupported torch RNN mode {mode!r}")
    return _LayerStack(blocks, comps, dtype, device, embedding)


def _torch_cell_stack(cell: nn.RNNCellBase, dtype, device) -> _LayerStack:
    g = lambda n: _w(cell, n, dtype, device)
    w_ih, w_hh, b_ih, b_hh = g("weight_ih"), g("weight_hh"), g("bias_ih"), g("bias_hh")
    H = cell.hidden_size
    if isinstance(cell, nn.LSTMCell):
        return _LayerStack([_LSTMBlock(w_ih, w_hh, b_ih, b_hh, None)], [[H, H]], dtype, device)
    if isinstance(cell, nn.GRUCell):
        return _LayerStack([_GRUBlock(w_ih, w_hh, b_ih, b_hh)], [[H]], dtype, device)
    if isinstance(cell, nn.RNNCell):
        relu = cell.nonlinearity == "relu"
        return _LayerStack([_TorchRNNBlock(w_ih, w_hh, b_ih, b_hh, relu)], [[H]], dtype, device)
    raise TypeError(f"system: unsupported torch cell {type(cell).__name__}")
