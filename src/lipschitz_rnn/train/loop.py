"""The training loop: run directories, checkpoints, exact resume, divergence detection.

A run directory holds ``config.toml`` (the resolved configuration), ``metrics.jsonl`` (one line
per epoch), ``checkpoints/last.pt`` (everything needed to resume: model, optimizer, RNG states,
epoch and step, the epoch's running sums) and ``checkpoints/best.pt`` (the model with the best
validation metric), and at the end ``results.json``. Every file is written atomically.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._io import atomic_write_text, load_checkpoint, save_checkpoint, write_json
from ..models import LipschitzRNNCell, SequenceModel, build
from .config import TrainConfig
from .tasks import TaskRunner

__all__ = ["train", "DivergenceError", "RunInterrupted", "build_model", "load_run", "evaluate_run"]

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


def _prepare_run_dir(out: Path, config: TrainConfig, resume: bool, force: bool) -> TrainConfig:
    cfg_path = out / "config.toml"
    if resume:
        if not cfg_path.is_file():
            raise FileNotFoundError(f"--resume: no run in {out} (config.toml missing)")
        return TrainConfig.from_toml(cfg_path.read_text())
    if out.exists() and any(out.iterdir()):
        if not force:
            what = "a different run" if cfg_path.is_file() else "other files"
            if cfg_path.is_file() and TrainConfig.from_toml(cfg_path.read_text()) == config:
                what = "a run with this configuration"
            raise ValueError(
                f"output directory {out} already holds {what}; use --resume to continue it or "
                "--force to overwrite it"
            )
        for name in ("checkpoints", "metrics.jsonl", "results.json", "config.toml"):
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg_path, config.to_toml())
    return config


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


def train(
    config: TrainConfig | None,
    out_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    epoch_end: Callable[[dict], None] | None = None,
) -> dict:
    """Train per ``config`` into ``out_dir``; return the content of ``results.json``.

    ``resume=True`` continues the run in ``out_dir`` from ``checkpoints/last.pt`` (``config`` may
    then be None: the saved one is used). ``should_stop`` is polled after every step; when it
    returns True the loop saves a resumable checkpoint and raises :class:`RunInterrupted`.
    A non-finite loss raises :class:`DivergenceError` naming the epoch and step, leaving the last
    good checkpoint in place.
    """
    out = Path(out_dir)
    if config is None and not resume:
        raise ValueError("config is required unless resume=True")
    if config is not None:
        config.validate()
    config = _prepare_run_dir(out, config, resume, force)
    device = _device(config.device)
    _seed_everything(config.seed)
    runner = TaskRunner(config, data_dir=data_dir, device=device)
    model = build_model(config, runner).to(device)
    optimizer = _make_optimizer(config, model)
    n_params = sum(p.numel() for p in model.parameters())
    ckpt_dir = out / "checkpoints"
    records: list[dict] = []
    start_epoch, start_step = 1, 0
    running: dict[str, float] = {}
    best = {"epoch": 0, "metric": None}
    wall_before = 0.0
    if resume and (ckpt_dir / "last.pt").is_file():
        ck = load_checkpoint(ckpt_dir / "last.pt", map_location=device)
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
        )

    t_start = time.perf_counter()
    higher_better = runner.higher_is_better
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
                    f"training diverged: non-finite loss ({loss.item()}) at epoch {epoch}, step "
                    f"{step + 1}/{n_steps}; the last good checkpoint is {ckpt_dir / 'last.pt'}"
                )
            loss.backward()
            if config.clip_grad_norm > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
            optimizer.step()
            dt = time.perf_counter() - t0
            running["loss"] += float(loss.detach()) * count
            running["metric"] += float(metric_sum)
            running["count"] += float(count)
            running["seqs"] += float(seqs)
            running["seconds"] += dt
            if progress is not None:
                progress(
                    Progress(
                        epoch,
                        step + 1,
                        n_steps,
                        running["loss"] / running["count"],
                        runner.finish_metric(running["metric"], running["count"], running["loss"]),
                        runner.metric_name,
                        running["seqs"] / max(running["seconds"], 1e-9),
                    )
                )
            if should_stop is not None and should_stop() and step + 1 < n_steps:
                save_last(epoch, step + 1, running, wall_before + time.perf_counter() - t_start)
                raise RunInterrupted(
                    f"stopped at epoch {epoch}, step {step + 1}/{n_steps}; resume with --resume {out}"
                )
        start_step = 0
        valid = runner.evaluate(model, "valid")
        train_loss = running["loss"] / max(running["count"], 1.0)
        rec = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train_loss,
            f"train_{runner.metric_name}": runner.finish_metric(
                running["metric"], running["count"], running["loss"]
            ),
            "valid_loss": valid["loss"],
            f"valid_{runner.metric_name}": valid[runner.metric_name],
            "seconds": running["seconds"],
            "seq_per_s": running["seqs"] / max(running["seconds"], 1e-9),
        }
        if config.test_every and epoch % config.test_every == 0:
            # monitoring only: leave every RNG as it was so the training run is unchanged
            rng, data_rng = _rng_state(), runner.state()
            monitor = runner.evaluate(model, "test")
            _set_rng_state(rng)
            runner.load_state(data_rng)
            rec["test_loss"] = monitor["loss"]
            rec[f"test_{runner.metric_name}"] = monitor[runner.metric_name]
        if config.lyapunov_every and epoch % config.lyapunov_every == 0:
            rec["lyapunov"] = runner.lyapunov_summary(model)
        records.append(rec)
        m = valid[runner.metric_name]
        improved = best["metric"] is None or (
            m > best["metric"] if higher_better else m < best["metric"]
        )
        if improved and math.isfinite(m):
            best = {"epoch": epoch, "metric": m}
            save_checkpoint(
                ckpt_dir / "best.pt", {"model": model.state_dict(), "epoch": epoch, "metric": m}
            )
        save_last(epoch + 1, 0, {}, wall_before + time.perf_counter() - t_start)
        _write_metrics(out, records)
        if epoch_end is not None:
            epoch_end(rec)
        if should_stop is not None and should_stop() and epoch < config.epochs:
            raise RunInterrupted(f"stopped after epoch {epoch}; resume with --resume {out}")

    wall = wall_before + time.perf_counter() - t_start
    if (ckpt_dir / "best.pt").is_file():
        model.load_state_dict(load_checkpoint(ckpt_dir / "best.pt", map_location=device)["model"])
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
    return results


def load_run(run_dir: str | Path, *, data_dir=None, which: str = "best", device: str = "cpu"):
    """(config, runner, model) of a run directory, with the ``which`` checkpoint loaded."""
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
    ck = run / "checkpoints" / f"{which}.pt"
    model.load_state_dict(load_checkpoint(ck, map_location=dev)["model"])
    model.eval()
    return config, runner, model


def evaluate_run(run_dir: str | Path, *, data_dir=None, split: str = "test") -> dict:
    """Recompute the metrics of a run's best checkpoint on ``split``."""
    _, runner, model = load_run(run_dir, data_dir=data_dir)
    return runner.evaluate(model, split)
