"""One trial of a sweep: an ordinary training run plus the spectra on the probe.

A trial trains through :func:`lipschitz_rnn.train.loop.train` into ``DIR/trials/<id>/`` (an
ordinary run directory: ``evaluate``, ``lyapunov``, ``report`` work on it) with a
:class:`SweepCallback` that computes the Lyapunov spectrum at the sweep's ``at_epochs`` (epoch 0
before the first step) and reports every epoch to the scheduler. Beside the run's own files the
trial directory holds

* ``probe_spectra.npz``: ``le{epoch}`` -> (probe batch, k) exponents, each row descending;
* ``trial.json``: the outcome, written last: ``status`` (``ok``, ``diverged``, ``failed``,
  ``stopped`` by the scheduler), ``error``, ``epochs_done``, ``last`` (the last epoch's
  record), ``wall_s`` (the attempts that recorded an outcome, set-up included) and
  ``lyapunov_errors`` (epoch -> why no spectrum).

A trial that is run again (``--resume``) continues from its last checkpoint (``train(...,
resume=True)``), keeping the spectra it already has.

On a cluster whose nodes do not see the sweep directory, a trial runs in a directory of its
node and ships its run directory to the driver with every report (:class:`RunShipper` on the
trial's side, :func:`receive_run_files` on the driver's): everything but the resumable
checkpoint (``checkpoints/last.pt``) and the previous versions of the checkpoints, which stay on
the node (and in ``--storage``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

from .._io import atomic_write_bytes, checksum_path, write_checked_bytes, write_json
from ..analysis import NonFiniteStateError, spectrum_features
from ..runs.config import TrainConfig
from ..runs.rundir import RunDir
from ..runs.sweepdir import PROBE_SPECTRA, read_probe_spectra
from ..train.callbacks import Callback, RunContext
from ..train.loop import DivergenceError, train
from ..train.tensorboard import tensorboard_callbacks
from .probe import probe_spectrum
from .spec import LyapunovSpec

__all__ = ["SweepCallback", "run_trial", "is_done", "read_status", "write_status",
           "features_by_epoch", "report_metrics", "RunShipper", "receive_run_files",
           "STATUS_FILE", "SPECTRA_FILE", "FINAL_STATUSES"]

log = logging.getLogger(__name__)

STATUS_FILE = "trial.json"
SPECTRA_FILE = PROBE_SPECTRA
#: outcomes that a resumed sweep does not run again (``failed`` trials are retried)
FINAL_STATUSES = ("ok", "diverged", "stopped")
#: for tests: the process of the trial with this id ends (``os._exit``) right after its last
#: epoch's checkpoint and metrics are written, before its spectrum and ``results.json``
EXIT_AFTER_LAST_EPOCH = "LIPSCHITZ_RNN_TEST_EXIT_AFTER_LAST_EPOCH"


def read_status(trial_dir: str | Path) -> dict[str, Any] | None:
    p = Path(trial_dir) / STATUS_FILE
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def write_status(trial_dir: str | Path, status: str, **fields: Any) -> dict[str, Any]:
    d = {"status": status, **fields}
    write_json(Path(trial_dir) / STATUS_FILE, d)
    return d


def is_done(trial_dir: str | Path) -> bool:
    """Whether a trial has a final outcome (``failed`` and unfinished ones are run again). An
    ``ok`` trial is done only with its ``results.json``: one without it is finished on resume."""
    st = read_status(trial_dir)
    results = RunDir(trial_dir).has_results()
    if st is not None:
        return st["status"] in FINAL_STATUSES and (results or st["status"] != "ok")
    return results


def last_record(trial_dir: str | Path) -> dict[str, Any] | None:
    records = RunDir(trial_dir).records()
    return records[-1] if records else None


def features_by_epoch(spectra: dict[int, np.ndarray]) -> dict[int, dict[str, float]]:
    """``spectrum_features`` of the batch-mean spectrum of every epoch (skipped when NaN)."""
    out = {}
    for epoch, ex in sorted(spectra.items()):
        try:
            out[epoch] = spectrum_features(np.asarray(ex, dtype=np.float64).mean(0))
        except ValueError:
            continue
    return out


def report_metrics(record: dict[str, Any], metric_name: str,
                   features: dict[int, dict[str, float]]) -> dict[str, Any]:
    """What a trial reports to the scheduler after an epoch: ``epoch``, ``valid_metric``,
    ``valid_loss``, ``train_loss`` and ``le{e}_{feature}`` of every spectrum so far."""
    out: dict[str, Any] = {
        "epoch": record["epoch"],
        "valid_metric": record[f"valid_{metric_name}"],
        "valid_loss": record["valid_loss"],
        "train_loss": record["train_loss"],
    }
    for e, feats in features.items():
        if e <= record["epoch"]:
            out.update({f"le{e}_{k}": v for k, v in feats.items()})
    return out


class SweepCallback(Callback):
    """Spectra of the model on the probe at ``lyap.at_epochs``, saved to ``probe_spectra.npz``
    as they come; ``report(metrics)`` (e.g. ``ray.tune.report``) after every epoch."""

    def __init__(self, trial_dir: str | Path, inputs: Tensor, lyap: LyapunovSpec,
                 report: Callable[[dict], None] | None = None,
                 spectrum: Callable[[Any, Tensor, LyapunovSpec], Any] | None = None):
        self.dir = Path(trial_dir)
        self.inputs = inputs
        self.lyap = lyap
        self.report = report
        self.spectrum = spectrum or probe_spectrum
        self.spectra: dict[int, np.ndarray] = {}
        self.errors: dict[int, str] = {}
        #: the last epoch's report, sent by :func:`run_trial` once ``trial.json`` is written (a
        #: scheduler that stops the trial at its last epoch then cannot cut it short)
        self.final: dict[str, Any] | None = None

    def _compute(self, run: RunContext, epoch: int) -> None:
        try:
            spec = self.spectrum(run.model, self.inputs, self.lyap)
        except NonFiniteStateError as e:
            self.errors[epoch] = str(e)
            log.warning("%s: no spectrum at epoch %d: %s", self.dir.name, epoch, e)
            return
        self.spectra[epoch] = spec.exponents.numpy()
        buf = io.BytesIO()
        np.savez(buf, **{f"le{e}": v for e, v in sorted(self.spectra.items())})
        atomic_write_bytes(self.dir / SPECTRA_FILE, buf.getvalue())

    def on_train_start(self, run: RunContext) -> None:
        self.spectra = {} if run.fresh else read_probe_spectra(self.dir)
        # the model as it starts is that of the end of epoch start_epoch - 1 (0: initial): a
        # sweep's checkpoints are all at epoch ends. Its spectrum is computed here when missing
        # (the driver was killed between the checkpoint and the spectrum)
        before = run.start_epoch - 1
        if before in self.lyap.at_epochs and before not in self.spectra:
            self._compute(run, before)
        # resumed after its last epoch (killed before results.json): no epoch runs, so the last
        # epoch's report is sent from metrics.jsonl, as it would have been
        last = last_record(self.dir) if self.report is not None else None
        if last is not None and run.start_epoch > run.config.epochs and \
                int(last["epoch"]) == run.config.epochs:
            self.final = report_metrics(last, run.runner.metric_name,
                                        features_by_epoch(self.spectra))

    def on_epoch_end(self, run: RunContext, record: dict) -> None:
        epoch = int(record["epoch"])
        if epoch == run.config.epochs and os.environ.get(EXIT_AFTER_LAST_EPOCH) == self.dir.name:
            os._exit(70)  # tests: a kill after the last metrics and checkpoint, before the rest
        if epoch in self.lyap.at_epochs:
            self._compute(run, epoch)
        if self.report is not None:
            metrics = report_metrics(record, run.runner.metric_name,
                                     features_by_epoch(self.spectra))
            if epoch < run.config.epochs:
                self.report(metrics)
            else:
                self.final = metrics


def run_trial(
    sweep_dir: str | Path,
    trial_id: str,
    config: TrainConfig,
    lyap: LyapunovSpec,
    inputs: Tensor,
    *,
    data_dir: str | Path | None = None,
    report: Callable[[dict], None] | None = None,
    node: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train (or continue) trial ``trial_id`` into ``sweep_dir/trials/<id>/``; return and write
    its ``trial.json``. Divergence and any other exception are recorded, not raised.

    ``report`` gets :func:`report_metrics` after every epoch, the last one after ``trial.json``
    is written. ``node`` (``{"id", "hostname"}``: where the attempt runs) is recorded in
    ``trial.json``. Attempts of one trial never overlap: an attempt waits for the lock of the
    trial (``DIR/.locks/<id>``) that a worker of a killed driver may still hold.
    """
    with trial_lock(sweep_dir, trial_id):
        return _attempt(Path(sweep_dir) / "trials" / trial_id, trial_id, config, lyap, inputs,
                        data_dir, report, node)


