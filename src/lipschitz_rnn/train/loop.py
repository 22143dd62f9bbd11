"""The training loop: exact resume, divergence detection, one or many processes.

The run directory and its files are described in :mod:`lipschitz_rnn.runs.rundir`; everything
else that takes part in a run (progress display, stop requests, logging, extra optimisation
phases) is a :class:`~lipschitz_rnn.train.callbacks.Callback`.

One call of :func:`train` reads and checks the start (:func:`_read_start`), then
:class:`_Training` builds the run, restores a checkpoint, trains epoch after epoch (each: start,
steps, end with its record and checkpoints) and finishes (test of the best checkpoint,
``results.json``).

Exact resume: the batch order of epoch ``e`` is a permutation drawn from a generator seeded by
``(seed, e)``, so it needs no saved state (and is the same in every process); the torch, numpy
and Python RNG states (:mod:`lipschitz_rnn.train.rng`) and the callbacks' own states are saved
and restored. On CPU a resumed run ends with bit-identical weights.

Data parallel (``torchrun``, :mod:`lipschitz_rnn.train.distributed`): every rank takes its
share of each global batch (:meth:`TaskRunner.train_step`); before the backward pass one
all-reduce sums the ranks' ``loss * count``, counts and metrics, and each rank weights its loss
by ``count * world_size / global count``, so that DDP's averaging of the gradients gives the
gradient of the mean over the global batch (a single process's, up to float32 summation order).
A non-finite loss on any rank stops every rank with the same :class:`DivergenceError`. Rank 0
alone reads and writes the run directory; checkpoints hold the plain model's weights and every
rank's RNG state, and resume under any number of processes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._checks import check_choice
from .._io import load_checkpoint
from ..runs.config import TrainConfig, apply_resume_overrides, resume_overrides_from
from ..runs.model import build_model, lipschitz_eigs, model_sizes
from ..runs.rundir import RunDir
from ..runs.tasks import TaskRunner
from .callbacks import Callback, RunContext, StepInfo
from .distributed import DistContext, init_from_env, mark_origin
from .flossing import FlossingCallback, check_flossing
from .rng import rank_seed, rng_state, seed_everything, set_rng_state

__all__ = ["train", "DivergenceError", "RunInterrupted"]

log = logging.getLogger(__name__)


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite."""


class RunInterrupted(RuntimeError):
    """Training stopped on request (e.g. Ctrl-C); ``checkpoints/last.pt`` allows ``--resume``."""


def train(
    config: TrainConfig | None,
    out_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    overrides: dict[str, Any] | None = None,
    resume_from: str = "last",
    callbacks: Sequence[Callback] = (),
    dist: DistContext | None = None,
) -> dict:
    """Train per ``config`` into ``out_dir``; return the content of ``results.json``.

    ``resume=True`` continues the run in ``out_dir`` from ``checkpoints/last.pt`` with its
    saved configuration: ``overrides`` may change the keys in
    :data:`~lipschitz_rnn.runs.config.RESUMABLE_KEYS`, recorded in ``config.toml`` and
    ``resumes.jsonl``; or ``config`` (then without ``overrides``) is the configuration the run
    must have, as when the command that started it is repeated: a difference in another key
    raises ValueError naming it, one in ``RESUMABLE_KEYS`` is applied as an override.
    ``resume_from="previous"`` continues from the checkpoint before the last one.

    ``callbacks`` take part in the run (:mod:`lipschitz_rnn.train.callbacks`; under several
    processes they run on every rank, ``RunContext.is_main`` on rank 0). When one of them asks
    to stop (:meth:`~lipschitz_rnn.train.callbacks.Callback.should_stop`, polled after every
    step and epoch, on any rank) the loop saves a resumable checkpoint and raises
    :class:`RunInterrupted`. A non-finite loss raises :class:`DivergenceError` naming the epoch
    and step, leaving the last good checkpoint in place.

    ``dist``: this process's place in a data-parallel run; None joins the group ``torchrun``
    describes in the environment (and leaves it at the end), or runs alone when there is none.
    Every rank calls ``train`` with the same arguments; rank 0 alone reads and writes
    ``out_dir``, every rank returns the results. A collective that fails (a rank died or hung
    past the timeout) raises :class:`DistributedError`.

    Everything that can be checked (the configuration, the data files, the model's arguments)
    is checked before anything is written: a start that fails leaves ``out_dir`` as it was.
    """
    own = init_from_env() if dist is None else None
    dist = own or dist
    try:
        _check_arguments(config, resume, overrides, resume_from)
        run = RunDir(out_dir)
        config, changes, ck, have_ckpt = dist.on_main(lambda: _read_start(
            run, config, resume=resume, force=force, overrides=overrides,
            resume_from=resume_from))
        training = _Training(run, config, dist, list(callbacks), data_dir)
        dist.on_main(lambda: training.prepare_dir(resume, force, changes, ck))
        training.restore(ck, have_ckpt)
        return training.run()
    finally:
        if own is not None:
            own.close()


