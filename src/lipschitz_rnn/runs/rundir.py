"""A run directory: its layout, and the one reader and writer of its files.

A run directory holds

* ``config.toml``: the resolved :class:`~lipschitz_rnn.runs.config.TrainConfig`;
* ``metrics.jsonl``: one line per finished epoch;
* ``checkpoints/last.pt``: everything needed to resume (model, optimizer, RNG states, epoch and
  step, the epoch's running sums); ``checkpoints/best.pt``: the model with the best validation
  metric, its epoch and metric;
* ``results.json``: written at the end;
* ``model.json``: the task's sizes, so that the model is rebuilt without the data;
  ``task_meta.json``: how the task's data were made; ``resumes.jsonl``: the settings changed
  when the run was resumed;
* the analyses' ``lyapunov.json``, ``hessian.json``, ``robustness.json`` (and PNGs), and
  ``tb/`` (TensorBoard events) when asked for.

Every file is written atomically; both checkpoints keep their previous version
(``last.prev.pt``, ``best.prev.pt``) as a fallback. Checkpoints and ``results.json`` have their
SHA-256 beside them (``last.pt.sha256``, ...), verified on every load (:mod:`lipschitz_rnn._io`).
Checkpoints hold the plain model's ``state_dict`` (never a ``DistributedDataParallel``
wrapper's), so a run resumes under any number of processes.

Reading a run never changes a random number generator: the model is rebuilt under
``torch.random.fork_rng`` before the checkpoint replaces its initial weights.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .._checks import check_bool, check_choice
from .._io import (
    CheckpointError,
    DamagedFileError,
    WriteError,
    atomic_write_text,
    check_creatable_dir,
    ensure_dir,
    load_checkpoint,
    previous_path,
    read_json,
    save_checkpoint,
    write_json,
)
from ..models import build
from .config import TrainConfig
from .model import build_model
from .tasks import TaskRunner, higher_is_better

__all__ = ["RunDir", "is_run", "run_metric", "load_run", "evaluate_run", "read_results",
           "RUN_FILES", "ANALYSES", "CHECKPOINTS"]

#: what a run directory holds besides the analyses' outputs (removed by ``force``)
RUN_FILES = ("checkpoints", "metrics.jsonl", "results.json", "results.json.sha256",
             "config.toml", "task_meta.json", "model.json", "resumes.jsonl")
#: the analyses of a run directory (``NAME.json``, ``NAME.png``)
ANALYSES = ("lyapunov", "hessian", "robustness")
#: the checkpoints a run keeps
CHECKPOINTS = ("best", "last", "best.prev", "last.prev")
#: the notice a Lipschitz cell gives at construction about its random initial weights, which the
#: checkpoint replaces at once (certify the loaded model instead)
_CONSTRUCTION_NOTICE = "LipschitzRNNCell: .* at construction"


def is_run(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a run directory (it holds ``config.toml``)."""
    return (Path(path) / "config.toml").is_file()


def run_metric(results: dict | None, records: list[dict]) -> str:
    """The name of a run's metric: the one of ``results.json``'s test entry, else of the
    ``valid_*`` columns of ``metrics.jsonl``, else ``"loss"``."""
    names = [k for k in ((results or {}).get("test") or {}) if k != "loss"]
    if names:
        return names[0]
    for r in records:
        for k in r:
            if k.startswith("valid_") and k != "valid_loss":
                return k[len("valid_"):]
    return "loss"


def _jsonl(path: Path, problems: list[str] | None) -> list[dict]:
    """The objects of a JSON-lines file ([] when absent). A line that is not a JSON object
    raises :class:`DamagedFileError` naming it, or is skipped and noted in ``problems``."""
    if not path.is_file():
        return []
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if isinstance(rec, dict):
            out.append(rec)
            continue
        if problems is None:
            raise DamagedFileError(f"{path} is damaged (line {i} is not a JSON object)")
        problems.append(f"{path.name}: line {i} is not a JSON object (skipped)")
    return out


