"""Run a sweep on Ray Tune: :func:`run_sweep`.

The driver checks the whole spec, draws the probe, writes ``DIR/sweep.json`` (the spec, the
trial plan, the metric, versions, one entry per session with its wall time) and
``DIR/probe.pt``, then lets Ray Tune run the trials that have no final outcome yet, one CPU and
one torch thread each, and finally gathers ``trials.csv`` and ``spectra.npz``
(:mod:`.results`).

Bookkeeping is the sweep's own, so a driver or trial killed at any moment loses nothing: a
trial is finished when its ``trial.json`` says ``diverged`` or ``stopped``, or ``ok`` with its
``results.json`` (or ``results.json`` exists); ``resume=True`` runs the others again, each
continuing from its last checkpoint (a trial killed after its last epoch only finishes: test
metric, ``results.json``, a missing spectrum). The summary (status counts, best trial) is read
from the trial directories (``trials.csv``), not from what Ray reported. Ray Tune's own files
(``DIR/ray/session-N``) are a record, not needed to resume; the log of Ray's driver goes to
``DIR/ray/driver.log``, not to the terminal.

On a cluster nothing but the network is assumed (:mod:`._tune`): trials whose node does not see
``DIR`` ship their run directories to the driver with their reports, and the driver writes
them into ``DIR/trials/``. ``storage`` (a path every node sees, or a URI ``pyarrow.fs``
understands) holds Tune's records and, for such trials, a checkpoint after every epoch, from
which a trial whose node was lost (up to ``max_failures`` times) or a resumed sweep continues.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import platform
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._checks import check_optional_int
from .._io import check_creatable_dir, write_json
from ..runs.rundir import RunDir
from ..runs.sweepdir import SWEEP_FILE, SweepDir
from ..runs.tasks import TaskRunner
from .probe import PROBE_FILE, check_trials, draw_probe, load_probe, save_probe
from .results import collect, update_sweep_json
from .schedulers import SchedulerContext, make_scheduler
from .spec import SweepSpec, load_spec
from .trial import FINAL_STATUSES, is_done, read_status

__all__ = ["run_sweep", "SweepProgress", "SWEEP_EXTRA_MESSAGE", "DRIVER_LOG",
           "DEFAULT_MAX_FAILURES", "RayConnectError"]

log = logging.getLogger(__name__)

#: the log of Ray's driver-side loggers during a sweep, in ``DIR/ray/``
DRIVER_LOG = "driver.log"
#: how many times a trial whose Ray worker was lost runs again on a cluster, by default (a
#: local Ray: 0, as a lost worker there is no lost node; ``--resume`` runs it again)
DEFAULT_MAX_FAILURES = 2


class RayConnectError(RuntimeError):
    """The driver could not join the Ray cluster (e.g. it refused the connection for its
    token); the message is one line that says why and what to set."""


SWEEP_EXTRA_MESSAGE = (
    "sweeps need Ray Tune, which is not installed: pip install 'lipschitz-rnn[sweep]'"
)


@dataclass
class SweepProgress:
    """What the progress callback of :func:`run_sweep` gets after every event."""

    total: int
    metric: str
    mode: str
    counts: dict[str, int] = field(default_factory=dict)  # final outcomes, this and earlier runs
    running: set[str] = field(default_factory=set)
    best: float | None = None
    best_trial: str | None = None
    event: str = ""

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def offer(self, trial: str, value: Any) -> None:
        if not isinstance(value, (int, float)) or not np.isfinite(value):
            return
        if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
            self.best, self.best_trial = float(value), trial


def _require_ray() -> None:
    try:
        import ray  # noqa: F401
        from ray import tune  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{SWEEP_EXTRA_MESSAGE} ({e})") from None


def _versions() -> dict[str, str]:
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "lipschitz-rnn": version("lipschitz-rnn"),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "ray": version("ray"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _trials_part(raw: dict[str, Any]) -> dict[str, Any]:
    """A spec without its ``[study]`` table (what the study assumes, not what the trials run)."""
    return {k: v for k, v in raw.items() if k != "study"}


def _check_out(out: Path, resume: bool, spec: SweepSpec) -> dict[str, Any] | None:
    if resume:
        stored = SweepDir(out).meta()
        if stored["spec"] != spec.raw:
            if _trials_part(stored["spec"]) != _trials_part(spec.raw):
                raise ValueError(
                    f"--resume: the spec differs from the one this sweep was started with "
                    f"({out / SWEEP_FILE}) beyond its [study] table; run it without SPEC to "
                    "continue as started"
                )
            # only [study] changed: the study's declarations are taken, the trials run as before
            stored = update_sweep_json(out, spec=spec.raw)
        return stored
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "a sweep" if (out / SWEEP_FILE).is_file() else "other files"
        raise ValueError(f"output directory {out} already holds {what}; use --resume to continue "
                         "a sweep, or another --out")
    return None


def run_sweep(
    spec: str | Path | dict[str, Any] | None,
    out: str | Path,
    *,
    resume: bool = False,
    address: str | None = None,
    max_concurrent: int | None = None,
    num_cpus: int | None = None,
    data_dir: str | Path | None = None,
    progress: Callable[[SweepProgress], None] | None = None,
    trial_process_settings: bool = False,
    storage: str | os.PathLike | None = None,
    max_failures: int | None = None,
    notice: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the sweep ``spec`` (a TOML path, a dict, or None with ``resume=True``: the stored
    one) into ``out``; return ``{"counts", "best", "best_trial", "metric", "mode", "out",
    "driver_log", "ray_logs"}`` (the last two: where Ray's messages went).

    ``address`` (else ``$RAY_ADDRESS``) attaches to a running Ray cluster (the package must be
    installed on its nodes, ``data_dir`` valid on them; nothing else is shared: the probe and
    the configurations reach the trials through Ray, their run directories come back with
    their reports); otherwise a local Ray is started (``num_cpus`` cores, default all) and shut
    down at the end. An already initialised Ray is used as it is. ``max_concurrent`` limits the
    trials running at once (default: one per CPU). ``progress`` is called after every trial
    event. ``trial_process_settings`` applies :func:`lipschitz_rnn.process.configure_process`
    in every trial's worker (the CLI does).

    ``storage``: Tune's storage (a path every node sees, or a URI such as ``s3://bucket/dir``)
    where the trials that do not see ``out`` save a checkpoint after every epoch; a resumed
    sweep uses the one it was started with unless given another. ``max_failures``: how many
    times a trial whose Ray worker is lost (e.g. its node died) runs again, from its last
    checkpoint where there is one (default :data:`DEFAULT_MAX_FAILURES` on a cluster, 0 on a
    local Ray). ``notice`` gets what the user should know before the trials start (on a cluster
    without ``storage``: what would not survive the loss of a node; default: logged).

    Everything is checked before anything is written: a bad spec raises ValueError or TypeError
    naming the key, a missing Ray ImportError naming the ``sweep`` extra. A cluster that cannot
    be joined (e.g. it refuses the connection for its token) raises :class:`RayConnectError`.
    """
    _require_ray()
    out = Path(out)
    if resume and spec is None:
        spec = SweepDir(out).meta()["spec"]
    if spec is None:
        raise ValueError("spec is required unless resume=True")
    sweep = load_spec(spec)
    stored = _check_out(out, resume, sweep)
    check_optional_int("max_concurrent", max_concurrent, ge=1)
    check_optional_int("num_cpus", num_cpus, ge=1)
    check_optional_int("max_failures", max_failures, ge=0)
    storage = _check_storage(storage if storage is not None or stored is None
                             else stored.get("storage"))
    if num_cpus is not None and (address or os.environ.get("RAY_ADDRESS")):
        raise ValueError("num_cpus is for a local Ray; a cluster (address, $RAY_ADDRESS) has its "
                         "own")
    data_dir = None if data_dir is None else str(Path(data_dir).expanduser().resolve())
    first = sweep.trials[0].config
    runner = TaskRunner(first, data_dir=data_dir, device=torch.device("cpu"))
    probe_path = out / PROBE_FILE
    probe = load_probe(probe_path) if resume and probe_path.is_file() else draw_probe(
        runner, sweep.lyapunov
    )
    check_trials(sweep, runner, probe["inputs"])
    mode = "max" if runner.higher_is_better else "min"
    scheduler, stopper = make_scheduler(SchedulerContext(
        sweep.scheduler, mode, sweep.max_epochs, sweep.lyapunov.at_epochs, out.resolve()
    ))

    # --- Ray, joined before anything of the sweep is written: a cluster that refuses the
    # connection (e.g. for its token) leaves no sweep behind, and the same command works again
    pending = [t.id for t in sweep.trials if not is_done(out / "trials" / t.id)]
    driver_log, ray_logs, existed = out / "ray" / DRIVER_LOG, None, out.exists()
    with contextlib.ExitStack() as stack:
        if pending:
            from . import _tune  # Ray is known to be installed

            # Ray's own log lines (e.g. its token-authentication notice) go to a file
            stack.enter_context(_tune.driver_log(driver_log))
            try:
                own_ray = _tune.init_ray(address, num_cpus, driver_log)
            except RayConnectError:
                if not resume:  # nothing but Ray's log was written
                    shutil.rmtree(out / "ray" if existed else out, ignore_errors=True)
                raise
            if own_ray:
                stack.callback(_tune.shutdown_ray)
            ray_logs = _tune.logs_dir()
            cluster = bool(address or os.environ.get("RAY_ADDRESS")) or _tune.alive_nodes() > 1
            if max_failures is None:
                max_failures = DEFAULT_MAX_FAILURES if cluster else 0
            if cluster and storage is None:
                (notice or log.warning)(NO_STORAGE_NOTICE)
        res = _run(sweep, spec, out, resume=resume, stored=stored, probe=probe, runner=runner,
                   mode=mode, scheduler=scheduler, stopper=stopper, pending=pending,
                   address=address, max_concurrent=max_concurrent, data_dir=data_dir,
                   progress=progress, trial_process_settings=trial_process_settings,
                   storage=storage, max_failures=max_failures or 0)
    return {**res, "driver_log": str(driver_log), "ray_logs": ray_logs}


