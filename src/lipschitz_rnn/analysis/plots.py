"""Every figure of spectra, curvature and robustness, drawn once with matplotlib.

Each ``draw_*(ax, data)`` draws one panel, labels included, and is the only place that panel is
drawn: the CLI's PNG files (the ``plot_*`` functions here), the HTML report
(:mod:`lipschitz_rnn.report.figures`, as SVG) and a sweep's study
(:mod:`lipschitz_rnn.sweep.study_plots`) all call it.

* :func:`draw_spectrum` / :func:`plot_spectrum`: a Lyapunov spectrum (batch mean, +-1 std and
  min-max bands); :func:`evolution_figure` / :func:`plot_evolution`: spectra during training;
* :func:`draw_spectra`: the spectra of many models on one panel (a sweep's trials);
* :func:`draw_metric_vs_lmax`: a final metric against the largest exponent, per group;
* :func:`draw_density` / :func:`plot_density`: a Hessian spectral density with its extreme
  eigenvalues;
* :func:`draw_robustness` / :func:`plot_curves`: robustness curves, one panel per kind of noise
  (in the order of :func:`noise_kinds`).

Exponent axes carry their unit (:func:`exponent_label`: per step, or per unit time with a step
``dt``). Figures are built on an Agg canvas without pyplot's global state (safe in threads and
servers) and saved atomically (temporary file in the same folder, then ``os.replace``). Results
are read by attribute or, as read from their JSON files, by key (duck typing), so this module
imports none of the estimators (their results are drawn here, from :mod:`lipschitz_rnn.analysis`).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._io import atomic_write_bytes
from ._model_state import nan_for_none
from .features import entropy_rate, kaplan_yorke_dimension

__all__ = [
    "new_figure",
    "save_png",
    "exponent_label",
    "le_epoch_title",
    "draw_spectrum",
    "plot_spectrum",
    "evolution_figure",
    "plot_evolution",
    "draw_spectra",
    "draw_metric_vs_lmax",
    "DENSITY_FLOOR",
    "draw_density",
    "plot_density",
    "noise_kinds",
    "draw_robustness",
    "plot_curves",
]


def new_figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.0, 4.0)):
    """A matplotlib Figure on an Agg canvas (constrained layout, so panel labels never overlap
    their neighbours' ticks) and its (nrows, ncols) array of axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def save_png(fig: Any, path: str | os.PathLike[str]) -> str:
    """Save ``fig`` as PNG at ``path`` atomically (mode from the umask); returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())
    return os.fspath(path)


def _get(result: Any, name: str) -> Any:
    """``result[name]`` of a result as read from JSON (a mapping), else its attribute (None when
    absent)."""
    if isinstance(result, Mapping):
        return result.get(name)
    return getattr(result, name, None)


def _floats(values: Any) -> np.ndarray:
    """A float64 vector of ``values`` (None, a missing JSON number, becomes NaN; None: empty)."""
    if values is None:
        return np.zeros(0)
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def _finish(ax: Any, xlabel: str, ylabel: str, title: str | None = None) -> None:
    """Axis labels, title, a light grid, and a legend when something is labelled."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")


# ----------------------------------------------------------------------------------------------
# Lyapunov spectra
# ----------------------------------------------------------------------------------------------
def exponent_label(dt: float | None = 1.0, what: str = "Lyapunov exponent") -> str:
    """The axis label of exponents estimated with step duration ``dt``: natural log per step
    for ``dt = 1`` (the estimator's default, and every spectrum the CLI, training and sweeps
    compute), per unit time otherwise."""
    dt = 1.0 if dt is None else float(dt)
    if dt == 1.0:
        return f"{what} (per step)"
    return f"{what} (per unit time, step dt = {dt:g})"


def le_epoch_title(epoch: int) -> str:
    """The title of a panel of spectra taken at LE epoch ``epoch`` (0: the initialisation)."""
    return "at initialisation" if epoch == 0 else f"after epoch {epoch}"


def _dt_of(spectrum: Any) -> float | None:
    """The step duration a spectrum records (a LyapunovSpectrum or its dict), else None."""
    dt = spectrum.get("dt") if isinstance(spectrum, Mapping) else getattr(spectrum, "dt", None)
    try:
        return None if dt is None else float(dt)
    except (TypeError, ValueError):
        return None


