"""Builds and loads the native CPU kernels of the fused scan (``csrc/lipschitz_scan.cpp``).

The kernels are compiled on first use with :func:`torch.utils.cpp_extension.load` (ninja and a
C++ compiler, about 40 s once; the result is cached in torch's extension directory,
``TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``, and rebuilt when the source changes).
Where that is not possible (no compiler, no ninja, a build error) :func:`load` returns None once
with a warning and the fused scan runs its pure-PyTorch kernels instead: same results, slower.
``LIPSCHITZ_RNN_NATIVE=0`` in the environment skips the build altogether.

What the kernels do differently from the PyTorch ones: the batch is split into one block of rows
per thread and each thread runs the whole time loop on its rows with single-threaded BLAS (rows
never interact), so there is no per-step thread synchronisation and no per-op dispatch; ``tanh``
comes from glibc's vector math library (libmvec, x86-64 with glibc >= 2.35) where available.
The build uses ``-march=native``, so the cached module is keyed by the CPU's feature flags.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

__all__ = ["load", "native_status"]

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("csrc") / "lipschitz_scan.cpp"
_LOCK = threading.Lock()
_UNSET = object()
_module: object = _UNSET
_reason: str = "not loaded yet"


def _cpu_key() -> str:
    """A short hash of the CPU's model and feature flags (the build is ``-march=native``)."""
    text = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features", "model name")):
                    text += line
                    if line.startswith(("flags", "Features")):
                        break
    except OSError:
        pass
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _libmvec() -> bool:
    """glibc >= 2.35 on x86-64 ships the vector ``tanh`` used by the kernels."""
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        return False
    lib, version = platform.libc_ver()
    if lib != "glibc":
        return False
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (2, 35)


def _build() -> ModuleType:
    from torch.utils import cpp_extension

    cflags = ["-O3", "-march=native", "-fopenmp"]
    ldflags = ["-fopenmp"]
    if _libmvec():
        cflags.append("-DLRNN_LIBMVEC")
        ldflags.append("-lmvec")
    name = f"lipschitz_rnn_scan_{_cpu_key()}"
    logger.info("building the native scan kernels (%s, once per source change and CPU)", name)
    with warnings.catch_warnings(), _ninja_on_path():
        warnings.simplefilter("ignore")  # cpp_extension's notes about compiler versions
        return cpp_extension.load(
            name, [str(_SOURCE)], extra_cflags=cflags, extra_ldflags=ldflags, verbose=False
        )


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """cpp_extension runs ``ninja`` from PATH; the ninja package's binary sits in the
    environment's scripts folder, which is not on PATH when the venv is not activated."""
    try:
        import ninja
    except ImportError:
        yield
        return
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + old
    try:
        yield
    finally:
        os.environ["PATH"] = old


def load() -> ModuleType | None:
    """The compiled kernels, building them on the first call; None where unavailable.

    Thread-safe; the outcome (module or failure) is cached for the life of the process.
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
        try:
            module = _build()
        except Exception as exc:  # noqa: BLE001 - any build failure means: use the fallback
            _module, _reason = None, f"{type(exc).__name__}: {str(exc).strip()[:500]}"
            warnings.warn(
                "lipschitz_rnn: the native scan kernels could not be built, the fused scan uses "
                f"its PyTorch kernels (same results, slower). Reason: {_reason}",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        _module, _reason = module, f"loaded ({module.build_info()})"
        logger.info("native scan kernels %s", _reason)
        return module


def native_status() -> str:
    """``"loaded (<what the build uses>)"``, ``"not loaded yet"``, or why the kernels are
    unavailable."""
    return _reason