class RunDir:
    """The run directory at ``path`` (which need not exist yet: the loop creates it)."""

    def __init__(self, path: str | os.PathLike) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"run_dir must be a path, got {type(path).__name__}")
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        """The directory's name (that of the resolved path for ``.`` and the like)."""
        return self.path.name or self.path.resolve().name or str(self.path)

    # --- layout -------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    def checkpoint_path(self, which: str = "last") -> Path:
        """``checkpoints/{which}.pt`` (``which``: one of :data:`CHECKPOINTS`)."""
        check_choice("which", which, CHECKPOINTS)
        return self.path / "checkpoints" / f"{which}.pt"

    def is_run(self) -> bool:
        return is_run(self.path)

    def require(self) -> RunDir:
        """Self; FileNotFoundError when ``path`` is not a run directory."""
        if not self.is_run():
            raise FileNotFoundError(
                f"run_dir: {self.path} is not a run directory (no config.toml)")
        return self

    # --- reading ------------------------------------------------------------------------------
    def config(self) -> TrainConfig:
        """The run's configuration (ValueError naming a bad key)."""
        return TrainConfig.from_toml(self.require().file("config.toml").read_text())

    def config_table(self) -> dict[str, Any]:
        """``config.toml`` as it is written, not validated (a report shows runs of other
        versions too); raises OSError or ValueError when it cannot be read."""
        return tomllib.loads(self.require().file("config.toml").read_text())

    def records(self, problems: list[str] | None = None) -> list[dict]:
        """The lines of ``metrics.jsonl`` ([] before the first epoch ends); see :func:`_jsonl`
        for ``problems``."""
        return _jsonl(self.file("metrics.jsonl"), problems)

    def resumes(self, problems: list[str] | None = None) -> list[dict]:
        """The lines of ``resumes.jsonl`` (the settings changed on each resume)."""
        return _jsonl(self.file("resumes.jsonl"), problems)

    def has_results(self) -> bool:
        return self.file("results.json").is_file()

    def results(self) -> dict:
        """``results.json``, verified against its checksum. Raises FileNotFoundError for an
        unfinished run and :class:`~lipschitz_rnn._io.DamagedFileError` naming a damaged
        file."""
        path = self.file("results.json")
        if not path.is_file():
            raise FileNotFoundError(f"run_dir: {self.path} has no results.json (unfinished run?)")
        res = read_json(path)
        if not isinstance(res, dict):
            raise DamagedFileError(f"{path} is damaged (holds {type(res).__name__}, not an object)")
        return res

    def analysis(self, name: str) -> dict | None:
        """The output of analysis ``name`` (one of :data:`ANALYSES`), None when it was not run;
        :class:`~lipschitz_rnn._io.DamagedFileError` when it cannot be read."""
        check_choice("name", name, ANALYSES)
        path = self.file(f"{name}.json")
        if not path.is_file():
            return None
        d = read_json(path)
        if not isinstance(d, dict):
            raise DamagedFileError(f"{path} is damaged (holds {type(d).__name__}, not an object)")
        return d

    def metric(self) -> str:
        """The run's metric (:func:`run_metric` of its results and records)."""
        return run_metric(self.results() if self.has_results() else None, self.records())

    def higher_is_better(self) -> bool:
        """Whether a larger value of :meth:`metric` is better."""
        return higher_is_better(self.metric())

    def sizes(self) -> dict[str, Any] | None:
        """The task's sizes of ``model.json`` (None for runs of versions that did not write it)."""
        path = self.file("model.json")
        return json.loads(path.read_text()) if path.is_file() else None

    # --- checkpoints and the model ------------------------------------------------------------
    def checkpoint(self, which: str = "best", device: Any = "cpu") -> dict:
        """The ``which`` checkpoint, verified; a damaged one raises
        :class:`~lipschitz_rnn._io.CheckpointError` naming the checkpoints to use instead."""
        path = self.checkpoint_path(which)
        try:
            return load_checkpoint(path, map_location=device)
        except CheckpointError as e:
            other = "last" if which.startswith("best") else "best"
            also = (f" or the previous version (--checkpoint {which}.prev)"
                    if previous_path(path).is_file() and not which.endswith(".prev") else "")
            raise CheckpointError(f"{e}; use the {other} checkpoint instead (--checkpoint "
                                  f"{other}){also}") from e

    def load(self, which: str = "best", *, device: str = "cpu", data_dir=None,
             data: bool = True) -> tuple[TrainConfig, TaskRunner | None, nn.Module]:
        """(config, runner, model) with the ``which`` checkpoint loaded, in eval mode.

        ``data=False``: the model only (``runner`` is None), rebuilt from ``model.json``
        without reading the data set, where the run has that file (runs of older versions load
        their task)."""
        check_bool("data", data)
        config = self.config()
        dev = torch.device(device)
        sizes = None if data else self.sizes()
        runner = None if sizes is not None else TaskRunner(config, data_dir=data_dir, device=dev)
        check_choice("which", which, CHECKPOINTS)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", _CONSTRUCTION_NOTICE, RuntimeWarning)
            model = build_model(config, runner, sizes=sizes).to(dev)
        model.load_state_dict(self.checkpoint(which, dev)["model"])
        model.eval()
        return config, runner, model

    def layer(self, which: str = "best") -> nn.Module:
        """The recurrent layer of the ``which`` checkpoint alone (the model's ``rnn``), on the
        CPU: needs neither the data set nor ``model.json`` (its input size is that of the
        checkpoint's first input weights)."""
        config = self.config()
        state = self.checkpoint(which)["model"]
        layer_state = {k[len("rnn."):]: v for k, v in state.items() if k.startswith("rnn.")}
        w = layer_state.get("cells.0.weight_ih", layer_state.get("weight_ih_l0"))
        if w is None:
            raise ValueError(f"checkpoints/{which}.pt has no rnn.cells.0.weight_ih")
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", _CONSTRUCTION_NOTICE, RuntimeWarning)
            layer = build(config.model, int(w.shape[1]), config.hidden_size,
                          num_layers=config.num_layers, **config.model_kwargs)
        layer.load_state_dict(layer_state)
        return layer.eval()

    # --- writing (the training loop and the analyses) -----------------------------------------
    def check_fresh(self, config: TrainConfig, force: bool) -> None:
        """Refuse to start a run over another run (or other files) unless ``force``, and in a
        directory that cannot be created (:class:`~lipschitz_rnn._io.WriteError`); writes
        nothing."""
        out, cfg_path = self.path, self.file("config.toml")
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

    def clear(self) -> None:
        """Remove the files of a run (:data:`RUN_FILES`), leaving anything else."""
        for name in RUN_FILES:
            p = self.file(name)
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    def resume_checkpoint(self, which: str = "last") -> dict | None:
        """The checkpoint to resume from (``which``: ``"last"`` or ``"previous"``), or None for
        a run that never finished its first checkpoint."""
        last = self.checkpoint_path("last")
        path = last if which == "last" else previous_path(last)
        if which == "previous":
            if not path.is_file():
                raise FileNotFoundError(f"--resume-from previous: {path} does not exist")
            return load_checkpoint(path, map_location="cpu")
        if not path.is_file():
            if previous_path(path).is_file():
                raise CheckpointError(
                    f"checkpoint {path} is missing but its previous version is there; continue "
                    "from it with --resume-from previous"
                )
            return None
        try:
            return load_checkpoint(path, map_location="cpu")
        except CheckpointError as e:
            hint = ("; continue from the previous one with --resume-from previous"
                    if previous_path(path).is_file() else "")
            raise CheckpointError(f"{e}{hint}") from e

    def create(self, config: TrainConfig) -> None:
        """Create the directory of a new run with its ``config.toml``."""
        ensure_dir(self.path)
        self.write_config(config)

    def write_task_files(self, sizes: dict[str, Any], meta: dict[str, Any]) -> None:
        """``task_meta.json`` (how the task's data were made, when it says) and ``model.json``
        (the sizes the model is rebuilt from without the data)."""
        if meta:
            write_json(self.file("task_meta.json"), meta)
        write_json(self.file("model.json"), sizes)

    def write_config(self, config: TrainConfig) -> None:
        atomic_write_text(self.file("config.toml"), config.to_toml())

    def write_metrics(self, records: list[dict]) -> None:
        atomic_write_text(self.file("metrics.jsonl"),
                          "".join(json.dumps(r) + "\n" for r in records))

    def append_resume(self, record: dict) -> None:
        path = self.file("resumes.jsonl")
        old = path.read_text() if path.is_file() else ""
        atomic_write_text(path, old + json.dumps(record) + "\n")

    def save_checkpoint(self, which: str, payload: dict) -> None:
        """Write checkpoint ``which`` (``"last"`` or ``"best"``), keeping its previous version."""
        save_checkpoint(self.checkpoint_path(which), payload, keep_previous=True)

    def write_results(self, results: dict) -> None:
        write_json(self.file("results.json"), results, checksum=True)

    def write_analysis(self, name: str, d: dict) -> None:
        """Write ``NAME.json`` of analysis ``name`` (one of :data:`ANALYSES`)."""
        check_choice("name", name, ANALYSES)
        write_json(self.file(f"{name}.json"), d)


def load_run(run_dir: str | os.PathLike, *, data_dir=None, which: str = "best",
             device: str = "cpu", data: bool = True):
    """(config, runner, model) of a run directory with the ``which`` checkpoint loaded
    (``"best"``, ``"last"``, or ``"best.prev"``/``"last.prev"``): :meth:`RunDir.load`."""
    return RunDir(run_dir).require().load(which, device=device, data_dir=data_dir, data=data)


def evaluate_run(run_dir: str | os.PathLike, *, data_dir=None, split: str = "test",
                 which: str = "best") -> dict:
    """Recompute the metrics of a run's ``which`` checkpoint (best by default) on ``split``."""
    _, runner, model = load_run(run_dir, data_dir=data_dir, which=which)
    return runner.evaluate(model, split)


def read_results(run_dir: str | os.PathLike) -> dict:
    """A run's ``results.json``, verified against its checksum (:meth:`RunDir.results`)."""
    return RunDir(run_dir).results()
