"""Lyapunov spectra of recurrent networks and of arbitrary maps (QR / "Benettin" method).

For a map ``h_t = F(h_{t-1}, x_t)`` with Jacobians ``J_t = dh_t / dh_{t-1}``, ``k`` tangent vectors
(columns of an orthonormal ``Q_0``, n x k) are pushed forward by ``J_T ... J_1 Q_0`` and
re-orthonormalised every ``reorth_every`` steps, ``J Q = Q' R`` with ``diag R > 0``; the
exponents are::

    lambda_i = sum over re-orthonormalisations of log R_ii  /  (steps * dt)

(natural log per unit time; one step lasts ``dt``). The sum of all ``n`` exponents is the time
average of ``log |det J_t|`` / ``dt``.

* **Known units** (every cell/layer of this package, torch.nn.RNN/GRU/LSTM) propagate the tangent
  vectors with hand-written Jacobian-vector products: shared weight matrices multiply all
  ``batch * k`` tangent rows in one GEMM and no n x n Jacobian is formed (see
  :mod:`lipschitz_rnn.analysis._units` for the formulas of each unit; the Lipschitz unit advances
  the pair (state, tangent rows) through one step of its own Runge-Kutta scheme,
  :func:`lipschitz_rnn.models.solvers.rk_step`).
* **Any other map** ``step(h, x)`` uses ``torch.func.jvp`` under ``torch.func.vmap`` over the
  tangent rows (:mod:`lipschitz_rnn.analysis._jvp`).

What differs between systems (device, per-step drive, initial state, first-call checks) lives in
the system objects of :mod:`lipschitz_rnn.analysis._systems`; the estimator's loop is one.
* **Re-orthonormalisation** is batched Cholesky-QR (Gram matrix, ``cholesky_ex``, triangular
  solve: GEMM-based, so it stays fast on GPUs, where batched small Householder QR is slow). The
  sequences whose tangent vectors have nearly aligned are redone more carefully -- a second
  Cholesky pass (CholeskyQR2) on accelerators, Householder QR on the CPU (cheaper there than two
  passes) -- and so are those where Cholesky fails; see :mod:`lipschitz_rnn.analysis._qr`.
  ``reorth_every="auto"`` re-orthonormalises only as often as the spread of the spectrum
  allows, verifies every block and redoes, shorter, any in which a direction could have been
  lost to round-off (:class:`lipschitz_rnn.analysis._qr.AutoBlocks`), so its exponents are
  those of ``reorth_every=1`` up to round-off.

Entry points: :func:`lyapunov_spectrum` -> :class:`LyapunovSpectrum`; its figures are
:func:`~lipschitz_rnn.analysis.plots.plot_spectrum` and
:func:`~lipschitz_rnn.analysis.plots.plot_evolution`, the spectrum's features (Kaplan-Yorke
dimension, entropy rate, ...) are in :mod:`lipschitz_rnn.analysis.features`.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .._checks import check_float, check_int, check_optional_int
from ._model_state import finite_or_none, nan_for_none
from ._qr import AutoBlocks, Orthonormalizer, householder_rows
from ._systems import TangentSystem, resolve_system
from ._taped import Tape, taped_elman_run
from .features import entropy_rate, kaplan_yorke_dimension

__all__ = [
    "LyapunovSpectrum",
    "NonFiniteStateError",
    "lyapunov_spectrum",
]


class NonFiniteStateError(FloatingPointError, ValueError):
    """The trajectory or the tangent vectors became non-finite (inf / nan).

    Subclasses both FloatingPointError and ValueError, so either ``except`` catches it.
    """


# ----------------------------------------------------------------------------------------------
# result
# ----------------------------------------------------------------------------------------------
def _tolist(t: Tensor) -> Any:
    if t.dim() == 0:
        return finite_or_none(t)
    return [_tolist(r) for r in t] if t.dim() > 1 else [finite_or_none(v) for v in t.tolist()]


@dataclass
class LyapunovSpectrum:
    """Result of :func:`lyapunov_spectrum` (all tensors float64 on the CPU).

    Attributes:
        exponents: (batch, k), each row sorted descending; natural log per unit time.
        mean, std: (k,) over the batch of the sorted rows (``std`` with Bessel's correction;
            zeros for a batch of one).
        history: (records, k) the running estimate of every exponent, averaged over the batch, at
            each re-orthonormalisation during averaging (``history_steps`` says after how many
            averaged steps). Column ``j`` follows the ``j``-th tangent direction (Gram-Schmidt
            order), which converges to the ``j``-th largest exponent; use it to judge convergence.
        history_steps: (records,) int64.
        kaplan_yorke_dimension, entropy_rate: (batch,) per sequence. ``entropy_rate`` is the sum
            of the positive exponents (Pesin's upper bound of the Kolmogorov-Sinai entropy, nats
            per unit time). The properties ``kaplan_yorke_dimension_of_mean`` and
            ``entropy_rate_of_mean`` are the same quantities of ``mean``.
        final_state: (batch, state_size) the state after the last step (to continue a run).
        state_size, k, steps, warmup, dt, reorth_every: the run's sizes and settings.
        method: which tangent map ran (e.g. ``"lipschitz-rk2"``, ``"torch-lstm x2 layers"``,
            ``"torch.func.jvp"``).
        householder_fallbacks: batch elements x re-orthonormalisations done by Householder QR
            instead of Cholesky-QR (ill-conditioned bases; see :mod:`._qr`), counting the
            accepted blocks of ``reorth_every="auto"`` only.
    """

    exponents: Tensor
    mean: Tensor
    std: Tensor
    history: Tensor
    history_steps: Tensor
    kaplan_yorke_dimension: Tensor
    entropy_rate: Tensor
    final_state: Tensor | None = field(default=None, repr=False)
    state_size: int = 0
    k: int = 0
    steps: int = 0
    warmup: int = 0
    dt: float = 1.0
    reorth_every: int = 1
    method: str = ""
    householder_fallbacks: int = 0

    @property
    def batch_size(self) -> int:
        return int(self.exponents.shape[0])

    @property
    def kaplan_yorke_dimension_of_mean(self) -> float:
        return float(kaplan_yorke_dimension(self.mean))

    @property
    def entropy_rate_of_mean(self) -> float:
        return float(entropy_rate(self.mean))

    @property
    def max_exponent(self) -> float:
        return float(self.mean[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (lists of floats; non-finite values become ``None``)."""
        return {
            "exponents": _tolist(self.exponents),
            "mean": _tolist(self.mean),
            "std": _tolist(self.std),
            "history": _tolist(self.history),
            "history_steps": [int(s) for s in self.history_steps.tolist()],
            "kaplan_yorke_dimension": _tolist(self.kaplan_yorke_dimension),
            "entropy_rate": _tolist(self.entropy_rate),
            "kaplan_yorke_dimension_of_mean": finite_or_none(self.kaplan_yorke_dimension_of_mean),
            "entropy_rate_of_mean": finite_or_none(self.entropy_rate_of_mean),
            "state_size": int(self.state_size),
            "k": int(self.k),
            "batch_size": self.batch_size,
            "steps": int(self.steps),
            "warmup": int(self.warmup),
            "dt": float(self.dt),
            "reorth_every": int(self.reorth_every),
            "method": str(self.method),
            "householder_fallbacks": int(self.householder_fallbacks),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LyapunovSpectrum:
        """Inverse of :meth:`to_dict` (``None`` entries become nan; no ``final_state``)."""

        def t(x, dtype=torch.float64):
            return torch.tensor(nan_for_none(x), dtype=dtype)

        exps = t(d["exponents"])
        if exps.dim() == 1:
            exps = exps.unsqueeze(0)
        hist = t(d.get("history", []))
        return cls(
            exponents=exps,
            mean=t(d["mean"]) if "mean" in d else exps.mean(0),
            std=t(d["std"]) if "std" in d else torch.zeros(exps.shape[1], dtype=torch.float64),
            history=hist.reshape(-1, exps.shape[1]),
            history_steps=torch.tensor(d.get("history_steps", []), dtype=torch.int64),
            kaplan_yorke_dimension=kaplan_yorke_dimension(exps),
            entropy_rate=entropy_rate(exps),
            state_size=int(d.get("state_size", exps.shape[1])),
            k=int(d.get("k", exps.shape[1])),
            steps=int(d.get("steps", 0)),
            warmup=int(d.get("warmup", 0)),
            dt=float(d.get("dt", 1.0)),
            reorth_every=int(d.get("reorth_every", 1)),
            method=str(d.get("method", "")),
            householder_fallbacks=int(d.get("householder_fallbacks", 0)),
        )


# ----------------------------------------------------------------------------------------------
# the estimator
# ----------------------------------------------------------------------------------------------
def _initial_basis(n: int, k: int, generator: torch.Generator | None) -> Tensor:
    """The random orthonormal start (n, k), float64 on the CPU: Householder QR (signs fixed so
    that ``diag R > 0``) of an i.i.d. standard normal (n, k) matrix drawn from ``generator``
    (default ``torch.Generator().manual_seed(0)``)."""
    if generator is None:
        return _default_basis(n, k).clone()  # the same every call: drawn once
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    G = torch.randn(n, k, generator=generator, dtype=torch.float64, device=generator.device)
    Q, _ = householder_rows(G.mT.unsqueeze(0))
    return Q[0].mT.cpu()


@functools.lru_cache(maxsize=16)
def _default_basis(n: int, k: int) -> Tensor:
    return _initial_basis(n, k, torch.Generator().manual_seed(0))


def _prepare_inputs(inputs: Any, system: TangentSystem, batch_first: bool, dtype, device):
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs must be a Tensor or None, got {type(inputs).__name__}")
    if system.tokens:
        if inputs.dtype.is_floating_point or inputs.dtype.is_complex or inputs.dtype == torch.bool:
            raise TypeError(
                f"inputs must be integer tokens for a SequenceModel with an embedding, got "
                f"{inputs.dtype}"
            )
        if inputs.dim() != 2:
            raise ValueError(
                f"inputs must be (T, batch) tokens ((batch, T) with batch_first), got shape "
                f"{tuple(inputs.shape)}"
            )
        x = inputs.transpose(0, 1) if batch_first else inputs
        return x.to(device)
    if inputs.dim() == 2:  # unbatched (T, features)
        x = inputs.unsqueeze(1)
    elif inputs.dim() == 3:
        x = inputs.transpose(0, 1) if batch_first else inputs
    else:
        raise ValueError(
            f"inputs must be (T, batch, features) ((batch, T, features) with batch_first) or "
            f"unbatched (T, features), got shape {tuple(inputs.shape)}"
        )
    if system.input_size is not None and x.shape[-1] != system.input_size:
        raise ValueError(
            f"inputs have {x.shape[-1]} features but the system's input_size is {system.input_size}"
        )
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(
            f"inputs must have at least one step and one sequence, got {tuple(x.shape)}"
        )
    return x.to(device=device, dtype=dtype)


class _FiniteGuard:
    """Raise :class:`NonFiniteStateError` naming the first step whose state is not finite.

    The states of the current block are only referenced (no work per step); :meth:`flush`, at
    each re-orthonormalisation (and every ``every`` steps), checks them all in one reduction
    and one host sync, then the steps one by one only when something is not finite.
    """

    def __init__(self, every: int = 128) -> None:
        self.every = every
        self.states: list[Tensor] = []
        self.first = 0  # the step of states[0]

    def __call__(self, h: Tensor, t: int) -> None:
        if not self.states:
            self.first = t
        self.states.append(h)
        if len(self.states) >= self.every:
            self.flush()

    def flush(self) -> None:
        states, self.states = self.states, []
        if states:
            self.block(torch.stack(states), self.first)

    def block(self, states: Tensor, first: int) -> None:
        """Check the states (steps, batch, n) of the steps from ``first`` on at once."""
        with torch.no_grad():
            if bool(torch.isfinite(states).all()):
                return
            for i, h in enumerate(states):
                if not bool(torch.isfinite(h).all()):
                    raise NonFiniteStateError(
                        f"state became non-finite at step {first + i} (0-based, warmup "
                        "steps included); the trajectory diverges or overflows"
                    )


@dataclass
class _Sums:
    """What one run of the estimator's loop leaves: ``acc`` (batch, k) the float64 sums of
    ``log R_ii`` over the averaged steps (differentiable when the run was), the running
    batch means behind ``history`` (none for a differentiable run), the final state, and the
    sizes and settings used."""

    acc: Tensor
    hist_sum: list[Tensor]
    hist_steps: list[int]
    h: Tensor
    n: int
    k: int
    batch: int
    steps: int
    warmup: int
    dt: float
    reorth_every: int
    method: str
    householder_count: int


def _checked_options(steps, warmup, reorth_every, dt, dtype, k) -> tuple:
    """(steps, warmup, reorth_every, dt, k) of the estimator, checked (``reorth_every``: an
    int or ``"auto"``)."""
    steps = check_optional_int("steps", steps, ge=1)
    warmup = check_int("warmup", warmup, ge=0)
    if not (isinstance(reorth_every, str) and reorth_every == "auto"):
        if isinstance(reorth_every, str):
            raise ValueError(f"reorth_every must be an int >= 1 or 'auto', got {reorth_every!r}")
        reorth_every = check_int("reorth_every", reorth_every, ge=1)
    dt = check_float("dt", dt, gt=0)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float64 or torch.float32, got {dtype!r}")
    return steps, warmup, reorth_every, dt, check_optional_int("k", k, ge=1)


def _inputs_and_steps(sysm, inputs, steps, warmup, batch_first, dtype, device) -> tuple:
    """(time-major inputs or None, their batch size or None, the number of averaged steps)."""
    x, batch = None, None
    if inputs is not None:
        x = _prepare_inputs(inputs, sysm, batch_first, dtype, device)
        T, batch = x.shape[0], x.shape[1]
        if warmup >= T:
            raise ValueError(f"warmup={warmup} must be smaller than the {T} input steps")
        if steps is None:
            steps = T - warmup
        elif warmup + steps > T:
            raise ValueError(f"steps={steps} + warmup={warmup} exceeds the {T} steps of inputs")
    elif steps is None:
        raise ValueError("steps is required when inputs is None (an autonomous map)")
    elif sysm.tokens:
        raise ValueError("inputs (tokens) are required for a SequenceModel with an embedding")
    return x, batch, steps


def _overflowed(logd: Tensor) -> bool:
    """Whether a Householder-factored block overflowed: log 0 = -inf is legitimate (a singular
    Jacobian annihilates a direction); nan / +inf means overflow."""
    return bool((torch.isnan(logd) | (logd == math.inf)).any())


def _start(system, inputs, steps, warmup, h0, k, batch_first, generator, dtype,
           differentiable):
    """The estimator's start: (resolved system, drive, initial state (batch, n), initial basis
    rows (batch, k, n), averaged steps)."""
    sysm = resolve_system(system, dtype, inputs is not None, differentiable=differentiable)
    device = sysm.device(inputs, h0)
    x, batch, steps = _inputs_and_steps(sysm, inputs, steps, warmup, batch_first, dtype, device)
    h = sysm.initial_state(h0, batch, dtype, device)
    batch, n = h.shape
    if k is None:
        k = n
    elif k > n:
        raise ValueError(f"k={k} is larger than the state size n={n}")
    drive = sysm.drive(x, warmup + steps, batch, dtype, device)
    Q0 = _initial_basis(n, k, generator).to(device=device, dtype=dtype)
    V = Q0.mT.unsqueeze(0).expand(batch, k, n).contiguous()
    return sysm, drive, h, V, steps


def _spectrum_sums(
    system: Any,
    inputs: Tensor | None,
    *,
    steps: int | None,
    h0: Any,
    k: int | None,
    warmup: int,
    reorth_every: int | str,
    dt: float,
    batch_first: bool,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    differentiable: bool = False,
) -> _Sums:
    """The estimator's loop, shared by :func:`lyapunov_spectrum` (under ``no_grad``) and the
    gradient-flossing loss (``differentiable=True``: the system resolved without copies, so
    autograd records the run; one Elman layer's whole run is one autograd node,
    :mod:`._taped`). Arguments as for :func:`lyapunov_spectrum`."""
    steps, warmup, reorth_every, dt, k = _checked_options(steps, warmup, reorth_every, dt,
                                                          dtype, k)
    sysm, drive, h, V, steps = _start(system, inputs, steps, warmup, h0, k, batch_first,
                                      generator, dtype, differentiable)
    run = functools.partial(_run, sysm, h=h, V=V, steps=steps, warmup=warmup,
                            reorth_every=reorth_every, dt=dt, dtype=dtype,
                            differentiable=differentiable)
    if sysm.lazy:  # under autograd, one Elman layer
        acc, sums = taped_elman_run(sysm.blocks[0], h, drive, run)
        sums.acc = acc
        return sums
    return run(None, drive)


def _run(
    sysm: TangentSystem,
    tape: Tape | None,
    drive: Any,
    *,
    h: Tensor,
    V: Tensor,
    steps: int,
    warmup: int,
    reorth_every: int | str,
    dt: float,
    dtype: torch.dtype,
    differentiable: bool,
) -> _Sums:
    """The estimator's loop from the state ``h`` and rows ``V``; with a ``tape`` (inside
    :mod:`._taped`'s node, a lazy system) it records what the backward needs."""
    # longer than 80 lines on purpose: the estimator is one loop, whose redo of a rejected
    # block (back to where it began) reads best in one piece
    auto = reorth_every == "auto"
    batch, k, n = V.shape
    device = h.device
    total = warmup + steps
    # the sums of log R_ii in float64 whatever the working precision: a float32 sum of
    # thousands of terms would round differently for different block lengths
    acc = torch.zeros(batch, k, dtype=torch.float64, device=device)
    hist_sum: list[Tensor] = []
    hist_steps: list[int] = []
    logs: list[Tensor] = []  # (differentiable) the log R_ii of the averaged blocks
    guard = _FiniteGuard()
    ortho = Orthonormalizer()
    # under autograd on the CPU, blocks may be planned for Householder QR (see AutoBlocks)
    policy = (
        AutoBlocks(dtype, differentiable=differentiable, householder=device.type == "cpu")
        if auto
        else None
    )
    since = 0
    block = 1 if auto else reorth_every
    start = (0, h, V)  # (step, state, basis) where the current block began
    t = 0
    while t < total:
        step = sysm.first_step if t == 0 else sysm.advance
        h, V = step(h, drive[t], V)
        if not sysm.lazy:
            guard(h, t)
        since += 1
        if since == block or t == warmup - 1 or t == total - 1:
            h, V, states = sysm.flush(h, V, tape)  # the steps a lazy system queued
            if states is not None:
                guard.block(states, t + 1 - since)
            guard.flush()
            before = (ortho.householder_count, ortho.householder_mode)
            # a block cut to one step (warmup's or the run's end) needs no Householder QR
            householder = policy is not None and policy.householder_next and since > 1
            if tape is None:
                Vq, logd, align = ortho(V, householder)
            else:
                Vq, logd, align = tape.qr(ortho, V, householder)
            if policy is not None:
                measured, overflow = policy.measure(logd, align)
                accepted = policy.accept(since, *measured, householder)
                policy.after(since, accepted, measured)
                block = policy.block
                if not accepted:
                    # redo the block, shorter, from where it began (the state trajectory
                    # does not depend on the basis, so it is recomputed identically)
                    ortho.householder_count, ortho.householder_mode = before
                    t, h, V = start
                    since = 0
                    continue
            else:
                overflow = ortho.householder_count > before[0] and _overflowed(logd)
            if overflow:
                raise NonFiniteStateError(
                    f"tangent vectors became non-finite at step {t} (0-based, warmup "
                    f"included); lower reorth_every (now {reorth_every!r})"
                )
            V = Vq
            since = 0
            if tape is not None:
                tape.commit(averaged=t >= warmup)
            if t >= warmup and differentiable:  # summed once at the end; no history
                logs.append(logd)
            elif t >= warmup:
                acc = acc + logd.to(torch.float64)
                hist_sum.append(acc.detach().mean(0))
                hist_steps.append(t + 1 - warmup)
            start = (t + 1, h, V)
        t += 1
    if logs:
        acc = torch.stack(logs).to(torch.float64).sum(0)

    return _Sums(
        acc=acc, hist_sum=hist_sum, hist_steps=hist_steps, h=h, n=n, k=k, batch=batch,
        steps=steps, warmup=warmup, dt=dt,
        reorth_every=reorth_every if policy is None else policy.median(),
        method=sysm.method, householder_count=ortho.householder_count,
    )


def lyapunov_spectrum(
    system: Any,
    inputs: Tensor | None = None,
    *,
    steps: int | None = None,
    h0: Any = None,
    k: int | None = None,
    warmup: int = 0,
    reorth_every: int | str = "auto",
    dt: float = 1.0,
    batch_first: bool = False,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> LyapunovSpectrum:
    """Estimate the ``k`` largest Lyapunov exponents of a recurrent network or map.

    Args:
        system: one of

            * a cell or layer of this package (``LipschitzRNNCell``/``LipschitzRNN``,
              ``ODERNN``, ``AntisymmetricRNN`` (gated or not), ``CoRNN``, ``ExpRNN``; other
              :class:`~lipschitz_rnn.models._base.RecurrentCell` subclasses via torch.func).
              Multi-layer stacks give the spectrum of the whole stacked state; bidirectional
              layers raise ValueError (the reverse direction is not causal);
            * ``torch.nn.RNN`` (tanh/relu), ``torch.nn.GRU``, ``torch.nn.LSTM`` (also
              ``proj_size``), any number of layers, or their ``*Cell`` versions;
            * a :class:`~lipschitz_rnn.models.SequenceModel` (its ``.rnn``; with an embedding,
              ``inputs`` are integer tokens (T, batch), embedded first);
            * any callable ``step(h, x) -> h_next`` on (batch, n) states (``h0`` required). For
              autonomous maps (``inputs=None``) it is called as ``step(h)`` when it accepts a
              single positional argument, else as ``step(h, None)``.

            The state of a stack is the concatenation of its layers' states in layer order;
            per layer ``[h, c]`` for an LSTM and ``[y, z]`` for a coRNN (both counted: an LSTM
            of hidden size H has 2H exponents per layer). Dropout is not applied.
        inputs: (T, batch, features), or (batch, T, features) with ``batch_first``; unbatched
            (T, features) is batch 1. ``None`` for autonomous maps (then ``steps`` is required);
            an RNN without inputs runs with ``x_t = 0``.
        steps: the number of averaged steps (default: all input steps after ``warmup``).
        h0: the initial state: flat (batch, n) or (n,) (shared by the batch), or for RNNs
            torch-style ``hx`` ((num_layers, batch, hidden), a tuple ``(h, c)`` for LSTM/coRNN).
            Default zeros for RNNs; required for callables.
        k: the number of exponents (default: the state size ``n``).
        warmup: steps run first (state and tangent basis both evolve and are re-orthonormalised)
            to move onto the attractor and align the basis; not averaged.
        reorth_every: steps between re-orthonormalisations (>= 1), or ``"auto"`` (the default).
            The exponents do not depend on it in exact arithmetic (the QR factors of a product
            are the products of the factors), but over a block of ``L`` steps a direction
            contracting at ``lambda_j`` falls by ``e^{-(lambda_1 - lambda_j) L}`` against the
            top one and is lost to round-off once that passes the precision (a fixed
            ``reorth_every`` is the caller's responsibility: sequences whose basis got
            ill-conditioned are re-orthonormalised by Householder QR, and a basis that
            overflows raises :class:`NonFiniteStateError`). ``"auto"`` starts with one step,
            plans each next block from the recent growth of the alignment
            (``max_j ||v_j|| / R_jj``) and of the spread of ``log R_jj`` per step, and
            accepts a block only if its Gram matrix was positive definite, the alignment at
            most ``eps^{-1/8}`` (90 in float64, 7.3 in float32) and the spread at most
            ``ln(1/eps) / 4`` nats (9.0 / 4.0); a rejected block is redone, at most half as
            long, from its start. Its exponents equal those of ``reorth_every=1`` to
            round-off (wide spectra such as the Hénon map or an LSTM keep blocks of one; a
            default Lipschitz cell reaches ``AUTO_MAX_BLOCK`` = 32 steps); the result's
            ``reorth_every`` is the median accepted block length.
        dt: the time one step represents; exponents are per unit time (``log R / (steps dt)``).
        batch_first: whether ``inputs`` are batch-major (a layer's own ``batch_first`` flag is
            not consulted).
        generator: the torch.Generator drawing the random orthonormal initial basis (n, k),
            the same for every batch element (default: a generator seeded with 0, so runs are
            reproducible).
        dtype: the precision of the state trajectory AND the tangent space (default float64;
            the model's parameters are copied at this precision, the model is not modified).
            Callables receive states in this dtype.

    Returns:
        :class:`LyapunovSpectrum`.

    Raises:
        TypeError: an argument of the wrong type (an unknown system, inputs that are not a
            tensor, ...), named in the message.
        ValueError: an argument out of range, named (k larger than the state size, steps < 1,
            dt <= 0, inputs with the wrong feature count, a bidirectional layer, ...).
        NonFiniteStateError: the state or the tangent basis became non-finite (a ValueError
            and a FloatingPointError); the message names the step.

    Warns:
        RuntimeWarning: an exponent is ``-inf``: at some step a Jacobian mapped a tangent
            direction to exactly zero (a singular Jacobian -- saturated or dead units, a zero
            row). Every schedule, ``reorth_every=1`` included, gives the same ``-inf``.
    """
    with torch.no_grad():
        run = _spectrum_sums(
            system, inputs, steps=steps, h0=h0, k=k, warmup=warmup, reorth_every=reorth_every,
            dt=dt, batch_first=batch_first, generator=generator, dtype=dtype,
        )
        acc, steps, dt, k, batch, h = run.acc, run.steps, run.dt, run.k, run.batch, run.h
        exps = (acc / (steps * dt)).to(torch.float64).cpu()
        exps = exps.sort(-1, descending=True).values
        if bool(torch.isneginf(exps).any()):
            warnings.warn(
                f"lyapunov_spectrum: {int(torch.isneginf(exps).sum())} exponent(s) are -inf: at "
                "some step a Jacobian mapped a tangent direction to exactly zero (a singular "
                "Jacobian: saturated or dead units, a zero row); reorth_every=1 gives the same",
                RuntimeWarning,
                stacklevel=2,
            )
        hsteps = torch.tensor(run.hist_steps, dtype=torch.int64)
        history = torch.stack(run.hist_sum).to(torch.float64).cpu()
        history = history / (hsteps.to(torch.float64) * dt).unsqueeze(1)
        std = exps.std(0) if batch > 1 else torch.zeros(k, dtype=torch.float64)
        return LyapunovSpectrum(
            exponents=exps,
            mean=exps.mean(0),
            std=std,
            history=history,
            history_steps=hsteps,
            kaplan_yorke_dimension=kaplan_yorke_dimension(exps),
            entropy_rate=entropy_rate(exps),
            final_state=h.detach().to(torch.float64).cpu(),
            state_size=run.n,
            k=k,
            steps=steps,
            warmup=run.warmup,
            dt=dt,
            reorth_every=run.reorth_every,
            method=run.method,
            householder_fallbacks=run.householder_count,
        )
