"""The report's figures, drawn with matplotlib and returned as ``data:`` URIs (SVG).

Every function takes plain data (lists and dicts as read from a run directory's JSON; ``None``
for a missing number) and returns ``data:image/svg+xml;base64,...``, which an ``<img>`` shows
without any other file. Figures live on their own canvas, never in pyplot's global state.

A panel that the CLI's PNG files or a sweep's study also show (spectra, Hessian density,
robustness curves, metric against the largest exponent) is drawn by the ``draw_*`` function of
:mod:`lipschitz_rnn.analysis.plots`; this module lays the panels out, and draws what only the
report shows (learning curves, the stability region, the sweep's facets and colour coding).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..analysis.plots import (
    draw_density,
    draw_metric_vs_lmax,
    draw_robustness,
    draw_spectra,
    draw_spectrum,
    evolution_figure,
    exponent_label,
    le_epoch_title,
    noise_kinds,
)
from ..models.solvers import stability_polynomial

__all__ = [
    "svg_data_uri",
    "learning_curves",
    "overlaid_curves",
    "eigenvalue_plane",
    "lyapunov_spectrum",
    "lyapunov_evolution",
    "hessian_density",
    "robustness_curves",
    "trial_encoding",
    "trial_curves",
    "trial_curves_figure",
    "trial_spectra",
    "trial_spectra_figure",
    "metric_vs_lmax",
    "metric_vs_lmax_figure",
]

_RC = {"svg.fonttype": "path", "svg.hashsalt": "lipschitz-rnn-report", "font.size": 9}


def _new(ncols: int = 1, width: float = 6.4, height: float = 3.4):
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def svg_data_uri(fig: Figure) -> str:
    """``fig`` as an SVG ``data:`` URI (text as paths: no font is needed to show it)."""
    buf = io.BytesIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _floats(values: Sequence[Any]) -> np.ndarray:
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def _column(records: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of ``key`` over the records that have it."""
    rows = [(r["epoch"], r[key]) for r in records if r.get(key) is not None and "epoch" in r]
    if not rows:
        return np.array([]), np.array([])
    ep, v = zip(*rows, strict=True)
    return np.asarray(ep, dtype=np.float64), _floats(v)


def _style(ax, xlabel: str, ylabel: str, title: str | None = None) -> None:
    if xlabel == "epoch":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")


def learning_curves(records: Sequence[dict], metric: str) -> str:
    """Loss and ``metric`` against epoch for the train, valid and test splits present."""
    fig, (ax_loss, ax_metric) = _new(2, width=9.0)
    for ax, what in ((ax_loss, "loss"), (ax_metric, metric)):
        for split, style in (("train", "-"), ("valid", "--"), ("test", ":")):
            ep, v = _column(records, f"{split}_{what}")
            if ep.size:
                ax.plot(ep, v, style, marker="o", ms=3, label=split)
        _style(ax, "epoch", what)
    return svg_data_uri(fig)


def overlaid_curves(series: Sequence[tuple[str, Sequence[dict], str]]) -> str:
    """Several runs on shared axes: training loss, and the validation metric (one panel per
    metric name). ``series``: ``(label, records, metric)`` per run."""
    metrics = list(dict.fromkeys(m for _, _, m in series))
    fig, axes = _new(1 + len(metrics), width=4.2 * (1 + len(metrics)))
    for i, (label, records, metric) in enumerate(series):
        color = f"C{i % 10}"
        ep, v = _column(records, "train_loss")
        if ep.size:
            axes[0].plot(ep, v, "-", marker="o", ms=2, color=color, label=label)
        ep, v = _column(records, f"valid_{metric}")
        if ep.size:
            axes[1 + metrics.index(metric)].plot(ep, v, "-", marker="o", ms=2, color=color,
                                                 label=label)
    _style(axes[0], "epoch", "training loss")
    for ax, metric in zip(axes[1:], metrics, strict=True):
        _style(ax, "epoch", f"validation {metric}")
    return svg_data_uri(fig)


