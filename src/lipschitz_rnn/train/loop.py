"""The training loop: run directories, checkpoints, exact resume, divergence detection.

A run directory holds ``config.toml`` (the resolved configuration), ``metrics.jsonl`` (one line
per epoch), ``checkpoints/last.pt`` (everything needed to resume: model, optimizer, RNG states,
epoch and step, the epoch's running sums) and ``checkpoints/best.pt`` (the model with the best
validation metric), and at the end ``results.json``. Every file is written atomically; both
checkpoints keep their previous version (``last.prev.pt``, ``best.prev.pt``) as a fallback.
``resumes.jsonl`` records the settings changed when a run was resumed.

Exact resume: the batch order of epoch ``e`` is a permutation drawn from a generator seeded by
``(seed, e)``, so it needs no saved state; the torch, numpy and Python RNG states are saved and
restored. On CPU a resumed run ends with bit-identical weights.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_choice
from .._io import (
    CheckpointError,
    atomic_write_text,
    load_checkpoint,
    previous_path,
    save_checkpoint,
    write_json,
)
from ..models import LipschitzRNNCell, SequenceModel, build
from .callbacks import Callback, RunContext, StepInfo
from .config import TrainConfig, resolve_config
from .tasks import TaskRunner

__all__ = [
    "train",
    "DivergenceError",
    "RunInterrupted",
    "build_model",
    "load_run",
    "evaluate_run",
    "apply_resume_overrides",
    "RESUMABLE_KEYS",
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


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(config: TrainConfig, runner: TaskRunner) -> nn.Module:
    rnn = build(
        config.model,
        runner.model_input_size,
        config.hidden_size,
        num_layers=config.num_layers,
        **config.model_kwargs,
    )
    return SequenceModel(rnn, runner.output_size, mode=runner.readout, vocab_size=runner.vocab_size)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],
        "python": json.dumps(random.getstate()),
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    np.random.set_state(
        (
            "MT19937",
            s["numpy_keys"].numpy().astype(np.uint32),
            s["numpy_pos"],
            s["numpy_gauss"][0],
            s["numpy_gauss"][1],
        )
    )
    py = json.loads(s["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def _write_metrics(out: Path, records: list[dict]) -> None:
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))


def _lipschitz_eigs(model: nn.Module) -> list[dict] | None:
    cells = [m for m in model.modules() if isinstance(m, LipschitzRNNCell)]
    if not cells:
        return None
    out = []
    with torch.no_grad():
        for c in cells:
            ea = torch.linalg.eigvals(c.A.detach().double().cpu())
            ew = torch.linalg.eigvals(c.W.detach().double().cpu())
            out.append(
                {
                    "A_eig_real_min": float(ea.real.min()),
                    "A_eig_real_max": float(ea.real.max()),
                    "A_eig_imag_max": float(ea.imag.abs().max()),
                    "W_eig_real_min": float(ew.real.min()),
                    "W_eig_real_max": float(ew.real.max()),
                    "W_eig_imag_max": float(ew.imag.abs().max()),
                }
            )
    return out


#: settings that may change when a run is resumed: the length, the learning-rate schedule and
#: what is monitored; everything else defines the run and is refused
RESUMABLE_KEYS = (
    "epochs",
    "lr",
    "lr_decay_epochs",
    "lr_decay_factor",
    "test_every",
    "eval_batch_size",
    "lyapunov_every",
    "lyapunov_batch",
    "lyapunov_k",
)


def apply_resume_overrides(
    config: TrainConfig, overrides: dict[str, Any] | None
) -> tuple[TrainConfig, dict[str, list]]:
    """``config`` with ``overrides`` (``--set`` keys) applied on resume, and the changes as
    ``{key: [old, new]}``. Keys outside :data:`RESUMABLE_KEYS` raise ValueError naming them."""
    if not overrides:
        return config, {}
    refused = sorted(k for k in overrides if k not in RESUMABLE_KEYS)
    if refused:
        raise ValueError(
            f"--resume cannot change {refused}: they define the run. Settings that may change "
            f"on resume: {list(RESUMABLE_KEYS)}; start a new run (--out) for the others"
        )
    new = resolve_config(preset=None, base=config.to_dict(), overrides=overrides)
    changes = {
        k: [getattr(config, k), getattr(new, k)]
        for k in overrides
        if getattr(config, k) != getattr(new, k)
    }
    return new, changes


def _check_fresh_run_dir(out: Path, config: TrainConfig, force: bool) -> None:
    """Refuse to overwrite another run (or other files) unless ``force``; writes nothing."""
    cfg_path = out / "config.toml"
    if out.exists() and not out.is_dir():
        raise ValueError(f"output directory {out} is a file")
    if out.exists() and any(out.iterdir()) and not force:
        what = "a different run" if cfg_path.is_file() else "other files"
        if cfg_path.is_file():
            try:
                if TrainConfig.from_toml(cfg_path.read_text()) == config:
                    what = "a run with this configuration"
            except ValueError:
                pass
        raise ValueError(
            f"output directory {out} already holds {what}; use --resume to continue it or "
            "--force to overwrite it"
        )


def _clear_run_files(out: Path) -> None:
    for name in RUN_FILES:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


#: what a run directory holds besides the analyses' outputs (removed by ``force``)
RUN_FILES = ("checkpoints", "metrics.jsonl", "results.json", "config.toml", "task_meta.json",
             "resumes.jsonl")


def _load_resume_checkpoint(ckpt_dir: Path, which: str, device) -> dict | None:
    """The checkpoint to resume from (``which``: ``"last"`` or ``"previous"``), or None for a
    run that never finished its first checkpoint."""
    path = ckpt_dir / "last.pt" if which == "last" else previous_path(ckpt_dir / "last.pt")
    if which == "previous":
        if not path.is_file():
            raise FileNotFoundError(f"--resume-from previous: {path} does not exist")
        return load_checkpoint(path, map_location=device)
    if not path.is_file():
        if previous_path(path).is_file():
            raise CheckpointError(
                f"checkpoint {path} is missing but its previous version is there; continue from "
                "it with --resume-from previous"
            )
        return None
    try:
        return load_checkpoint(path, map_location=device)
    except CheckpointError as e:
        hint = (
            "; continue from the previous one with --resume-from previous"
            if previous_path(path).is_file()
            else ""
        )
        raise CheckpointError(f"{e}{hint}") from e


def _divergence_message(loss: Tensor, epoch: int, step: int, n_steps: int, ckpt: Path) -> str:
    where = f"non-finite loss ({loss.item()}) at epoch {epoch}, step {step}/{n_steps}"
    if ckpt.is_file():
        return f"training diverged: {where}; the last good checkpoint is {ckpt}"
    return (
        f"training diverged: {where}, before the first checkpoint (none is written until an "
        "epoch ends); lower the learning rate or the step size"
    )


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
) -> dict:
    """Train per ``config`` into ``out_dir``; return the content of ``results.json``.

    ``resume=True`` continues the run in ``out_dir`` from ``checkpoints/last.pt`` (``config``
    must then be None: the saved one is used; ``overrides`` may change the keys in
    :data:`RESUMABLE_KEYS`, recorded in ``config.toml`` and ``resumes.jsonl``;
    ``resume_from="previous"`` continues from the checkpoint before the last one).
    ``should_stop`` is polled after every step; when it returns True the loop saves a resumable
    checkpoint and raises :class:`RunInterrupted`. A non-finite loss raises
    :class:`DivergenceError` naming the epoch and step, leaving the last good checkpoint in
    place. ``callbacks`` observe the run (:mod:`lipschitz_rnn.train.callbacks`).

    Everything that can be checked (the configuration, the data files, the model's arguments)
    is checked before anything is written: a start that fails leaves ``out_dir`` as it was.
    """
    out = Path(out_dir)
    if resume:
        if config is not None:
            raise ValueError("config must be None with resume=True (the run's own is used)")
        cfg_path = out / "config.toml"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"--resume: no run in {out} (config.toml missing)")
        config, changes = apply_resume_overrides(
            TrainConfig.from_toml(cfg_path.read_text()), overrides
        )
        check_choice("resume_from", resume_from, ("last", "previous"))
    else:
        if config is None:
            raise ValueError("config is required unless resume=True")
        if overrides:
            raise ValueError("overrides are for resume=True; apply them to config instead")
        config.validate()
        _check_fresh_run_dir(out, config, force)
        changes = {}
    device = _device(config.device)
    _seed_everything(config.seed)
    # everything that may fail on bad settings or bad data, before anything is written
    runner = TaskRunner(config, data_dir=data_dir, device=device)
    model = build_model(config, runner).to(device)
    optimizer = _make_optimizer(config, model)
    ckpt_dir = out / "checkpoints"
    ck = _load_resume_checkpoint(ckpt_dir, resume_from, device) if resume else None
    if ck is not None:
        done_epochs = int(ck["epoch"]) - (1 if int(ck["step"]) == 0 else 0)
        if done_epochs > config.epochs:
            raise ValueError(
                f"epochs={config.epochs} is fewer than the {done_epochs} epochs this run has "
                "already trained"
            )

    if not resume:
        if force:
            _clear_run_files(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.toml", config.to_toml())
    elif changes:
        atomic_write_text(out / "config.toml", config.to_toml())
        _append_jsonl(out / "resumes.jsonl", {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "epoch": int(ck["epoch"]) if ck else 1,
            "step": int(ck["step"]) if ck else 0,
            "changed": changes,
        })
        log.info("resume of %s changes %s", out, changes)
    n_params = sum(p.numel() for p in model.parameters())
    records: list[dict] = []
    start_epoch, start_step = 1, 0
    running: dict[str, float] = {}
    best = {"epoch": 0, "metric": None}
    wall_before = 0.0
    if ck is not None:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        _set_rng_state(ck["rng"])
        start_epoch, start_step = int(ck["epoch"]), int(ck["step"])
        running = dict(ck["running"])
        records = json.loads(ck["records"])
        best = json.loads(ck["best"])
        wall_before = float(ck["wall"])
        runner.load_state(ck["runner"])
        log.info("resuming %s at epoch %d step %d", out, start_epoch, start_step)
    _write_metrics(out, records)
    meta = runner.meta_to_save()
    if meta:
        write_json(out / "task_meta.json", meta)

    def save_last(epoch: int, step: int, run_sums: dict, wall: float) -> None:
        save_checkpoint(
            ckpt_dir / "last.pt",
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": _rng_state(),
                "epoch": epoch,
                "step": step,
                "running": run_sums,
                "records": json.dumps(records),
                "best": json.dumps(best),
                "wall": wall,
                "runner": runner.state(),
            },
            keep_previous=True,
        )

    ctx = RunContext(out, config, model, optimizer, runner, device, fresh=ck is None,
                     start_epoch=start_epoch)
    want_norm = any(cb.wants_grad_norm for cb in callbacks)
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
            model.train()
            batches = runner.train_batches(epoch)
            n_steps = len(batches)
            if start_step == 0 or epoch != start_epoch:
                running = {"loss": 0.0, "metric": 0.0, "count": 0.0, "seqs": 0.0, "seconds": 0.0}
                runner.reset_epoch_state()
            first = start_step if epoch == start_epoch else 0
            for step in range(first, n_steps):
                t0 = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                loss, metric_sum, count, seqs = runner.train_step(model, batches[step])
                if not torch.isfinite(loss):
                    raise DivergenceError(
                        _divergence_message(loss, epoch, step + 1, n_steps, ckpt_dir / "last.pt")
                    )
                loss.backward()
                grad_norm = None
                if config.clip_grad_norm > 0:
                    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
                elif want_norm:
                    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), math.inf)
                optimizer.step()
                dt = time.perf_counter() - t0
                loss_value = float(loss.detach())
                running["loss"] += loss_value * count
                running["metric"] += float(metric_sum)
                running["count"] += float(count)
                running["seqs"] += float(seqs)
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
                if should_stop is not None and should_stop() and step + 1 < n_steps:
                    save_last(epoch, step + 1, running, wall_before + time.perf_counter() - t_start)
                    raise RunInterrupted(
                        f"stopped at epoch {epoch}, step {step + 1}/{n_steps}; resume with "
                        f"--resume {out}"
                    )
            start_step = 0
            rec = _epoch_record(config, runner, model, epoch, lr, running)
            records.append(rec)
            m = rec[f"valid_{runner.metric_name}"]
            improved = best["metric"] is None or (
                m > best["metric"] if higher_better else m < best["metric"]
            )
            if improved and math.isfinite(m):
                best = {"epoch": epoch, "metric": m}
                save_checkpoint(
                    ckpt_dir / "best.pt",
                    {"model": model.state_dict(), "epoch": epoch, "metric": m},
                    keep_previous=True,
                )
            save_last(epoch + 1, 0, {}, wall_before + time.perf_counter() - t_start)
            _write_metrics(out, records)
            for cb in callbacks:
                cb.on_epoch_end(ctx, rec)
            if epoch_end is not None:
                epoch_end(rec)
            if should_stop is not None and should_stop() and epoch < config.epochs:
                raise RunInterrupted(f"stopped after epoch {epoch}; resume with --resume {out}")

        wall = wall_before + time.perf_counter() - t_start
        if (ckpt_dir / "best.pt").is_file():
            best_state = load_checkpoint(ckpt_dir / "best.pt", map_location=device)["model"]
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
        }
        eigs = _lipschitz_eigs(model)
        if eigs is not None:
            results["eigenvalues"] = eigs
        write_json(out / "results.json", results)
        for cb in callbacks:
            cb.on_train_end(ctx, results)
        return results
    finally:
        for cb in callbacks:
            cb.close()


def _epoch_record(config, runner, model, epoch: int, lr: float, running: dict) -> dict:
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
        rng, data_rng = _rng_state(), runner.state()
        monitor = runner.evaluate(model, "test")
        _set_rng_state(rng)
        runner.load_state(data_rng)
        rec["test_loss"] = monitor["loss"]
        rec[f"test_{runner.metric_name}"] = monitor[runner.metric_name]
    if config.lyapunov_every and epoch % config.lyapunov_every == 0:
        rec["lyapunov"] = runner.lyapunov_summary(model)
    return rec


def _append_jsonl(path: Path, record: dict) -> None:
    old = path.read_text() if path.is_file() else ""
    atomic_write_text(path, old + json.dumps(record) + "\n")


def load_run(run_dir: str | Path, *, data_dir=None, which: str = "best", device: str = "cpu"):
    """(config, runner, model) of a run directory, with the ``which`` checkpoint loaded
    (``"best"``, ``"last"``, or ``"best.prev"``/``"last.prev"`` for their previous versions)."""
    run = Path(run_dir)
    if not (run / "config.toml").is_file():
        raise FileNotFoundError(f"run_dir: {run} is not a run directory (no config.toml)")
    config = TrainConfig.from_toml((run / "config.toml").read_text())
    dev = torch.device(device)
    runner = TaskRunner(config, data_dir=data_dir, device=dev)
    with warnings.catch_warnings():
        # the construction-time stability notice describes the random initial weights, which the
        # checkpoint replaces at once (certify the loaded model instead)
        warnings.filterwarnings("ignore", "LipschitzRNNCell: .* at construction", RuntimeWarning)
        model = build_model(config, runner).to(dev)
    check_choice("which", which, ("best", "last", "best.prev", "last.prev"))
    ck = run / "checkpoints" / f"{which}.pt"
    try:
        state = load_checkpoint(ck, map_location=dev)
    except CheckpointError as e:
        other = "last" if which.startswith("best") else "best"
        raise CheckpointError(
            f"{e}; use the {other} checkpoint instead (--checkpoint {other})"
            + (f" or the previous version (--checkpoint {which}.prev)" if previous_path(ck).is_file()
               and not which.endswith(".prev") else "")
        ) from e
    model.load_state_dict(state["model"])
    model.eval()
    return config, runner, model


def evaluate_run(
    run_dir: str | Path, *, data_dir=None, split: str = "test", which: str = "best"
) -> dict:
    """Recompute the metrics of a run's ``which`` checkpoint (best by default) on ``split``."""
    _, runner, model = load_run(run_dir, data_dir=data_dir, which=which)
    return runner.evaluate(model, split)
