"""The training loop: exact resume, divergence detection, one or many processes.

The run directory and its files are described in :mod:`lipschitz_rnn.train.rundir`.

Exact resume: the batch order of epoch ``e`` is a permutation drawn from a generator seeded by
``(seed, e)``, so it needs no saved state (and is the same in every process); the torch, numpy
and Python RNG states are saved and restored. On CPU a resumed run ends with bit-identical
weights.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._checks import check_choice
from .._io import atomic_write_text, ensure_dir, load_checkpoint, save_checkpoint, write_json
from .callbacks import Callback, RunContext, StepInfo
from .config import TrainConfig
from .distributed import DistContext, DistributedError, init_from_env, mark_origin
from .rundir import (
    RESUMABLE_KEYS,
    RUN_FILES,
    append_jsonl,
    apply_resume_overrides,
    build_model,
    clear_run_files,
    evaluate_run,
    lipschitz_eigs,
    load_run,
    model_sizes,
    read_run,
    rng_state,
    seed_everything,
    set_rng_state,
    write_metrics,
)
from .tasks import TaskRunner

__all__ = [
    "train",
    "DivergenceError",
    "RunInterrupted",
    "DistributedError",
    "build_model",
    "load_run",
    "evaluate_run",
    "apply_resume_overrides",
    "RESUMABLE_KEYS",
    "RUN_FILES",
]

log = logging.getLogger(__name__)


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite."""


class RunInterrupted(RuntimeError):
    """Training stopped on request (e.g. Ctrl-C); ``checkpoints/last.pt`` allows ``--resume``."""


@dataclass
class Progress:
    """What the loop reports to a progress callback after each optimisation step."""

    epoch: int
    step: int
    steps_per_epoch: int
    loss: float
    metric: float
    metric_name: str
    seq_per_s: float


def _lr_at(config: TrainConfig, epoch: int) -> float:
    """Learning rate of (1-based) ``epoch``: multiplied by the factor from each decay epoch on."""
    n = sum(1 for e in config.lr_decay_epochs if epoch >= e)
    return config.lr * config.lr_decay_factor**n


def _make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
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


def _rank_seed(seed: int, rank: int, epoch: int = 1, step: int = 0) -> int:
    """Seed of rank ``rank``'s torch RNG (dropout) where no saved state exists: ranks draw
    independent masks (rank 0 keeps the single-process stream)."""
    return (seed * 1_000_003 + rank * 7_919 + epoch * 104_729 + step) % (2**63)


def train(
    config: TrainConfig | None,
    out_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    overrides: dict[str, Any] | None = None,
    resume_from: str = "last",
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    epoch_end: Callable[[dict], None] | None = None,
    callbacks: Sequence[Callback] = (),
    dist: DistContext | None = None,
) -> dict:
    """Train per ``config`` into ``out_dir``; return the content of ``results.json``.

    ``resume=True`` continues the run in ``out_dir`` from ``checkpoints/last.pt`` with its
    saved configuration: ``overrides`` may change the keys in :data:`RESUMABLE_KEYS`, recorded
    in ``config.toml`` and ``resumes.jsonl``; or ``config`` (then without ``overrides``) is the
    configuration the run must have, as when the command that started it is repeated: a
    difference in another key raises ValueError naming it, one in :data:`RESUMABLE_KEYS` is
    applied as an override. ``resume_from="previous"`` continues from the checkpoint before
    the last one.
    ``should_stop`` is polled after every step; when it returns True (on any rank) the loop
    saves a resumable checkpoint and raises :class:`RunInterrupted`. A non-finite loss raises
    :class:`DivergenceError` naming the epoch and step, leaving the last good checkpoint in
    place. ``callbacks`` observe the run (:mod:`lipschitz_rnn.train.callbacks`; under several
    processes they run on every rank, ``RunContext.is_main`` on rank 0).

    ``dist``: this process's place in a data-parallel run; None joins the group ``torchrun``
    describes in the environment (and leaves it at the end), or runs alone when there is none.
    Every rank calls ``train`` with the same arguments; rank 0 alone reads and writes
    ``out_dir``, every rank returns the results. A collective that fails (a rank died or hung
    past the timeout) raises :class:`DistributedError`.

    Everything that can be checked (the configuration, the data files, the model's arguments)
    is checked before anything is written: a start that fails leaves ``out_dir`` as it was.
    """
    own = init_from_env() if dist is None else None
    try:
        return _train(config, Path(out_dir), own or dist, data_dir=data_dir, resume=resume,
                      force=force, overrides=overrides, resume_from=resume_from,
                      progress=progress, should_stop=should_stop, epoch_end=epoch_end,
                      callbacks=callbacks)
    finally:
        if own is not None:
            own.close()