def _region_grid(coeffs: Sequence[float], eps: float, xlim, ylim, n: int = 160):
    x = np.linspace(*xlim, n)
    y = np.linspace(*ylim, n)
    X, Y = np.meshgrid(x, y)
    R = np.polyval(np.asarray(coeffs, dtype=np.float64)[::-1], eps * (X + 1j * Y))
    return X, Y, np.abs(R)


def _region_bounds(coeffs: Sequence[float]) -> tuple[tuple[float, float], tuple[float, float]]:
    """A box around the stability region ``|R(z)| <= 1`` in the ``z`` plane."""
    X, Y, A = _region_grid(coeffs, 1.0, (-4.0, 1.0), (-3.5, 3.5), 400)
    inside = A <= 1.0
    if not inside.any():  # pragma: no cover - every scheme here has a region
        return (-1.0, 0.5), (-1.0, 1.0)
    return (float(X[inside].min()), float(X[inside].max())), (
        float(Y[inside].min()),
        float(Y[inside].max()),
    )


def _pad(lo: float, hi: float, frac: float = 0.12) -> tuple[float, float]:
    span = hi - lo if hi > lo else max(abs(hi), 1e-3)
    return lo - frac * span, hi + frac * span


def eigenvalue_plane(eig_A: Sequence[complex], eig_W: Sequence[complex], solver: str,
                     eps: float, title: str = "") -> str:
    """Eigenvalues of ``A`` and ``W`` in the complex plane over the region
    ``{lambda : |R(eps lambda)| <= 1}`` where the solver's step is stable on ``dh/dt = lambda h``.
    Left: the whole region; right: zoomed on the eigenvalues."""
    coeffs = stability_polynomial(solver)
    ea = np.asarray(eig_A, dtype=np.complex128)
    ew = np.asarray(eig_W, dtype=np.complex128)
    both = np.concatenate([ea, ew, [0j]])
    (zx0, zx1), (zy0, zy1) = _region_bounds(coeffs)
    full_x = _pad(min(zx0 / eps, both.real.min()), max(zx1 / eps, both.real.max()), 0.08)
    full_y = _pad(min(zy0 / eps, both.imag.min()), max(zy1 / eps, both.imag.max()), 0.08)
    zoom_x = _pad(both.real.min(), both.real.max(), 0.25)
    zoom_y = _pad(min(both.imag.min(), -1e-3), max(both.imag.max(), 1e-3), 0.25)
    fig, axes = _new(2, width=9.0, height=3.8)
    for ax, (xl, yl), name in ((axes[0], (full_x, full_y), "stability region"),
                               (axes[1], (zoom_x, zoom_y), "zoom on the eigenvalues")):
        X, Y, mag = _region_grid(coeffs, eps, xl, yl)
        ax.contourf(X, Y, mag, levels=[0.0, 1.0], colors=["#cfe3f5"])
        ax.contour(X, Y, mag, levels=[1.0], colors=["#4a7fb5"], linewidths=0.8)
        ax.axhline(0.0, color="k", lw=0.5)
        ax.axvline(0.0, color="k", lw=0.5)
        ax.plot(ew.real, ew.imag, "x", color="C3", ms=5, label="eig(W)")
        ax.plot(ea.real, ea.imag, "o", color="C0", ms=4, mfc="none", label="eig(A)")
        ax.set_xlim(*xl)
        ax.set_ylim(*yl)
        _style(ax, "Re λ", "Im λ", name)
    fig.suptitle(title or f"{solver}, ε = {eps:g}: shaded |R(ελ)| ≤ 1")
    return svg_data_uri(fig)


def lyapunov_spectrum(d: dict) -> str:
    """A ``lyapunov.json``: the spectrum (drawn by :func:`lipschitz_rnn.analysis.plots.
    draw_spectrum`) and, when recorded, the convergence history of the running estimates."""
    rows = d.get("history") or []
    hist = np.asarray([_floats(r) for r in rows], dtype=np.float64) if rows else np.zeros((0, 0))
    steps = np.asarray(d.get("history_steps") or [], dtype=np.float64)
    has_hist = hist.ndim == 2 and hist.shape[0] > 0 and steps.size == hist.shape[0]
    fig, axes = _new(2 if has_hist else 1, width=9.0 if has_hist else 5.5)
    draw_spectrum(axes[0], d)
    axes[0].set_title("spectrum")
    if has_hist:
        ax = axes[1]
        k = hist.shape[1]
        show = sorted(set(np.linspace(0, k - 1, min(k, 12)).round().astype(int).tolist()))
        for j in show:
            color = matplotlib.colormaps["viridis"](j / max(k - 1, 1))
            ax.plot(steps, hist[:, j], lw=1.0, color=color)
        ax.axhline(0.0, color="k", lw=0.8, ls="--")
        _style(ax, "averaged steps", exponent_label(d.get("dt"), "running estimate"),
               f"convergence ({len(show)} of {k} exponents)")
    return svg_data_uri(fig)


