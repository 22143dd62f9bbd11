"""A sweep directory: its layout, and the one reader of its files.

A sweep directory holds

* ``sweep.json``: the spec, the plan of its trials, the metric (``{"name", "mode"}``, mode
  ``max`` or ``min``), the swept keys, the status counts and the best trial;
* ``trials.csv``: one row per trial (:func:`lipschitz_rnn.sweep.results.collect` writes it:
  empty cells are missing values, integers are written as integers, other numbers with a
  decimal point or an exponent);
* ``spectra.npz``: ``{trial}_le{e}`` the batch-mean spectrum, ``{trial}_le{e}_batch`` those of
  every probe sequence;
* ``trials/<id>/``: each trial's run directory (:class:`~lipschitz_rnn.runs.rundir.RunDir`),
  with its ``trial.json`` and ``probe_spectra.npz``;
* a study's ``study.json``, ``study.md`` and plots.

The sweep's modules write these files; the sweep, its study and the report read them here.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._io import DamagedFileError, read_json
from .rundir import RunDir
from .tasks import higher_is_better

__all__ = ["SweepDir", "is_sweep", "parse_cell", "read_probe_spectra", "SWEEP_FILE",
           "TRIALS_FILE", "SPECTRA_NPZ", "TRIALS_DIR", "PROBE_SPECTRA"]

SWEEP_FILE = "sweep.json"
TRIALS_FILE = "trials.csv"
SPECTRA_NPZ = "spectra.npz"
TRIALS_DIR = "trials"
#: a trial's spectra on the probe: ``le{epoch}`` -> (probe batch, k), each row descending
PROBE_SPECTRA = "probe_spectra.npz"


def is_sweep(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a sweep directory (it holds ``trials.csv`` or ``sweep.json``)."""
    return (Path(path) / TRIALS_FILE).is_file() or (Path(path) / SWEEP_FILE).is_file()


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: np.asarray(z[k], dtype=np.float64) for k in z.files}


def read_probe_spectra(trial_dir: str | os.PathLike) -> dict[int, np.ndarray]:
    """Epoch -> (batch, k) exponents of a trial's ``probe_spectra.npz`` (float64; {} when none
    were computed)."""
    path = Path(trial_dir) / PROBE_SPECTRA
    if not path.is_file():
        return {}
    return {int(k[2:]): v for k, v in _npz(path).items()
            if k.startswith("le") and k[2:].isdigit()}


def parse_cell(text: str) -> Any:
    """A ``trials.csv`` cell as it was written: ``""`` -> None, an integer -> int, another
    number (``0.5``, ``1e-05``, ``inf``) -> float, anything else -> the text."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


class SweepDir:
    """The sweep directory at ``path``."""

    def __init__(self, path: str | os.PathLike) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"sweep_dir must be a path, got {type(path).__name__}")
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"SweepDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name or self.path.resolve().name or str(self.path)

    def file(self, name: str) -> Path:
        return self.path / name

    def is_sweep(self) -> bool:
        return is_sweep(self.path)

    # --- sweep.json ---------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        """``sweep.json``; FileNotFoundError when the directory has none,
        :class:`~lipschitz_rnn._io.DamagedFileError` when it cannot be read."""
        path = self.file(SWEEP_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"{self.path} is not a sweep directory ({SWEEP_FILE} missing)")
        d = read_json(path)
        if not isinstance(d, dict):
            raise DamagedFileError(f"{path} is damaged (holds {type(d).__name__}, not an object)")
        return d

    @staticmethod
    def metric(meta: dict[str, Any] | None) -> tuple[str | None, bool]:
        """(name, higher is better) of the sweep's metric as ``meta`` (``sweep.json``) records
        it: its ``mode`` when given, else the rule of the metric's name
        (:func:`~lipschitz_rnn.runs.tasks.higher_is_better`)."""
        m = (meta or {}).get("metric")
        if not isinstance(m, dict):
            return None, False
        name = m.get("name") if isinstance(m.get("name"), str) else None
        mode = m.get("mode")
        return name, (mode == "max") if mode in ("max", "min") else higher_is_better(name or "")

    # --- trials.csv ---------------------------------------------------------------------------
    def table(self) -> tuple[list[str], list[list[Any]]]:
        """(header, rows) of ``trials.csv`` with every cell parsed (:func:`parse_cell`); blank
        lines are skipped. FileNotFoundError when the sweep has not written it yet."""
        path = self.file(TRIALS_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"{self.path}: {TRIALS_FILE} is missing (run the sweep to "
                                    "its end)")
        rows = list(csv.reader(io.StringIO(path.read_text(), newline="")))
        if not rows:
            return [], []
        return rows[0], [[parse_cell(v) for v in r] for r in rows[1:] if r]

    def trials(self) -> list[dict[str, Any]]:
        """The rows of ``trials.csv`` as ``{column: value}`` (every column of the header; a
        short row's missing cells are None)."""
        header, rows = self.table()
        return [{h: (r[i] if i < len(r) else None) for i, h in enumerate(header)} for r in rows]

    # --- spectra and trials -------------------------------------------------------------------
    def spectra(self) -> dict[str, np.ndarray]:
        """The arrays of ``spectra.npz`` as float64 ({} when the sweep has none)."""
        path = self.file(SPECTRA_NPZ)
        return _npz(path) if path.is_file() else {}

    def trial_ids(self) -> list[str]:
        """The trials that have a folder under ``trials/``, sorted."""
        folder = self.file(TRIALS_DIR)
        return sorted(d.name for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []

    def trial(self, trial_id: str) -> RunDir:
        """The run directory of trial ``trial_id`` (``trials/<id>/``)."""
        return RunDir(self.path / TRIALS_DIR / str(trial_id))

    def probe_spectra(self, trial_id: str) -> dict[int, np.ndarray]:
        """:func:`read_probe_spectra` of trial ``trial_id``."""
        return read_probe_spectra(self.trial(trial_id).path)
