"""The files of a run directory and the random state a checkpoint holds.

A run directory holds ``config.toml`` (the resolved configuration), ``metrics.jsonl`` (one line
per epoch), ``checkpoints/last.pt`` (everything needed to resume: model, optimizer, RNG states,
epoch and step, the epoch's running sums) and ``checkpoints/best.pt`` (the model with the best
validation metric), and at the end ``results.json``. Every file is written atomically; both
checkpoints keep their previous version (``last.prev.pt``, ``best.prev.pt``) as a fallback.
Checkpoints and ``results.json`` have their SHA-256 beside them (``last.pt.sha256``, ...),
verified on every load (:mod:`lipschitz_rnn._io`). ``resumes.jsonl`` records the settings
changed when a run was resumed.

Checkpoints hold the plain model's ``state_dict`` (never a ``DistributedDataParallel``
wrapper's), so a run resumes under any number of processes.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._checks import check_bool, check_choice
from .._io import (
    CheckpointError,
    DamagedFileError,
    WriteError,
    atomic_write_text,
    check_creatable_dir,
    load_checkpoint,
    previous_path,
    read_json,
)
from ..models import LipschitzRNNCell, SequenceModel, build
from .config import TrainConfig, resolve_config
from .tasks import TaskRunner

__all__ = [
    "RUN_FILES",
    "RESUMABLE_KEYS",
    "apply_resume_overrides",
    "config_differences",
    "read_results",
    "build_model",
    "model_sizes",
    "load_run",
    "evaluate_run",
    "read_run",
]

#: what a run directory holds besides the analyses' outputs (removed by ``force``)
RUN_FILES = ("checkpoints", "metrics.jsonl", "results.json", "results.json.sha256",
             "config.toml", "task_meta.json", "model.json", "resumes.jsonl")

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


def model_sizes(runner: TaskRunner) -> dict[str, Any]:
    """What :func:`build_model` takes from the task (written to a run's ``model.json``, so that
    the model can be rebuilt without the data, e.g. to certify it)."""
    return {
        "input_size": runner.model_input_size,
        "output_size": runner.output_size,
        "readout": runner.readout,
        "vocab_size": runner.vocab_size,
    }


def build_model(config: TrainConfig, runner: TaskRunner | None = None, *,
                sizes: dict[str, Any] | None = None) -> nn.Module:
    """The run's model from its config and the task's sizes (``runner``, or ``sizes`` as
    :func:`model_sizes` gives them)."""
    if sizes is None:
        if runner is None:
            raise ValueError("build_model needs the task's runner or its sizes")
        sizes = model_sizes(runner)
    rnn = build(
        config.model,
        sizes["input_size"],
        config.hidden_size,
        num_layers=config.num_layers,
        **config.model_kwargs,
    )
    return SequenceModel(rnn, sizes["output_size"], mode=sizes["readout"],
                         vocab_size=sizes["vocab_size"])


# --- random state ---------------------------------------------------------------------------------
def rng_state(cuda_device: torch.device | None = None) -> dict[str, Any]:
    """The torch, CUDA, numpy and Python RNG states. ``cuda_device``: only that GPU's state (a
    distributed rank's own device), else every visible GPU's."""
    np_state = np.random.get_state()
    if cuda_device is not None:
        cuda = [torch.cuda.get_rng_state(cuda_device)]
    else:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],
        "python": json.dumps(random.getstate()),
    }


def set_rng_state(s: dict[str, Any], cuda_device: torch.device | None = None) -> None:
    """Restore :func:`rng_state`; ``cuda_device``: its first CUDA state goes to that GPU."""
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        if cuda_device is not None:
            torch.cuda.set_rng_state(s["cuda"][0], cuda_device)
        else:
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- the run directory ------------------------------------------------------------------------------
def write_metrics(out: Path, records: list[dict]) -> None:
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))


def append_jsonl(path: Path, record: dict) -> None:
    old = path.read_text() if path.is_file() else ""
    atomic_write_text(path, old + json.dumps(record) + "\n")


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


#: settings that neither define a run nor change it: a resume ignores their differences
#: (``tensorboard``: ``train --tensorboard`` turns the logging on for a session)
_NOT_COMPARED = ("description", "tensorboard")


def _flat(config: TrainConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.to_dict().items():
        if k in ("model_kwargs", "task_kwargs"):
            out.update({f"{k.split('_')[0]}.{kk}": vv for kk, vv in v.items()})
        elif k not in _NOT_COMPARED:
            out[k] = v
    return out


def config_differences(run: TrainConfig, given: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{key: (run's value, given value)}`` for every setting in which ``given`` differs from
    ``run`` (``model.x``/``task.x`` for the model's and task's options; a missing option shows
    as None). ``description`` and ``tensorboard`` are not compared."""
    a, b = _flat(run), _flat(given)
    keys = dict.fromkeys([*a, *b])
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


