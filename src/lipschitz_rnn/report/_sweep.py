"""A sweep directory in the report: its settings (``sweep.json``), the trials table
(``trials.csv``, sortable), the validation curves of its trials (``trials/<id>/``) and the
study's text and plots when a study was run (``study.md`` or ``study.json``, PNG files)."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path
from typing import Any

from . import figures
from ._html import details, esc, figure, markdown, note, table
from ._run import is_run, read_run

__all__ = ["is_sweep", "sweep_section"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PLOT_FOLDERS = (".", "study", "plots")


def is_sweep(path: Path) -> bool:
    return (path / "trials.csv").is_file() or (path / "sweep.json").is_file()


def _value(text: str) -> Any:
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _best_column(header: list[str]) -> str | None:
    """The column of the trials' final metric: ``best_valid*``, else another ``best_*``."""
    for prefix in ("best_valid", "best"):
        for h in header:
            if h.startswith(prefix) and "epoch" not in h:
                return h
    return None


def _metric(meta: dict | None) -> tuple[str | None, bool | None]:
    """(name, higher is better) of the sweep's metric as ``sweep.json`` records it."""
    m = (meta or {}).get("metric")
    if not isinstance(m, dict):
        return None, None
    mode = m.get("mode")
    return m.get("name"), (None if mode not in ("max", "min") else mode == "max")


def _trials_part(path: Path, meta: dict | None, problems: list[str]) -> str:
    p = path / "trials.csv"
    if not p.is_file():
        return note("No trials.csv: the sweep has not recorded a trial yet.")
    try:
        reader = csv.reader(io.StringIO(p.read_text()))
        rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        problems.append(f"trials.csv could not be read ({e})")
        return ""
    if not rows:
        return note("trials.csv is empty.")
    header, body = rows[0], [[_value(v) for v in r] for r in rows[1:] if r]
    best = _best_column(header)
    text = f"<p>{len(body)} trial(s). Click a column head to sort."
    if best is not None:
        col = header.index(best)
        name, higher = _metric(meta)
        descending = higher if higher is not None else "acc" in f"{best} {name}"
        def has_number(r: list) -> bool:
            return col < len(r) and isinstance(r[col], (int, float)) and r[col] == r[col]

        numeric = [r for r in body if has_number(r)]
        rest = [r for r in body if not has_number(r)]
        numeric.sort(key=lambda r: r[col], reverse=descending)
        body = numeric + rest
        text += f" Sorted by <code>{esc(best)}</code>, best first."
    return text + "</p>" + table(header, body, sortable=True, cls="trials")


def _curves_part(path: Path, meta: dict | None) -> str:
    folder = path / "trials"
    if not folder.is_dir():
        return note("No trials/ folder: no learning curves of the trials.")
    runs = [read_run(d) for d in sorted(folder.iterdir()) if d.is_dir() and is_run(d)]
    runs = [r for r in runs if r.records]
    if not runs:
        return note("No trial has finished an epoch yet.")
    name, higher = _metric(meta)
    metric = name or runs[0].metric
    higher = higher if higher is not None else metric == "accuracy"
    uri = figures.trial_curves([(r.name, r.records) for r in runs], metric, higher)
    return figure(uri, f"validation {metric} of every trial per epoch, coloured by its best "
                       "value (each trial is a run directory under trials/)")


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


def _study_part(path: Path, problems: list[str]) -> str:
    body = ""
    md, js = path / "study.md", path / "study.json"
    if md.is_file():
        try:
            body += markdown(md.read_text(), sortable_tables=True)
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
            body += figure(uri, str(p.relative_to(path)))
    if not body:
        body = note(f"No study of this sweep (study.md, study.json, plots): "
                    f"lipschitz-rnn study {path}")
    return body


def _read_meta(path: Path, problems: list[str]) -> dict | None:
    """``sweep.json`` (None when absent or unreadable, noted)."""
    p = path / "sweep.json"
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        problems.append(f"sweep.json could not be read ({e})")
        return None
    if not isinstance(d, dict):
        problems.append("sweep.json does not hold a JSON object")
        return None
    return d


def _settings_part(path: Path, d: dict | None) -> str:
    if d is None:
        return note("No readable sweep.json (the sweep's specification and versions).")
    simple = [(k, v) for k, v in d.items() if not isinstance(v, (dict, list))]
    nested = {k: v for k, v in d.items() if isinstance(v, (dict, list))}
    out = table(["key", "value"], simple) if simple else ""
    for k, v in nested.items():
        out += details(k, "<pre>" + esc(json.dumps(v, indent=2)) + "</pre>")
    return out


def sweep_section(path: Path, anchor: str) -> str:
    problems: list[str] = []
    meta = _read_meta(path, problems)
    parts = [
        ("sweep-settings", "Sweep settings", _settings_part(path, meta)),
        ("trials", "Trials", _trials_part(path, meta, problems)),
        ("trial-curves", "Validation curves of the trials", _curves_part(path, meta)),
        ("study", "Study", _study_part(path, problems)),
    ]
    body = "".join(
        f'<section class="part" data-part="{key}"><h3>{esc(title)}</h3>{html}</section>'
        for key, title, html in parts
    )
    name = path.resolve().name or str(path)
    return (f'<section class="sweep" id="{esc(anchor)}"><h2>Sweep {esc(name)}</h2>'
            f"<p><code>{esc(path)}</code></p>{''.join(note(p) for p in problems)}{body}</section>")
