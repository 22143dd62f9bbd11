"""Fused scan of the Lipschitz recurrence with a hand-derived backward through time.

``lipschitz_scan(u, h0, A, W, eps, solver)`` runs, for row-major batches (``h`` is (B, H),
``u`` is (T, B, H), the input projection ``x U^T + b`` of every step)::

    f(h, u_t) = h A^T + tanh(h W^T + u_t)
    euler:  h' = h + eps f(h)
    rk2:    y = h + (eps/2) f(h);       h' = h + eps f(y)            (explicit midpoint)
    heun:   y = h + eps f(h);           h' = h + (eps/2) (f(h) + f(y)) (explicit trapezoid)

and returns all states ``hs`` (T, B, H), ``hs[t]`` being the state after consuming ``u[t]``. It is
what :class:`~lipschitz_rnn.models.lipschitz.LipschitzRNN` runs for dense (non-packed) input; the
generic per-step autograd loop (``RecurrentCell.scan``) stays the reference.

Kernels: native (CPU) and PyTorch
---------------------------------
On CPU the scan runs native kernels (``csrc/lipschitz_scan.cpp``, built on first use, see
:mod:`lipschitz_rnn.models._native`) where they could be built, else the PyTorch kernels below;
:func:`fused_backend` chooses explicitly. Both implement the same maths in the plain loop's order
of operations; the native ones differ in how they run it:

* the batch is split into one block of rows per thread (``torch.get_num_threads()``, at least 8
  rows each) and every thread runs the whole time loop on its rows with single-threaded BLAS
  (``sgemm_``/``dgemm_`` of the MKL inside torch): batch rows never interact, so there is no
  per-step thread synchronisation, no per-op dispatch and no per-step allocation;
* one product per stage, ``h [A^T | W^T]`` forward and ``[e | q] [c A; c W]`` backward, with the
  element-wise work (tanh, update, adjoint) done row by row while the row is in cache; ``tanh``
  from glibc's vector math library (libmvec) where available;
* backward accumulates ``[dA; dW] = sum [e_t | q_t]^T h_{t-1}`` (plus the ``y`` stage for
  rk2/heun) per thread with one GEMM per block of steps (about 512 KiB of rows, copied into small
  contiguous buffers while hot), then sums the threads' partial sums: nothing of size T is
  allocated besides ``du``.

With ``checkpoint_every`` the native forward runs without saving; the backward rebuilds the stage
values of a block of steps with the PyTorch recomputation below (large GEMMs) and runs the native
kernels on that block, handing the adjoint to the block before. CUDA tensors always use the
PyTorch kernels.

Forward (PyTorch kernels)
-------------------------
Per step and stage, two products with right factors transposed once per call (contiguous), one
tanh and one update, all written with ``out=`` into preallocated buffers (no allocation, no
``torch.cat`` per step). Euler, in the plain loop's order of operations::

    s_t = tanh(h_t W^T + u_t)          torch.addmm(u_t, h, W^T, out=s_t); tanh_
    f_t = h_t A^T + s_t                torch.addmm(s_t, h, A^T, out=f)
    h_{t+1} = h_t + eps f_t            torch.add(h, f, alpha=eps, out=h_{t+1})

rk2/heun evaluate ``f(h)``, ``y = h + a f(h)`` and ``f(y)`` the same way, then ``h' = h + eps
f(y)`` (rk2, ``a = eps/2``) or ``h' = h + (eps/2) (f(h) + f(y))`` (heun, ``a = eps``).

Accuracy: the identity of the update is never folded into a matrix. In float32, ``I + eps A``
rounds its diagonal to a multiple of 2^-23 and so loses most digits of ``eps A_ii`` (~1e-4); an
earlier version did that and drifted 15x further from the float64 solution than the plain loop
over 400 steps. Now both paths are equally accurate (``tests/test_fused.py``).

(On CPU the two products measured faster than one stacked (B, H) @ (H, 2H) product followed by
element-wise ops on its two strided halves.)

What is saved for backward
--------------------------
Besides the inputs (``u``, ``h0``, ``A``, ``W``: references, no copies) and the returned states
``hs`` (held by the caller anyway), the default saves the tanh values of every stage: euler
``s_t`` (T*B*H numbers, i.e. as much as the output), rk2/heun ``s1_t, y_t, s2_t`` (3*T*B*H).
The backward allocates the returned ``du`` (T*B*H) and work buffers of one block of steps
(``_BLOCK_BYTES``, 4 MiB per buffer; euler 1 buffer, rk2/heun 4).

Backward through time (PyTorch kernels)
---------------------------------------
With ``G_t = dL/dhs[t]`` and the adjoint kept scaled, ``e_{t+1} = eps dL/dh_{t+1}``, the euler
step backward is::

    q_t = e_{t+1} * (1 - s_t^2)                                  (= dL/du_t)   tanh_backward
    e_t = e_{t+1} + e_{t+1} (eps A) + q_t (eps W) + eps G_{t-1}  (in place: add_, 2 addmm_)

i.e. the products with ``A`` and ``W`` of ``[g, g*s'] @ [A; W]`` with ``eps`` folded into the
matrices (the identity added separately, see "Accuracy"), issued as two ``addmm_`` on contiguous
halves (the stacked (B, 2H) @ (2H, H) form needs ``[e | q]`` rows, whose strided halves slow the
element-wise kernels, and measured no faster overall). ``q_t`` is written straight into the
returned ``du``. The weight gradients are not accumulated per step: ``dA = sum_t e_{t+1}^T h_t``
and ``dW = sum_t q_t^T h_t`` are one large GEMM each per block of steps ((H, k*B) @ (k*B, H),
k = 64 at B = H = 128 in float32). rk2/heun do the same per stage (the stage-2 -> stage-1 ->
previous-step chain, two recurrent products per step) and four large GEMMs per block.

Bounding memory: ``checkpoint_every``
-------------------------------------
``lipschitz_scan(..., checkpoint_every=k)`` (or ``with fused_checkpointing(k):`` around the layer
call) saves nothing but the inputs and the returned states. Backward walks the sequence in blocks
of ``k`` steps from the end and rebuilds the block's stage values from the stored states with the
forward's formulas applied to the whole block at once: large, non-recurrent GEMMs (euler: one
(k*B, H) @ (H, H); rk2/heun: three). Saved memory drops from 1 (euler) / 3 (rk2, heun) T*B*H
arrays to nothing, the backward's work buffers are O(k*B*H), and the extra cost is +17 % (euler) /
+25 % (rk2, heun) FLOPs at large-GEMM speed. Outputs are identical (same forward); gradients equal
the default path's to round-off (the rebuilt tanh values come from a differently blocked GEMM, so
bitwise equality of gradients is not promised).

Double backward (second derivatives)
------------------------------------
The fast backward uses in-place/``out=`` kernels and is not itself differentiable. When backward is
run with ``create_graph=True`` (autograd enables grad mode inside backward exactly then), the
Function instead rebuilds the recurrence from its saved inputs with the plain per-step autograd
ops and returns ``torch.autograd.grad(..., create_graph=True)`` of that graph: first derivatives
are exact and differentiable again, so Hessian-vector products (double backward) work through the
layer unchanged, only at the plain loop's speed. Nothing needs switching off for that. To bypass
the fused path altogether (e.g. to compare, or for code that must run the reference ops) use
``LipschitzRNN.use_fused = False`` on a layer or ``with fused_disabled():`` (process-wide within
the context, per thread/task). Under ``torch.func`` transforms (``grad``, ``vmap``, ``jvp`` ...),
forward-mode AD and ``torch.compile`` tracing, :func:`fused_available` is False and layers use the
plain loop, since this Function implements neither ``vmap`` nor ``jvp``.

Inference
---------
When grad mode is off or no input requires grad, :func:`lipschitz_scan` does not go through
autograd at all and allocates only the output states (no stage values).

Devices
-------
Only device-agnostic torch ops are used, so the same Function runs on CUDA tensors. No CUDA graph
capture or custom kernel is attempted (it could not be validated without a GPU); the CUDA path is
the same per-step loop, launch-bound for small B*H.

CPU memory allocation
---------------------
``hs``, the saved stage values and ``du`` are arrays of T*B*H numbers (51 MB each at the sMNIST
shape T=784, B=H=128). glibc serves allocations above 32 MB with fresh ``mmap`` pages, so every
call pays their page faults (~25 ms per 51 MB on the 2-core benchmark machine, a large share of a
~0.3 s forward+backward). An allocator that reuses freed memory (jemalloc/tcmalloc via
``LD_PRELOAD``, ``THP_MEM_ALLOC_ENABLE=1`` for torch, or glibc's ``mallopt``, see
``lipschitz_rnn.bench.reuse_freed_memory``) removes most of that; this module does not change
process-wide allocator settings itself.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import Tensor

from . import _native
from .lipschitz import stacked_step

__all__ = [
    "FUSED_BACKENDS",
    "FUSED_SOLVERS",
    "fused_available",
    "fused_backend",
    "fused_checkpointing",
    "fused_disabled",
    "lipschitz_scan",
    "reference_scan",
]

FUSED_SOLVERS = ("euler", "rk2", "heun")
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

_tanh_backward = torch.ops.aten.tanh_backward.grad_input
# each backward work buffer holds about this many bytes of (B, H) rows (see _block_steps)
_BLOCK_BYTES = 4 << 20


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
    :mod:`lipschitz_rnn.models._native`), else the PyTorch ones; ``"native"``: the native kernels
    or a RuntimeError saying why they are unavailable; ``"torch"``: the PyTorch kernels. Both give
    the same results to round-off. CUDA tensors always use the PyTorch kernels.
    """
    if name not in FUSED_BACKENDS:
        raise ValueError(f"backend must be one of {FUSED_BACKENDS}, got {name!r}")
    token = _BACKEND.set(name)
    try:
        yield
    finally:
        _BACKEND.reset(token)