def _run(sweep: SweepSpec, spec: Any, out: Path, *, resume: bool, stored: dict | None,
         probe: dict[str, Any], runner: TaskRunner, mode: str, scheduler: Any, stopper: Any,
         pending: list[str], address: str | None, max_concurrent: int | None,
         data_dir: str | None, progress: Callable[[SweepProgress], None] | None,
         trial_process_settings: bool, storage: str | None, max_failures: int
         ) -> dict[str, Any]:
    """:func:`run_sweep` from the first file it writes on (Ray, where trials are pending, is
    joined): the sweep's files, a new session in ``sweep.json``, the trials on Ray Tune, and
    the summary of the trial directories."""
    t_start, started = time.perf_counter(), _now()
    meta = _write_sweep_files(sweep, spec, out, stored, probe, runner.metric_name, mode, storage)
    # Tune's experiments of this sweep in the storage: one folder per sweep
    tune_storage = None if storage is None else f"{storage}/{out.resolve().name}-{meta['id']}"
    sessions = list(meta["sessions"])
    # the id tells a trial whether its node sees this directory (then it writes there itself)
    session = {"id": uuid.uuid4().hex, "started": started, "ended": None, "wall_s": None,
               "resume": resume, "ray": address or os.environ.get("RAY_ADDRESS") or "local",
               "max_concurrent": max_concurrent, "storage": storage,
               "max_failures": max_failures, "versions": _versions()}
    sessions.append(session)
    update_sweep_json(out, sessions=sessions)

    state = _progress_so_far(sweep, out, pending, runner.metric_name, mode)
    on_event = _event_handler(state, out, sessions, t_start, runner.metric_name, progress)
    if progress is not None:
        state.event = f"{len(pending)} trials to run"
        progress(state)
    ran = len(pending)
    try:
        if pending:
            from . import _tune  # the optional Ray adapter (run_sweep checked Ray is installed)

            ctx = {
                "out": str(out.resolve()),
                "session_id": session["id"],
                "probe": probe["inputs"],  # through the object store, as the rest
                "configs": {t.id: t.config.to_dict() for t in sweep.trials if t.id in pending},
                "lyapunov": asdict(sweep.lyapunov),
                "data_dir": data_dir,
                "env": {k: v for k, v in os.environ.items() if k.startswith("LIPSCHITZ_RNN_")},
                "threads": 1,
                "process_settings": trial_process_settings,
                "checkpoints": tune_storage is not None,
                # where the trials of earlier sessions left off, for those that do not see DIR
                "restore": {} if tune_storage is None or not resume
                else _tune.latest_checkpoints(tune_storage, pending),
            }
            _tune.fit(out, pending, ctx, session=len(sessions), scheduler=scheduler,
                      stopper=stopper, max_concurrent=max_concurrent, on_event=on_event,
                      storage=tune_storage, max_failures=max_failures)
    finally:
        counts = collect(out)
        session.update(ended=_now(), wall_s=time.perf_counter() - t_start, trials_run=ran)
        meta = update_sweep_json(out, sessions=sessions,
                                 wall_s=sum(float(s["wall_s"] or 0.0) for s in sessions))
    # the summary is that of the trial directories (trials.csv), whatever Ray reported
    best = meta.get("best") or {}
    return {"counts": counts, "best": best.get("best_valid"), "best_trial": best.get("trial"),
            "metric": runner.metric_name, "mode": mode, "out": str(out)}


