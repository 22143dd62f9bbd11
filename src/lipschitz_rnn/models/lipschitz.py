"""The Lipschitz recurrent unit (Erichson, Azencot, Queiruga, Hodgkinson, Mahoney; ICLR 2021).

Continuous-time unit::

    dh/dt = f(h, x) = A h + tanh(W h + U x + b)

with ``A = S(M_A; beta, gamma_A)`` and ``W = S(M_W; beta, gamma_W)`` from the symmetric-skew
parametrisation (see :mod:`lipschitz_rnn.models.parametrize`), discretised with step ``eps`` by
one of the schemes of :mod:`lipschitz_rnn.models.solvers` (``"euler"``, ``"rk2"`` explicit
midpoint, ``"heun"`` explicit trapezoid), the input held constant over a step. Dense input runs
through the fused scan of :mod:`lipschitz_rnn.models.fused`.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_choice, check_float
from . import fused
from ._base import RecurrentCell, RecurrentLayer
from .fused import stacked_step
from .parametrize import (
    check_beta_gamma,
    check_stable_margin,
    stable_symmetric_skew,
    symmetric_skew,
)
from .solvers import SCHEMES, max_stable_step, rk_step, stability_polynomial

__all__ = [
    "LipschitzRNNCell",
    "LipschitzRNN",
    "PARAMETRIZATIONS",
    "lipschitz_step",
]

#: ``"symmetric_skew"``: ``A = S(M_A; beta, gamma_A)`` as in the paper; ``"stable"``: the same
#: pulled inside ``||I + eps A||_2 <= 1 - eps gamma_A`` (see :mod:`.parametrize`)
PARAMETRIZATIONS = ("symmetric_skew", "stable")

log = logging.getLogger(__name__)

#: a cell whose linear part at construction doubles the state in fewer steps than this warns
#: (RuntimeWarning); a slower growth (the paper's initialisation: x2 in ~10^4 steps) is logged
#: at INFO level
WARN_DOUBLING_STEPS = 1000


def lipschitz_step(h: Tensor, u: Tensor, A: Tensor, W: Tensor, eps: float, solver: str) -> Tensor:
    """One discrete step of the Lipschitz unit on row-major batches: ``h`` (B, H) and the
    projected input ``u = x U^T + b`` (B, H). Layers use :func:`stacked_step`, the same step with
    one product per stage."""

    def f(z: Tensor) -> Tensor:
        return z @ A.T + torch.tanh(z @ W.T + u)

    return rk_step(f, h, eps, solver)


class LipschitzRNNCell(RecurrentCell):
    r"""One step of the Lipschitz RNN.

    .. math::
        h_{t} = \mathrm{Solver}_\epsilon\big(h \mapsto A h + \tanh(W h + U x_t + b)\big)(h_{t-1})

    Args:
        input_size: features of ``x``.
        hidden_size: features of ``h``.
        solver: ``"euler"``, ``"rk2"`` (explicit midpoint) or ``"heun"``.
        eps: the step size (> 0).
        beta: the skew weight of the parametrisation, in [0, 1].
        gamma_A: the diagonal shift of ``A`` (>= 0).
        gamma_W: the diagonal shift of ``W`` (>= 0).
        init_std: ``M_A`` and ``M_W`` start i.i.d. normal with standard deviation
            ``init_std / hidden_size``, the scale of the paper authors' code
            (``gaussian_init_``); the input map ``U`` (``weight_ih``) and ``b`` (``bias_ih``)
            start as in torch.nn.Linear.
        bias: whether to learn ``b``.
        parametrization: ``"symmetric_skew"`` (default): ``A = S(M_A; beta, gamma_A)``, the
            paper's; nothing keeps ``A`` stable during training. ``"stable"``:
            ``A = c S - ((1 - c)/eps) I`` with ``c = min(1, (1 - eps gamma_A)/||I + eps S||_2)``
            (:func:`~lipschitz_rnn.models.parametrize.stable_symmetric_skew`): equal to the
            paper's ``A`` while that is inside the step's stability region, otherwise shrunk and
            damped just enough. By construction ``||I + eps A||_2 <= 1 - eps gamma_A``, so
            ``A_sym <= -gamma_A I`` (``A`` Hurwitz), ``eps`` lies inside the stability region of
            every solver, and the linear part of the step is a contraction: the state stays
            bounded for any input and any weights, also when carried across batches (a
            language model trained with plain SGD at lr 20). Needs ``gamma_A > 0``,
            ``eps * gamma_A < 1``. ``W`` is the same in both.

    Parameters: ``M_A``, ``M_W`` (hidden, hidden), ``weight_ih`` (hidden, input), ``bias_ih``
    (hidden) or ``None``. Properties ``A`` and ``W`` build the recurrent matrices.

    Equivalent to (batch-first rows, ``h @ A.T`` is ``A h``)::

        f = lambda h: h @ cell.A.T + torch.tanh(h @ cell.W.T + x @ cell.weight_ih.T + cell.bias_ih)
        h_next = h + eps * f(h)                              # euler
        h_next = h + eps * f(h + 0.5 * eps * f(h))           # rk2
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        solver: str = "euler",
        eps: float = 0.03,
        beta: float = 0.75,
        gamma_A: float = 0.001,
        gamma_W: float = 0.001,
        init_std: float = 0.1,
        bias: bool = True,
        parametrization: str = "symmetric_skew",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(input_size, hidden_size)
        self.solver = check_choice("solver", solver, SCHEMES)
        self.eps = check_float("eps", eps, gt=0)
        check_beta_gamma(beta, gamma_A, gamma_name="gamma_A")
        check_beta_gamma(beta, gamma_W, gamma_name="gamma_W")
        self.beta = float(beta)
        self.gamma_A = float(gamma_A)
        self.gamma_W = float(gamma_W)
        self.init_std = check_float("init_std", init_std, ge=0)
        self.parametrization = check_choice("parametrization", parametrization, PARAMETRIZATIONS)
        if self.parametrization == "stable":
            try:
                check_stable_margin(self.gamma_A, self.eps, gamma_name="gamma_A")
            except ValueError as e:
                raise ValueError(
                    f"{e}: parametrization='stable' keeps ||I + eps A|| <= 1 - eps * gamma_A, "
                    "which needs gamma_A > 0 and eps * gamma_A < 1"
                ) from None
        fk = {"device": device, "dtype": dtype}
        self.M_A = nn.Parameter(torch.empty(hidden_size, hidden_size, **fk))
        self.M_W = nn.Parameter(torch.empty(hidden_size, hidden_size, **fk))
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size, **fk))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(hidden_size, **fk))
        else:
            self.register_parameter("bias_ih", None)
        self.reset_parameters()
        self._warn_if_unstable_step()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            std = self.init_std / self.hidden_size
            self.M_A.normal_(0.0, std)
            self.M_W.normal_(0.0, std)
            # torch.nn.Linear's initialisation
            nn.init.kaiming_uniform_(self.weight_ih, a=math.sqrt(5))
            if self.bias_ih is not None:
                bound = 1.0 / math.sqrt(self.input_size)
                nn.init.uniform_(self.bias_ih, -bound, bound)

    def _warn_if_unstable_step(self) -> None:
        """Say, once, when ``eps`` lies outside the solver's stability region of ``A`` at
        construction, with what that means: the largest growth factor of the linear part per
        step. A RuntimeWarning if it doubles the state within :data:`WARN_DOUBLING_STEPS` steps,
        an INFO log otherwise. The stable parametrisation is inside by construction."""
        if self.parametrization == "stable":
            return
        with torch.no_grad():
            eig = torch.linalg.eigvals(self.A.detach().to("cpu", torch.float64)).numpy()
        if self.eps < max_stable_step(eig, self.solver):
            return
        z = self.eps * eig
        growth = float(np.abs(np.polyval(stability_polynomial(self.solver)[::-1], z)).max())
        doubling = math.log(2.0) / math.log(growth) if growth > 1.0 else math.inf
        head = (
            f"LipschitzRNNCell: eps={self.eps} lies outside the {self.solver} stability region "
            f"of A at construction: the linear part can grow the state by up to {growth:.6g}x "
            f"per step (x2 in {'<1' if doubling < 1 else f'~{doubling:,.0f}'} steps). "
        )
        cure = "(inside by construction; lipschitz_rnn.stability.certify gives the numbers)"
        if doubling < WARN_DOUBLING_STEPS:
            warnings.warn(
                head + "Longer sequences blow up: lower eps, or use parametrization='stable' "
                + cure,
                RuntimeWarning,
                stacklevel=3,
            )
        else:
            log.info(
                head + "Harmless for sequences much shorter than that; a state carried across "
                "batches, or training that moves A further out, can diverge: parametrization='stable' "
                + cure
            )

    @property
    def A(self) -> Tensor:
        if self.parametrization == "stable":
            return stable_symmetric_skew(self.M_A, self.beta, self.gamma_A, self.eps)
        return symmetric_skew(self.M_A, self.beta, self.gamma_A)

    @property
    def W(self) -> Tensor:
        return symmetric_skew(self.M_W, self.beta, self.gamma_W)

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, solver={self.solver!r}, eps={self.eps}, "
            f"beta={self.beta}, gamma_A={self.gamma_A}, gamma_W={self.gamma_W}"
            + (", bias=False" if self.bias_ih is None else "")
            + (f", parametrization={self.parametrization!r}"
               if self.parametrization != "symmetric_skew" else "")
        )

    # --- the three pieces -----------------------------------------------------------------------
    def input_projection(self, x: Tensor) -> Tensor:
        return torch.nn.functional.linear(x, self.weight_ih, self.bias_ih)

    def recurrence(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(A, W, [A; W]^T)``: the stacked transpose lets a step do one matmul for both."""
        A, W = self.A, self.W
        return A, W, torch.cat([A, W], 0).T

    def step(self, h: Tensor, u: Tensor, ctx: tuple[Tensor, ...]) -> Tensor:
        return stacked_step(h, u, ctx[2], self.eps, self.solver)


class LipschitzRNN(RecurrentLayer):
    r"""A (multi-layer, optionally bidirectional) Lipschitz RNN with torch.nn.RNN's interface.

    Args: ``input_size, hidden_size, num_layers=1, *, batch_first=False, dropout=0.0,
    bidirectional=False`` as in torch.nn.RNN, plus the keywords of :class:`LipschitzRNNCell`
    (``solver, eps, beta, gamma_A, gamma_W, init_std, bias, parametrization``), shared by every
    cell. ``parametrization="stable"`` keeps every cell's linear part contracting whatever the
    optimiser does (see :class:`LipschitzRNNCell`): use it where the hidden state is carried
    across batches or the learning rate is large.

    ``forward(input, hx=None) -> (output, h_n)`` exactly as torch.nn.RNN: see
    :class:`~lipschitz_rnn.models._base.RecurrentLayer`. ``cells[l * D + d]`` is layer ``l``,
    direction ``d`` (0 forward, 1 reverse). Per forward, ``A`` and ``W`` are built once per cell
    and the input projection of all time steps is one matmul.

    ``state_dict`` against torch.nn.RNN's (``i = l * D + d``; ``_reverse`` for ``d = 1``)::

        nn.RNN                          LipschitzRNN
        weight_ih_l{l}[_reverse] (H, I) cells.{i}.weight_ih   U, same role
        bias_ih_l{l}[_reverse]   (H,)   cells.{i}.bias_ih     b (= nn.RNN's b_ih + b_hh)
        bias_hh_l{l}[_reverse]   (H,)   -                     (folded into b)
        weight_hh_l{l}[_reverse] (H, H) cells.{i}.M_W         W = S(M_W; beta, gamma_W)
        -                               cells.{i}.M_A         A = S(M_A; beta, gamma_A)

    ``all_weights[i]`` is ``[M_A, M_W, weight_ih, bias_ih]``; ``flatten_parameters()`` does
    nothing; autocast, TorchScript and export: see
    :class:`~lipschitz_rnn.models._base.RecurrentLayer`.

    Example::

        >>> rnn = LipschitzRNN(1, 128, solver="rk2")
        >>> out, h_n = rnn(torch.randn(784, 32, 1))   # out (784, 32, 128), h_n (1, 32, 128)
    """

    cell_class = LipschitzRNNCell
    use_fused: bool = True

    def _run_direction(self, cell, x, h0, batch_sizes, reverse):
        if batch_sizes is None and self.use_fused and fused.fused_available(cell.solver, x):
            if reverse:
                x = x.flip(0)
            # the input projection runs inside the fused Function (u, du are scratch)
            hs = fused.lipschitz_layer_scan(
                x, h0, cell.weight_ih, cell.bias_ih, cell.A, cell.W, cell.eps, cell.solver
            )
            last = hs[-1]
            if reverse:
                hs = hs.flip(0)
            return hs, last
        u = cell.input_projection(x)
        return cell.scan(u, h0, cell.recurrence(), batch_sizes, reverse)