def _as_exponent_matrix(spectrum: Any) -> Tensor:
    """(batch, k) float64, sorted descending, from a LyapunovSpectrum (anything with a tensor
    ``exponents``), its ``to_dict()``, or a (k,) / (batch, k) array of exponents."""
    if isinstance(getattr(spectrum, "exponents", None), Tensor):
        e = spectrum.exponents.to(torch.float64)
    elif isinstance(spectrum, Mapping):
        e = torch.tensor(
            nan_for_none(spectrum.get("exponents", spectrum.get("mean"))), dtype=torch.float64
        )
    else:
        e = torch.as_tensor(spectrum, dtype=torch.float64)
    if e.dim() == 1:
        e = e.unsqueeze(0)
    if e.dim() != 2 or e.numel() == 0:
        raise ValueError(f"spectrum: expected (k,) or (batch, k) exponents, got {tuple(e.shape)}")
    return e.sort(-1, descending=True).values


def draw_spectrum(ax: Any, spectrum: Any, *, dt: float | None = None) -> Tensor:
    """Draw exponent index vs value (batch mean, +-1 std band and min-max spread) on ``ax``;
    returns the mean spectrum. ``spectrum`` as for :func:`plot_spectrum`; the y-axis unit
    follows ``dt``, else the ``dt`` the spectrum records, else 1 (per step)."""
    e = _as_exponent_matrix(spectrum)
    mean, idx = e.mean(0), torch.arange(1, e.shape[1] + 1)
    std = e.std(0) if e.shape[0] > 1 else torch.zeros_like(mean)
    if e.shape[0] > 1:
        ax.fill_between(idx, e.amin(0), e.amax(0), color="C0", alpha=0.15, label="min-max")
        ax.fill_between(idx, mean - std, mean + std, color="C0", alpha=0.3, label="±1 std")
    ax.plot(idx, mean, "o-" if e.shape[1] <= 40 else "-", color="C0", ms=3, label="mean")
    ax.axhline(0.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("exponent index")
    ax.set_ylabel(exponent_label(dt if dt is not None else _dt_of(spectrum)))
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    return mean


def plot_spectrum(spectrum: Any, path: str | os.PathLike[str], *, title: str | None = None,
                  dt: float | None = None) -> str:
    """Plot exponent index vs value (batch mean, +-1 std band and min-max spread) to a PNG.

    ``spectrum`` is a :class:`~lipschitz_rnn.analysis.LyapunovSpectrum`, its ``to_dict()``, or
    a (k,) / (batch, k) array; ``dt`` (else the one the spectrum records, else 1) names the
    unit of the exponents on the axis. Returns the path.
    """
    fig, axes = new_figure()
    ax = axes[0, 0]
    mean = draw_spectrum(ax, spectrum, dt=dt)
    ky, ent = float(kaplan_yorke_dimension(mean)), float(entropy_rate(mean))
    ax.set_title(title or f"λ1 = {float(mean[0]):.4g}, KY dim = {ky:.3g}, Σλ+ = {ent:.3g}")
    return save_png(fig, path)


def evolution_figure(records: Sequence[tuple[Any, Any]], *, title: str | None = None,
                     dt: float | None = None):
    """The figure of :func:`plot_evolution` (a matplotlib Figure, not saved)."""
    recs = list(records)
    if not recs:
        raise ValueError("records is empty: need at least one (epoch, exponents) pair")
    epochs, spectra, dts = [], [], []
    for i, item in enumerate(recs):
        try:
            ep, ex = item
        except (TypeError, ValueError):
            raise TypeError(f"records[{i}] must be an (epoch, exponents) pair") from None
        epochs.append(float(ep))
        spectra.append(_as_exponent_matrix(ex).mean(0))
        dts.append(_dt_of(ex))
    from matplotlib import cm, colormaps, colors

    fig, axes = new_figure(1, 2, figsize=(11.0, 4.0))
    ax1, ax2 = axes[0]
    hi = max(epochs) if max(epochs) > min(epochs) else min(epochs) + 1
    norm = colors.Normalize(min(epochs), hi)
    cmap = colormaps["viridis"]
    for ep, s in zip(epochs, spectra, strict=True):
        ax1.plot(torch.arange(1, s.numel() + 1), s, color=cmap(norm(ep)), lw=1.2)
    ax1.axhline(0.0, color="k", lw=0.8, ls="--")
    label = exponent_label(dt if dt is not None else next((d for d in dts if d), None))
    ax1.set_xlabel("exponent index")
    ax1.set_ylabel(label)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax1, label="epoch")
    order = sorted(range(len(epochs)), key=lambda i: epochs[i])
    xs = [epochs[i] for i in order]
    ax2.plot(xs, [float(spectra[i][0]) for i in order], "o-", label="λ max")
    ax2.plot(xs, [float(spectra[i].median()) for i in order], "s-", label="λ median")
    ax2.plot(xs, [float(spectra[i][-1]) for i in order], "^-", label="λ min")
    ax2.axhline(0.0, color="k", lw=0.8, ls="--")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(label)
    ax2.legend(loc="best", fontsize="small")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle(title or "Lyapunov spectrum during training")
    return fig