def _write_sweep_files(sweep: SweepSpec, spec: Any, out: Path, stored: dict | None,
                       probe: dict[str, Any], metric: str, mode: str,
                       storage: str | None) -> dict[str, Any]:
    """``sweep.json`` and ``probe.pt`` of a new sweep, or what a resumed one lacks (the probe,
    the id of an earlier version's ``sweep.json``, a new ``storage``); returns ``sweep.json``."""
    probe_path = out / PROBE_FILE
    if stored is None:
        out.mkdir(parents=True, exist_ok=True)
        save_probe(probe_path, probe)
        meta = _new_meta(sweep, spec, metric, mode, probe)
        write_json(out / SWEEP_FILE, meta)
    else:
        meta = stored
        if not probe_path.is_file():
            save_probe(probe_path, probe)
    if not meta.get("id"):  # a sweep.json of an earlier version
        meta = update_sweep_json(out, id=_new_id())
    if storage is not None and meta.get("storage") != storage:
        meta = update_sweep_json(out, storage=storage)
    return meta


def _progress_so_far(sweep: SweepSpec, out: Path, pending: list[str], metric: str,
                     mode: str) -> SweepProgress:
    """The progress record with the trials that are not pending counted and offered."""
    state = SweepProgress(total=len(sweep.trials), metric=metric, mode=mode)
    for t in sweep.trials:
        tdir = out / "trials" / t.id
        if t.id not in pending:
            st = read_status(tdir)
            status = st["status"] if st else "ok"
            state.counts[status] = state.counts.get(status, 0) + 1
            _offer_finished(state, tdir, t.id, metric)
    return state


