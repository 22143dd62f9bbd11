"""Reused CPU storage for the large tensors of the fused scan (states, saved stage values, scratch).

Every forward+backward of the fused scan allocates a few arrays of T*B*H numbers (51 MB each at
T=784, B=H=128 in float32). glibc's malloc serves allocations above 32 MiB with fresh ``mmap``
pages and unmaps them on free, so a plain process pays the page faults of every such array on
every call. :func:`empty` keeps the storages it hands out and gives one out again only when
nothing else holds it: its use count (``torch._C._storage_Use_Count``) is then 1, the pool's own
reference, so no tensor, view, autograd saved tensor, numpy array or DLPack capsule can observe
the reuse. Tensors are handed out as fresh tensors on the storage (``Tensor.set_``), not as views,
so autograd treats them like any other new tensor.

Scope: CPU only (the CUDA caching allocator already reuses memory), requests of at least
:data:`MIN_BYTES`, at most :data:`MAX_BUFFERS` storages kept per device, a storage reused only for a
request of at least half its size. :func:`release` drops the storages nobody holds (like
``torch.cuda.empty_cache``); ``with buffer_reuse(False):`` allocates fresh tensors (the behaviour
before the pool existed). Where torch lacks the use-count query, every request is a fresh tensor.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import threading
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

__all__ = ["MIN_BYTES", "MAX_BUFFERS", "buffer_reuse", "empty", "release", "held_bytes"]

#: smaller requests are served by the allocator directly (glibc reuses small chunks itself)
MIN_BYTES = 1 << 20
#: storages kept per device; beyond that the least recently used idle one is dropped
MAX_BUFFERS = 16

_use_count = getattr(torch._C, "_storage_Use_Count", None)
_REUSE: contextvars.ContextVar[bool] = contextvars.ContextVar("lipschitz_reuse", default=True)
_LOCK = threading.Lock()
_TICK = itertools.count()


class _Entry:
    __slots__ = ("storage", "last_used")

    def __init__(self, storage: torch.UntypedStorage) -> None:
        self.storage = storage
        self.last_used = next(_TICK)

    def idle(self) -> bool:
        return _use_count(self.storage._cdata) == 1


_POOL: dict[str, list[_Entry]] = {}


@contextlib.contextmanager
def buffer_reuse(enabled: bool) -> Iterator[None]:
    """Within the context (thread/task-local), :func:`empty` reuses storages (``True``, the
    default) or allocates a fresh tensor for every request (``False``)."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    token = _REUSE.set(enabled)
    try:
        yield
    finally:
        _REUSE.reset(token)


def _on_storage(storage: torch.UntypedStorage, shape: Sequence[int], dtype) -> Tensor:
    return torch.empty(0, dtype=dtype, device=storage.device).set_(storage, 0, tuple(shape))


def empty(shape: Sequence[int], like: Tensor) -> Tensor:
    """An uninitialised contiguous tensor of ``shape`` with ``like``'s dtype and device."""
    shape = tuple(int(s) for s in shape)
    n = 1
    for s in shape:
        n *= s
    nbytes = n * like.element_size()
    device = like.device
    if device.type != "cpu" or nbytes < MIN_BYTES or _use_count is None or not _REUSE.get():
        return torch.empty(shape, dtype=like.dtype, device=device)
    key = str(device)
    with _LOCK:
        entries = _POOL.setdefault(key, [])
        best = None
        for e in entries:
            size = e.storage.nbytes()
            if nbytes <= size <= 2 * nbytes and e.idle():
                if best is None or size < best.storage.nbytes():
                    best = e
        if best is not None:
            best.last_used = next(_TICK)
            return _on_storage(best.storage, shape, like.dtype)
        storage = torch.UntypedStorage(nbytes, device=device)
        if len(entries) >= MAX_BUFFERS:
            idle = [e for e in entries if e.idle()]
            if idle:
                entries.remove(min(idle, key=lambda e: e.last_used))
        if len(entries) < MAX_BUFFERS:
            entries.append(_Entry(storage))
        return _on_storage(storage, shape, like.dtype)


def release() -> int:
    """Drop every kept storage that nothing else holds; return the bytes released."""
    freed = 0
    with _LOCK:
        for key, entries in _POOL.items():
            keep = []
            for e in entries:
                if e.idle():
                    freed += e.storage.nbytes()
                else:
                    keep.append(e)
            _POOL[key] = keep
    return freed


def held_bytes() -> tuple[int, int]:
    """``(bytes kept, of which idle)`` over all devices."""
    total = idle = 0
    with _LOCK:
        for entries in _POOL.values():
            for e in entries:
                size = e.storage.nbytes()
                total += size
                idle += size if e.idle() else 0
    return total, idle
