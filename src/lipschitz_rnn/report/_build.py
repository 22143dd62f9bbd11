"""Assemble the report of runs and sweeps into one HTML page and write it atomically."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

from .. import __version__
from .._io import atomic_write_text
from ..runs.analyses import compare_runs
from ..runs.rundir import is_run
from ..runs.sweepdir import is_sweep
from . import figures
from ._html import anchor, esc, figure, markdown, note, page, table
from ._run import RunData, flat_config, read_run, run_section
from ._sweep import sweep_section

__all__ = ["build_report", "write_report", "default_report_path", "REPORT_NAME"]

#: the file name of a report written into the (single) directory it describes
REPORT_NAME = "report.html"


def _classify(paths) -> list[tuple[str, Path]]:
    """``("run" | "sweep", path)`` per path; ValueError naming the first that is neither."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    try:
        items = [Path(p) for p in paths]
    except TypeError:
        raise TypeError("paths must be a sequence of run or sweep directories") from None
    if not items:
        raise ValueError("paths is empty: give at least one run or sweep directory")
    out = []
    for p in items:
        if not p.is_dir():
            raise ValueError(f"paths: {p} is not a directory (a run or a sweep directory)")
        if is_run(p):
            out.append(("run", p))
        elif is_sweep(p):
            out.append(("sweep", p))
        else:
            raise ValueError(
                f"paths: {p} is neither a run directory (no config.toml) nor a sweep directory "
                "(no trials.csv or sweep.json)"
            )
    return out


def _comparison(runs: list[tuple[RunData, str]]) -> str:
    """The runs side by side: the compare table, overlaid curves, the settings that differ."""
    body = ""
    finished = [r for r, _ in runs if r.results is not None]
    if len(finished) >= 2:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                md, _ = compare_runs([r.path for r in finished])
            except (OSError, ValueError, KeyError, TypeError, StopIteration) as e:
                md = None
                body += note(f"The comparison table could not be made: {e}")
        body += "".join(note(str(w.message)) for w in caught)
        if md is not None:
            body += ("<p>Test metric, Hessian summary (λ_max, trace, κ = λ_max/|λ_min|) and "
                     "accuracy under input and weight noise σ, as "
                     "<code>lipschitz-rnn compare</code> writes them.</p>")
            body += markdown(md, sortable_tables=True)
    missing = [r.name for r, _ in runs if r.results is None]
    if missing:
        body += note(f"Not in the table (no results.json, unfinished): {', '.join(missing)}.")
    series = [(r.name, r.records, r.metric) for r, _ in runs if r.records]
    if series:
        body += figure(figures.overlaid_curves(series),
                       "training loss and validation metric per epoch, all runs")
    flats = [flat_config(r.config) for r, _ in runs]
    keys = sorted({k for f in flats for k in f})
    differ = [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1]
    if differ:
        body += "<h3>Settings that differ</h3>" + table(
            ["key", *[r.name for r, _ in runs]], [[k, *[f.get(k) for f in flats]] for k in differ]
        )
    links = " · ".join(f'<a href="#{esc(a)}">{esc(r.name)}</a>' for r, a in runs)
    return (f'<section class="comparison" id="comparison"><h2>Comparison of {len(runs)} runs</h2>'
            f"<p>Each run in full: {links}</p>{body}</section>")


def build_report(paths) -> str:
    """The HTML of the report of ``paths`` (run and sweep directories), as a string.

    Raises ValueError naming a path that is neither a run (``config.toml``) nor a sweep
    (``trials.csv`` or ``sweep.json``) directory; files missing from a directory are skipped
    with a note in the report.
    """
    items = _classify(paths)
    taken = {"comparison"}
    runs = [(read_run(p), anchor("run-" + p.resolve().name, taken))
            for kind, p in items if kind == "run"]
    sweeps = [(p, anchor("sweep-" + p.resolve().name, taken)) for kind, p in items
              if kind == "sweep"]
    names = [r.name for r, _ in runs]
    for r, _ in runs:
        if names.count(r.name) > 1:  # e.g. a/run and b/run: name them by their parent too
            r.name = f"{r.path.resolve().parent.name}/{r.name}"
    sections = []
    nav = []
    if len(runs) > 1:
        sections.append(_comparison(runs))
        nav.append('<a href="#comparison">comparison</a>')
    for p, a in sweeps:
        sections.append(sweep_section(p, a))
        nav.append(f'<a href="#{esc(a)}">sweep {esc(p.resolve().name)}</a>')
    run_html = [run_section(r, a) for r, a in runs]
    nav += [f'<a href="#{esc(a)}">{esc(r.name)}</a>' for r, a in runs]
    if len(run_html) > 1:
        sections.append('<div class="runs">' + "".join(run_html) + "</div>")
    else:
        sections += run_html
    names = [r.name for r, _ in runs] + [p.resolve().name for p, _ in sweeps]
    what = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    header = (
        f"<h1>lipschitz-rnn report: {esc(what)}</h1>"
        f"<p>{len(runs)} run(s), {len(sweeps)} sweep(s) · written "
        f"{esc(time.strftime('%Y-%m-%d %H:%M'))} by lipschitz-rnn {esc(__version__)}</p>"
        f"<nav>{' '.join(nav)}</nav>"
    )
    if not sections:  # pragma: no cover - _classify returns at least one item
        sections.append(note("Nothing to report."))
    return page(f"lipschitz-rnn report: {what}", header, "\n".join(sections))


def default_report_path(paths) -> Path:
    """``DIR/report.html`` for a single directory, ``./report.html`` for several."""
    items = _classify(paths)
    return items[0][1] / REPORT_NAME if len(items) == 1 else Path(REPORT_NAME)


def write_report(paths, out: str | os.PathLike | None = None) -> Path:
    """Write the self-contained HTML report of ``paths`` (run and sweep directories) to ``out``
    (default: :func:`default_report_path`), atomically; return its path.

    The page loads nothing from anywhere: figures are inline SVG ``data:`` URIs (PNG for a
    study's plots), the style and the table sorting are inline. Raises ValueError naming a path
    that is not a run or sweep directory, or an ``out`` that is a directory; nothing is written
    then.
    """
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a file path or None, got {type(out).__name__}")
    target = default_report_path(paths) if out is None else Path(out)
    if target.is_dir():
        raise ValueError(f"out: {target} is a directory; give the path of an .html file")
    text = build_report(paths)
    atomic_write_text(target, text)
    return target
