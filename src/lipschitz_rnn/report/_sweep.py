"""A sweep directory in the report: its settings (``sweep.json``, as tables), the trials table
(``trials.csv``, sortable), the validation curves and the probe spectra of its trials
(``trials/<id>/``, ``spectra.npz``; no study needed), and the study's text and plots when a
study was run (``study.md`` or ``study.json``, PNG files)."""

from __future__ import annotations

import base64
import csv
import json
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..runs.sweepdir import SPECTRA_NPZ, TRIALS_DIR, TRIALS_FILE, SweepDir
from . import figures
from ._html import esc, figure, fmt, markdown, note, table
from ._run import RunData, read_run

__all__ = ["sweep_section"]

#: what reading a file of a sweep may raise (unreadable, damaged, not CSV, JSON or npz)
_READ_ERRORS = (OSError, ValueError, csv.Error, zipfile.BadZipFile)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PLOT_FOLDERS = (".", "study", "plots")
#: what the study's own figures show (lipschitz_rnn.sweep.study_plots), for their captions
_STUDY_CAPTIONS = {
    "study_metric_vs_lmax.png": "The study's final metric of every trial against its largest "
                                "Lyapunov exponent (per step) at each LE epoch, coloured by unit.",
    "study_spectra.png": "The study's mean Lyapunov spectra (per step) of the trials at each LE "
                         "epoch, coloured by the final metric.",
    "study_auc.png": "The study's cross-validated AUC (top against bottom quartile of the final "
                     "metric) of every feature set; 0.5 is chance.",
}
#: fewest trials of a unit for a Spearman correlation in the report
_MIN_RHO_TRIALS = 3


def _best_column(header: list[str]) -> str | None:
    """The column of the trials' final metric: ``best_valid*``, else another ``best_*``."""
    for prefix in ("best_valid", "best"):
        for h in header:
            if h.startswith(prefix) and "epoch" not in h:
                return h
    return None


def _read_table(sweep: SweepDir, problems: list[str]) -> tuple[list[str], list[list[Any]]] | None:
    """(header, rows) of ``trials.csv``; None when absent or unreadable (noted)."""
    if not sweep.file(TRIALS_FILE).is_file():
        return None
    try:
        return sweep.table()
    except _READ_ERRORS as e:
        problems.append(f"{TRIALS_FILE} could not be read ({e})")
        return None


def _trials_part(sweep: SweepDir, table_: tuple[list[str], list[list[Any]]] | None,
                 meta: dict | None) -> str:
    if table_ is None:
        if sweep.file(TRIALS_FILE).is_file():
            return ""  # unreadable: noted with the sweep's problems
        return note("No trials.csv: the sweep has not recorded a trial yet.")
    header, body = table_
    if not header:
        return note("trials.csv is empty.")
    best = _best_column(header)
    text = f"<p>{len(body)} trial(s). Click a column head to sort."
    if best is not None:
        col = header.index(best)
        _, descending = SweepDir.metric(meta)

        def has_number(r: list) -> bool:
            return col < len(r) and isinstance(r[col], (int, float)) and r[col] == r[col]

        numeric = [r for r in body if has_number(r)]
        rest = [r for r in body if not has_number(r)]
        numeric.sort(key=lambda r: r[col], reverse=descending)
        body = numeric + rest
        text += f" Sorted by <code>{esc(best)}</code>, best first."
    return text + "</p>" + table(header, body, sortable=True, cls="trials")


@dataclass
class _Trial:
    """One trial as the report sees it: its swept values, unit, final metric, run and spectra."""

    id: str
    model: Any = None
    params: dict[str, Any] = field(default_factory=dict)
    row: dict[str, Any] = field(default_factory=dict)  # its trials.csv row
    run: RunData | None = None
    spectra: dict[int, np.ndarray] = field(default_factory=dict)  # epoch -> mean spectrum

    @property
    def best(self) -> float | None:
        v = self.row.get("best_valid")
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

    def lmax(self, epoch: int) -> float | None:
        v = self.row.get(f"le{epoch}_max")
        if isinstance(v, (int, float)) and math.isfinite(v):
            return float(v)
        lam = self.spectra.get(epoch)
        if lam is not None and lam.size and np.isfinite(lam).any():
            return float(np.nanmax(lam))
        return None


