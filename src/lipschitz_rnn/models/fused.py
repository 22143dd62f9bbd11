"""The fused scan of the Lipschitz recurrence, with a hand-derived backward through time.

:func:`lipschitz_scan` ``(u, h0, A, W, eps, solver)`` returns all states ``hs`` (T, B, H) of::

    f(h, u_t) = h A^T + tanh(h W^T + u_t)       (row-major batches: h is (B, H))
    h_{t+1} = one step of the scheme `solver` (models/solvers.py) of size eps

for the projected inputs ``u`` (T, B, H) and the initial state ``h0`` (B, H). It is what
:class:`~lipschitz_rnn.LipschitzRNN` runs for dense float32/float64 input; the generic per-step
autograd loop (``RecurrentCell.scan``) stays the reference. One ``torch.autograd.Function``
saves the stage values of the forward and runs the backward through time as fused kernels:
native C++ on CPU where it builds (:mod:`._native`), PyTorch ops otherwise
(:mod:`._fused_kernels`). Under ``create_graph=True`` the backward is rebuilt from plain autograd
ops, so second derivatives (Hessian-vector products) work unchanged. The derivation, what is
saved and the design choices are in ``docs/fused_scan.md``.

Switches, all context managers local to the thread/task: :func:`fused_disabled` (layers use the
plain loop), :func:`fused_backend` (``"auto"``, ``"native"``, ``"torch"``),
:func:`fused_checkpointing` (recompute blocks of steps in backward instead of saving stage
values). :func:`kernel_status` says which CPU kernels run.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from .._checks import check_choice, check_optional_int
from . import _fused_kernels, _native
from .solvers import SOLVERS, rk_step

__all__ = [
    "FUSED_BACKENDS",
    "FUSED_SOLVERS",
    "KernelStatus",
    "fused_available",
    "fused_backend",
    "fused_checkpointing",
    "fused_disabled",
    "kernel_status",
    "lipschitz_scan",
    "reference_scan",
    "stacked_step",
]

FUSED_SOLVERS = SOLVERS
FUSED_BACKENDS = ("auto", "native", "torch")
_DTYPES = (torch.float32, torch.float64)
_DEVICES = ("cpu", "cuda")

_DISABLED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "lipschitz_fused_disabled", default=False
)
_BACKEND: contextvars.ContextVar[str] = contextvars.ContextVar(
    "lipschitz_fused_backend", default="auto"
)
_CHECKPOINT: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "lipschitz_fused_checkpoint_every", default=None
)


# ---------------------------------------------------------------------------------------------
# the step, written once for the plain loop, the reference scan and double backward
def stacked_step(h: Tensor, u: Tensor, AWt: Tensor, eps: float, solver: str) -> Tensor:
    """One step of the Lipschitz unit with one product ``z @ [A; W]^T`` per stage.

    ``h`` (B, H), ``u = x U^T + b`` (B, H), ``AWt = [A; W]^T`` (H, 2H), built once per sequence.
    """
    H = h.shape[-1]

    def f(z: Tensor) -> Tensor:
        zz = z @ AWt
        return zz[:, :H] + torch.tanh(zz[:, H:] + u)

    return rk_step(f, h, eps, solver)


def reference_scan(u: Tensor, h0: Tensor, A: Tensor, W: Tensor, eps: float, solver: str) -> Tensor:
    """The recurrence of :func:`lipschitz_scan` with plain per-step autograd ops (differentiable
    to any order)."""
    AWt = torch.cat([A, W], 0).t()
    out = []
    h = h0
    for u_t in u.unbind(0):
        h = stacked_step(h, u_t, AWt, eps, solver)
        out.append(h)
    return torch.stack(out, 0)


# ---------------------------------------------------------------------------------------------
# switches
@contextlib.contextmanager
def fused_disabled() -> Iterator[None]:
    """Within the context, :func:`fused_available` is False: layers run the plain per-step loop."""
    token = _DISABLED.set(True)
    try:
        yield
    finally:
        _DISABLED.reset(token)


@contextlib.contextmanager
def fused_backend(name: str) -> Iterator[None]:
    """Within the context, fused scans on CPU run the kernels named by ``name``.

    ``"auto"`` (the default): the native kernels where they could be built (see
    :func:`kernel_status`), else the PyTorch ones; ``"native"``: the native kernels or a
    RuntimeError saying why they are unavailable; ``"torch"``: the PyTorch kernels. Both give
    the same results to round-off. CUDA tensors always use the PyTorch kernels.
    """
    check_choice("backend", name, FUSED_BACKENDS)
    token = _BACKEND.set(name)
    try:
        yield
    finally:
        _BACKEND.reset(token)


@contextlib.contextmanager
def fused_checkpointing(every: int | None) -> Iterator[None]:
    """Within the context, fused scans default to ``checkpoint_every=every`` (None: save all)."""
    token = _CHECKPOINT.set(check_optional_int("checkpoint_every", every, ge=1))
    try:
        yield
    finally:
        _CHECKPOINT.reset(token)


class KernelStatus(NamedTuple):
    """Which kernels the fused scan runs on CPU: ``backend`` is ``"native"`` or ``"torch"``;
    ``detail`` what the native build uses, or why it is unavailable."""

    backend: str
    detail: str


def kernel_status() -> KernelStatus:
    """Build or load the native CPU kernels (once per process) and say which kernels run."""
    loaded = _native.load() is not None
    return KernelStatus("native" if loaded else "torch", _native.native_status())


def _native_kernels(u: Tensor):
    """The native kernel module for a scan of ``u``, or None for the PyTorch kernels."""
    backend = _BACKEND.get()
    if backend == "torch" or u.device.type != "cpu":
        return None
    module = _native.load()
    if module is None and backend == "native":
        raise RuntimeError(f"the native scan kernels are unavailable: {_native.native_status()}")
    return module


def _transforms_active() -> bool:
    """True under torch.func transforms, forward-mode AD or torch.compile tracing."""
    try:
        if torch._C._functorch.peek_interpreter_stack() is not None:
            return True
    except AttributeError:  # pragma: no cover - very old / new torch
        pass
    fwd_level = getattr(torch.autograd.forward_ad, "_current_level", -1)
    if fwd_level >= 0:
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def _autocast_active(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # pragma: no cover - torch without the device_type argument
        return torch.is_autocast_enabled() if device_type == "cuda" else False


def fused_available(solver: str, u: Tensor) -> bool:
    """Whether :func:`lipschitz_scan` handles ``solver`` for the projected inputs ``u``.

    True for ``solver`` in ``FUSED_SOLVERS`` and a non-empty dense (T, B, H) float32/float64 tensor
    on CPU or CUDA, unless disabled by :func:`fused_disabled`, or autocast, a torch.func transform,
    forward-mode AD or torch.compile tracing is active (the plain loop handles those).
    """
    return (
        solver in FUSED_SOLVERS
        and isinstance(u, Tensor)
        and u.dim() == 3
        and u.numel() > 0
        and u.dtype in _DTYPES
        and u.layout == torch.strided
        and u.device.type in _DEVICES
        and not _DISABLED.get()
        and not _autocast_active(u.device.type)
        and not _transforms_active()
    )


# ---------------------------------------------------------------------------------------------
# the autograd Function
class _LipschitzScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, h0, A, W, eps, solver, every):
        native = _native_kernels(u)
        hs, acts = _fused_kernels.forward(
            u, h0, A, W, eps, solver, save=every is None, native=native
        )
        ctx.save_for_backward(u, h0, A, W, hs, *acts)
        ctx.native = native
        ctx.eps = eps
        ctx.solver = solver
        ctx.every = every
        return hs

    @staticmethod
    def backward(ctx, G):
        u, h0, A, W, hs, *acts = ctx.saved_tensors
        need_u, need_h0, need_A, need_W = ctx.needs_input_grad[:4]
        if torch.is_grad_enabled():  # create_graph=True: differentiable backward via plain ops
            return _differentiable_backward(ctx, G, (u, h0, A, W)) + (None, None, None)
        needs = (need_u, need_h0, need_A or need_W)
        du, dh0, dA, dW = _fused_kernels.backward(
            ctx.native, G, u, h0, A, W, hs, acts, ctx.eps, ctx.solver, ctx.every, needs
        )
        return (
            du if need_u else None,
            dh0 if need_h0 else None,
            dA if need_A else None,
            dW if need_W else None,
            None,
            None,
            None,
        )


def _differentiable_backward(ctx, G, inputs):
    needs = ctx.needs_input_grad[:4]
    wrt = [x for x, need in zip(inputs, needs, strict=True) if need]
    hs = reference_scan(*inputs, ctx.eps, ctx.solver)
    grads = iter(torch.autograd.grad(hs, wrt, G, create_graph=True, allow_unused=True))
    return tuple(next(grads) if need else None for need in needs)


# ---------------------------------------------------------------------------------------------
def lipschitz_scan(
    u: Tensor, h0: Tensor, A: Tensor, W: Tensor, eps: float, solver: str, *,
    checkpoint_every: int | None = None,
) -> Tensor:
    """All states of the Lipschitz recurrence, (T, B, H); see the module docstring.

    Args:
        u: (T, B, H) projected inputs ``x U^T + b``.
        h0: (B, H) initial state.
        A, W: (H, H) recurrent matrices (as built by the cell, differentiable).
        eps: step size.
        solver: ``"euler"``, ``"rk2"`` or ``"heun"``.
        checkpoint_every: None saves the stage values of every step (fastest); an int ``k``
            saves nothing beyond the inputs and outputs and recomputes ``k`` steps at a time in
            backward. Defaults to the value set by :func:`fused_checkpointing` (None).

    Differentiable w.r.t. ``u``, ``h0``, ``A`` and ``W``, to any order. Without grad (inference)
    no stage values are saved.
    """
    check_choice("solver", solver, FUSED_SOLVERS)
    if not isinstance(u, Tensor) or u.dim() != 3:
        got = tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__
        raise ValueError(f"u must be a (T, B, H) tensor, got {got}")
    T, B, H = u.shape
    if T == 0:
        raise ValueError("u must have at least one time step, got T = 0")
    if tuple(h0.shape) != (B, H) or tuple(A.shape) != (H, H) or tuple(W.shape) != (H, H):
        raise ValueError(
            f"shapes do not match: u {tuple(u.shape)}, h0 {tuple(h0.shape)} (expected {(B, H)}), "
            f"A {tuple(A.shape)}, W {tuple(W.shape)} (expected {(H, H)})"
        )
    if not (u.dtype == h0.dtype == A.dtype == W.dtype):
        raise TypeError(f"dtypes differ: u {u.dtype}, h0 {h0.dtype}, A {A.dtype}, W {W.dtype}")
    every = check_optional_int(
        "checkpoint_every",
        checkpoint_every if checkpoint_every is not None else _CHECKPOINT.get(),
        ge=1,
    )
    eps = float(eps)
    if torch.is_grad_enabled() and any(x.requires_grad for x in (u, h0, A, W)):
        return _LipschitzScan.apply(u, h0, A, W, eps, solver, every)
    with torch.no_grad():
        hs, _ = _fused_kernels.forward(
            u, h0, A, W, eps, solver, save=False, native=_native_kernels(u)
        )
    return hs
