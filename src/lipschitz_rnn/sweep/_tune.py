"""Ray Tune glue: the function trainable, the driver-side callback and the Tuner.

Imported only once Ray is known to be installed (the ``sweep`` extra).

Nothing but the network is assumed between the driver and the nodes: a trial gets the probe and
its configuration through Ray's object store (``tune.with_parameters``). A trial whose node sees
the sweep directory (one machine, or a filesystem shared at the same path: the session's id in
``sweep.json`` tells) writes its run directory there itself, as it always did; any other runs in
a directory of its node and ships its run directory with its reports (:class:`RunShipper`),
which the driver's :class:`_Tracker` writes into ``DIR/trials/<id>/``
(:func:`receive_run_files`). With ``--storage`` such a trial also reports a Tune checkpoint (its
whole run directory) every epoch: a retried trial, or one of a resumed sweep, continues from it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from .. import _io, process
from ..runs.config import TrainConfig
from ..runs.sweepdir import SWEEP_FILE
from .runner import RayConnectError
from .spec import LyapunovSpec
from .trial import (
    STATUS_FILE,
    RunShipper,
    last_record,
    read_status,
    receive_run_files,
    run_trial,
    write_status,
)

__all__ = ["init_ray", "shutdown_ray", "fit", "driver_log", "alive_nodes", "logs_dir",
           "latest_checkpoints", "AUTH_HELP"]

log = logging.getLogger(__name__)

#: the key of a report that carries the trial's node and shipped files (the driver takes it
#: out before Tune records the result)
PAYLOAD = "_lipschitz_rnn"

#: a trial's Tune checkpoint lists its files and their sizes here (a dot file: neither shipped
#: nor copied into the next checkpoint); one in the storage whose files do not match was cut short
#: while uploaded (its node or the driver died) and is not resumed from
CHECKPOINT_MANIFEST = ".lipschitz-rnn-checkpoint.json"

#: what a user connecting to a token-authenticated cluster must set
AUTH_HELP = ("set RAY_AUTH_MODE=token and give this machine the cluster's token: the file "
             "~/.ray/auth_token, a file named by RAY_AUTH_TOKEN_PATH, or RAY_AUTH_TOKEN itself "
             "(`ray get-auth-token` on the head node prints it)")


def init_ray(address: str | None, num_cpus: int | None, log_path: Path | None = None) -> bool:
    """Connect to ``address`` (or ``$RAY_ADDRESS``) or start a local Ray; False when Ray was
    already initialised by the caller (who then also shuts it down).

    What Ray's own processes write to the standard error while connecting goes to ``log_path``
    (e.g. a refused token, once a second). A cluster that refuses the connection for its
    token, or that cannot be reached, raises :class:`RayConnectError`."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    common = {"log_to_driver": False, "logging_level": logging.WARNING}
    with _stderr_to(log_path):
        if address:
            _check_token(address)
            try:
                ray.init(address=address, **common)
            except ray.exceptions.AuthenticationError:
                raise RayConnectError(_auth_message(address)) from None
            except ConnectionError as e:
                raise RayConnectError(
                    f"cannot join the Ray cluster at {address}: {_first_line(e)} (is it "
                    "running, and is this its address?)") from None
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, **common)
    return True


def _auth_message(address: str) -> str:
    return (f"the Ray cluster at {address} refused the connection: it uses token "
            f"authentication and this machine has no token, or another one; {AUTH_HELP}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_token(address: str) -> None:
    """One request to the cluster's GCS, so that a refused token is told at once (``ray.init``
    retries it for 20 s, then reports a failed connection)."""
    if "://" in address or address == "auto":
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            ensure_token_if_auth_enabled,
        )
        from ray._private.services import canonicalize_bootstrap_address_or_die
        from ray._raylet import GcsClient
    except ImportError:  # pragma: no cover - another Ray version: ray.init tells
        return
    try:
        # token mode without a token: a GCS client would abort the process
        ensure_token_if_auth_enabled(None, create_token_if_missing=False)
    except ray.exceptions.AuthenticationError:
        raise RayConnectError("RAY_AUTH_MODE=token is set but this machine has no Ray token; "
                              "give it the token of the cluster at " + address + ": "
                              + AUTH_HELP.split(": ", 1)[1]) from None
    try:
        GcsClient(address=canonicalize_bootstrap_address_or_die(address)).cluster_id  # noqa: B018
    except ray.exceptions.AuthenticationError:
        raise RayConnectError(_auth_message(address)) from None
    except ray.exceptions.RpcError as e:
        if "timed out" in str(e).lower():  # ray.init would try 19 times more, 40 s each
            raise RayConnectError(
                f"no Ray cluster answered at {address} within 40 s: is it running, and is this "
                "its address (`ray status` on its head node shows it)?") from None
    except Exception:  # noqa: BLE001 - anything else: ray.init reports it
        return


