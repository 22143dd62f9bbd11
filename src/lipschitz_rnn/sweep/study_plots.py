"""The figures of a study (:func:`lipschitz_rnn.sweep.study.run_study`), as PNG files.

* ``study_metric_vs_lmax.png``: the final metric against the largest exponent, one panel per LE
  epoch, coloured by architecture;
* ``study_spectra.png``: the mean spectra at each later LE epoch, coloured by the final metric;
* ``study_auc.png``: the cross-validated AUC of every feature set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.plots import new_figure, save_png

__all__ = ["write_study_plots"]


def _metric_label(meta: dict[str, Any]) -> str:
    m = meta["metric"]
    return f"final {m['name']}" + ("" if m["mode"] == "max" else " (negated)")


def _epoch_figures(root: Path, rows, y: np.ndarray, meta, spectra, epochs, archs) -> list[str]:
    """The final metric against lambda_max, and the mean spectra, one panel per LE epoch."""
    from matplotlib import cm, colormaps, colors

    names = []
    fig, axes = new_figure(1, len(epochs), figsize=(4.2 * len(epochs), 3.6))
    for ax, e in zip(axes[0], epochs, strict=True):
        lmax = np.array([r.get(f"le{e}_max") if isinstance(r.get(f"le{e}_max"), float)
                         else np.nan for r in rows])
        for i, a in enumerate(archs):
            sel = np.array([str(r["model"]) == a for r in rows]) & np.isfinite(lmax)
            ax.scatter(lmax[sel], y[sel], s=14, color=f"C{i}", label=a, alpha=0.8)
        ax.axvline(0.0, color="k", lw=0.8, ls="--")
        ax.set_xlabel(f"λ max at epoch {e}")
        ax.set_title("at initialisation" if e == 0 else f"after epoch {e}")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(_metric_label(meta))
    axes[0, 0].legend(fontsize="small")
    save_png(fig, root / "study_metric_vs_lmax.png")
    names.append("study_metric_vs_lmax.png")

    norm = colors.Normalize(float(y.min()), float(y.max()) if np.ptp(y) > 0 else float(y.min()) + 1)
    cmap = colormaps["viridis"]
    fig, axes = new_figure(1, len(epochs), figsize=(4.2 * len(epochs), 3.6))
    for ax, e in zip(axes[0], epochs, strict=True):
        for r, score in zip(rows, y, strict=True):
            key = f"{r['trial']}_le{e}"
            if key in spectra:
                lam = np.asarray(spectra[key])
                ax.plot(np.arange(1, lam.size + 1), lam, color=cmap(norm(score)), lw=0.8,
                        alpha=0.8)
        ax.axhline(0.0, color="k", lw=0.8, ls="--")
        ax.set_xlabel("exponent index")
        ax.set_title(f"epoch {e}")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("Lyapunov exponent")
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