def lyapunov_evolution(records: Sequence[tuple[float, Sequence[float]]]) -> str:
    """Spectra logged during training (``(epoch, spectrum)`` pairs), as
    :func:`lipschitz_rnn.analysis.plots.plot_evolution` draws them."""
    return svg_data_uri(evolution_figure(records))


def hessian_density(d: dict) -> str:
    """A ``hessian.json``: the spectral density (log scale) when present, with the top
    eigenvalues and the smallest one marked (:func:`~lipschitz_rnn.analysis.plots.
    draw_density`)."""
    fig, (ax,) = _new(1, width=5.8)
    draw_density(ax, d)
    ax.set_title("Hessian spectrum of the test loss")
    return svg_data_uri(fig)


def robustness_curves(curves: dict, metric: str) -> str:
    """A ``robustness.json``'s curves (kind -> mean ± std over noise seeds), one panel per kind
    (:func:`~lipschitz_rnn.analysis.plots.draw_robustness`)."""
    items = [{**c, "kind": kind} for kind, c in curves.items()]
    kinds = noise_kinds(curves)
    fig, axes = _new(len(kinds), width=4.5 * len(kinds))
    for ax, kind in zip(axes, kinds, strict=True):
        draw_robustness(ax, items, kind, metric=metric)
    return svg_data_uri(fig)


# --- sweeps: every trial, faceted by unit, coloured (and styled) by the swept keys ------------
_LINE_STYLES = ("-", "--", ":", "-.")
_MAX_STYLES = len(_LINE_STYLES)


def _distinct(values: Sequence[Any]) -> list[Any]:
    """The distinct values, numbers in numeric order first, then the rest as text."""
    seen: dict[str, Any] = {}
    for v in values:
        seen.setdefault(repr(v), v)
    nums, rest = [], []
    for v in seen.values():
        (nums if _is_number(v) else rest).append(v)
    return sorted(nums) + sorted(rest, key=str)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _value_text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def _palette(n: int) -> list[Any]:
    """``n`` colours told apart easily: matplotlib's cycle, tab20, then a sampled colour map."""
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    if n <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(n)]
    return [matplotlib.colormaps["turbo"](i / (n - 1)) for i in range(n)]


