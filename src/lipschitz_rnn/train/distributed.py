"""Data-parallel training over several processes (``torchrun``): the process group, each
rank's share of a batch, and the few collectives the training loop needs.

``torchrun --standalone --nproc-per-node=N -m lipschitz_rnn train ...`` starts N processes and
tells each its place through the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the
rendezvous address); :func:`init_from_env` joins them into one process group:

* backend: ``cpu:gloo,cuda:nccl`` where CUDA is available (a CUDA model's gradients go through
  NCCL, small CPU messages through gloo), else ``gloo``. ``$LIPSCHITZ_RNN_DIST_BACKEND`` (or
  ``lipschitz-rnn train --dist-backend``) overrides it with any backend string torch accepts;
* device: a CUDA run puts rank ``LOCAL_RANK`` on GPU ``LOCAL_RANK`` (one GPU per process);
* timeout: every collective gives up after ``$LIPSCHITZ_RNN_DIST_TIMEOUT`` seconds (default
  :data:`DEFAULT_TIMEOUT_S`; ``--dist-timeout``), so a rank that hangs makes the others stop with
  :class:`DistributedError` instead of waiting for ever (a rank that dies is noticed at once:
  torchrun stops the others, and gloo reports the closed connection).

:class:`DistContext` is one process's place (``rank`` of ``world_size``). Its collectives are
no-ops in a single process, so the training loop has one code path. Rank 0 alone touches the run
directory: :meth:`DistContext.on_main` runs a function there and gives every rank its result or
its exception; :meth:`DistContext.agree` runs a function on every rank and raises on all of them
when it fails on any.

The end of a run: every rank calls :meth:`DistContext.finish` when it succeeded, or
:meth:`DistContext.report_failure` when it failed. Both go through the process group's key-value
store rather than a collective, so a rank that fails after training (when the others wait at the
final barrier) makes them stop at once with its error instead of after the timeout.
"""

from __future__ import annotations

import datetime
import gc
import logging
import math
import os
import pickle
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as tdist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "DistContext",
    "DistributedError",
    "StepTotals",
    "init_from_env",
    "group_joined",
    "default_backend",
    "origin_rank",
    "mark_origin",
    "DEFAULT_TIMEOUT_S",
    "ENV_BACKEND",
    "ENV_TIMEOUT",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: seconds a collective waits for the other ranks before giving up
DEFAULT_TIMEOUT_S = 600.0
ENV_BACKEND = "LIPSCHITZ_RNN_DIST_BACKEND"
ENV_TIMEOUT = "LIPSCHITZ_RNN_DIST_TIMEOUT"

#: words in the RuntimeError of a failed collective (gloo, NCCL), as opposed to any other error
_COMM_WORDS = ("gloo", "nccl", "timed out", "connection", "peer", "socket", "watchdog")

#: process groups this process has created (:func:`init_from_env`); numbers their store keys
_GROUPS_CREATED = 0
#: seconds between two looks at the store in :meth:`DistContext.finish`
_POLL_S = 0.02


def group_joined() -> bool:
    """Whether this process has joined a process group of several processes
    (:func:`init_from_env`). An error raised before is one of the command line or the settings,
    the same on every rank (the command line prints it on rank 0 alone)."""
    return _GROUPS_CREATED > 0


class DistributedError(RuntimeError):
    """A collective failed: another rank died, failed or hung for longer than the timeout."""


@dataclass(frozen=True)
class StepTotals:
    """One optimisation step summed over all ranks; ``bad``: ``(rank, loss)`` of every rank
    whose loss was not finite."""

    loss_sum: float
    metric_sum: float
    count: float
    seqs: float
    bad: tuple[tuple[int, float], ...]


def default_backend() -> str:
    if torch.cuda.is_available() and tdist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise ValueError(f"${name} is not set (launch with torchrun)")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"${name} must be an integer, got {raw!r}") from None


def _timeout(timeout_s: float | None) -> float:
    name = "timeout_s"
    if timeout_s is None:
        raw = os.environ.get(ENV_TIMEOUT)
        if raw is None:
            return DEFAULT_TIMEOUT_S
        name = f"${ENV_TIMEOUT}"
        try:
            timeout_s = float(raw)
        except ValueError:
            raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {timeout_s!r}")
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {timeout_s!r}")
    return float(timeout_s)