def _event_handler(state: SweepProgress, out: Path, sessions: list[dict], t_start: float,
                   metric: str, progress: Callable[[SweepProgress], None] | None
                   ) -> Callable[[str, str, dict | None], None]:
    """What the driver does on a trial's event (``start``, ``result``, ``retry``, an end):
    update ``state``, and after an end record the session's wall time so far (the last of
    ``sessions``) in ``sweep.json``, kept should the driver be killed; then ``progress``."""
    session = sessions[-1]

    def on_event(kind: str, tid: str, payload: dict | None) -> None:
        if kind == "start":
            state.running.add(tid)
            state.event = f"{tid} started"
        elif kind == "result":
            state.offer(tid, payload.get("valid_metric"))
            state.event = f"{tid} epoch {payload.get('epoch')}"
        elif kind == "retry":
            state.running.discard(tid)
            state.event = f"{tid} lost its Ray worker; it runs again"
        else:
            state.running.discard(tid)
            status = payload["status"]
            state.counts[status] = state.counts.get(status, 0) + 1
            state.event = f"{tid} {status}"
            # from its run directory: a trial resumed after its last epoch reports no epoch
            _offer_finished(state, out / "trials" / tid, tid, metric)
            session["wall_s"] = time.perf_counter() - t_start
            update_sweep_json(out, sessions=sessions)
        if progress is not None:
            progress(state)

    return on_event


