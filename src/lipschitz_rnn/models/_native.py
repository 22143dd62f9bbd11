"""Builds, loads and runs the native CPU kernels of the fused scan (``csrc/lipschitz_scan.cpp``).

The kernels are plain C++ with a C ABI and no torch headers: on first use they are compiled with
the system C++ compiler (``$CXX``, else ``c++``/``g++``/``clang++``; about two seconds) into a
cache folder (``$LIPSCHITZ_RNN_KERNEL_DIR``, else ``$XDG_CACHE_HOME/lipschitz_rnn/kernels``, else
``~/.cache/lipschitz_rnn/kernels``), keyed by a hash of the source, the flags, the compiler and
the CPU (the build uses ``-march=native``), written to a temporary file and renamed into place,
then loaded with :mod:`ctypes`. Their matrix products call the ``sgemm_``/``dgemm_`` of the BLAS
inside torch (MKL in the x86-64 wheels), looked up in the already loaded ``libtorch_cpu``.

Where any of that is impossible (not Linux, no compiler, a build error, a torch without those
BLAS symbols) :func:`load` returns None once with a warning and the fused scan runs its
pure-PyTorch kernels: same results, slower. ``LIPSCHITZ_RNN_NATIVE=0`` skips the build.

Threading: with MKL the batch is split into ``torch.get_num_threads()`` blocks of rows (at least 8
rows each), and each block runs the whole sequence on its own thread with MKL pinned to one
thread, so threads never synchronise per step. The blocks run in an OpenMP parallel region of
the OpenMP runtime torch already loaded (``libgomp.so.1`` is shared by soname): its threads are
torch's intra-op threads, so no second pool spins on the cores. Other BLAS builds, or a compiler
without OpenMP, run one block with the BLAS's own threading.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

from . import _workspace

__all__ = ["Kernels", "load", "native_status"]

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("csrc") / "lipschitz_scan.cpp"
_MIN_ROWS = 8  # rows per block: fewer makes the per-step products too small to pay
_LOCK = threading.Lock()
_UNSET = object()
_module: object = _UNSET
_reason: str = "not loaded yet"

_i64, _ptr, _f64, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_double, ctypes.c_int
_SIGNATURES = {
    "euler_forward": [_i64] * 3 + [_ptr] * 3 + [_f64] + [_ptr] * 2 + [_int],
    "euler_backward": [_i64] * 3 + [_ptr] * 3 + [_f64] + [_ptr] * 6 + [_int],
    "two_stage_forward": [_i64] * 3 + [_ptr] * 3 + [_f64, _f64, _int] + [_ptr] * 4 + [_int],
    "two_stage_backward": [_i64] * 3 + [_ptr] * 6 + [_f64] * 4 + [_ptr] * 6 + [_int],
}
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


# ---------------------------------------------------------------------------------------------
# build
def _cpu_key() -> str:
    """The CPU's model and feature flags (the build is ``-march=native``)."""
    text = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("model name", "flags", "Features")):
                    text += line
                    if line.startswith(("flags", "Features")):
                        break
    except OSError:
        pass
    return text


