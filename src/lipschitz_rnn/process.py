"""Process-wide CPU settings for training and benchmarking.

The library never changes them on its own: the ``lipschitz-rnn`` command owns its process and
calls :func:`configure_process`; a user's own script may call the same function, or only
:func:`reuse_freed_memory` (or set ``GLIBC_TUNABLES``, see there).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

__all__ = ["reuse_freed_memory", "configure_process"]


def reuse_freed_memory() -> bool:
    """Make glibc's malloc keep and reuse freed memory instead of returning it to the OS.

    Process-wide and irreversible (opt-in; the library never calls it): disables ``mmap`` for
    large allocations (``M_MMAP_MAX = 0``) and heap trimming (``M_TRIM_THRESHOLD`` = 2 GiB), so
    that the large per-call tensors of an RNN (states, saved activations, gradients: 51 MB each at
    T=784, B=H=128) stop paying fresh page faults on every call, as with jemalloc/tcmalloc. The
    process keeps its peak heap. The same without code, before Python starts:
    ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647``.
    Returns False (and does nothing) where glibc is not available.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))


def configure_process() -> str:
    """The settings ``lipschitz-rnn train`` and ``bench`` use; returns a one-line description.

    * glibc reuses freed memory across batches (:func:`reuse_freed_memory`) instead of paying
      fresh page faults for every large (T, B, H) tensor;
    * denormal floats are flushed to zero: they make CPU kernels crawl (an LSTM's backward over
      784 steps ~7x slower) and flushing them is the usual training setting.
    """
    malloc = reuse_freed_memory()
    torch.set_flush_denormal(True)
    return f"malloc reuse {malloc}, flush denormal True, torch threads {torch.get_num_threads()}"
