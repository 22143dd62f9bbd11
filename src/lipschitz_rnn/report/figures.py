"""The report's figures, drawn with matplotlib and returned as ``data:`` URIs (SVG).

Every function takes plain data (lists and dicts as read from a run directory's JSON; ``None``
for a missing number) and returns ``data:image/svg+xml;base64,...``, which an ``<img>`` shows
without any other file. Figures live on their own canvas, never in pyplot's global state.
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

from ..analysis.plots import draw_spectrum, evolution_figure
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
    "trial_curves",
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
        _style(ax, "averaged steps", "running estimate",
               f"convergence ({len(show)} of {k} exponents)")
    return svg_data_uri(fig)


def lyapunov_evolution(records: Sequence[tuple[float, Sequence[float]]]) -> str:
    """Spectra logged during training (``(epoch, spectrum)`` pairs), as
    :func:`lipschitz_rnn.analysis.plots.plot_evolution` draws them."""
    return svg_data_uri(evolution_figure(records))


def hessian_density(d: dict) -> str:
    """A ``hessian.json``: the spectral density (log scale) when present, with the top
    eigenvalues and the smallest one marked."""
    fig, (ax,) = _new(1, width=5.8)
    dens = d.get("density") or {}
    grid, values = _floats(dens.get("grid") or []), _floats(dens.get("values") or [])
    top = _floats(d.get("eigenvalues") or [])
    lo = d.get("min_eigenvalue")
    if grid.size and grid.size == values.size:
        pos = values[values > 0]
        floor = max(float(pos.max()) * 1e-12, 1e-300) if pos.size else 1e-300
        ax.semilogy(grid, np.maximum(values, floor), color="C0", lw=1.2, label="density")
        ylabel = "density p(λ)"
    else:
        ax.set_yticks([])
        ylabel = ""
    for i, v in enumerate(top[np.isfinite(top)]):
        ax.axvline(v, color="C3", ls="--", lw=0.8, label="top eigenvalues" if i == 0 else None)
    if lo is not None:
        ax.axvline(float(lo), color="C2", ls="--", lw=0.8, label=f"λmin = {float(lo):.3g}")
    _style(ax, "eigenvalue λ", ylabel, "Hessian spectrum of the test loss")
    return svg_data_uri(fig)


_SIGMA = {"input": "σ (absolute)", "weight": "σ (relative)"}


def robustness_curves(curves: dict, metric: str) -> str:
    """A ``robustness.json``'s curves (mean ± std over noise seeds), one panel per kind."""
    kinds = [k for k in ("input", "weight") if k in curves] + sorted(
        set(curves) - {"input", "weight"}
    )
    fig, axes = _new(len(kinds), width=4.5 * len(kinds))
    for ax, kind in zip(axes, kinds, strict=True):
        c = curves[kind]
        ax.errorbar(_floats(c.get("sigmas", [])), _floats(c.get("mean", [])),
                    yerr=_floats(c.get("std", [])), marker="o", ms=3, capsize=2)
        _style(ax, _SIGMA.get(kind, "σ"), metric, f"{kind} noise")
    return svg_data_uri(fig)


def trial_curves(trials: Sequence[tuple[str, Sequence[dict]]], metric: str,
                 higher_is_better: bool) -> str:
    """The validation metric of every trial of a sweep against epoch, coloured by its best
    value (the best trial's line on top)."""
    from matplotlib import cm, colors

    curves = []
    for name, records in trials:
        ep, v = _column(records, f"valid_{metric}")
        if ep.size and np.isfinite(v).any():
            best = np.nanmax(v) if higher_is_better else np.nanmin(v)
            curves.append((best, name, ep, v))
    fig, (ax,) = _new(1, width=6.8, height=3.8)
    if curves:
        curves.sort(key=lambda c: c[0] if higher_is_better else -c[0])
        bests = [c[0] for c in curves]
        lo, hi = min(bests), max(bests)
        spread = hi - lo > 1e-9 * max(1.0, abs(hi))
        norm = colors.Normalize(lo, hi if spread else lo + 1.0)
        cmap = matplotlib.colormaps["viridis" if higher_is_better else "viridis_r"]
        for best, _, ep, v in curves:
            ax.plot(ep, v, "-", marker="o", ms=2, lw=1.0, alpha=0.85,
                    color=cmap(norm(best)) if spread else "C0")
        if spread:  # one colour when every trial ends at the same value
            fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=f"best {metric}")
    _style(ax, "epoch", f"validation {metric}", f"{len(curves)} trials")
    return svg_data_uri(fig)