def _native_kernels(u: Tensor):
    """The native kernel module for a scan of ``u``, or None for the PyTorch kernels."""
    backend = _BACKEND.get()
    if backend == "torch" or u.device.type != "cpu":
        return None
    module = _native.load()
    if module is None and backend == "native":
        raise RuntimeError(f"the native scan kernels are unavailable: {_native.native_status()}")
    return module


@contextlib.contextmanager
def fused_checkpointing(every: int | None) -> Iterator[None]:
    """Within the context, fused scans default to ``checkpoint_every=every`` (None: save all)."""
    every = _check_every(every)
    token = _CHECKPOINT.set(every)
    try:
        yield
    finally:
        _CHECKPOINT.reset(token)


def _check_every(every) -> int | None:
    if every is None:
        return None
    if isinstance(every, bool) or not isinstance(every, int) or every <= 0:
        raise ValueError(f"checkpoint_every must be a positive int or None, got {every!r}")
    return every


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
# scheme coefficients
def _two_stage(solver: str, eps: float) -> tuple[float, float, float, float]:
    """``(a, c_h, c_y, b)`` of ``y = h + a f(h); h' = c_h h + c_y y + b f(y)``, the form the
    backward differentiates (for heun the same map as the forward's ``h + (eps/2)(f(h) + f(y))``)."""
    if solver == "rk2":
        return 0.5 * eps, 1.0, 0.0, eps
    if solver == "heun":
        return eps, 0.5, 0.5, 0.5 * eps
    raise ValueError(f"solver must be one of {FUSED_SOLVERS}, got {solver!r}")