def trial_encoding(trials: Sequence[dict], swept: Sequence[str]) -> tuple[list[dict], list, str]:
    """How a sweep's trials are told apart in its figures.

    ``trials``: dicts with ``"model"`` and ``"params"`` (the swept key -> value of the trial);
    ``swept``: the swept keys. The unit (``model``) is the facet; of the other swept keys but the
    seed, the one with the most values colours the lines (a sequential colour map for numbers)
    and a second one with at most four values sets the line style; with more keys than that, each
    configuration gets a colour of its own. Seeds of one configuration share colour and style.
    Returns (per trial ``{"color", "ls"}``, the legend handles, a phrase saying what colour and
    style mean, for the caption).
    """
    from matplotlib.lines import Line2D

    keys = [k for k in swept if k not in ("model", "seed")]
    values = {k: _distinct([t["params"].get(k) for t in trials]) for k in keys}
    keys = sorted((k for k in keys if len(values[k]) > 1), key=lambda k: -len(values[k]))
    if not keys and "seed" in swept:
        seeds = _distinct([t["params"].get("seed") for t in trials])
        if len(seeds) > 1:
            keys, values["seed"] = ["seed"], seeds
    if not keys:  # nothing but the unit is swept: one colour per unit
        models = _distinct([t.get("model") for t in trials])
        colors = dict(zip(map(repr, models), _palette(len(models)), strict=True))
        enc = [{"color": colors[repr(t.get("model"))], "ls": "-"} for t in trials]
        handles = [Line2D([], [], color=colors[repr(m)], label=_value_text(m)) for m in models]
        return enc, handles, "coloured by unit"
    if len(keys) <= 2 and (len(keys) == 1 or len(values[keys[1]]) <= _MAX_STYLES):
        ck = keys[0]
        cv = values[ck]
        if all(_is_number(v) for v in cv) and len(cv) > 2:
            cmap = matplotlib.colormaps["viridis"]
            cols = [cmap(0.9 * i / (len(cv) - 1)) for i in range(len(cv))]
        else:
            cols = _palette(len(cv))
        color_of = dict(zip(map(repr, cv), cols, strict=True))
        sk = keys[1] if len(keys) == 2 else None
        style_of = ({repr(v): _LINE_STYLES[i] for i, v in enumerate(values[sk])}
                    if sk else {})
        enc = [{"color": color_of[repr(t["params"].get(ck))],
                "ls": style_of.get(repr(t["params"].get(sk)), "-") if sk else "-"}
               for t in trials]
        handles = [Line2D([], [], color=color_of[repr(v)], lw=2, label=f"{ck} = {_value_text(v)}")
                   for v in cv]
        if sk:
            handles += [Line2D([], [], color="0.3", ls=style_of[repr(v)],
                               label=f"{sk} = {_value_text(v)}") for v in values[sk]]
        what = f"coloured by {ck}" + (f", line style by {sk}" if sk else "")
        return enc, handles, what
    # several keys: a colour per configuration
    labels = [", ".join(f"{k}={_value_text(t['params'].get(k))}" for k in keys) for t in trials]
    distinct = list(dict.fromkeys(labels))
    color_of = dict(zip(distinct, _palette(len(distinct)), strict=True))
    enc = [{"color": color_of[lab], "ls": "-"} for lab in labels]
    handles = [Line2D([], [], color=color_of[lab], lw=2, label=lab) for lab in distinct]
    return enc, handles, f"coloured by configuration ({', '.join(keys)})"