@contextlib.contextmanager
def trial_lock(sweep_dir: str | Path, trial_id: str) -> Iterator[None]:
    """Exclusive lock of one trial (``fcntl.flock``: released by the OS when its holder dies,
    however it dies). Where ``fcntl`` is missing (Windows) attempts are not locked."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    path = Path(sweep_dir) / ".locks" / trial_id
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("trial %s: waiting for an earlier attempt to end (a worker of a "
                        "killed driver?)", trial_id)
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _attempt(tdir: Path, trial_id: str, config: TrainConfig, lyap: LyapunovSpec, inputs: Tensor,
             data_dir, report, node) -> dict[str, Any]:
    earlier = read_status(tdir) or {}
    (tdir / STATUS_FILE).unlink(missing_ok=True)  # the outcome of an earlier attempt
    # TensorBoard per trial when the spec sets it: tensorboard --logdir SWEEP compares them
    cb = SweepCallback(tdir, inputs, lyap, report=report)
    callbacks = [cb, *tensorboard_callbacks(config)]
    resume = RunDir(tdir).is_run()
    t0 = time.perf_counter()
    status, error, results, tb = "ok", None, None, None
    try:
        if resume:
            results = train(None, tdir, data_dir=data_dir, resume=True, callbacks=callbacks)
        else:
            results = train(config, tdir, data_dir=data_dir, force=True, callbacks=callbacks)
    except DivergenceError as e:
        status, error = "diverged", str(e)
    except Exception as e:  # noqa: BLE001 - recorded in trial.json; the sweep goes on
        status, error, tb = "failed", f"{type(e).__name__}: {e}", traceback.format_exc()
        log.error("trial %s failed:\n%s", trial_id, tb)
    last = last_record(tdir)
    if last is not None:
        last.pop("lyapunov", None)
    outcome = write_status(
        tdir,
        status,
        error=error,
        epochs_done=int(last["epoch"]) if last else 0,
        last=last,
        wall_s=(earlier.get("wall_s") or 0.0) + time.perf_counter() - t0,
        resumed=resume,
        lyapunov_errors={**(earlier.get("lyapunov_errors") or {}),
                         **{str(k): v for k, v in cb.errors.items()}},
        test=results["test"] if results else None,
        traceback=tb,
        **({"node": node} if node is not None else {}),
    )
    if report is not None and cb.final is not None:
        report(cb.final)
    return outcome


# --- a run directory shipped to the driver ------------------------------------------------------
def _shipped(rel: str) -> bool:
    """Whether the run-directory file ``rel`` (a POSIX path relative to the run directory)
    travels to the driver: not the resumable checkpoint, not the previous versions of the
    checkpoints, not the temporary files of atomic writes."""
    parts = rel.split("/")
    name = parts[-1]
    if any(p.startswith(".") for p in parts) or name.endswith(".tmp"):
        return False
    if parts[0] == "checkpoints" and (name.startswith("last") or ".prev." in name):
        return False
    return True


def _relative(rel: Any) -> str:
    """``rel`` checked as a relative path inside a run directory (ValueError otherwise)."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or \
            any(p in ("", ".", "..") for p in rel.split("/")):
        raise ValueError(f"shipped file {rel!r}: expected a relative path inside the run "
                         "directory")
    return rel