def plot_evolution(
    records: Sequence[tuple[Any, Any]], path: str | os.PathLike[str], *, title: str | None = None,
    dt: float | None = None,
) -> str:
    """Plot how the spectrum moved during training, to a PNG.

    ``records``: a sequence of ``(epoch, exponents)`` where ``exponents`` is a (k,) list (or
    (batch, k), averaged) or a LyapunovSpectrum / its ``to_dict()``. Left: each epoch's
    spectrum, coloured by epoch; right: the largest, median and smallest exponent against epoch.
    ``dt``: the unit on the axes, as for :func:`plot_spectrum`. Returns the path.
    """
    return save_png(evolution_figure(records, title=title, dt=dt), path)


# ----------------------------------------------------------------------------------------------
# many models: a sweep's trials
# ----------------------------------------------------------------------------------------------
def draw_spectra(ax: Any, spectra: Sequence[Any], colors: Sequence[Any],
                 styles: Sequence[str] | None = None, *, dt: float | None = 1.0) -> None:
    """Draw several spectra on ``ax``, exponent index against value (as ordered in each),
    spectrum ``i`` in ``colors[i]`` and line style ``styles[i]`` (solid without ``styles``), with
    points when a spectrum has at most 16 exponents; the y axis in the unit of ``dt``."""
    from matplotlib.ticker import MaxNLocator

    for i, lam in enumerate(spectra):
        lam = _floats(lam)
        ax.plot(np.arange(1, lam.size + 1), lam, ls=styles[i] if styles else "-",
                color=colors[i], lw=1.0, alpha=0.85, marker="o" if lam.size <= 16 else None,
                ms=2)
    ax.axhline(0.0, color="k", lw=0.8, ls="--")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _finish(ax, "exponent index", exponent_label(dt))