def _swept_keys(meta: dict | None, header: list[str], rows: list[dict]) -> list[str]:
    """The swept keys: ``sweep.json``'s ``swept_keys``, else the ``trials.csv`` columns between
    ``status`` and ``best_valid`` (``model`` and ``seed`` only when they take several values)."""
    keys = (meta or {}).get("swept_keys")
    if isinstance(keys, list) and all(isinstance(k, str) for k in keys):
        return keys
    if "status" not in header:
        return []
    end = header.index("best_valid") if "best_valid" in header else len(header)
    cols = header[header.index("status") + 1 : end]
    return [c for c in cols if c not in ("model", "seed")
            or len({repr(r.get(c)) for r in rows}) > 1]


def _read_npz(read, name: str, problems: list[str]) -> dict:
    """``read()`` (the arrays of an npz file), {} when it cannot be read (noted)."""
    try:
        return read()
    except _READ_ERRORS as e:
        problems.append(f"{name} could not be read ({e})")
        return {}


def _trials(sweep: SweepDir, table_: tuple[list[str], list[list[Any]]] | None,
            meta: dict | None, problems: list[str]) -> tuple[list[_Trial], list[str]]:
    """Every trial of the sweep (the plan of ``sweep.json``, the rows of ``trials.csv``, the
    folders under ``trials/``, in that order of precedence) and the swept keys."""
    header, body = table_ or ([], [])
    rows = [dict(zip(header, r, strict=False)) for r in body]
    by_id = {str(r.get("trial")): r for r in rows if r.get("trial") is not None}
    plan = {str(t["id"]): t for t in (meta or {}).get("trials") or []
            if isinstance(t, dict) and "id" in t}
    ids = list(dict.fromkeys([*plan, *by_id, *sweep.trial_ids()]))
    swept = _swept_keys(meta, header, rows)
    common = _read_npz(sweep.spectra, SPECTRA_NPZ, problems)
    out = []
    for tid in ids:
        t = _Trial(tid, row=by_id.get(tid, {}))
        pl = plan.get(tid, {})
        params = dict(pl.get("params") or {})
        for k in ("model", "seed"):
            if k not in params and k in pl:
                params[k] = pl[k]
        for k in swept:
            if k not in params and k in t.row:
                params[k] = t.row[k]
        d = sweep.trial(tid)
        if d.is_run():
            t.run = read_run(d.path)
        t.model = params.get("model", t.row.get("model"))
        if t.model is None and t.run is not None:
            t.model = t.run.config.get("model")
        t.params = params
        probe = _read_npz(lambda d=d: sweep.probe_spectra(d.name), f"{tid}/probe_spectra.npz",
                          problems)
        for e, v in probe.items():
            if v.ndim in (1, 2) and v.size:
                t.spectra[e] = v.mean(0) if v.ndim == 2 else v
        for k, v in common.items():
            m = re.fullmatch(re.escape(tid) + r"_le(\d+)", k)
            if m and int(m.group(1)) not in t.spectra and v.ndim == 1 and v.size:
                t.spectra[int(m.group(1))] = v
        out.append(t)
    return out, swept


def _figure_trials(trials: list[_Trial]) -> list[dict]:
    return [{"name": t.id, "model": t.model, "params": t.params,
             "records": t.run.records if t.run else [], "spectra": t.spectra} for t in trials]


def _metric_name(meta: dict | None, trials: list[_Trial]) -> str:
    name, _ = SweepDir.metric(meta)
    if name:
        return name
    return next((t.run.metric for t in trials if t.run is not None and t.run.records), "loss")


