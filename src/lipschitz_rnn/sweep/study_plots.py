"""The figures of a study (:func:`lipschitz_rnn.sweep.study.run_study`), as PNG files.

* ``study_metric_vs_lmax.png``: the final metric against the largest exponent, one panel per LE
  epoch, coloured by architecture;
* ``study_spectra.png``: the mean spectra at each later LE epoch, coloured by the final metric;
* ``study_auc.png``: the cross-validated AUC of every feature set.

The panels of spectra are drawn by :mod:`lipschitz_rnn.analysis.plots` (as in the report);
exponents are per step, as every sweep computes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.plots import (
    draw_metric_vs_lmax,
    draw_spectra,
    le_epoch_title,
    new_figure,
    save_png,
)
from .readout import number

__all__ = ["write_study_plots"]


def _metric_label(meta: dict[str, Any]) -> str:
    m = meta["metric"]
    return f"final {m['name']}" + ("" if m["mode"] == "max" else " (negated)")


def _epoch_figures(root: Path, rows, y: np.ndarray, meta, spectra, epochs, archs) -> list[str]:
    """The final metric against lambda_max, and the mean spectra, one panel per LE epoch."""
    from matplotlib import cm, colormaps, colors

    names = []
    fig, axes = new_figure(1, len(epochs), figsize=(4.2 * len(epochs), 3.6))
    for j, (ax, e) in enumerate(zip(axes[0], epochs, strict=True)):
        lmax = np.array([number(r.get(f"le{e}_max")) for r in rows])
        groups = []
        for i, a in enumerate(archs):
            sel = np.array([str(r["model"]) == a for r in rows])
            groups.append((a, f"C{i}", lmax[sel], y[sel]))
        draw_metric_vs_lmax(ax, groups, ylabel=_metric_label(meta) if j == 0 else "")
        ax.set_title(le_epoch_title(e))
    axes[0, 0].legend(fontsize="small")
    save_png(fig, root / "study_metric_vs_lmax.png")
    names.append("study_metric_vs_lmax.png")

    norm = colors.Normalize(float(y.min()), float(y.max()) if np.ptp(y) > 0 else float(y.min()) + 1)
    cmap = colormaps["viridis"]
    fig, axes = new_figure(1, len(epochs), figsize=(4.2 * len(epochs), 3.6))
    for j, (ax, e) in enumerate(zip(axes[0], epochs, strict=True)):
        drawn = [(np.asarray(spectra[f"{r['trial']}_le{e}"]), score)
                 for r, score in zip(rows, y, strict=True) if f"{r['trial']}_le{e}" in spectra]
        draw_spectra(ax, [lam for lam, _ in drawn], [cmap(norm(score)) for _, score in drawn])
        ax.set_title(le_epoch_title(e))
        if j > 0:
            ax.set_ylabel("")
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes[0, -1],
                 label=_metric_label(meta))
    save_png(fig, root / "study_spectra.png")
    names.append("study_spectra.png")
    return names


def write_study_plots(root: Path, rows, y: np.ndarray, meta, spectra, result) -> list[str]:
    """Write the three figures into ``root`` (the two per LE epoch only when the sweep has
    spectra); return their file names."""
    epochs = result["lyapunov_epochs"]
    archs = sorted({str(r["model"]) for r in rows})
    names = []
    if epochs:  # a sweep without [lyapunov] spectra has only the AUC figure
        names += _epoch_figures(root, rows, y, meta, spectra, epochs, archs)

    entries = [a for a in result["auc"] if a["auc"] is not None]
    fig, axes = new_figure(figsize=(7.0, 0.35 * max(len(entries), 4) + 1.2))
    ax = axes[0, 0]
    ax.barh([a["feature_set"] for a in entries], [a["auc"] for a in entries], color="C0")
    ax.axvline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("cross-validated AUC, top vs bottom quartile")
    ax.grid(alpha=0.3, axis="x")
    save_png(fig, root / "study_auc.png")
    names.append("study_auc.png")
    return names