class RunShipper:
    """The trial's side of a run directory that the driver cannot see: :meth:`payload` holds
    the files that changed since the last payload (``{"files": {path: bytes}, "manifest":
    [every shipped path present]}``), or None when nothing changed."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)
        self._sent: dict[str, tuple[int, int, int]] = {}
        self._manifest: list[str] = []

    def _present(self) -> dict[str, tuple[int, int, int]]:
        out = {}
        if self.dir.is_dir():
            for p in sorted(self.dir.rglob("*")):
                rel = p.relative_to(self.dir).as_posix()
                if p.is_file() and _shipped(rel):
                    st = p.stat()
                    out[rel] = (st.st_size, st.st_mtime_ns, st.st_ino)
        return out

    def payload(self) -> dict[str, Any] | None:
        present = self._present()
        changed = [rel for rel, sig in present.items() if self._sent.get(rel) != sig]
        manifest = sorted(present)
        if not changed and manifest == self._manifest:
            return None
        files = {}
        for rel in changed:
            try:
                files[rel] = (self.dir / rel).read_bytes()
            except FileNotFoundError:  # replaced or removed since the listing
                present.pop(rel)
        self._sent, self._manifest = present, sorted(present)
        return {"files": files, "manifest": self._manifest}


def receive_run_files(trial_dir: str | Path, payload: dict[str, Any]) -> None:
    """The driver's side of :class:`RunShipper`: write ``payload``'s files into ``trial_dir``
    atomically and remove the shipped kind of files the trial no longer has (an earlier
    attempt's). A file whose checksum sidecar travels with it is written with its checksum
    recorded crash-consistently (:func:`~lipschitz_rnn._io.write_checked_bytes`);
    ``trial.json`` comes last, so the directory never holds an outcome before its files. Files
    that are not shipped (``checkpoints/last.pt``) are left as they are."""
    tdir = Path(trial_dir)
    files = {_relative(rel): data for rel, data in (payload.get("files") or {}).items()}
    manifest = {_relative(rel) for rel in payload.get("manifest") or ()} | set(files)
    if STATUS_FILE not in manifest:  # a new attempt: the earlier outcome goes first
        (tdir / STATUS_FILE).unlink(missing_ok=True)
    sidecars = {checksum_path(Path(rel)).as_posix() for rel in files}
    for rel, data in files.items():
        if rel == STATUS_FILE or (rel in sidecars and rel[: -len(".sha256")] in files):
            continue
        if checksum_path(Path(rel)).as_posix() in files:
            write_checked_bytes(tdir / rel, data)
        else:
            atomic_write_bytes(tdir / rel, data)
    if tdir.is_dir():
        for p in sorted(tdir.rglob("*"), reverse=True):
            rel = p.relative_to(tdir).as_posix()
            if p.is_file() and _shipped(rel) and rel not in manifest:
                p.unlink()
    if STATUS_FILE in files:
        atomic_write_bytes(tdir / STATUS_FILE, files[STATUS_FILE])
