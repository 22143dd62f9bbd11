"""Peer recurrent units, each as a cell and a layer with torch.nn.RNN's interface.

* :class:`ODERNN` -- the residual "neural ODE" RNN: ``h' = h + eps tanh(W h + U x + b)``, ``W``
  unconstrained.
* :class:`AntisymmetricRNN` -- Chang, Chen, Haber, Chi (ICLR 2019):
  ``h' = h + eps tanh((W - W^T - gamma I) h + V x + b)``; with ``gated=True`` the update is
  multiplied by ``sigmoid((W_g - W_g^T - gamma I) h + V_g x + b_g)``.
* :class:`CoRNN` -- Rusch & Mishra (ICLR 2021), the coupled oscillator
  ``y'' = tanh(W y + Wz y' + V x + b) - gamma y - epsilon y'`` with states ``(y, z = y')``,
  discretised IMEX as in the paper: ``z_n = z_{n-1} + dt (tanh(W y_{n-1} + Wz z_{n-1} + V x_n + b)
  - gamma y_{n-1} - epsilon z_{n-1})``, ``y_n = y_{n-1} + dt z_n``. The output is ``y``.
* :class:`ExpRNN` -- Lezcano-Casado & Martinez-Rubio (ICML 2019): ``h' = modReLU(Q h + U x)``
  with orthogonal ``Q = expm(S - S^T)`` and ``modReLU(z) = sign(z) relu(|z| + b)``.

torch's own nn.RNN (tanh), IRNN (Le, Jaitly, Hinton 2015: ReLU, identity recurrent init) nn.LSTM
and nn.GRU are built by :func:`lipschitz_rnn.models.build` directly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_float
from ._base import RecurrentCell, RecurrentLayer

__all__ = [
    "ODERNNCell",
    "ODERNN",
    "AntisymmetricRNNCell",
    "AntisymmetricRNN",
    "CoRNNCell",
    "CoRNN",
    "ExpRNNCell",
    "ExpRNN",
]


def _linear_init(weight: Tensor, bias: Tensor | None, fan_in: int) -> None:
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(bias, -bound, bound)


class _InputMapCell(RecurrentCell):
    """A cell whose input enters through one affine map ``x -> x U^T + b`` of ``out_features``."""

    def _make_input_map(self, out_features: int, bias: bool, fk: dict) -> None:
        self.weight_ih = nn.Parameter(torch.empty(out_features, self.input_size, **fk))
        self.bias_ih = nn.Parameter(torch.empty(out_features, **fk)) if bias else None
        _linear_init(self.weight_ih, self.bias_ih, self.input_size)

    def input_projection(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih)


class ODERNNCell(_InputMapCell):
    """``h' = h + eps tanh(W h + U x + b)`` with an unconstrained ``W`` (``weight_hh``)."""

    def __init__(
        self,
        input_size,
        hidden_size,
        *,
        eps: float = 0.03,
        init_std: float = 0.1,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__(input_size, hidden_size)
        self.eps = check_float("eps", eps, gt=0)
        fk = {"device": device, "dtype": dtype}
        self.weight_hh = nn.Parameter(
            torch.randn(hidden_size, hidden_size, **fk) * (init_std / hidden_size)
        )
        self._make_input_map(hidden_size, bias, fk)

    def recurrence(self):
        return (self.weight_hh.T,)

    def step(self, h, u, ctx):
        return h + self.eps * torch.tanh(h @ ctx[0] + u)


class AntisymmetricRNNCell(_InputMapCell):
    """``h' = h + eps [sigmoid(gate)] tanh((W - W^T - gamma I) h + V x + b)``."""

    def __init__(
        self,
        input_size,
        hidden_size,
        *,
        eps: float = 0.01,
        gamma: float = 0.01,
        gated: bool = False,
        init_std: float = 1.0,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__(input_size, hidden_size)
        self.eps = check_float("eps", eps, gt=0)
        self.gamma = check_float("gamma", gamma, ge=0)
        self.gated = bool(gated)
        fk = {"device": device, "dtype": dtype}
        n_maps = 2 if gated else 1
        # Chang et al. initialise W ~ N(0, sigma^2 / n)
        self.weight_hh = nn.Parameter(
            torch.randn(n_maps * hidden_size, hidden_size, **fk)
            * (init_std / math.sqrt(hidden_size))
        )
        self._make_input_map(n_maps * hidden_size, bias, fk)

    def recurrence(self):
        H = self.hidden_size
        eye = torch.eye(H, dtype=self.weight_hh.dtype, device=self.weight_hh.device)
        mats = [Wi - Wi.T - self.gamma * eye for Wi in self.weight_hh.split(H, 0)]
        return (torch.cat(mats, 0).T,)

    def step(self, h, u, ctx):
        z = h @ ctx[0] + u
        if not self.gated:
            return h + self.eps * torch.tanh(z)
        a, g = z.split(self.hidden_size, -1)
        return h + self.eps * torch.sigmoid(g) * torch.tanh(a)


class CoRNNCell(_InputMapCell):
    """Coupled oscillatory RNN; the state is ``[y, z]`` (two components)."""

    num_states = 2

    def __init__(
        self,
        input_size,
        hidden_size,
        *,
        dt: float = 0.042,
        gamma: float = 2.7,
        epsilon: float = 4.7,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__(input_size, hidden_size)
        self.dt = check_float("dt", dt, gt=0)
        self.gamma = float(gamma)
        self.epsilon = float(epsilon)
        fk = {"device": device, "dtype": dtype}
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, 2 * hidden_size, **fk))
        nn.init.kaiming_uniform_(self.weight_hh, a=math.sqrt(5))
        self._make_input_map(hidden_size, bias, fk)

    def recurrence(self):
        return (self.weight_hh.T,)

    def step(self, h, u, ctx):
        H = self.hidden_size
        y, z = h[:, :H], h[:, H:]
        z = z + self.dt * (torch.tanh(h @ ctx[0] + u) - self.gamma * y - self.epsilon * z)
        y = y + self.dt * z
        return torch.cat([y, z], -1)


class ExpRNNCell(_InputMapCell):
    """``h' = modReLU(Q h + U x)``, ``Q = expm(S - S^T)`` orthogonal (``S`` is ``log_hh``)."""

    def __init__(self, input_size, hidden_size, *, bias: bool = True, device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        fk = {"device": device, "dtype": dtype}
        # Henaff-style init: 2x2 rotation blocks with angles ~ U[-pi, pi]
        S = torch.zeros(hidden_size, hidden_size, **fk)
        angles = torch.empty(hidden_size // 2, **fk).uniform_(-math.pi, math.pi)
        idx = torch.arange(0, 2 * (hidden_size // 2), 2, device=device)
        S[idx, idx + 1] = angles / 2  # S - S^T puts +angle above, -angle below the diagonal
        self.log_hh = nn.Parameter(S)
        self._make_input_map(hidden_size, False, fk)
        self.bias_mod = (
            nn.Parameter(torch.empty(hidden_size, **fk).uniform_(-0.01, 0.01)) if bias else None
        )

    @property
    def weight_hh(self) -> Tensor:
        return torch.linalg.matrix_exp(self.log_hh - self.log_hh.T)

    def recurrence(self):
        return (self.weight_hh.T,)

    def step(self, h, u, ctx):
        z = h @ ctx[0] + u
        if self.bias_mod is None:
            return z
        return torch.sign(z) * torch.relu(z.abs() + self.bias_mod)


class ODERNN(RecurrentLayer):
    """Layer of :class:`ODERNNCell` with torch.nn.RNN's interface."""

    cell_class = ODERNNCell


class AntisymmetricRNN(RecurrentLayer):
    """Layer of :class:`AntisymmetricRNNCell` with torch.nn.RNN's interface."""

    cell_class = AntisymmetricRNNCell


class CoRNN(RecurrentLayer):
    """Layer of :class:`CoRNNCell`; ``hx`` and ``h_n`` are tuples ``(y, z)`` like nn.LSTM's."""

    cell_class = CoRNNCell


class ExpRNN(RecurrentLayer):
    """Layer of :class:`ExpRNNCell` with torch.nn.RNN's interface."""

    cell_class = ExpRNNCell