def _curves_part(trials: list[_Trial], swept: list[str], meta: dict | None,
                 has_folder: bool) -> str:
    if not has_folder:
        return note("No trials/ folder: no learning curves of the trials.")
    shown = [t for t in trials if t.run is not None and t.run.records]
    if not shown:
        return note("No trial has finished an epoch yet.")
    metric = _metric_name(meta, trials)
    items = _figure_trials(shown)
    _, _, coding = figures.trial_encoding(items, swept)
    units = len({repr(t.model) for t in shown})
    facet = "one panel per unit, " if units > 1 else ""
    seeds = len({repr(t.params.get("seed")) for t in shown})
    return figure(figures.trial_curves(items, metric, swept),
                  f"Validation {metric} of each of the {len(shown)} trials per epoch, {facet}"
                  f"{coding} (legend)"
                  f"{'; the seeds of a configuration share its colour and style' if seeds > 1 else ''}"
                  ". Each trial is a run directory under trials/: lipschitz-rnn report on it "
                  "shows it in full.")


def _spearman(x: list[float], y: list[float]) -> tuple[float | None, str]:
    """(Spearman's rho, the cell text) of paired values; None with the reason when undefined."""
    n = len(x)
    if n < _MIN_RHO_TRIALS:
        return None, f"— (n = {n})"
    if np.ptp(x) == 0:
        return None, f"— (the exponent is the same in all {n})"
    if np.ptp(y) == 0:
        return None, f"— (the metric is the same in all {n})"
    from scipy.stats import spearmanr

    rho = float(spearmanr(x, y).statistic)
    return rho, f"{rho:+.2f} (n = {n})"


def _rho_table(trials: list[_Trial], epochs: list[int], metric: str) -> str:
    """Spearman's rho of the largest exponent against the best validation metric, per unit
    and over all trials, at every LE epoch; left out (with the reason) when none is defined."""
    units = figures._distinct([t.model for t in trials])
    groups = [("all trials", trials)] + ([(figures._value_text(u), [
        t for t in trials if repr(t.model) == repr(u)]) for u in units] if len(units) > 1 else [])
    rows, defined = [], False
    for e in epochs:
        cells = []
        for _, members in groups:
            pairs = [(t.lmax(e), t.best) for t in members
                     if t.lmax(e) is not None and t.best is not None]
            rho, text = _spearman([a for a, _ in pairs], [b for _, b in pairs])
            defined |= rho is not None
            cells.append(text)
        rows.append([e, *cells])
    if not defined:
        return note(f"No Spearman correlation of the largest exponent with the best validation "
                    f"{metric}: it needs at least {_MIN_RHO_TRIALS} trials of a unit in which "
                    "both vary.")
    return (f"<p>Spearman's ρ of the largest exponent at each LE epoch against the best "
            f"validation {metric}, over the trials of trials.csv that have both (n of them in "
            "brackets); ρ > 0: a larger exponent goes with a larger metric.</p>"
            + table(["LE epoch", *[g for g, _ in groups]], rows))


def _spectra_part(trials: list[_Trial], swept: list[str], meta: dict | None) -> str:
    epochs = sorted({e for t in trials for e in t.spectra})
    if not epochs:
        return note("No spectra of the trials (trials/<id>/probe_spectra.npz, spectra.npz): the "
                    "sweep's [lyapunov] at_epochs computes them on its probe input.")
    shown = [t for t in trials if t.spectra]
    metric = _metric_name(meta, trials)
    items = _figure_trials(shown)
    _, _, coding = figures.trial_encoding(items, swept)
    units = len({repr(t.model) for t in shown})
    when = ", ".join(str(e) for e in epochs)
    body = ("<p>Lyapunov exponents are in natural log per step of the recurrence, on the "
            "sweep's fixed probe input (the same sequences for every trial); LE epoch 0 is the "
            "initialisation.</p>")
    body += figure(figures.trial_spectra(items, epochs, swept),
                   f"Mean Lyapunov spectrum of each of the {len(shown)} trials on the probe at "
                   f"LE epoch(s) {when}, "
                   f"{'one row per unit, ' if units > 1 else ''}one column per epoch, {coding} "
                   "(legend); exponents in descending order, per step.")
    scored = [{"model": t.model, "best": t.best, "lmax": {e: t.lmax(e) for e in epochs}}
              for t in trials if t.best is not None]
    if scored:
        body += figure(figures.metric_vs_lmax(scored, epochs, metric),
                       f"Best validation {metric} of each trial against its largest Lyapunov "
                       f"exponent (per step) at LE epoch(s) {when}, coloured by unit.")
        body += _rho_table(trials, epochs, metric)
    return body