# ---------------------------------------------------------------------------------------------
# forward kernels (no autograd; called under no_grad)
def _t(M: Tensor) -> Tensor:
    """``M^T`` as a contiguous matrix (CPU GEMMs are markedly slower with a transposed view)."""
    return M.t().contiguous()


def _euler_forward(u: Tensor, h0: Tensor, A: Tensor, W: Tensor, eps: float, save: bool):
    T, B, H = u.shape
    Wt, At = _t(W), _t(A)
    hs = u.new_empty(T, B, H)
    S = u.new_empty(T, B, H) if save else None
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
    a, _, _, b = _two_stage(solver, eps)
    Wt, At = _t(W), _t(A)
    f1, f2 = u.new_empty(B, H), u.new_empty(B, H)
    hs = u.new_empty(T, B, H)
    if save:
        S1, Y, S2 = (u.new_empty(T, B, H) for _ in range(3))
        s1l, yl, s2l = S1.unbind(0), Y.unbind(0), S2.unbind(0)
    else:
        s1l, yl, s2l = ([u.new_empty(B, H)] * T for _ in range(3))
    h = h0
    for u_t, h_t, s1, y, s2 in zip(u.unbind(0), hs.unbind(0), s1l, yl, s2l, strict=True):
        torch.addmm(u_t, h, Wt, out=s1).tanh_()
        torch.add(h, torch.addmm(s1, h, At, out=f1), alpha=a, out=y)  # y = h + a f(h)
        torch.addmm(u_t, y, Wt, out=s2).tanh_()
        torch.addmm(s2, y, At, out=f2)  # f(y)
        if solver == "heun":  # h' = h + (eps/2) (f(h) + f(y))
            f2.add_(f1)
        torch.add(h, f2, alpha=b, out=h_t)  # rk2: h' = h + eps f(y)
        h = h_t
    return hs, ((S1, Y, S2) if save else ())


def _native_forward(native, u, h0, A, W, eps, solver, save):
    AWt = torch.cat([A, W], 0).t().contiguous()  # (H, 2H): one product per stage
    u, h0 = u.contiguous(), h0.contiguous()
    if solver == "euler":
        hs, S = native.euler_forward(u, h0, AWt, eps, save)
        return hs, ((S,) if save else ())
    a, _, _, b = _two_stage(solver, eps)
    hs, *acts = native.two_stage_forward(u, h0, AWt, a, b, solver == "heun", save)
    return hs, tuple(acts)