def _check_arguments(config, resume: bool, overrides, resume_from: str) -> None:
    if resume:
        if config is not None:
            if overrides:
                raise ValueError("resume=True takes config (the run's configuration, checked) "
                                 "or overrides (changes to the saved one), not both")
            config.validate()
        check_choice("resume_from", resume_from, ("last", "previous"))
    else:
        if config is None:
            raise ValueError("config is required unless resume=True")
        if overrides:
            raise ValueError("overrides are for resume=True; apply them to config instead")
        config.validate()


def _read_start(run: RunDir, config, *, resume: bool, force: bool, overrides,
                resume_from: str) -> tuple[TrainConfig, dict, dict | None, bool]:
    """(config, changes, checkpoint or None, whether last.pt exists): reads and checks the run
    directory without writing (rank 0 alone runs it). On resume ``config`` is None (the run's own, with
    ``overrides``) or the configuration the run must have (differences in resumable settings
    are applied, any other is refused)."""
    if not resume:
        run.check_fresh(config, force)
        return config, {}, None, False
    if not run.is_run():
        raise FileNotFoundError(f"--resume: no run in {run.path} (config.toml missing)")
    saved = run.config()
    if config is not None:  # the command that started the run, repeated: it must match
        overrides = resume_overrides_from(run.path, saved, config)
    config, changes = apply_resume_overrides(saved, overrides)
    ck = run.resume_checkpoint(resume_from)
    if ck is not None:
        done_epochs = int(ck["epoch"]) - (1 if int(ck["step"]) == 0 else 0)
        if done_epochs > config.epochs:
            raise ValueError(
                f"epochs={config.epochs} is fewer than the {done_epochs} epochs this run has "
                "already trained"
            )
    return config, changes, ck, run.checkpoint_path("last").is_file()


def _lr_at(config: TrainConfig, epoch: int) -> float:
    """Learning rate of (1-based) ``epoch``: multiplied by the factor from each decay epoch on."""
    n = sum(1 for e in config.lr_decay_epochs if epoch >= e)
    return config.lr * config.lr_decay_factor**n


def _make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr,
                                 weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _divergence_message(value: float, epoch: int, step: int, n_steps: int, ckpt: Path,
                        have_ckpt: bool, where: str = "") -> str:
    at = f"non-finite loss ({value}) at epoch {epoch}, step {step}/{n_steps}{where}"
    if have_ckpt:
        return f"training diverged: {at}; the last good checkpoint is {ckpt}"
    return (
        f"training diverged: {at}, before the first checkpoint (none is written until an "
        "epoch ends); lower the learning rate or the step size"
    )


def _new_running() -> dict[str, float]:
    """The sums of an epoch's steps: the loss times the count, the metric, the count of scored
    elements, the sequences and the seconds spent in optimisation steps."""
    return {"loss": 0.0, "metric": 0.0, "count": 0.0, "seqs": 0.0, "seconds": 0.0}