def _libmvec() -> bool:
    """glibc >= 2.35 on x86-64 ships the vector ``tanh`` the kernels use."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    lib, version = platform.libc_ver()
    if lib != "glibc":
        return False
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (2, 35)


def _compiler() -> str:
    cxx = os.environ.get("CXX") or next(
        (c for c in ("c++", "g++", "clang++") if shutil.which(c)), None
    )
    if cxx is None:
        raise FileNotFoundError("no C++ compiler found (set CXX, or install g++ or clang++)")
    return cxx


def _cache_dir() -> Path:
    if os.environ.get("LIPSCHITZ_RNN_KERNEL_DIR"):
        return Path(os.environ["LIPSCHITZ_RNN_KERNEL_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lipschitz_rnn" / "kernels"


def _build() -> Path:
    """The compiled library, from the cache or built now. Tries with OpenMP (parallel row
    blocks) first and without it if that fails (serial blocks, the BLAS's own threads)."""
    cxx = _compiler()
    base = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC"]
    libs = ["-ldl"]
    if _libmvec():
        base.append("-DLRNN_LIBMVEC")
        libs.insert(0, "-lmvec")
    errors = []
    for flags in ([*base, "-fopenmp"], base):
        try:
            return _build_with(cxx, flags, libs)
        except RuntimeError as exc:
            errors.append(str(exc))
    raise RuntimeError(" / ".join(errors))


def _build_with(cxx: str, flags: list[str], libs: list[str]) -> Path:
    """One build into the cache (atomically: temp file, then rename), keyed by source, command
    line and CPU; an existing build is reused."""
    command = " ".join([cxx, *flags, *libs])
    key = hashlib.sha256(
        b"\0".join([_SOURCE.read_bytes(), command.encode(), _cpu_key().encode()])
    ).hexdigest()[:16]
    out = _cache_dir() / f"lipschitz_scan-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        logger.info("building the native scan kernels: %s", out)
        try:
            proc = subprocess.run(
                [cxx, *flags, "-o", tmp, str(_SOURCE), *libs],
                capture_output=True,
                text=True,
                timeout=600,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"{cxx} could not run: {exc}") from exc
        if proc.returncode != 0:
            raise RuntimeError(f"{cxx} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _torch_cpu_library() -> str:
    """Path of the loaded libtorch_cpu (its BLAS symbols are what the kernels call)."""
    path = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    return str(path)


def _open(path: Path) -> Kernels:
    lib = ctypes.CDLL(str(path))
    lib.lrnn_init.argtypes = [ctypes.c_char_p]
    lib.lrnn_init.restype = ctypes.c_int
    lib.lrnn_info.restype = ctypes.c_char_p
    lib.lrnn_parallel_blocks.restype = ctypes.c_int
    rc = lib.lrnn_init(_torch_cpu_library().encode())
    if rc != 0:
        what = {1: "libtorch_cpu is not loaded", 2: "torch's BLAS has no sgemm_/dgemm_"}
        raise RuntimeError(what.get(rc, f"lrnn_init returned {rc}"))
    for name, argtypes in _SIGNATURES.items():
        for suffix in _SUFFIX.values():
            fn = getattr(lib, f"lrnn_{name}_{suffix}")
            fn.argtypes = argtypes
            fn.restype = None
    return Kernels(lib)


def load() -> Kernels | None:
    """The native kernels, building them on the first call; None where unavailable.

    Thread-safe; the outcome (kernels or failure) is cached for the life of the process.
    """
    global _module, _reason
    if _module is not _UNSET:
        return _module  # type: ignore[return-value]
    with _LOCK:
        if _module is not _UNSET:
            return _module  # type: ignore[return-value]
        if os.environ.get("LIPSCHITZ_RNN_NATIVE", "1").strip().lower() in ("0", "false", "no"):
            _module, _reason = None, "disabled by LIPSCHITZ_RNN_NATIVE"
            return None
        if not sys.platform.startswith("linux"):  # nothing to fix for the user: no warning
            _module, _reason = None, f"native kernels are built on Linux only, not {sys.platform}"
            logger.info("%s; the fused scan uses its PyTorch kernels", _reason)
            return None
        try:
            kernels = _open(_build())
        except Exception as exc:  # noqa: BLE001 - any failure means: use the PyTorch kernels
            _module, _reason = None, f"{type(exc).__name__}: {str(exc).strip()[:2000]}"
            warnings.warn(
                "lipschitz_rnn: the native scan kernels are unavailable, the fused scan uses its "
                f"PyTorch kernels (same results, slower). Reason: {_reason}",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        _module, _reason = kernels, f"loaded ({kernels.info})"
        logger.info("native scan kernels %s", _reason)
        return kernels


def native_status() -> str:
    """``"loaded (<what the build uses>)"``, ``"not loaded yet"``, or why the kernels are
    unavailable."""
    return _reason


# ---------------------------------------------------------------------------------------------
# calls
def _p(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class Kernels:
    """Tensor-level entry points of the compiled kernels (all tensors contiguous, on CPU, one
    dtype, float32 or float64; shapes as in :mod:`lipschitz_rnn.models.fused`)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        self._parallel = bool(lib.lrnn_parallel_blocks())
        blocks = "row blocks on OpenMP threads" if self._parallel else "one row block"
        self.info: str = f"{lib.lrnn_info().decode()}, {blocks}"

    def _blocks(self, B: int) -> int:
        """Row blocks for a batch of ``B``: one per torch thread, at least 8 rows each."""
        if not self._parallel:
            return 1
        return max(1, min(torch.get_num_threads(), B // _MIN_ROWS))

    @staticmethod
    def _shapes(name: str, *pairs: tuple[Tensor, tuple[int, ...]]) -> None:
        for t, shape in pairs:
            if tuple(t.shape) != shape:
                raise ValueError(f"native {name}: shape {tuple(t.shape)} where {shape} expected")

    def _fn(self, name: str, *tensors: Tensor):
        dtype = tensors[0].dtype
        for t in tensors:
            if t.dtype != dtype or dtype not in _SUFFIX:
                raise TypeError(f"native {name}: float32 or float64 tensors of one dtype expected")
            if t.device.type != "cpu" or not t.is_contiguous():
                raise ValueError(f"native {name}: contiguous CPU tensors expected")
        return getattr(self._lib, f"lrnn_{name}_{_SUFFIX[dtype]}")

    def euler_forward(self, u, h0, AWt, eps: float, save: bool):
        """``(hs, S)``: states and, if ``save``, the tanh values (else None)."""
        T, B, H = u.shape
        self._shapes("euler_forward", (h0, (B, H)), (AWt, (H, 2 * H)))
        fn = self._fn("euler_forward", u, h0, AWt)
        hs = _workspace.empty(u.shape, u)
        S = _workspace.empty(u.shape, u) if save else None
        fn(T, B, H, _p(u), _p(h0), _p(AWt), float(eps), _p(hs), _p(S), self._blocks(B))
        return hs, S

    def wgrad_buffer(self, B: int, H: int, like: Tensor) -> Tensor:
        """Zeroed per-thread partial sums of ``[dA; dW]``, (blocks, 2H, H), for the backward
        calls of one batch to accumulate into (sum over dim 0 at the end)."""
        return like.new_zeros(self._blocks(B), 2 * H, H)

    def _backward_common(self, name, G, hs, h0, carry, du, parts):
        T, B, H = G.shape
        self._shapes(name, (hs, (T, B, H)), (h0, (B, H)))
        if carry is not None:
            self._shapes(name, (carry, (B, H)))
        du = _workspace.empty(G.shape, G) if du is None else du
        self._shapes(name, (du, (T, B, H)))
        if parts is not None and not (parts.dim() == 3 and 1 <= parts.shape[0] <= B):
            raise ValueError(f"native {name}: parts must be (blocks <= B, 2H, H)")
        if parts is not None:
            self._shapes(name, (parts, (parts.shape[0], 2 * H, H)))
        n = parts.shape[0] if parts is not None else self._blocks(B)
        extra = [t for t in (carry, du, parts) if t is not None]
        return du, G.new_empty(B, H), n, extra

    def euler_backward(self, G, S, M, eps: float, hs, h0, *, carry=None, du=None, parts=None):
        """Backward over steps T-1..0 of ``G``'s sequence (or block, ``hs``/``h0`` being its
        states and the state entering it) from the scaled adjoint ``carry`` (None: zero).
        Returns ``(du, carry_out)`` (``dL/dh0 = carry_out / eps`` at the sequence's start) and
        adds the block's ``[dA; dW]`` to ``parts`` (see :meth:`wgrad_buffer`) if given."""
        T, B, H = G.shape
        self._shapes("euler_backward", (S, (T, B, H)), (M, (2 * H, H)))
        du, out, n, extra = self._backward_common("euler_backward", G, hs, h0, carry, du, parts)
        fn = self._fn("euler_backward", G, S, M, hs, h0, *extra)
        fn(
            T, B, H, _p(G), _p(S), _p(M), float(eps), _p(hs), _p(h0), _p(carry), _p(du),
            _p(out), _p(parts), n,
        )
        return du, out

    def two_stage_forward(self, u, h0, AWt, a: float, b: float, heun: bool, save: bool):
        """``(hs, S1, Y, S2)`` if ``save``, else ``(hs,)``."""
        T, B, H = u.shape
        self._shapes("two_stage_forward", (h0, (B, H)), (AWt, (H, 2 * H)))
        fn = self._fn("two_stage_forward", u, h0, AWt)
        hs = _workspace.empty(u.shape, u)
        S1, Y, S2 = (_workspace.empty(u.shape, u) for _ in range(3)) if save else (None, None, None)
        args = (_p(u), _p(h0), _p(AWt), float(a), float(b), int(heun))
        fn(T, B, H, *args, _p(hs), _p(S1), _p(Y), _p(S2), self._blocks(B))
        return (hs, S1, Y, S2) if save else (hs,)

    def two_stage_backward(
        self, G, S1, S2, Y, M2, M1, b: float, beta2: float, c_h: float, r: float, hs, h0, *,
        carry=None, du=None, parts=None,
    ):
        """As :meth:`euler_backward` for rk2/heun (``dL/dh0 = carry_out / b``)."""
        T, B, H = G.shape
        full, mats = (T, B, H), (2 * H, H)
        self._shapes(
            "two_stage_backward", (S1, full), (S2, full), (Y, full), (M2, mats), (M1, mats)
        )
        du, out, n, extra = self._backward_common(
            "two_stage_backward", G, hs, h0, carry, du, parts
        )
        fn = self._fn("two_stage_backward", G, S1, S2, Y, M2, M1, hs, h0, *extra)
        coef = (float(b), float(beta2), float(c_h), float(r))
        ins = (_p(G), _p(S1), _p(S2), _p(Y), _p(M2), _p(M1))
        fn(T, B, H, *ins, *coef, _p(hs), _p(h0), _p(carry), _p(du), _p(out), _p(parts), n)
        return du, out