def init_from_env(*, backend: str | None = None, timeout_s: float | None = None) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment.

    Without one (``WORLD_SIZE`` unset or 1) returns a single-process context and starts nothing.
    When a group already exists (initialised by the caller) returns a context on it that
    :meth:`DistContext.close` leaves alone. ``backend``/``timeout_s`` default to
    ``$LIPSCHITZ_RNN_DIST_BACKEND``/``$LIPSCHITZ_RNN_DIST_TIMEOUT``, then
    :func:`default_backend` and :data:`DEFAULT_TIMEOUT_S`.
    """
    if backend is not None and (not isinstance(backend, str) or not backend):
        raise ValueError(f"backend must be a non-empty string, got {backend!r}")
    timeout = _timeout(timeout_s)
    if tdist.is_available() and tdist.is_initialized():
        return DistContext(tdist.get_rank(), tdist.get_world_size(),
                           _env_int("LOCAL_RANK", tdist.get_rank()),
                           str(tdist.get_backend()), timeout, owns_group=False)
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext(timeout_s=timeout)
    if not tdist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of torch")
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", rank)
    backend = backend or os.environ.get(ENV_BACKEND) or default_backend()
    if "nccl" in backend and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    try:
        tdist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout))
    except ValueError as e:
        raise ValueError(f"distributed backend {backend!r}: {e}") from e
    global _GROUPS_CREATED
    _GROUPS_CREATED += 1
    log.info("rank %d of %d (local rank %d), backend %s, timeout %g s", rank, world,
             local_rank, backend, timeout)
    return DistContext(rank, world, local_rank, backend, timeout, owns_group=True,
                       serial=_GROUPS_CREATED)


def _is_comm_error(e: BaseException) -> bool:
    dist_error = getattr(tdist, "DistError", None)
    if dist_error is not None and isinstance(e, dist_error):
        return True
    return isinstance(e, RuntimeError) and any(w in str(e).lower() for w in _COMM_WORDS)


#: attribute set on an exception that a rank raises on behalf of another rank (its value: the
#: rank where it was raised first), so that only that rank reports it
ORIGIN_ATTR = "lipschitz_rnn_origin_rank"


def origin_rank(e: BaseException) -> int | None:
    """The rank whose error ``e`` is, when this process re-raised it (None: its own error)."""
    return getattr(e, ORIGIN_ATTR, None)


def mark_origin(e: BaseException, rank: int) -> BaseException:
    """``e``, marked as the error of ``rank`` (which alone reports it); returned for ``raise``."""
    try:
        setattr(e, ORIGIN_ATTR, rank)
    except AttributeError:  # an exception type without a __dict__: reported twice at worst
        pass
    return e


def _portable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling (to raise the same error on every rank), else a
    RuntimeError with its message."""
    try:
        back = pickle.loads(pickle.dumps(e))
        if type(back) is type(e) and str(back) == str(e):
            return e
    except Exception:  # noqa: BLE001 - any failure to pickle means: send the message instead
        pass
    return RuntimeError(f"{type(e).__name__}: {e}")


