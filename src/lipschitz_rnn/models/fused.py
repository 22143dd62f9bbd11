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

:func:`lipschitz_layer_scan` is the same with the input projection ``u = x U^T + b`` inside the
Function (the layer's path): ``u`` and its gradient are then scratch, not arrays autograd holds.

Switches, all context managers local to the thread/task: :func:`fused_disabled` (layers use the
plain loop), :func:`fused_backend` (``"auto"``, ``"native"``, ``"torch"``),
:func:`fused_checkpointing` (recompute blocks of steps in backward instead of saving stage
values), :func:`fused_buffer_reuse` (reuse the storage of large CPU arrays across calls, on by
default; :func:`release_fused_buffers` frees it). :func:`kernel_status` says which CPU kernels
run.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from .._checks import check_choice, check_optional_int
from . import _fused_kernels, _native, _workspace
from ._base import autocast_active
from .solvers import SCHEMES, rk_step

__all__ = [
    "lipschitz_scan",
    "fused_disabled",
    "fused_backend",
    "fused_checkpointing",
    "fused_buffer_reuse",
    "release_fused_buffers",
    "kernel_status",
    "KernelStatus",
    "FUSED_BACKENDS",
]

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


def fused_buffer_reuse(enabled: bool):
    """Context manager: within it (thread/task-local), CPU fused scans reuse the storage of their
    large arrays across calls (``True``, the default) or allocate fresh ones (``False``).

    A storage is reused only when nothing else holds it (no tensor, view, saved tensor or numpy
    array), so results are the same either way; reuse spares the page faults that glibc's malloc
    charges for every fresh array above 32 MiB (51 MB per array at T=784, B=H=128). Kept storages
    stay allocated between calls: :func:`release_fused_buffers` frees the idle ones."""
    return _workspace.buffer_reuse(enabled)


def release_fused_buffers() -> int:
    """Free the storages kept for reuse that nothing holds now; return the bytes freed."""
    return _workspace.release()


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
    """True under torch.func transforms, forward-mode AD or torch.compile/export tracing."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and compiler.is_compiling():  # first: dynamo folds it to a constant
        return True
    try:
        if torch._C._functorch.peek_interpreter_stack() is not None:
            return True
    except AttributeError:  # pragma: no cover - very old / new torch
        pass
    fwd_level = getattr(torch.autograd.forward_ad, "_current_level", -1)
    return fwd_level >= 0


def fused_available(solver: str, u: Tensor) -> bool:
    """Whether :func:`lipschitz_scan` handles ``solver`` for the projected inputs ``u`` (and
    :func:`lipschitz_layer_scan` for the layer's input ``x``: the same conditions).

    True for ``solver`` in ``SCHEMES`` and a non-empty dense (T, B, H) float32/float64 tensor
    on CPU or CUDA, unless disabled by :func:`fused_disabled`, or autocast, a torch.func transform,
    forward-mode AD or torch.compile tracing is active (the plain loop handles those).
    """
    return (
        solver in SCHEMES
        and isinstance(u, Tensor)
        and u.dim() == 3
        and u.numel() > 0
        and u.dtype in _DTYPES
        and u.layout == torch.strided
        and u.device.type in _DEVICES
        and not _transforms_active()  # before the ContextVar, which dynamo cannot trace
        and not _DISABLED.get()
        and not autocast_active(u.device.type)
    )


# ---------------------------------------------------------------------------------------------
# the autograd Function
def _project(x: Tensor, U: Tensor | None, b: Tensor | None) -> Tensor:
    """``u = x U^T + b`` into workspace storage (``x`` itself when ``U`` is None)."""
    if U is None:
        return x
    T, B, In = x.shape
    u = _workspace.empty((T, B, U.shape[0]), x)
    flat_u, flat_x = u.view(T * B, -1), x.reshape(T * B, In)
    if b is None:
        torch.mm(flat_x, U.t(), out=flat_u)
    else:
        torch.addmm(b, flat_x, U.t(), out=flat_u)
    return u


class _LipschitzScan(torch.autograd.Function):
    """``hs`` of the recurrence for ``u = x`` (``U`` None) or ``u = x U^T + b`` (the projection
    and its gradients inside the Function, so that ``u`` and ``du`` are scratch storage)."""

    @staticmethod
    def forward(ctx, x, h0, A, W, U, b, eps, solver, every):
        native = _native_kernels(x)
        u = _project(x, U, b)
        hs, acts = _fused_kernels.forward(
            u, h0, A, W, eps, solver, save=every is None, native=native
        )
        # u is needed in backward only to rebuild stage values (every); x, U, b always (the
        # projection's gradients, and the double backward)
        u_saved = u if (U is not None and every is not None) else None
        ctx.save_for_backward(x, h0, A, W, U, b, u_saved, hs, *acts)
        ctx.native = native
        ctx.eps = eps
        ctx.solver = solver
        ctx.every = every
        return hs

    @staticmethod
    def backward(ctx, G):
        x, h0, A, W, U, b, u_saved, hs, *acts = ctx.saved_tensors
        need_x, need_h0, need_A, need_W, need_U, need_b = ctx.needs_input_grad[:6]
        if torch.is_grad_enabled():  # create_graph=True: differentiable backward via plain ops
            grads = _differentiable_backward(ctx, G, (x, h0, A, W, U, b))
            return grads + (None, None, None)
        projected = U is not None
        u = u_saved if projected else x
        need_u = need_x or (projected and (need_U or need_b))
        needs = (need_u, need_h0, need_A or need_W)
        du, dh0, dA, dW = _fused_kernels.backward(
            ctx.native, G, u, h0, A, W, hs, acts, ctx.eps, ctx.solver, ctx.every, needs
        )
        dx = dU = db = None
        if projected:
            T, B, H = du.shape
            flat = du.view(T * B, H)
            if need_x:
                dx = torch.mm(flat, U).view(x.shape)
            if need_U:
                dU = torch.mm(flat.t(), x.reshape(T * B, -1))
            if need_b:
                db = flat.sum(0)
        else:
            dx = du if need_x else None
        return (
            dx,
            dh0 if need_h0 else None,
            dA if need_A else None,
            dW if need_W else None,
            dU,
            db,
            None,
            None,
            None,
        )


def _differentiable_backward(ctx, G, inputs):
    x, h0, A, W, U, b = inputs
    needs = ctx.needs_input_grad[:6]
    wrt = [t for t, need in zip(inputs, needs, strict=True) if need]
    u = x if U is None else torch.nn.functional.linear(x, U, b)
    hs = reference_scan(u, h0, A, W, ctx.eps, ctx.solver)
    grads = iter(torch.autograd.grad(hs, wrt, G, create_graph=True, allow_unused=True))
    return tuple(next(grads) if need else None for need in needs)


# ---------------------------------------------------------------------------------------------
def _check_scan(u_shape, h0: Tensor, A: Tensor, W: Tensor, tensors: dict) -> None:
    T, B, H = u_shape
    if T == 0:
        raise ValueError("u must have at least one time step, got T = 0")
    if tuple(h0.shape) != (B, H) or tuple(A.shape) != (H, H) or tuple(W.shape) != (H, H):
        raise ValueError(
            f"shapes do not match: u {tuple(u_shape)}, h0 {tuple(h0.shape)} (expected {(B, H)}), "
            f"A {tuple(A.shape)}, W {tuple(W.shape)} (expected {(H, H)})"
        )
    dtypes = {name: t.dtype for name, t in tensors.items() if t is not None}
    if len(set(dtypes.values())) > 1:
        raise TypeError("dtypes differ: " + ", ".join(f"{k} {v}" for k, v in dtypes.items()))


def _run(x, h0, A, W, U, b, eps, solver, checkpoint_every):
    every = check_optional_int(
        "checkpoint_every",
        checkpoint_every if checkpoint_every is not None else _CHECKPOINT.get(),
        ge=1,
    )
    eps = float(eps)
    inputs = (x, h0, A, W, U, b)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return _LipschitzScan.apply(x, h0, A, W, U, b, eps, solver, every)
    with torch.no_grad():
        hs, _ = _fused_kernels.forward(
            _project(x, U, b), h0, A, W, eps, solver, save=False, native=_native_kernels(x)
        )
    return hs


def lipschitz_scan(
    u: Tensor, h0: Tensor, A: Tensor, W: Tensor, eps: float, solver: str, *,
    checkpoint_every: int | None = None,
) -> Tensor:
    """All states of the Lipschitz recurrence, (T, B, H); see the module docstring.

    Args:
        u: (T, B, H) projected inputs ``x U^T + b``.
        h0: (B, H) initial state.
        A: (H, H) the linear recurrent matrix (as built by the cell, differentiable).
        W: (H, H) the recurrent matrix inside the tanh (as built by the cell, differentiable).
        eps: step size.
        solver: ``"euler"``, ``"rk2"`` or ``"heun"``.
        checkpoint_every: None saves the stage values of every step (fastest); an int ``k``
            saves nothing beyond the inputs and outputs and recomputes ``k`` steps at a time in
            backward. Defaults to the value set by :func:`fused_checkpointing` (None).

    Differentiable w.r.t. ``u``, ``h0``, ``A`` and ``W``, to any order. Without grad (inference)
    no stage values are saved. On CPU the returned tensor may live in storage reused from an
    earlier call that nothing holds any more (see :func:`fused_buffer_reuse`).
    """
    check_choice("solver", solver, SCHEMES)
    if not isinstance(u, Tensor) or u.dim() != 3:
        got = tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__
        raise ValueError(f"u must be a (T, B, H) tensor, got {got}")
    _check_scan(u.shape, h0, A, W, {"u": u, "h0": h0, "A": A, "W": W})
    return _run(u, h0, A, W, None, None, eps, solver, checkpoint_every)


def lipschitz_layer_scan(
    x: Tensor, h0: Tensor, U: Tensor, b: Tensor | None, A: Tensor, W: Tensor, eps: float,
    solver: str, *, checkpoint_every: int | None = None,
) -> Tensor:
    """:func:`lipschitz_scan` of ``u = x U^T + b`` with the input projection inside the fused
    Function (what :class:`~lipschitz_rnn.LipschitzRNN` runs): ``x`` is (T, B, I), ``U`` (H, I),
    ``b`` (H,) or None. ``u`` and its gradient are then scratch storage reused across calls
    instead of arrays that autograd holds; differentiable w.r.t. every tensor argument."""
    check_choice("solver", solver, SCHEMES)
    if not isinstance(x, Tensor) or x.dim() != 3:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a (T, B, I) tensor, got {got}")
    if U.dim() != 2 or U.shape[1] != x.shape[2] or (b is not None and b.shape != U.shape[:1]):
        raise ValueError(
            f"shapes do not match: x {tuple(x.shape)}, U {tuple(U.shape)} (expected (H, "
            f"{x.shape[2]})), b {None if b is None else tuple(b.shape)}"
        )
    T, B, _ = x.shape
    _check_scan((T, B, U.shape[0]), h0, A, W, {"x": x, "h0": h0, "U": U, "b": b, "A": A, "W": W})
    return _run(x, h0, A, W, U, b, eps, solver, checkpoint_every)