@contextlib.contextmanager
def _stderr_to(path: Path | None) -> Iterator[None]:
    """The process's standard error (file descriptor 2: the C++ parts of Ray write there too)
    appended to ``path`` while the block runs."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as f:
            os.dup2(f.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def shutdown_ray() -> None:
    ray.shutdown()


def alive_nodes() -> int:
    """How many nodes of the connected Ray are alive."""
    try:
        return sum(1 for n in ray.nodes() if n.get("Alive"))
    except Exception:  # noqa: BLE001 - informational
        return 1


def logs_dir() -> str | None:
    """The log folder of the Ray session on this machine (its processes' own logs)."""
    try:
        return ray._private.worker._global_node.get_logs_dir_path()
    except Exception:  # noqa: BLE001 - informational
        return None


def _log_stdstream(data: dict, ignore_prefix: bool = False) -> None:
    """Ray's messages about other processes (``(raylet) ...``: a node that died, a worker that
    was killed), which the driver prints to the terminal: to the ``ray`` logger instead."""
    lg = logging.getLogger("ray.cluster_messages")
    for line in data.get("lines") or ():
        lg.warning("(%s) %s", data.get("pid", "?"), line)


@contextlib.contextmanager
def driver_log(path: Path) -> Iterator[None]:
    """Records of Ray's driver-side loggers (``ray`` and below: start-up notices such as
    "Token authentication is enabled", Tune's advice, a lost trial) and Ray's messages about
    its other processes (``(raylet) ...``, which Ray prints to the terminal) go to the file
    ``path`` (appended) instead of the terminal while the block runs; Ray's own handlers are put
    back afterwards. The processes of Ray log to Ray's session directories as always."""
    logger = logging.getLogger("ray")
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = logger.handlers[:], logger.propagate
    logger.handlers = [handler]
    logger.propagate = False
    worker = sys.modules.get("ray._private.worker")
    printer = getattr(worker, "print_to_stdstream", None)
    if printer is not None:
        worker.print_to_stdstream = _log_stdstream
    try:
        yield
    finally:
        if printer is not None:
            worker.print_to_stdstream = printer
        logger.handlers, logger.propagate = saved
        handler.close()


# --- the trial's side ---------------------------------------------------------------------------
def node_info() -> dict[str, Any]:
    """``{"id", "hostname"}`` of the Ray node this process runs on."""
    try:
        node_id = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray
        node_id = None
    return {"id": node_id, "hostname": socket.gethostname()}


def shares_sweep_dir(out: str, session_id: str) -> bool:
    """Whether this node sees the driver's sweep directory at ``out``: its ``sweep.json`` there
    records the running session ``session_id``."""
    try:
        meta = json.loads((Path(out) / SWEEP_FILE).read_text())
    except (OSError, ValueError):
        return False
    sessions = meta.get("sessions") if isinstance(meta, dict) else None
    return any(isinstance(s, dict) and s.get("id") == session_id for s in sessions or ())


def trainable(config: dict[str, Any], ctx: dict[str, Any]) -> None:
    """One trial in a Ray worker: one torch thread, the driver's ``LIPSCHITZ_RNN_*`` settings."""
    os.environ.update(ctx["env"])
    torch.set_num_threads(ctx["threads"])
    if ctx["process_settings"]:
        process.configure_process()
    tid = config["trial_id"]
    cfg = TrainConfig.from_dict(ctx["configs"][tid])
    lyap = LyapunovSpec(**{**ctx["lyapunov"], "at_epochs": tuple(ctx["lyapunov"]["at_epochs"])})
    node = node_info()
    if shares_sweep_dir(ctx["out"], ctx["session_id"]):
        run_trial(ctx["out"], tid, cfg, lyap, ctx["probe"], data_dir=ctx["data_dir"], node=node,
                  report=lambda m: tune.report({**m, PAYLOAD: {"node": node}}))
    else:
        _run_shipped(ctx, tid, cfg, lyap, node)


def _temporary(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n.startswith(".") or n.endswith(".tmp")]


def _run_shipped(ctx: dict[str, Any], tid: str, cfg: TrainConfig, lyap: LyapunovSpec,
                 node: dict[str, Any]) -> None:
    """The trial in a directory of this node, its run directory shipped with every report (and
    checkpointed to the storage when the sweep has one); the directory is removed at the end."""
    work = Path(tempfile.mkdtemp(prefix=f"lipschitz-rnn-{tid}-"))
    tdir = work / "trials" / tid
    try:
        _restore(ctx, tid, tdir)
        shipper = RunShipper(tdir)

        def report(metrics: dict[str, Any]) -> None:
            snapshot = None
            try:
                checkpoint = None
                if ctx["checkpoints"] and not (tdir / STATUS_FILE).is_file():
                    snapshot = Path(tempfile.mkdtemp(prefix=f"lipschitz-rnn-{tid}-checkpoint-"))
                    shutil.copytree(tdir, snapshot, dirs_exist_ok=True, ignore=_temporary)
                    write_manifest(snapshot)
                    checkpoint = tune.Checkpoint.from_directory(str(snapshot))
                tune.report({**metrics, PAYLOAD: {"node": node, **(shipper.payload() or {})}},
                            checkpoint=checkpoint)
            finally:
                if snapshot is not None:
                    shutil.rmtree(snapshot, ignore_errors=True)

        run_trial(work, tid, cfg, lyap, ctx["probe"], data_dir=ctx["data_dir"], report=report,
                  node=node)
        rest = shipper.payload()  # the outcome of a trial that reports no last epoch
        if rest is not None:
            tune.report({PAYLOAD: {"node": node, **rest}})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_manifest(folder: Path) -> None:
    """:data:`CHECKPOINT_MANIFEST` of the checkpoint ``folder``: every file's size."""
    files = {p.relative_to(folder).as_posix(): p.stat().st_size
             for p in sorted(folder.rglob("*")) if p.is_file()}
    _io.write_json(folder / CHECKPOINT_MANIFEST, {"files": files})


def _restore(ctx: dict[str, Any], tid: str, tdir: Path) -> None:
    """The run directory of the trial's last checkpoint: Tune's (an attempt after a lost node)
    or an earlier session's in the storage (a resumed sweep); none: the trial starts afresh."""
    checkpoint = tune.get_checkpoint() or ctx["restore"].get(tid)
    if checkpoint is None:
        return
    try:
        checkpoint.to_directory(str(tdir))
    except Exception as e:  # noqa: BLE001 - a checkpoint that cannot be read: start afresh
        log.warning("trial %s: its checkpoint %s cannot be read (%s); it starts afresh", tid,
                    checkpoint.path, e)
        shutil.rmtree(tdir, ignore_errors=True)
    (tdir / CHECKPOINT_MANIFEST).unlink(missing_ok=True)


# --- the driver's side --------------------------------------------------------------------------
def _ignore(*args: Any) -> None:
    pass


class _Tracker(tune.Callback):
    """Driver side: writes what trials ship, records trials the scheduler stopped or Ray lost,
    feeds the progress."""

    def __init__(self, out: Path, on_event: Callable[[str, str, dict | None], None]):
        self.out = out
        self.on_event = on_event
        self.nodes: dict[str, dict] = {}  # trial -> the node of its last report
        self.starts: dict[str, int] = {}  # trial -> attempts started in this session

    def __getstate__(self) -> dict:
        # Tune pickles its run configuration; the progress display stays with the driver
        return {"out": self.out, "on_event": _ignore, "nodes": {}, "starts": {}}

    def _tid(self, trial) -> str:
        return trial.config["trial_id"]

    def on_trial_start(self, iteration, trials, trial, **info):
        tid = self._tid(trial)
        self.starts[tid] = self.starts.get(tid, 0) + 1
        self.on_event("start", tid, None)

    def on_trial_recover(self, iteration, trials, trial, **info):
        tid = self._tid(trial)
        log.info("trial %s lost its Ray worker (attempt %d); it runs again", tid,
                    self.starts.get(tid, 1))
        self.on_event("retry", tid, None)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = self._tid(trial)
        # taken out before Tune records the result (its files stay out of Tune's logs)
        payload = result.pop(PAYLOAD, None)
        if isinstance(payload, dict):
            if isinstance(payload.get("node"), dict):
                self.nodes[tid] = payload["node"]
            if "files" in payload:
                receive_run_files(self.out / "trials" / tid, payload)
        if "epoch" in result:
            self.on_event("result", tid, result)

    def _finish(self, trial, status: str, error: str | None) -> None:
        tid = self._tid(trial)
        tdir = self.out / "trials" / tid
        st = read_status(tdir)
        attempts = self.starts.get(tid, 1)
        if st is None:
            last = last_record(tdir)
            if last is not None:
                last.pop("lyapunov", None)
            st = write_status(tdir, status, error=error, epochs_done=last["epoch"] if last else 0,
                              last=last, wall_s=None, resumed=None, lyapunov_errors={},
                              test=None, traceback=None, node=self.nodes.get(tid),
                              **({"attempts": attempts} if attempts > 1 else {}))
        elif attempts > 1:
            st["attempts"] = attempts
            _io.write_json(tdir / STATUS_FILE, st)
        self.on_event("end", tid, st)

    def on_trial_complete(self, iteration, trials, trial, **info):
        # a trial that ends without its own trial.json was stopped by the scheduler
        self._finish(trial, "stopped", None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "failed", _trial_error(trial))


def _trial_error(trial) -> str:
    """Why Tune gave a trial up: the first line of its last error (e.g. its node died) and how
    many attempts failed."""
    text = ""
    with contextlib.suppress(Exception):
        path = trial.error_file
        if path and Path(path).is_file():
            text = Path(path).read_text(errors="replace")
    last = text.rsplit("Failure #", 1)[-1].splitlines()[1:] if text else []
    first = next((ln.strip() for ln in last if ln.strip()), "")
    n = getattr(trial, "num_failures", 0) or 1
    return (f"the Ray worker of this trial failed ({n} attempt{'s' if n > 1 else ''})"
            + (f": {first}" if first else ""))[:2000]


def latest_checkpoints(storage: str, trial_ids: list[str]) -> dict[str, Any]:
    """Trial id -> the newest complete Tune checkpoint of that trial among the sessions in
    ``storage`` (``session-N/<id>/checkpoint_*``), as a ``tune.Checkpoint``; trials without one
    are left out. Used to continue a resumed sweep's trials where the earlier sessions left them.

    Complete: its files match its :data:`CHECKPOINT_MANIFEST`. A node goes on uploading its
    trial's checkpoints for a moment after the driver died, and the last one may be cut short:
    resumed from, it would fail the trial in every later session."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(storage)

    def folders(path: str) -> list[str]:
        try:
            infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        except OSError:
            return []
        return [i.base_name for i in infos if i.type == pafs.FileType.Directory]

    def number(name: str, prefix: str) -> int:
        tail = name[len(prefix):]
        return int(tail) if name.startswith(prefix) and tail.isdigit() else -1

    sessions = sorted((s for s in folders(root) if number(s, "session-") >= 0),
                      key=lambda s: number(s, "session-"), reverse=True)
    found: dict[str, Any] = {}
    for tid in trial_ids:
        for s in sessions:
            ckpts = [c for c in folders(f"{root}/{s}/{tid}") if number(c, "checkpoint_") >= 0]
            ckpts.sort(key=lambda c: number(c, "checkpoint_"), reverse=True)
            path = next((p for p in (f"{root}/{s}/{tid}/{c}" for c in ckpts)
                         if _complete(fs, p, tid)), None)
            if path is not None:
                found[tid] = tune.Checkpoint(path=path, filesystem=fs)
                break
    return found


def _complete(fs: Any, path: str, tid: str) -> bool:
    """Whether the checkpoint folder ``path`` of ``fs`` holds every file of its manifest with
    its size (a warning when not)."""
    import pyarrow.fs as pafs

    try:
        with fs.open_input_stream(f"{path}/{CHECKPOINT_MANIFEST}") as f:
            files = json.loads(f.readall())["files"]
        infos = fs.get_file_info([f"{path}/{rel}" for rel in files])
        ok = all(i.type == pafs.FileType.File and i.size == files[rel]
                 for rel, i in zip(files, infos, strict=True))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        log.warning("trial %s: checkpoint %s is incomplete (cut short while uploaded?); it is "
                    "not resumed from", tid, path)
    return ok


def fit(
    out: Path,
    pending: list[str],
    ctx: dict[str, Any],
    *,
    session: int,
    scheduler: Any,
    stopper: Any,
    max_concurrent: int | None,
    on_event: Callable[[str, str, dict | None], None],
    storage: str | None = None,
    max_failures: int = 0,
) -> None:
    """Run ``pending`` trials through a Tuner; Tune's own files go to ``session-N`` of
    ``storage`` (else of ``out/ray``). A trial whose Ray worker is lost runs again up to
    ``max_failures`` times (from its last checkpoint where the storage has one)."""
    fn = tune.with_resources(tune.with_parameters(trainable, ctx=ctx), {"cpu": 1})
    tuner = tune.Tuner(
        fn,
        param_space={"trial_id": tune.grid_search(pending)},
        tune_config=tune.TuneConfig(
            scheduler=scheduler,
            num_samples=1,
            reuse_actors=True,  # a worker imports torch and the data code once, not per trial
            max_concurrent_trials=max_concurrent,
            trial_name_creator=lambda t: t.config["trial_id"],
            trial_dirname_creator=lambda t: t.config["trial_id"],
        ),
        run_config=tune.RunConfig(
            name=f"session-{session}",
            storage_path=storage or str((out / "ray").resolve()),
            stop=stopper,
            verbose=0,
            callbacks=[_Tracker(out, on_event), CSVLoggerCallback(), JsonLoggerCallback()],
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1) if storage else None,
        ),
    )
    with _scoped_env(QUIET_TUNE):
        tuner.fit()


#: Tune's console tables off (the caller shows progress), its CSV and JSON records kept, its
#: TensorBoard logger off (it warns on every NaN metric of a diverging trial); a report that
#: only ships files (a trial's outcome after its last metrics) has no metric to check
QUIET_TUNE = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
              "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}


@contextlib.contextmanager
def _scoped_env(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
