"""The tables of a sweep, gathered from its trial directories.

:func:`collect` (re)writes, atomically:

* ``trials.csv``: one row per trial of the plan, columns

  - ``trial``, ``config_id`` (the configuration without the seed: seeds of one configuration
    share it), ``status`` (``ok``, ``diverged``, ``failed``, ``stopped``, ``pending``);
  - every swept key under its spec name (``lr``, ``model.init_scale``, ...), then ``model`` and
    ``seed`` when they are not swept;
  - ``best_valid``, ``best_epoch`` (the best validation metric and its epoch; ``sweep.json``
    names the metric and whether higher is better), ``epochs_done``, ``test`` (the test metric
    of the best checkpoint, ok trials), ``train_s`` (seconds spent in optimisation steps, the
    sum of the epochs' ``seconds``: the compute a scheduler saves) and ``wall_s`` (the trial's
    wall time including set-up and evaluation, from ``trial.json``; empty for trials stopped
    by the scheduler);
  - ``valid_{e}`` and ``valid_loss_{e}`` for every epoch ``e`` = 1 .. the longest trial;
  - ``le{e}_{feature}`` for every ``[lyapunov] at_epochs`` entry ``e`` and every key of
    :func:`lipschitz_rnn.analysis.spectrum_features` of the probe-batch mean spectrum;
  - ``node_id`` and ``hostname``: the Ray node of the trial's last attempt;
  - ``error`` (why a trial diverged or failed).

  Empty cells are missing values.
* ``spectra.npz``: ``{trial}_le{e}`` the batch-mean spectrum (k,), descending, and
  ``{trial}_le{e}_batch`` the spectrum of every probe sequence (batch, k);
* ``sweep.json``: updated with the status counts and ``best`` (the finished trial with the
  best validation metric: ``{"trial", "best_valid"}``, null when none has one).

A trial whose ``trial.json`` says ``ok`` but whose ``results.json`` is missing is ``pending``:
its final files are missing, and a resumed sweep finishes it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes, atomic_write_text, write_json
from ..analysis import spectrum_features
from ..runs.rundir import RunDir
from ..runs.sweepdir import SPECTRA_NPZ, SWEEP_FILE, TRIALS_FILE, SweepDir, read_probe_spectra
from .trial import FINAL_STATUSES, features_by_epoch, read_status

__all__ = ["collect", "best_trial", "update_sweep_json", "FEATURES"]

#: the feature columns of every LE epoch (the keys of ``spectrum_features``)
FEATURES = tuple(spectrum_features([0.0]))


def update_sweep_json(sweep_dir: str | Path, **fields: Any) -> dict[str, Any]:
    d = SweepDir(sweep_dir).meta()
    d.update(fields)
    write_json(Path(sweep_dir) / SWEEP_FILE, d)
    return d


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("" if math.isnan(v) else str(v))
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def trial_row(trial_dir: Path, plan: dict[str, Any], meta: dict[str, Any]) -> tuple[dict, dict]:
    """(the ``trials.csv`` row, the spectra by epoch) of one trial."""
    metric, mode = meta["metric"]["name"], meta["metric"]["mode"]
    status = read_status(trial_dir)
    run = RunDir(trial_dir)
    results = run.results() if run.has_results() else None
    if status is None:
        state = "ok" if results is not None else "pending"
    elif status["status"] == "ok" and results is None:
        state = "pending"  # its final files are missing: a resumed sweep finishes it
    else:
        state = status["status"]
    records = run.records()
    row: dict[str, Any] = {"trial": plan["id"], "config_id": plan["config_id"], "status": state}
    row.update(plan["params"])
    for key in ("model", "seed"):
        if key not in row:
            row[key] = plan[key]
    best = None
    for r in records:
        m = r.get(f"valid_{metric}")
        if _finite(m) and (best is None or (m > best[0] if mode == "max" else m < best[0])):
            best = (m, r["epoch"])
    row["best_valid"], row["best_epoch"] = best if best else (None, None)
    row["epochs_done"] = records[-1]["epoch"] if records else 0
    row["test"] = results["test"][metric] if results else None
    row["train_s"] = sum(float(r.get("seconds", 0.0)) for r in records)
    row["wall_s"] = status.get("wall_s") if status else None
    for e in range(1, meta["max_epochs"] + 1):
        rec = next((r for r in records if r["epoch"] == e), {})
        row[f"valid_{e}"] = rec.get(f"valid_{metric}")
        row[f"valid_loss_{e}"] = rec.get("valid_loss")
    spectra = read_probe_spectra(trial_dir)
    feats = features_by_epoch(spectra)
    for e in meta["lyapunov"]["at_epochs"]:
        for f in FEATURES:
            row[f"le{e}_{f}"] = feats.get(e, {}).get(f)
    # where the trial's last attempt ran (a Ray node id and its host), as trial.json records it
    node = (status or {}).get("node")
    node = node if isinstance(node, dict) else {}
    row["node_id"], row["hostname"] = node.get("id"), node.get("hostname")
    row["error"] = status.get("error") if status else None
    return row, spectra


def collect(sweep_dir: str | Path) -> dict[str, int]:
    """Write ``trials.csv`` and ``spectra.npz`` from the trial directories and record the status
    counts in ``sweep.json``; return the counts."""
    root = Path(sweep_dir)
    meta = SweepDir(root).meta()
    rows, arrays = [], {}
    for plan in meta["trials"]:
        row, spectra = trial_row(root / "trials" / plan["id"], plan, meta)
        rows.append(row)
        for e, ex in sorted(spectra.items()):
            arrays[f"{plan['id']}_le{e}"] = np.asarray(ex, dtype=np.float64).mean(0)
            arrays[f"{plan['id']}_le{e}_batch"] = np.asarray(ex, dtype=np.float64)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    columns = [c for c in columns if c != "error"] + ["error"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow([_cell(row.get(c)) for c in columns])
    atomic_write_text(root / TRIALS_FILE, buf.getvalue())
    npz = io.BytesIO()
    np.savez(npz, **arrays)
    atomic_write_bytes(root / SPECTRA_NPZ, npz.getvalue())
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    update_sweep_json(root, counts=counts, complete=counts.get("pending", 0) == 0
                      and counts.get("failed", 0) == 0,
                      best=best_trial(rows, meta["metric"]["mode"]))
    return counts


def best_trial(rows: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    """``{"trial", "best_valid"}`` of the finished trial (``ok``, ``diverged``, ``stopped``)
    with the best validation metric among ``trials.csv`` rows, or None when none has one."""
    best = None
    for row in rows:
        v = row.get("best_valid")
        if row["status"] not in FINAL_STATUSES or not _finite(v):
            continue
        if best is None or (v > best["best_valid"] if mode == "max" else v < best["best_valid"]):
            best = {"trial": row["trial"], "best_valid": v}
    return best
