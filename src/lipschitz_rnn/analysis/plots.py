"""Every figure of the analysis package, written as PNG files with matplotlib.

* :func:`plot_spectrum`: a Lyapunov spectrum (batch mean, +-1 std and min-max bands);
* :func:`plot_evolution`: Lyapunov spectra during training, coloured by epoch;
* :func:`plot_density`: a Hessian spectral density with its extreme eigenvalues;
* :func:`plot_curves`: robustness curves, one panel per kind of noise.

Figures are built on an Agg canvas without pyplot's global state (safe in threads and servers)
and saved atomically (temporary file in the same folder, then ``os.replace``). Results are read
by attribute (duck typing), so this module imports none of the estimators and they re-export
their plot from here.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
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
    "draw_spectrum",
    "plot_spectrum",
    "evolution_figure",
    "plot_evolution",
    "plot_density",
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
# Hessian spectra
# ----------------------------------------------------------------------------------------------
def plot_density(spectrum: Any, path: str | os.PathLike[str], *, title: str | None = None) -> str:
    """Plot a :class:`~lipschitz_rnn.analysis.HessianSpectrum`'s density (log scale) with
    :math:`\\lambda_{\\min}` and :math:`\\lambda_{\\max}` marked, to a PNG. Returns the path.

    Raises:
        ValueError: the spectrum was computed without ``density=True``.
    """
    if spectrum.density is None:
        raise ValueError("spectrum has no density: compute it with hessian_spectrum(density=True)")
    grid, values = spectrum.density.grid, spectrum.density.values
    fig, axes = new_figure()
    ax = axes[0, 0]
    positive = values[values > 0]
    floor = max(float(positive.max()) * 1e-12, 1e-300) if positive.size else 1e-300
    ax.semilogy(grid, np.maximum(values, floor), color="C0", lw=1.2, label="density")
    ax.axvline(spectrum.lambda_max, color="C3", ls="--", lw=0.8,
               label=f"λmax = {spectrum.lambda_max:.3g}")
    ax.axvline(spectrum.min_eigenvalue, color="C2", ls="--", lw=0.8,
               label=f"λmin = {spectrum.min_eigenvalue:.3g}")
    ax.set_xlabel("eigenvalue λ")
    ax.set_ylabel("density p(λ)")
    ax.set_title(title or f"Hessian spectral density (P = {spectrum.num_parameters})")
    ax.legend(loc="best", fontsize="small")
    return save_png(fig, path)


# ----------------------------------------------------------------------------------------------
# robustness
# ----------------------------------------------------------------------------------------------
_SIGMA_LABELS = {"input": "σ (absolute)", "weight": "σ (relative to tensor rms)"}


def plot_curves(curves: Sequence[Any], path: str | os.PathLike[str], *,
                title: str | None = None) -> str:
    """Plot :class:`~lipschitz_rnn.analysis.RobustnessCurve` objects (mean ± std over seeds) to
    a PNG: one panel per kind present (input noise, weight noise), one line per curve, labelled
    by ``curve.label``, the y-axis named by the curves' metric. Returns the path."""
    curves = list(curves)
    if not curves:
        raise ValueError("curves is empty")
    kinds = [k for k in ("input", "weight") if any(c.kind == k for c in curves)]
    kinds += sorted({c.kind for c in curves} - set(kinds))
    fig, axes = new_figure(1, len(kinds), figsize=(5.0 * len(kinds), 3.8))
    for ax, kind in zip(axes[0], kinds, strict=True):
        for j, c in enumerate(x for x in curves if x.kind == kind):
            ax.errorbar(c.sigmas, c.mean, yerr=c.std, marker="o", ms=3, capsize=2,
                        color=f"C{j % 10}", label=c.label or f"curve {j}")
        metrics = sorted({c.metric for c in curves if c.kind == kind})
        ax.set_xlabel(_SIGMA_LABELS.get(kind, "σ"))
        ax.set_ylabel(" / ".join(metrics))
        ax.set_title(f"{kind} noise")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    if title:
        fig.suptitle(title)
    return save_png(fig, path)