class _Training:
    """One call of :func:`train`: the run's objects, and its state between the loop's phases
    (what ``checkpoints/last.pt`` holds)."""

    def __init__(self, run: RunDir, config: TrainConfig, dist: DistContext,
                 callbacks: list[Callback], data_dir) -> None:
        self.rundir, self.config, self.dist, self.callbacks = run, config, dist, callbacks

        def setup():
            # everything that may fail on bad settings or bad data, before anything is written
            dev = dist.device(config.device)
            seed_everything(config.seed)
            runner = TaskRunner(config, data_dir=data_dir, device=dev)
            runner.distribute(dist)
            model = build_model(config, runner).to(dev)
            if config.flossing.enabled:
                check_flossing(config.flossing, model, runner.task)
            return dev, runner, model, _make_optimizer(config, model)

        self.device, self.runner, self.model, self.optimizer = dist.agree(setup)
        if config.flossing.enabled:  # the run's own phases, before the caller's callbacks
            self.callbacks = [FlossingCallback(config.flossing, config.seed), *callbacks]
        self.cuda_dev = self.device if dist.enabled and self.device.type == "cuda" else None
        self.net: nn.Module = self.model  # the model as trained (DDP's wrapper of several)
        # the state of the run, saved in last.pt: where it is, the epoch's sums so far, the
        # records of the finished epochs, the best validation metric, the time spent before
        self.epoch, self.step = 1, 0
        self.running: dict[str, float] = {}
        self.epoch_extra: dict[str, Any] = {}  # what callbacks added to this epoch's record
        self.records: list[dict] = []
        self.best: dict[str, Any] = {"epoch": 0, "metric": None}
        self.wall_before = 0.0
        self.have_ckpt = False
        self.global_step = 0
        self.t_start = time.perf_counter()
        self.ctx: RunContext | None = None
        self.want_norm = any(cb.wants_grad_norm for cb in callbacks)

    # --- the start -----------------------------------------------------------------------------
    def prepare_dir(self, resume: bool, force: bool, changes: dict, ck: dict | None) -> None:
        """Write what a (re)started run writes before training (rank 0)."""
        run, config = self.rundir, self.config
        if not resume:
            if force:
                run.clear()
            run.create(config)
        elif changes:
            run.write_config(config)
            run.append_resume({
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "epoch": int(ck["epoch"]) if ck else 1,
                "step": int(ck["step"]) if ck else 0,
                "changed": changes,
            })
            log.info("resume of %s changes %s", run.path, changes)
        run.write_metrics(json.loads(ck["records"]) if ck is not None else [])
        run.write_task_files(model_sizes(self.runner), self.runner.meta_to_save())

    def restore(self, ck: dict | None, have_ckpt: bool) -> None:
        """The state of checkpoint ``ck`` (None: a fresh start; ``have_ckpt``: whether
        ``last.pt`` exists), then DDP's wrapper and the callbacks' view of the run."""
        dist, config = self.dist, self.config
        self.have_ckpt = have_ckpt
        if ck is not None:
            self.model.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
            self.epoch, self.step = int(ck["epoch"]), int(ck["step"])
            ranks = ck.get("rng_ranks") or []
            if dist.enabled and len(ranks) == dist.world_size:
                set_rng_state(ranks[dist.rank], self.cuda_dev)
            elif dist.is_main:
                set_rng_state(ck["rng"], self.cuda_dev)
            else:  # a checkpoint of fewer processes: this rank starts a stream of its own
                torch.manual_seed(rank_seed(config.seed, dist.rank, self.epoch, self.step))
            self.running = dict(ck["running"])
            self.epoch_extra = dict(ck.get("epoch_extra") or {})
            self.records = json.loads(ck["records"])
            self.best = json.loads(ck["best"])
            self.wall_before = float(ck["wall"])
            self.runner.load_state(ck["runner"])
            states = ck.get("callbacks") or {}
            for cb in self.callbacks:
                if cb.state_key is not None and cb.state_key in states:
                    cb.load_state_dict(states[cb.state_key])
            log.info("resuming %s at epoch %d step %d", self.rundir.path, self.epoch, self.step)
        elif not dist.is_main:
            torch.manual_seed(rank_seed(config.seed, dist.rank))
        self.net = dist.wrap(self.model, self.device)
        self.ctx = RunContext(self.rundir.path, config, self.model, self.optimizer, self.runner,
                              self.device, fresh=ck is None, start_epoch=self.epoch,
                              is_main=dist.is_main)

    # --- the loop ------------------------------------------------------------------------------
    def run(self) -> dict:
        """Train the remaining epochs and finish; returns the results."""
        try:
            for cb in self.callbacks:
                cb.on_train_start(self.ctx)
            self.t_start = time.perf_counter()
            self.global_step = sum(len(self.runner.train_batches(e))
                                   for e in range(1, self.epoch)) + self.step
            while self.epoch <= self.config.epochs:
                lr = self.start_epoch()
                self.train_epoch(lr)
                self.end_epoch(lr)
            return self.finish()
        finally:
            for cb in self.callbacks:
                cb.close()

    def start_epoch(self) -> float:
        """Set the epoch's learning rate; at its first step, reset its sums and let the
        callbacks run their epoch-start phases. Returns the learning rate."""
        lr = _lr_at(self.config, self.epoch)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        if self.step == 0:
            self.running = _new_running()
            self.runner.reset_epoch_state()
            self.epoch_extra = {}
            for cb in self.callbacks:
                self.epoch_extra.update(cb.on_epoch_start(self.ctx, self.epoch) or {})
        self.net.train()
        return lr

    def train_epoch(self, lr: float) -> None:
        """The epoch's steps from ``self.step`` on; a stop request saves a mid-epoch checkpoint
        and raises :class:`RunInterrupted`."""
        batches = self.runner.train_batches(self.epoch)
        n_steps = len(batches)
        while self.step < n_steps:
            self._optimisation_step(batches[self.step], n_steps, lr)
            self.step += 1
            if self._stop_requested() and self.step < n_steps:
                self._save_last(self.epoch, self.step, self.running)
                raise RunInterrupted(f"stopped at epoch {self.epoch}, step {self.step}/{n_steps}; "
                                     f"resume with --resume {self.rundir.path}")

    def _optimisation_step(self, batch, n_steps: int, lr: float) -> None:
        """One step on this rank's share of ``batch``, summed into the epoch's running sums."""
        dist, model, running = self.dist, self.model, self.running
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss, metric_sum, count, seqs = self.runner.train_step(self.net, batch)
        tot = dist.step_totals(loss, metric_sum, count, seqs)
        if tot.bad:
            raise self._divergence(tot.bad, n_steps)
        if dist.enabled:
            # DDP averages gradients over the ranks: this weighting makes the result the
            # gradient of the mean over the global batch
            scale = count * dist.world_size / tot.count if tot.count > 0 else 0.0
            dist.collective("the gradient all-reduce", (loss * scale).backward)
        else:
            loss.backward()
        grad_norm = None
        if self.config.clip_grad_norm > 0:
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), self.config.clip_grad_norm)
        elif self.want_norm:
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), math.inf)
        self.optimizer.step()
        dt = time.perf_counter() - t0
        if dist.enabled:
            loss_value = tot.loss_sum / tot.count if tot.count > 0 else math.nan
        else:
            loss_value = float(loss.detach())
        running["loss"] += loss_value * tot.count
        running["metric"] += float(tot.metric_sum)
        running["count"] += float(tot.count)
        running["seqs"] += float(tot.seqs)
        running["seconds"] += dt
        self.global_step += 1
        if self.callbacks:
            info = self._step_info(n_steps, loss_value, lr, grad_norm)
            for cb in self.callbacks:
                cb.on_step_end(self.ctx, info)

    def _step_info(self, n_steps: int, loss: float, lr: float, grad_norm) -> StepInfo:
        r, runner = self.running, self.runner
        return StepInfo(
            self.epoch, self.step + 1, n_steps, self.global_step, loss, lr,
            None if grad_norm is None else float(grad_norm),
            metric_name=runner.metric_name,
            running_loss=r["loss"] / r["count"] if r["count"] else math.nan,
            running_metric=runner.finish_metric(r["metric"], r["count"], r["loss"]),
            seq_per_s=r["seqs"] / max(r["seconds"], 1e-9),
        )

    def _divergence(self, bad, n_steps: int) -> DivergenceError:
        """The error of a non-finite loss (``bad``: (rank, loss) of the ranks that had one);
        every rank raises the same message, rank 0 alone reports it."""
        dist = self.dist
        where = ""
        if dist.enabled:
            ranks = ", ".join(str(r) for r, _ in bad)
            where = f" on rank{'s' if len(bad) > 1 else ''} {ranks} of {dist.world_size}"
        err = DivergenceError(_divergence_message(
            bad[0][1], self.epoch, self.step + 1, n_steps, self.rundir.checkpoint_path("last"),
            self.have_ckpt, where))
        return mark_origin(err, 0) if dist.enabled else err

    def end_epoch(self, lr: float) -> None:
        """The epoch's record (validation, monitors, what callbacks added), the best and last
        checkpoints and ``metrics.jsonl``; then the callbacks, and a stop request."""
        epoch, runner = self.epoch, self.runner
        rec = _epoch_record(self.config, runner, self.model, epoch, lr, self.running,
                            self.cuda_dev)
        rec.update(self.epoch_extra)
        self.records.append(rec)
        m = rec[f"valid_{runner.metric_name}"]
        improved = math.isfinite(m) and (self.best["metric"] is None or (
            m > self.best["metric"] if runner.higher_is_better else m < self.best["metric"]))
        if improved:
            self.best = {"epoch": epoch, "metric": m}
        self.epoch, self.step, self.epoch_extra = epoch + 1, 0, {}
        payload = self._last_payload(epoch + 1, 0, {})

        def write() -> None:
            if improved:
                self.rundir.save_checkpoint(
                    "best", {"model": self.model.state_dict(), "epoch": epoch, "metric": m})
            self.rundir.save_checkpoint("last", payload)
            self.rundir.write_metrics(self.records)

        self.dist.on_main(write)
        self.have_ckpt = True
        for cb in self.callbacks:
            cb.on_epoch_end(self.ctx, rec)
        if self._stop_requested() and epoch < self.config.epochs:
            raise RunInterrupted(f"stopped after epoch {epoch}; resume with --resume "
                                 f"{self.rundir.path}")

    def finish(self) -> dict:
        """Test the best checkpoint, write ``results.json``, tell the callbacks."""
        dist, model, runner, config = self.dist, self.model, self.runner, self.config
        wall = self._wall()
        best_path = self.rundir.checkpoint_path("best")
        best_state = dist.on_main(lambda: load_checkpoint(
            best_path, map_location="cpu" if dist.enabled else self.device)["model"]
            if best_path.is_file() else None)
        if best_state is not None:
            model.load_state_dict(best_state)
        test = runner.evaluate(model, "test")
        results = {
            "task": config.task,
            "model": config.model,
            "test": {runner.metric_name: test[runner.metric_name], "loss": test["loss"]},
            "best_valid": {runner.metric_name: self.best["metric"], "epoch": self.best["epoch"]},
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "wall_time_s": wall,
            "epochs": config.epochs,
            "device": str(self.device),
            "world_size": dist.world_size,
        }
        if config.flossing.enabled:  # the flossing phases (included in wall_time_s)
            results["flossing_seconds"] = sum(
                r["flossing"]["seconds"] for r in self.records if "flossing" in r)
        eigs = lipschitz_eigs(model)
        if eigs is not None:
            results["eigenvalues"] = eigs
        dist.on_main(lambda: self.rundir.write_results(results))
        for cb in self.callbacks:
            cb.on_train_end(self.ctx, results)
        return results

    # --- helpers -------------------------------------------------------------------------------
    def _wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.t_start

    def _stop_requested(self) -> bool:
        """Whether a callback on any rank asks to stop (a collective under several processes:
        every callback is polled at every call, on every rank)."""
        asked = any([cb.should_stop(self.ctx) for cb in self.callbacks])
        return self.dist.any(asked) if self.dist.enabled else asked

    def _save_last(self, epoch: int, step: int, running: dict) -> None:
        """Write ``last.pt`` positioned at (``epoch``, ``step``) with the epoch's ``running``
        sums (a collective under several processes: the ranks' RNG states are gathered)."""
        payload = self._last_payload(epoch, step, running)
        self.dist.on_main(lambda: self.rundir.save_checkpoint("last", payload))

    def _last_payload(self, epoch: int, step: int, running: dict) -> dict | None:
        """The content of last.pt on rank 0 (None elsewhere)."""
        dist = self.dist
        rng = rng_state(self.cuda_dev)
        rngs = dist.all_gather_object(rng) if dist.enabled else None
        data_state = self.runner.checkpoint_state()
        if not dist.is_main:
            return None
        payload = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
            "epoch": epoch,
            "step": step,
            "running": running,
            "records": json.dumps(self.records),
            "best": json.dumps(self.best),
            "wall": self._wall(),
            "runner": data_state,
            "world_size": dist.world_size,
        }
        if rngs is not None:
            payload["rng_ranks"] = rngs
        if step > 0 and self.epoch_extra:
            payload["epoch_extra"] = self.epoch_extra
        states = {cb.state_key: cb.state_dict() for cb in self.callbacks
                  if cb.state_key is not None}
        if states:
            payload["callbacks"] = states
        return payload