def _facet_grid(nrows: int, ncols: int, panel_w: float, panel_h: float, legend: bool):
    fig = Figure(figsize=(panel_w * ncols + (2.6 if legend else 0.3), panel_h * nrows + 0.6),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    return fig, axes


def _legend(fig: Figure, handles: list, title: str | None = None) -> None:
    if not handles:
        return
    ncol = 1 if len(handles) <= 16 else 2
    try:
        fig.legend(handles=handles, loc="outside right upper", fontsize="small", title=title,
                   ncol=ncol)
    except ValueError:  # pragma: no cover - matplotlib < 3.7 has no "outside" locations
        fig.legend(handles=handles, loc="upper right", fontsize="small", title=title, ncol=ncol)


def _models(trials: Sequence[dict]) -> list[Any]:
    return _distinct([t.get("model") for t in trials])


def trial_curves_figure(trials: Sequence[dict], metric: str, swept: Sequence[str] = ()) -> Figure:
    """The validation ``metric`` of every trial against epoch: one panel per unit (``model``),
    lines told apart by the swept keys (:func:`trial_encoding`), with a legend. ``trials``:
    dicts with ``"name"``, ``"model"``, ``"params"`` and ``"records"`` (``metrics.jsonl``)."""
    shown = []
    for t in trials:
        ep, v = _column(t.get("records") or [], f"valid_{metric}")
        if ep.size and np.isfinite(v).any():
            shown.append((t, ep, v))
    enc, handles, _ = trial_encoding([t for t, _, _ in shown], swept)
    models = _models([t for t, _, _ in shown]) or [None]
    ncols = min(len(models), 4)
    nrows = math.ceil(len(models) / ncols)
    fig, axes = _facet_grid(nrows, ncols, 3.8 if ncols > 1 else 5.6, 3.0, bool(handles))
    flat = list(axes.flat)
    for n, (ax, model) in enumerate(zip(flat, models, strict=False)):
        mine = [(t, ep, v, e) for (t, ep, v), e in zip(shown, enc, strict=True)
                if repr(t.get("model")) == repr(model)]
        for _, ep, v, e in mine:
            ax.plot(ep, v, ls=e["ls"], color=e["color"], marker="o", ms=2, lw=1.0, alpha=0.85)
        title = f"{_value_text(model)}: {len(mine)} trial(s)" if model is not None else (
            f"{len(mine)} trial(s)")
        _style(ax, "epoch", f"validation {metric}" if n % ncols == 0 else "", title)
    for ax in flat[len(models):]:
        ax.set_visible(False)
    _legend(fig, handles)
    return fig


def trial_curves(trials: Sequence[dict], metric: str, swept: Sequence[str] = ()) -> str:
    """:func:`trial_curves_figure` as an SVG ``data:`` URI."""
    return svg_data_uri(trial_curves_figure(trials, metric, swept))


def trial_spectra_figure(trials: Sequence[dict], epochs: Sequence[int],
                         swept: Sequence[str] = ()) -> Figure:
    """The mean Lyapunov spectrum of every trial on the sweep's probe: one row per unit, one
    column per LE epoch, lines told apart as in :func:`trial_curves_figure`. ``trials``: dicts
    with ``"model"``, ``"params"`` and ``"spectra"`` (epoch -> mean spectrum, per step)."""
    shown = [t for t in trials if any(e in t.get("spectra", {}) for e in epochs)]
    enc, handles, _ = trial_encoding(shown, swept)
    models = _models(shown) or [None]
    fig, axes = _facet_grid(len(models), len(epochs), 3.4, 2.6, bool(handles))
    for i, model in enumerate(models):
        mine = [(t, e) for t, e in zip(shown, enc, strict=True)
                if repr(t.get("model")) == repr(model)]
        for j, epoch in enumerate(epochs):
            ax = axes[i, j]
            drawn = [(t["spectra"][epoch], e) for t, e in mine
                     if t["spectra"].get(epoch) is not None]
            draw_spectra(ax, [lam for lam, _ in drawn], [e["color"] for _, e in drawn],
                         [e["ls"] for _, e in drawn])
            head = f"{_value_text(model)}, " if model is not None else ""
            ax.set_title(f"{head}{le_epoch_title(epoch)}")
            if i < len(models) - 1:
                ax.set_xlabel("")
            if j > 0:
                ax.set_ylabel("")
    _legend(fig, handles)
    return fig


def trial_spectra(trials: Sequence[dict], epochs: Sequence[int], swept: Sequence[str] = ()) -> str:
    """:func:`trial_spectra_figure` as an SVG ``data:`` URI."""
    return svg_data_uri(trial_spectra_figure(trials, epochs, swept))


def metric_vs_lmax_figure(trials: Sequence[dict], epochs: Sequence[int], metric: str) -> Figure:
    """The best validation ``metric`` of every trial against its largest exponent at each LE
    epoch (one panel each), coloured by unit. ``trials``: dicts with ``"model"``, ``"best"``
    and ``"lmax"`` (epoch -> largest exponent of the mean spectrum, per step)."""
    models = _models(trials)
    colors = dict(zip(map(repr, models), _palette(len(models)), strict=True))
    fig, axes = _facet_grid(1, len(epochs), 3.6, 3.0, bool(models))
    for j, epoch in enumerate(epochs):
        groups = []
        for m in models:
            mine = [t for t in trials if repr(t.get("model")) == repr(m)]
            groups.append((_value_text(m), colors[repr(m)],
                           [t.get("lmax", {}).get(epoch) for t in mine],
                           [t.get("best") for t in mine]))
        ax = axes[0, j]
        draw_metric_vs_lmax(ax, groups, ylabel=f"best validation {metric}" if j == 0 else "")
        ax.set_title(le_epoch_title(epoch))
    from matplotlib.lines import Line2D

    _legend(fig, [Line2D([], [], ls="", marker="o", color=colors[repr(m)],
                         label=_value_text(m)) for m in models], title="unit")
    return fig


def metric_vs_lmax(trials: Sequence[dict], epochs: Sequence[int], metric: str) -> str:
    """:func:`metric_vs_lmax_figure` as an SVG ``data:`` URI."""
    return svg_data_uri(metric_vs_lmax_figure(trials, epochs, metric))