def _png_uri(p: Path, problems: list[str]) -> str | None:
    try:
        data = p.read_bytes()
    except OSError as e:
        problems.append(f"{p.name} could not be read ({e})")
        return None
    if not data.startswith(_PNG_MAGIC):
        problems.append(f"{p.name} is not a PNG image (skipped)")
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _without_empty_tables(md: str) -> tuple[str, list[str]]:
    """``md`` without the sections (a heading and what follows it up to the next heading)
    whose every table holds no value outside its first column (every cell ``—`` or blank);
    and the titles of the sections left out."""
    parts = re.split(r"(?m)^(?=#+ )", md)
    kept, dropped = [], []
    for part in parts:
        lines = part.splitlines()
        cells = [re.split(r"(?<!\\)\|", ln.strip().strip("|"))[1:] for ln in lines
                 if ln.strip().startswith("|")
                 and not re.fullmatch(r"\|?[\s:|-]+\|?", ln.strip())]
        data = [c.strip() for row in cells[1:] for c in row]  # cells[0] is the head row
        if lines and lines[0].startswith("#") and cells and data and all(
                c in ("—", "-", "") for c in data):
            dropped.append(lines[0].lstrip("#").strip())
        else:
            kept.append(part)
    return "".join(kept), dropped


def _caption(p: Path, root: Path) -> str:
    known = _STUDY_CAPTIONS.get(p.name)
    if known:
        return known
    return f"A plot found in the sweep directory ({p.relative_to(root)}), not one of the study's."


def _study_part(path: Path, problems: list[str]) -> str:
    body = ""
    md, js = path / "study.md", path / "study.json"
    if md.is_file():
        try:
            text, dropped = _without_empty_tables(md.read_text())
            body += markdown(text, sortable_tables=True)
            for title in dropped:
                body += note(f"Left out of the study: \"{title}\", a table without a value (too "
                             "few trials of a unit, or an exponent that does not vary); the "
                             "spectra above give what the trials do show.")
        except (OSError, UnicodeDecodeError) as e:
            problems.append(f"study.md could not be read ({e})")
    elif js.is_file():
        try:
            body += "<pre>" + esc(json.dumps(json.loads(js.read_text()), indent=2)) + "</pre>"
        except (OSError, ValueError) as e:
            problems.append(f"study.json could not be read ({e})")
    pngs = []
    for sub in _PLOT_FOLDERS:
        d = path / sub
        if d.is_dir():
            pngs += sorted(p for p in d.glob("*.png") if p.is_file())
    for p in pngs:
        uri = _png_uri(p, problems)
        if uri is not None:
            body += figure(uri, _caption(p, path))
    if not body:
        body = note(f"No study of this sweep (study.md, study.json, plots): "
                    f"lipschitz-rnn study {path}")
    return body


def _read_meta(sweep: SweepDir, problems: list[str]) -> dict | None:
    """``sweep.json`` (None when absent or unreadable, noted)."""
    if not sweep.file("sweep.json").is_file():
        return None
    try:
        return sweep.meta()
    except _READ_ERRORS as e:
        problems.append(f"sweep.json could not be read ({e})")
        return None


_MAX_LIST = 12