def _epoch_record(config, runner, model, epoch: int, lr: float, running: dict,
                  cuda_dev=None) -> dict:
    """The ``metrics.jsonl`` line of an epoch: training sums, validation, optional test curve
    and Lyapunov summary (monitoring leaves every RNG as it was)."""
    valid = runner.evaluate(model, "valid")
    rec = {
        "epoch": epoch,
        "lr": lr,
        "train_loss": running["loss"] / max(running["count"], 1.0),
        f"train_{runner.metric_name}": runner.finish_metric(
            running["metric"], running["count"], running["loss"]
        ),
        "valid_loss": valid["loss"],
        f"valid_{runner.metric_name}": valid[runner.metric_name],
        "seconds": running["seconds"],
        "seq_per_s": running["seqs"] / max(running["seconds"], 1e-9),
    }
    if config.test_every and epoch % config.test_every == 0:
        rng, data_rng = rng_state(cuda_dev), runner.state()
        monitor = runner.evaluate(model, "test")
        set_rng_state(rng, cuda_dev)
        runner.load_state(data_rng)
        rec["test_loss"] = monitor["loss"]
        rec[f"test_{runner.metric_name}"] = monitor[runner.metric_name]
    if config.lyapunov_every and epoch % config.lyapunov_every == 0:
        rec["lyapunov"] = runner.lyapunov_summary(model)
    return rec