#: said once before the trials of a cluster without ``storage`` start
NO_STORAGE_NOTICE = (
    "no --storage: a trial's checkpoints stay on the node that runs it (unless the nodes see "
    "the sweep directory). A trial whose node is lost starts again from its first epoch (up to "
    "--max-failures times), as does an unfinished trial after --resume; what the trials "
    "reported (every epoch's metrics, the spectra, the outcomes) is kept in the sweep directory."
)


def _new_id() -> str:
    return uuid.uuid4().hex[:12]


def _check_storage(storage: Any) -> str | None:
    """``storage`` as Tune takes it: a URI as given (without a trailing slash), a local path
    absolute. ValueError/TypeError naming ``storage`` otherwise."""
    if storage is None:
        return None
    if not isinstance(storage, (str, os.PathLike)):
        raise TypeError(f"storage: expected a path or a URI, got {type(storage).__name__}")
    text = str(storage).strip()
    if not text:
        raise ValueError("storage: expected a path or a URI, got an empty string")
    if "://" in text:
        scheme = text.split("://", 1)[0]
        if not scheme.replace("+", "").replace("-", "").replace(".", "").isalnum():
            raise ValueError(f"storage: {text!r} is neither a path nor a URI")
        return text.rstrip("/")
    path = Path(text).expanduser().resolve()
    check_creatable_dir(path)  # one line naming it and the system's reason
    return str(path)


def _new_meta(sweep: SweepSpec, spec: Any, metric: str, mode: str,
              probe: dict[str, Any]) -> dict[str, Any]:
    """The content of a new ``sweep.json``."""
    return {
        "spec": sweep.raw,
        "spec_path": None if isinstance(spec, dict) else str(Path(spec).resolve()),
        "task": sweep.trials[0].config.task,
        "metric": {"name": metric, "mode": mode},
        "max_epochs": sweep.max_epochs,
        "swept_keys": sweep.swept_keys,
        "lyapunov": asdict(sweep.lyapunov),
        "scheduler": asdict(sweep.scheduler),
        "probe": {"file": PROBE_FILE, "shape": list(probe["inputs"].shape),
                  "split": probe["split"], "seed": probe["seed"],
                  "indices": [int(i) for i in probe["indices"]]},
        "trials": sweep.plan(),
        "id": _new_id(),
        "versions": _versions(),
        "sessions": [],
        "wall_s": 0.0,
    }


def _offer_finished(state: SweepProgress, tdir: Path, tid: str, metric: str) -> None:
    st = read_status(tdir)
    if st is not None and st.get("status") not in FINAL_STATUSES:
        return
    for record in RunDir(tdir).records():
        state.offer(tid, record.get(f"valid_{metric}"))