def resume_overrides_from(out: Path, run: TrainConfig, given: TrainConfig) -> dict[str, Any]:
    """The overrides that turn the run's configuration ``run`` into ``given`` (a resume that
    repeats the command that started the run): differences in :data:`RESUMABLE_KEYS` are
    applied; any other difference raises ValueError naming each setting and both values."""
    diff = config_differences(run, given)
    refused = {k: v for k, v in diff.items() if k not in RESUMABLE_KEYS}
    if refused:
        listed = "; ".join(f"{k}: {a!r} in the run, {b!r} now" for k, (a, b) in refused.items())
        raise ValueError(
            f"--resume: the run in {out} was started with another configuration ({listed}). "
            "These settings define the run: resume with the settings it was started with, or "
            "start a new run (another --out, or --force to overwrite it)"
        )
    return {k: b for k, (_, b) in diff.items()}


def check_fresh_run_dir(out: Path, config: TrainConfig, force: bool) -> None:
    """Refuse to overwrite another run (or other files) unless ``force``, and an output
    directory that cannot be created (:class:`~lipschitz_rnn._io.WriteError`); writes
    nothing."""
    cfg_path = out / "config.toml"
    if out.exists() and not out.is_dir():
        raise WriteError(out, f"{os.strerror(errno.ENOTDIR)} (it is a file)", errno.ENOTDIR,
                         "create directory")
    check_creatable_dir(out)
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


def clear_run_files(out: Path) -> None:
    for name in RUN_FILES:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def load_resume_checkpoint(ckpt_dir: Path, which: str, device) -> dict | None:
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


def read_run(out: Path, config, *, resume: bool, force: bool, overrides, resume_from: str):
    """(config, changes, checkpoint or None, whether last.pt exists): reads and checks the run
    directory without writing (rank 0 alone runs it). On resume ``config`` is None (the run's
    own, with ``overrides``) or the configuration the run must have
    (:func:`resume_overrides_from`)."""
    ckpt_dir = out / "checkpoints"
    if not resume:
        check_fresh_run_dir(out, config, force)
        return config, {}, None, False
    cfg_path = out / "config.toml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"--resume: no run in {out} (config.toml missing)")
    saved = TrainConfig.from_toml(cfg_path.read_text())
    if config is not None:  # the command that started the run, repeated: it must match
        overrides = resume_overrides_from(out, saved, config)
    config, changes = apply_resume_overrides(saved, overrides)
    ck = load_resume_checkpoint(ckpt_dir, resume_from, "cpu")
    if ck is not None:
        done_epochs = int(ck["epoch"]) - (1 if int(ck["step"]) == 0 else 0)
        if done_epochs > config.epochs:
            raise ValueError(
                f"epochs={config.epochs} is fewer than the {done_epochs} epochs this run has "
                "already trained"
            )
    return config, changes, ck, (ckpt_dir / "last.pt").is_file()


def lipschitz_eigs(model: nn.Module) -> list[dict] | None:
    """Eigenvalue ranges of every Lipschitz cell's A and W (``results.json``), or None."""
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


def load_run(run_dir: str | Path, *, data_dir=None, which: str = "best", device: str = "cpu",
             data: bool = True):
    """(config, runner, model) of a run directory, with the ``which`` checkpoint loaded
    (``"best"``, ``"last"``, or ``"best.prev"``/``"last.prev"`` for their previous versions).

    ``data=False``: the model only (``runner`` is None), rebuilt from the run's ``model.json``
    without reading the data set, where the run has that file (runs of this version on); older
    runs still load their task."""
    run = Path(run_dir)
    if not (run / "config.toml").is_file():
        raise FileNotFoundError(f"run_dir: {run} is not a run directory (no config.toml)")
    check_bool("data", data)
    config = TrainConfig.from_toml((run / "config.toml").read_text())
    dev = torch.device(device)
    sizes = None
    if not data and (run / "model.json").is_file():
        sizes = json.loads((run / "model.json").read_text())
        runner = None
    else:
        runner = TaskRunner(config, data_dir=data_dir, device=dev)
    with warnings.catch_warnings():
        # the construction-time stability notice describes the random initial weights, which the
        # checkpoint replaces at once (certify the loaded model instead)
        warnings.filterwarnings("ignore", "LipschitzRNNCell: .* at construction", RuntimeWarning)
        model = build_model(config, runner, sizes=sizes).to(dev)
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


def read_results(run_dir: str | Path) -> dict:
    """A run's ``results.json``, verified against its checksum. Raises FileNotFoundError for an
    unfinished run and :class:`~lipschitz_rnn._io.DamagedFileError` naming a damaged file."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"run_dir: {Path(run_dir)} has no results.json (unfinished run?)")
    res = read_json(path)
    if not isinstance(res, dict):
        raise DamagedFileError(f"{path} is damaged (holds {type(res).__name__}, not an object)")
    return res


def evaluate_run(
    run_dir: str | Path, *, data_dir=None, split: str = "test", which: str = "best"
) -> dict:
    """Recompute the metrics of a run's ``which`` checkpoint (best by default) on ``split``."""
    _, runner, model = load_run(run_dir, data_dir=data_dir, which=which)
    return runner.evaluate(model, split)