def _train(config, out: Path, dist: DistContext, *, data_dir, resume, force, overrides,
           resume_from, progress, should_stop, epoch_end, callbacks) -> dict:
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
    config, changes, ck, have_ckpt = dist.on_main(lambda: read_run(
        out, config, resume=resume, force=force, overrides=overrides, resume_from=resume_from))

    def setup():
        # everything that may fail on bad settings or bad data, before anything is written
        dev = dist.device(config.device)
        seed_everything(config.seed)
        run = TaskRunner(config, data_dir=data_dir, device=dev)
        run.distribute(dist)
        net = build_model(config, run).to(dev)
        return dev, run, net, _make_optimizer(config, net)

    device, runner, model, optimizer = dist.agree(setup)
    cuda_dev = device if dist.enabled and device.type == "cuda" else None
    ckpt_dir = out / "checkpoints"
    records: list[dict] = json.loads(ck["records"]) if ck is not None else []

    def prepare_dir() -> None:
        if not resume:
            if force:
                clear_run_files(out)
            ensure_dir(out)
            atomic_write_text(out / "config.toml", config.to_toml())
        elif changes:
            atomic_write_text(out / "config.toml", config.to_toml())
            append_jsonl(out / "resumes.jsonl", {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "epoch": int(ck["epoch"]) if ck else 1,
                "step": int(ck["step"]) if ck else 0,
                "changed": changes,
            })
            log.info("resume of %s changes %s", out, changes)
        write_metrics(out, records)
        meta = runner.meta_to_save()
        if meta:
            write_json(out / "task_meta.json", meta)
        write_json(out / "model.json", model_sizes(runner))

    dist.on_main(prepare_dir)
    n_params = sum(p.numel() for p in model.parameters())
    start_epoch, start_step = 1, 0
    running: dict[str, float] = {}
    best = {"epoch": 0, "metric": None}
    wall_before = 0.0
    if ck is not None:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        start_epoch, start_step = int(ck["epoch"]), int(ck["step"])
        ranks = ck.get("rng_ranks") or []
        if dist.enabled and len(ranks) == dist.world_size:
            set_rng_state(ranks[dist.rank], cuda_dev)
        elif dist.is_main:
            set_rng_state(ck["rng"], cuda_dev)
        else:  # a checkpoint of fewer processes: this rank starts a stream of its own
            torch.manual_seed(_rank_seed(config.seed, dist.rank, start_epoch, start_step))
        running = dict(ck["running"])
        best = json.loads(ck["best"])
        wall_before = float(ck["wall"])
        runner.load_state(ck["runner"])
        log.info("resuming %s at epoch %d step %d", out, start_epoch, start_step)
    elif not dist.is_main:
        torch.manual_seed(_rank_seed(config.seed, dist.rank))
    net = dist.wrap(model, device)

    def last_payload(epoch: int, step: int, run_sums: dict, wall: float) -> dict | None:
        """The content of last.pt on rank 0 (None elsewhere); a collective under DDP."""
        rng = rng_state(cuda_dev)
        rngs = dist.all_gather_object(rng) if dist.enabled else None
        data_state = runner.checkpoint_state()
        if not dist.is_main:
            return None
        payload = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng,
            "epoch": epoch,
            "step": step,
            "running": run_sums,
            "records": json.dumps(records),
            "best": json.dumps(best),
            "wall": wall,
            "runner": data_state,
            "world_size": dist.world_size,
        }
        if rngs is not None:
            payload["rng_ranks"] = rngs
        return payload

    def save_last(payload: dict | None) -> None:
        save_checkpoint(ckpt_dir / "last.pt", payload, keep_previous=True)

    ctx = RunContext(out, config, model, optimizer, runner, device, fresh=ck is None,
                     start_epoch=start_epoch, is_main=dist.is_main)
    want_norm = any(cb.wants_grad_norm for cb in callbacks)

    def stop_requested() -> bool:
        asked = should_stop() if should_stop is not None else False
        return dist.any(asked) if dist.enabled else asked

    try:
        for cb in callbacks:
            cb.on_train_start(ctx)
        t_start = time.perf_counter()
        higher_better = runner.higher_is_better
        global_step = sum(len(runner.train_batches(e)) for e in range(1, start_epoch)) + start_step
        for epoch in range(start_epoch, config.epochs + 1):
            lr = _lr_at(config, epoch)
            for g in optimizer.param_groups:
                g["lr"] = lr
            net.train()
            batches = runner.train_batches(epoch)
            n_steps = len(batches)
            if start_step == 0 or epoch != start_epoch:
                running = {"loss": 0.0, "metric": 0.0, "count": 0.0, "seqs": 0.0, "seconds": 0.0}
                runner.reset_epoch_state()
            first = start_step if epoch == start_epoch else 0
            for step in range(first, n_steps):
                t0 = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                loss, metric_sum, count, seqs = runner.train_step(net, batches[step])
                tot = dist.step_totals(loss, metric_sum, count, seqs)
                if tot.bad:
                    where = ""
                    if dist.enabled:
                        ranks = ", ".join(str(r) for r, _ in tot.bad)
                        where = f" on rank{'s' if len(tot.bad) > 1 else ''} {ranks} of " \
                                f"{dist.world_size}"
                    err = DivergenceError(_divergence_message(
                        tot.bad[0][1], epoch, step + 1, n_steps, ckpt_dir / "last.pt",
                        have_ckpt, where))
                    # every rank raises the same message; rank 0 alone reports it
                    raise mark_origin(err, 0) if dist.enabled else err
                if dist.enabled:
                    # DDP averages gradients over the ranks: this weighting makes the result
                    # the gradient of the mean over the global batch
                    scale = count * dist.world_size / tot.count if tot.count > 0 else 0.0
                    dist.collective("the gradient all-reduce", (loss * scale).backward)
                else:
                    loss.backward()
                grad_norm = None
                if config.clip_grad_norm > 0:
                    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
                elif want_norm:
                    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), math.inf)
                optimizer.step()
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
                global_step += 1
                if callbacks:
                    info = StepInfo(epoch, step + 1, n_steps, global_step, loss_value, lr,
                                    None if grad_norm is None else float(grad_norm))
                    for cb in callbacks:
                        cb.on_step_end(ctx, info)
                if progress is not None:
                    progress(
                        Progress(
                            epoch,
                            step + 1,
                            n_steps,
                            running["loss"] / running["count"],
                            runner.finish_metric(
                                running["metric"], running["count"], running["loss"]
                            ),
                            runner.metric_name,
                            running["seqs"] / max(running["seconds"], 1e-9),
                        )
                    )
                if stop_requested() and step + 1 < n_steps:
                    payload = last_payload(epoch, step + 1, running,
                                           wall_before + time.perf_counter() - t_start)
                    dist.on_main(lambda p=payload: save_last(p))
                    raise RunInterrupted(
                        f"stopped at epoch {epoch}, step {step + 1}/{n_steps}; resume with "
                        f"--resume {out}"
                    )
            start_step = 0
            rec = _epoch_record(config, runner, model, epoch, lr, running, cuda_dev)
            records.append(rec)
            m = rec[f"valid_{runner.metric_name}"]
            improved = best["metric"] is None or (
                m > best["metric"] if higher_better else m < best["metric"]
            )
            if improved and math.isfinite(m):
                best = {"epoch": epoch, "metric": m}
            payload = last_payload(epoch + 1, 0, {}, wall_before + time.perf_counter() - t_start)

            def write_epoch(improved=improved, m=m, payload=payload, epoch=epoch) -> None:
                if improved and math.isfinite(m):
                    save_checkpoint(
                        ckpt_dir / "best.pt",
                        {"model": model.state_dict(), "epoch": epoch, "metric": m},
                        keep_previous=True,
                    )
                save_last(payload)
                write_metrics(out, records)

            dist.on_main(write_epoch)
            have_ckpt = True
            for cb in callbacks:
                cb.on_epoch_end(ctx, rec)
            if epoch_end is not None:
                epoch_end(rec)
            if stop_requested() and epoch < config.epochs:
                raise RunInterrupted(f"stopped after epoch {epoch}; resume with --resume {out}")

        wall = wall_before + time.perf_counter() - t_start
        best_state = dist.on_main(lambda: load_checkpoint(
            ckpt_dir / "best.pt", map_location="cpu" if dist.enabled else device)["model"]
            if (ckpt_dir / "best.pt").is_file() else None)
        if best_state is not None:
            model.load_state_dict(best_state)
        test = runner.evaluate(model, "test")
        results = {
            "task": config.task,
            "model": config.model,
            "test": {runner.metric_name: test[runner.metric_name], "loss": test["loss"]},
            "best_valid": {runner.metric_name: best["metric"], "epoch": best["epoch"]},
            "num_parameters": n_params,
            "wall_time_s": wall,
            "epochs": config.epochs,
            "device": str(device),
            "world_size": dist.world_size,
        }
        eigs = lipschitz_eigs(model)
        if eigs is not None:
            results["eigenvalues"] = eigs
        dist.on_main(lambda: write_json(out / "results.json", results, checksum=True))
        for cb in callbacks:
            cb.on_train_end(ctx, results)
        return results
    finally:
        for cb in callbacks:
            cb.close()


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
