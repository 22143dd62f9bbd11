"""Ray Tune glue: the function trainable, the driver-side callback and the Tuner.

Imported only once Ray is known to be installed (the ``sweep`` extra).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from .. import _process
from ..train.config import TrainConfig
from .probe import load_probe
from .spec import LyapunovSpec
from .trial import last_record, read_status, run_trial, write_status

__all__ = ["init_ray", "shutdown_ray", "fit", "driver_log"]

log = logging.getLogger(__name__)


def init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Connect to ``address`` (or ``$RAY_ADDRESS``) or start a local Ray; False when Ray was
    already initialised by the caller (who then also shuts it down)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    common = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **common)
    return True


def shutdown_ray() -> None:
    ray.shutdown()


@contextlib.contextmanager
def driver_log(path: Path) -> Iterator[None]:
    """Records of Ray's driver-side loggers (``ray`` and below: start-up notices such as
    "Token authentication is enabled", Tune's advice) go to the file ``path`` (appended) instead
    of the terminal while the block runs; Ray's own handlers are put back afterwards. The
    processes of a local Ray log to Ray's session directory as always."""
    logger = logging.getLogger("ray")
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = logger.handlers[:], logger.propagate
    logger.handlers = [handler]
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers, logger.propagate = saved
        handler.close()


def trainable(config: dict[str, Any], ctx: dict[str, Any]) -> None:
    """One trial in a Ray worker: one torch thread, the driver's ``LIPSCHITZ_RNN_*`` settings."""
    os.environ.update(ctx["env"])
    torch.set_num_threads(ctx["threads"])
    if ctx["process_settings"]:
        _process.configure_process()
    tid = config["trial_id"]
    probe = load_probe(Path(ctx["out"]) / ctx["probe"])
    run_trial(
        ctx["out"],
        tid,
        TrainConfig.from_dict(ctx["configs"][tid]),
        LyapunovSpec(**{**ctx["lyapunov"], "at_epochs": tuple(ctx["lyapunov"]["at_epochs"])}),
        probe["inputs"],
        data_dir=ctx["data_dir"],
        report=tune.report,
    )


def _ignore(*args: Any) -> None:
    pass


class _Tracker(tune.Callback):
    """Driver side: records trials the scheduler stopped or Ray lost, feeds the progress."""

    def __init__(self, out: Path, on_event: Callable[[str, str, dict | None], None]):
        self.out = out
        self.on_event = on_event

    def __getstate__(self) -> dict:
        # Tune pickles its run configuration; the progress display stays with the driver
        return {"out": self.out, "on_event": _ignore}

    def _tid(self, trial) -> str:
        return trial.config["trial_id"]

    def on_trial_start(self, iteration, trials, trial, **info):
        self.on_event("start", self._tid(trial), None)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.on_event("result", self._tid(trial), result)

    def _finish(self, trial, status: str, error: str | None) -> None:
        tid = self._tid(trial)
        tdir = self.out / "trials" / tid
        st = read_status(tdir)
        if st is None:
            last = last_record(tdir)
            if last is not None:
                last.pop("lyapunov", None)
            st = write_status(tdir, status, error=error, epochs_done=last["epoch"] if last else 0,
                              last=last, wall_s=None, resumed=None, lyapunov_errors={},
                              test=None, traceback=None)
        self.on_event("end", tid, st)

    def on_trial_complete(self, iteration, trials, trial, **info):
        # a trial that ends without its own trial.json was stopped by the scheduler
        self._finish(trial, "stopped", None)

    def on_trial_error(self, iteration, trials, trial, **info):
        err = getattr(trial, "error_msg", None) or "the Ray worker of this trial failed"
        self._finish(trial, "failed", str(err)[:2000])


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
) -> None:
    """Run ``pending`` trials through a Tuner; Tune's own files go to ``out/ray/session-N``."""
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
            storage_path=str((out / "ray").resolve()),
            stop=stopper,
            verbose=0,
            callbacks=[_Tracker(out, on_event), CSVLoggerCallback(), JsonLoggerCallback()],
        ),
    )
    with _scoped_env(QUIET_TUNE):
        tuner.fit()


#: Tune's console tables off (the caller shows progress), its CSV and JSON records kept, its
#: TensorBoard logger off (it warns on every NaN metric of a diverging trial)
QUIET_TUNE = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}


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