def _cell(v: Any) -> Any:
    """A value of ``sweep.json`` as a table cell: lists of numbers or words joined (long ones
    cut), anything else nested as compact JSON."""
    if isinstance(v, list):
        if all(not isinstance(x, (list, dict)) for x in v):
            shown = ", ".join(fmt(x) for x in v[:_MAX_LIST])
            return shown + (f", … ({len(v)} values)" if len(v) > _MAX_LIST else "")
        return json.dumps(v)
    if isinstance(v, dict):
        if len(v) == 1:  # e.g. a sampled key's {"loguniform": [lo, hi]}
            (k, x), = v.items()
            return f"{k} [{_cell(x)}]" if isinstance(x, list) else f"{k}: {fmt(_cell(x))}"
        return json.dumps(v) if v else "—"
    return v


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, value)`` of the nested tables of ``d``; a table of values of one kind
    (``{"lr": {"loguniform": [..]}}``) stays one row."""
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and not (len(v) == 1 and prefix.endswith("sample.")):
            out += _flatten(v, key + ".")
        else:
            out.append((key, _cell(v)))
    return out


def _records_table(items: list, top: dict) -> str:
    """A list of JSON objects (e.g. ``sessions``) as a table; nested tables equal to the same
    key at the top of ``sweep.json`` (the versions) are left out."""
    rows = []
    for it in items:
        if not isinstance(it, dict):
            it = {"value": it}
        rows.append(dict(_flatten({k: v for k, v in it.items()
                                   if not (isinstance(v, dict) and v == top.get(k))})))
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return table(cols, [[r.get(c) for c in cols] for r in rows])


def _settings_part(d: dict | None) -> str:
    if d is None:
        return note("No readable sweep.json (the sweep's specification and versions).")
    plain = {k: v for k, v in d.items()
             if not (isinstance(v, list) and v and all(isinstance(x, dict) for x in v))}
    lists = {k: v for k, v in d.items() if k not in plain}
    rows = []
    for key, value in _flatten({k: v for k, v in plain.items() if k not in ("spec", "versions")}):
        rows.append((key, value))
    out = ""
    spec = d.get("spec")
    if isinstance(spec, dict):
        out += "<h4>Specification</h4>" + table(["key", "value"], _flatten(spec))
    trials = lists.pop("trials", None)
    if trials is not None:
        rows.append(("trials", f"{len(trials)} planned (see the Trials table)"))
    if rows:
        out += "<h4>Sweep</h4>" + table(["key", "value"], rows)
    for key, items in lists.items():
        out += f"<h4>{esc(key)}</h4>" + _records_table(items, d)
    versions = d.get("versions")
    if isinstance(versions, dict) and versions:
        out += "<h4>Versions</h4>" + table(["package", "version"], _flatten(versions))
    return out


def sweep_section(path: Path, anchor: str) -> str:
    problems: list[str] = []
    sweep = SweepDir(path)
    meta = _read_meta(sweep, problems)
    table_ = _read_table(sweep, problems)
    trials, swept = _trials(sweep, table_, meta, problems)
    parts = [
        ("sweep-settings", "Sweep settings", _settings_part(meta)),
        ("trials", "Trials", _trials_part(sweep, table_, meta)),
        ("trial-curves", "Validation curves of the trials",
         _curves_part(trials, swept, meta, sweep.file(TRIALS_DIR).is_dir())),
        ("trial-spectra", "Lyapunov spectra of the trials", _spectra_part(trials, swept, meta)),
        ("study", "Study", _study_part(path, problems)),
    ]
    body = "".join(
        f'<section class="part" data-part="{key}"><h3>{esc(title)}</h3>{html}</section>'
        for key, title, html in parts
    )
    name = path.resolve().name or str(path)
    return (f'<section class="sweep" id="{esc(anchor)}"><h2>Sweep {esc(name)}</h2>'
            f"<p><code>{esc(path)}</code></p>{''.join(note(p) for p in problems)}{body}</section>")