def draw_metric_vs_lmax(ax: Any, groups: Sequence[tuple[str, Any, Any, Any]], *, ylabel: str,
                        dt: float | None = 1.0) -> None:
    """Scatter a metric against the largest Lyapunov exponent on ``ax``, one colour per group:
    ``groups`` holds ``(label, colour, largest exponents, metric values)``; pairs with a missing
    or non-finite value are left out. A dashed line marks exponent 0 (the edge of chaos); the
    x axis is in the unit of ``dt``. The caller places the legend (the labels are set)."""
    for label, color, lmax, metric in groups:
        x, y = _floats(lmax), _floats(metric)
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.any():
            ax.scatter(x[ok], y[ok], s=16, color=color, alpha=0.85, label=label)
    ax.axvline(0.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel(exponent_label(dt, "largest exponent"))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


# ----------------------------------------------------------------------------------------------
# Hessian spectra
# ----------------------------------------------------------------------------------------------
#: a density is drawn on a log scale down to this fraction of its peak (its zeros stay visible)
DENSITY_FLOOR = 1e-12


def draw_density(ax: Any, spectrum: Any) -> None:
    """Draw a Hessian spectrum on ``ax``: its spectral density on a log scale (floored at
    :data:`DENSITY_FLOOR` times its peak) when it has one, and vertical lines at its top
    eigenvalues (the largest labelled :math:`\\lambda_{\\max}`) and at the smallest one.

    ``spectrum``: a :class:`~lipschitz_rnn.analysis.HessianSpectrum` or its ``to_dict()`` (a
    ``hessian.json``, where a missing number is None).
    """
    density = _get(spectrum, "density")
    grid, values = (_floats(_get(density, k)) for k in ("grid", "values"))
    ylabel = ""
    if grid.size and grid.size == values.size:
        positive = values[values > 0]
        floor = max(float(positive.max()) * DENSITY_FLOOR, 1e-300) if positive.size else 1e-300
        ax.semilogy(grid, np.maximum(values, floor), color="C0", lw=1.2, label="density")
        ylabel = "density p(λ)"
    else:
        ax.set_yticks([])
    top = _floats(_get(spectrum, "eigenvalues"))
    for i, v in enumerate(np.sort(top[np.isfinite(top)])[::-1]):
        label = f"λmax = {v:.3g}" if i == 0 else "other top eigenvalues" if i == 1 else None
        ax.axvline(v, color="C3", ls="--", lw=0.8, alpha=1.0 if i == 0 else 0.5, label=label)
    low = _floats([_get(spectrum, "min_eigenvalue")])
    if np.isfinite(low[0]):
        ax.axvline(low[0], color="C2", ls="--", lw=0.8, label=f"λmin = {low[0]:.3g}")
    _finish(ax, "eigenvalue λ", ylabel)


def plot_density(spectrum: Any, path: str | os.PathLike[str], *, title: str | None = None) -> str:
    """Plot a :class:`~lipschitz_rnn.analysis.HessianSpectrum`'s density (log scale) with its
    top eigenvalues and :math:`\\lambda_{\\min}` marked (:func:`draw_density`), to a PNG.
    Returns the path.

    Raises:
        ValueError: the spectrum was computed without ``density=True``.
    """
    if spectrum.density is None:
        raise ValueError("spectrum has no density: compute it with hessian_spectrum(density=True)")
    fig, axes = new_figure()
    draw_density(axes[0, 0], spectrum)
    axes[0, 0].set_title(title or f"Hessian spectral density (P = {spectrum.num_parameters})")
    return save_png(fig, path)


# ----------------------------------------------------------------------------------------------
# robustness
# ----------------------------------------------------------------------------------------------
_SIGMA_LABELS = {"input": "σ (absolute)", "weight": "σ (relative to tensor rms)"}


def noise_kinds(kinds: Iterable[str]) -> list[str]:
    """The panels of a robustness figure, in order: input noise, weight noise, then any other
    kind present by name."""
    present = set(kinds)
    first = [k for k in ("input", "weight") if k in present]
    return first + sorted(present - set(first))


def draw_robustness(ax: Any, curves: Sequence[Any], kind: str, *,
                    metric: str | None = None) -> None:
    """Draw the robustness curves of noise ``kind`` on ``ax`` (mean ± std over seeds against
    σ), one line per curve, labelled by its ``label``; the y axis names ``metric``, else the
    curves' metric. ``curves``: :class:`~lipschitz_rnn.analysis.RobustnessCurve` objects or
    their ``to_dict()`` (the ``curves`` of a ``robustness.json``); others than ``kind`` are
    skipped."""
    mine = [c for c in curves if _get(c, "kind") == kind]
    for j, c in enumerate(mine):
        label = _get(c, "label") or (f"curve {j}" if len(mine) > 1 else None)
        ax.errorbar(_floats(_get(c, "sigmas")), _floats(_get(c, "mean")),
                    yerr=_floats(_get(c, "std")), marker="o", ms=3, capsize=2,
                    color=f"C{j % 10}", label=label)
    metrics = sorted({str(m) for m in (_get(c, "metric") for c in mine) if m})
    _finish(ax, _SIGMA_LABELS.get(kind, "σ"), metric or " / ".join(metrics), f"{kind} noise")


def plot_curves(curves: Sequence[Any], path: str | os.PathLike[str], *,
                title: str | None = None) -> str:
    """Plot :class:`~lipschitz_rnn.analysis.RobustnessCurve` objects (mean ± std over seeds) to
    a PNG: one panel per kind present (:func:`noise_kinds`), one line per curve, labelled by
    ``curve.label``, the y-axis named by the curves' metric (:func:`draw_robustness`). Returns
    the path."""
    curves = list(curves)
    if not curves:
        raise ValueError("curves is empty")
    kinds = noise_kinds(_get(c, "kind") for c in curves)
    fig, axes = new_figure(1, len(kinds), figsize=(5.0 * len(kinds), 3.8))
    for ax, kind in zip(axes[0], kinds, strict=True):
        draw_robustness(ax, curves, kind)
    if title:
        fig.suptitle(title)
    return save_png(fig, path)