@dataclass(frozen=True)
class DistContext:
    """One process's place in a data-parallel run (the defaults: a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_S
    #: the group was created by :func:`init_from_env` (and is destroyed by :meth:`close`)
    owns_group: bool = False
    #: which of the groups this process created (the same on every rank): names store keys
    serial: int = 0

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the one process that writes the run directory."""
        return self.rank == 0

    # --- placement ---------------------------------------------------------------------------
    def share(self, n: int) -> tuple[int, int]:
        """This rank's items ``[lo, hi)`` of ``n``: contiguous blocks whose sizes differ by at
        most one (``n < world_size`` leaves some ranks none)."""
        return (self.rank * n) // self.world_size, ((self.rank + 1) * n) // self.world_size

    def device(self, name: str) -> torch.device:
        """The device of configuration value ``name`` (``auto``, ``cpu``, ``cuda``,
        ``cuda:N``) for this rank: under several processes a CUDA run uses GPU ``LOCAL_RANK``."""
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        if not self.enabled or name == "cpu":
            return torch.device(name)
        if name != "cuda":
            raise ValueError(
                f"device={name!r} pins one GPU, but each of the {self.world_size} processes uses "
                "GPU LOCAL_RANK: set device to 'cuda' or 'auto' (choose GPUs with "
                "CUDA_VISIBLE_DEVICES)"
            )
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but CUDA is not available on this machine")
        if self.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"local rank {self.local_rank} has no GPU: this machine has "
                f"{torch.cuda.device_count()}; start at most that many processes per node"
            )
        return torch.device("cuda", self.local_rank)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` in DistributedDataParallel (itself in a single process)."""
        if not self.enabled:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return self.collective("wrapping the model", DistributedDataParallel, model, device_ids=ids)

    # --- collectives -------------------------------------------------------------------------
    def collective(self, what: str, fn: Callable[..., T], *args, **kwargs) -> T:
        """``fn(*args, **kwargs)``, a call that communicates (``what`` names it): a failure of
        the communication becomes :class:`DistributedError`."""
        try:
            return fn(*args, **kwargs)
        except RuntimeError as e:
            if isinstance(e, DistributedError) or not _is_comm_error(e):
                raise
            raise self.lost(what, e) from e

    def lost(self, what: str, e: BaseException) -> DistributedError:
        """The error every rank raises when a collective fails."""
        lines = str(e).strip().splitlines() or [type(e).__name__]
        cause = re.sub(r"^\[[^\]]*\]\s*", "", lines[0])[:200]  # gloo's "[file.cc:78] ..."
        return DistributedError(
            f"rank {self.rank} of {self.world_size}: {what} failed: another rank died, failed "
            f"or did not answer within {self.timeout_s:g} s (see its message; "
            f"${ENV_TIMEOUT} sets the timeout). Cause: {cause}"
        )

    def _coll_device(self) -> torch.device:
        if "gloo" in self.backend or not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", self.local_rank)

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the ranks (float64)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._coll_device())
        self.collective("summing over the ranks", tdist.all_reduce, t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any."""
        if not self.enabled:
            return bool(flag)
        return self.all_sum([1.0 if flag else 0.0])[0] > 0

    def barrier(self) -> None:
        if self.enabled:
            self.any(False)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (tensors travel on the CPU)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        self.collective("receiving rank 0's data", tdist.broadcast_object_list, box, src=0)
        return box[0]

    def all_gather_object(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        self.collective("gathering from the ranks", tdist.all_gather_object, out, obj)
        return out

    def on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0 alone (e.g. reading or writing the run directory); every rank
        returns its result, or raises the exception it raised there."""
        if not self.enabled:
            return fn()
        err: BaseException | None = None
        result = None
        if self.is_main:
            try:
                result = fn()
            except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
                err = e
        kind, payload = self.broadcast_object(
            ("error", _portable(err)) if err is not None else ("ok", result)
        )
        if err is not None:
            raise err
        if kind == "error":
            raise mark_origin(payload, 0)
        return payload

    def agree(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on every rank; when it fails on any rank, every rank raises (its own
        exception, or the lowest failing rank's). An exception that a lower rank raised too (the
        same type and message, e.g. missing data on every rank) is marked as that rank's, so
        that it is reported once."""
        if not self.enabled:
            return fn()
        err: BaseException | None = None
        result = None
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            err = e
        errors = self.all_gather_object(None if err is None else _portable(err))
        if err is not None:
            first = next(r for r, e in enumerate(errors) if e is not None)
            theirs = errors[first]
            if first != self.rank and type(theirs) is type(err) and str(theirs) == str(err):
                mark_origin(err, first)  # the same error met by a lower rank: it reports it
            raise err
        for r, e in enumerate(errors):
            if e is not None:
                raise mark_origin(e, r)
        return result

    def step_totals(self, loss: Tensor, metric_sum: float, count: float,
                    seqs: float) -> StepTotals:
        """Sum one step's ``loss * count``, metric, count and sequences over the ranks (one
        all-reduce), and flag the ranks whose loss is not finite."""
        value = float(loss.detach())
        finite = math.isfinite(value)
        slots = [0.0] * self.world_size
        if not finite:
            slots[self.rank] = value
        v = [value * count if finite else 0.0, float(metric_sum), float(count), float(seqs)]
        tot = self.all_sum(v + slots)
        bad = tuple((r, tot[4 + r]) for r in range(self.world_size) if not math.isfinite(tot[4 + r]))
        return StepTotals(tot[0], tot[1], tot[2], tot[3], bad)

    # --- the end of a run ----------------------------------------------------------------------
    def _store(self):
        """The process group's key-value store and this group's key prefix, or None (a single
        process, a group this context does not own, or a torch without it)."""
        if not (self.enabled and self.owns_group and tdist.is_available()
                and tdist.is_initialized()):
            return None
        get = getattr(tdist.distributed_c10d, "_get_default_store", None)
        try:
            store = get() if get is not None else None
        except Exception:  # noqa: BLE001 - no store: finish() falls back to a barrier
            return None
        if store is None:
            return None
        prefix = "lipschitz_rnn/end/{}/{}/{}".format(
            os.environ.get("TORCHELASTIC_RUN_ID", ""),
            os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"), self.serial)
        return store, prefix

    def report_failure(self, error: BaseException) -> None:
        """Tell the other ranks that this one failed with ``error`` (any time, also when the
        collectives are out of step: a rank waiting in :meth:`finish` raises it at once). Never
        raises."""
        found = self._store()
        if found is None:
            return
        store, prefix = found
        try:
            store.set(f"{prefix}/error/{self.rank}", pickle.dumps(_portable(error)))
            store.add(f"{prefix}/failed", 1)
        except Exception as e:  # noqa: BLE001 - the others then stop at the timeout
            log.debug("could not report the failure to the other ranks: %s", e)

    def finish(self) -> None:
        """The final barrier of a run that ended well on this rank: wait until every rank has
        ended well, then return; raise at once the error of a rank that reported a failure
        (:meth:`report_failure`; marked as that rank's, which prints it), or
        :class:`DistributedError` when a rank neither ends nor fails within the timeout. A
        no-op in a single process."""
        if not self.enabled:
            return
        gc.collect()  # free what still holds gloo work (a finished run's DDP reducer) first
        found = self._store()
        if found is None:
            if self.owns_group and tdist.is_initialized():
                self.collective("the final barrier", tdist.barrier)
            return
        store, prefix = found
        deadline = time.monotonic() + self.timeout_s
        try:
            store.add(f"{prefix}/done", 1)
            while store.add(f"{prefix}/failed", 0) == 0:
                if store.add(f"{prefix}/done", 0) >= self.world_size:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError("timed out")
                time.sleep(_POLL_S)
            err = self._reported_error(store, prefix)
        except Exception as e:  # noqa: BLE001 - timed out, or the store is gone (a host died)
            raise self.lost("the final barrier", e) from e
        raise err

    def _reported_error(self, store, prefix: str) -> BaseException:
        """The error of the lowest rank that reported one, marked as that rank's."""
        for r in range(self.world_size):
            key = f"{prefix}/error/{r}"
            if store.check([key]):
                try:
                    err = pickle.loads(store.get(key))
                except Exception as e:  # noqa: BLE001 - the message could not be read
                    err = RuntimeError(f"rank {r} failed ({type(e).__name__} reading its error)")
                if not isinstance(err, BaseException):
                    err = RuntimeError(f"rank {r} failed")
                return mark_origin(err, r)
        return RuntimeError("another rank failed")

    def close(self, *, synchronize: bool = False) -> None:
        """Destroy the process group if :func:`init_from_env` created it (a no-op afterwards).
        ``synchronize``: after a run that ended well on every rank, meet at a barrier first, so
        that no rank tears its connections down while another still holds them (gloo aborts
        the process then)."""
        if self.owns_group and tdist.is_available() and tdist.is_initialized():
            # free what still holds gloo work (the DDP reducer of a finished run) while the
            # group is alive: freed at interpreter exit instead, it aborts the process
            gc.collect()
            if synchronize:
                tdist.barrier()
            try:
                tdist.destroy_process_group()
            except Exception as e:  # noqa: BLE001 - closing after a failure must not mask it
                log.debug("destroy_process_group: %s", e)