def _forward(u, h0, A, W, eps, solver, save, native=None):
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
        self.prev = hs.new_empty(k, B, H)  # entering states of the first block only
        n_stage = 1 if solver == "euler" else 3
        self.bufs = [hs.new_empty(k, B, H) for _ in range(n_stage)]
        if solver != "euler":
            a, _, _, _ = _two_stage(solver, eps)
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
    """Steps per backward block: ``every`` if set, else about ``_BLOCK_BYTES`` of (B, H) buffers."""
    if every is not None:
        return min(every, T)
    return max(1, min(T, _BLOCK_BYTES // max(1, B * H * itemsize)))


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
    E_buf = G.new_empty(k, B, H)  # e_{t+1} = eps dL/dh_{t+1} of one block
    # q_t = dL/du_t is written straight into the returned gradient (a block buffer if unused)
    du = G.new_empty(T, B, H) if need_u else None
    Q_buf = None if need_u else G.new_empty(k, B, H)
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
    a, c_h, c_y, b = _two_stage(solver, eps)
    # stage 2 -> 1: e1 = (a c_y / b) e2 + e2 (a A) + q2 (a W)
    M2A, M2W, beta2 = a * A, a * W, a * c_y / b
    # stage 1 -> previous step: e2' = c_h e2 + (b/a) e1 + e1 (b A) + q1 (b W) + b G
    M1A, M1W, r = b * A, b * W, b / a
    dA = G.new_zeros(H, H) if need_w else None
    dW = G.new_zeros(H, H) if need_w else None
    dh0 = None
    k = _block_steps(T, B, H, G.element_size(), every)
    recompute = _Recompute(solver, eps, A, W, hs, h0, u, k) if every is not None else None
    E1_buf, Q1_buf, E2_buf, Q2_buf = (G.new_empty(k, B, H) for _ in range(4))
    du = G.new_empty(T, B, H) if need_u else None
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
    G, h0 = G.contiguous(), h0.contiguous()
    AW = torch.cat([A, W], 0)  # (2H, H)
    parts = native.wgrad_buffer(B, H, G) if need_w else None
    du = torch.empty_like(G)
    if solver == "euler":
        M, scale = AW * eps, eps
    else:
        a, c_h, c_y, b = _two_stage(solver, eps)
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


# ---------------------------------------------------------------------------------------------
# the plain autograd recurrence (double backward, reference)
def reference_scan(u: Tensor, h0: Tensor, A: Tensor, W: Tensor, eps: float, solver: str) -> Tensor:
    """The same recurrence with the generic scan's per-step autograd ops (differentiable to any
    order)."""
    AWt = torch.cat([A, W], 0).t()
    out = []
    h = h0
    for u_t in u.unbind(0):
        h = stacked_step(h, u_t, AWt, eps, solver)
        out.append(h)
    return torch.stack(out, 0)


class _LipschitzScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, h0, A, W, eps, solver, every):
        native = _native_kernels(u)
        hs, acts = _forward(u, h0, A, W, eps, solver, save=every is None, native=native)
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
        if ctx.native is not None:
            du, dh0, dA, dW = _native_backward(
                ctx.native, G, u, h0, A, W, hs, acts, ctx.eps, ctx.solver, ctx.every, needs
            )
        elif ctx.solver == "euler":
            du, dh0, dA, dW = _euler_backward(G, u, h0, A, W, hs, acts, ctx.eps, ctx.every, needs)
        else:
            du, dh0, dA, dW = _two_stage_backward(
                G, u, h0, A, W, hs, acts, ctx.eps, ctx.solver, ctx.every, needs
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

    Differentiable w.r.t. ``u``, ``h0``, ``A`` and ``W``, twice (see "Double backward").
    """
    if solver not in FUSED_SOLVERS:
        raise ValueError(f"solver must be one of {FUSED_SOLVERS}, got {solver!r}")
    if u.dim() != 3:
        raise ValueError(f"u must be (T, B, H), got shape {tuple(u.shape)}")
    T, B, H = u.shape
    if T == 0:
        raise ValueError("lipschitz_scan needs at least one time step")
    if tuple(h0.shape) != (B, H) or tuple(A.shape) != (H, H) or tuple(W.shape) != (H, H):
        raise ValueError(
            f"shapes do not match: u {tuple(u.shape)}, h0 {tuple(h0.shape)} (expected {(B, H)}), "
            f"A {tuple(A.shape)}, W {tuple(W.shape)} (expected {(H, H)})"
        )
    if not (u.dtype == h0.dtype == A.dtype == W.dtype):
        raise TypeError(
            f"dtypes differ: u {u.dtype}, h0 {h0.dtype}, A {A.dtype}, W {W.dtype}"
        )
    every = _check_every(checkpoint_every if checkpoint_every is not None else _CHECKPOINT.get())
    eps = float(eps)
    if torch.is_grad_enabled() and any(x.requires_grad for x in (u, h0, A, W)):
        return _LipschitzScan.apply(u, h0, A, W, eps, solver, every)
    with torch.no_grad():
        hs, _ = _forward(u, h0, A, W, eps, solver, save=False, native=_native_kernels(u))
    return hs
