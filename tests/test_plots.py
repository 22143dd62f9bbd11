"""One place per figure: the CLI's PNG files (analysis/plots.py), the HTML report
(report/figures.py) and a sweep's study (sweep/study_plots.py) draw the same panel with the same
``draw_*`` function, so their labels, panel order and drawn data agree; exponent axes carry
their unit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lipschitz_rnn.analysis import RobustnessCurve
from lipschitz_rnn.analysis import plots as analysis_plots
from lipschitz_rnn.analysis.hessian import HessianSpectrum, SpectralDensity
from lipschitz_rnn.report import figures
from lipschitz_rnn.sweep import study_plots


@pytest.fixture
def captured(monkeypatch):
    """The matplotlib figures that the three front-ends would have written, by front-end."""
    seen: dict[str, list] = {"cli": [], "report": [], "study": []}

    def keep(where):
        def save(fig, *args, **kwargs):
            seen[where].append(fig)
            return "data:" if where == "report" else str(args[0] if args else "")
        return save

    monkeypatch.setattr(analysis_plots, "save_png", keep("cli"))
    monkeypatch.setattr(figures, "svg_data_uri", keep("report"))
    monkeypatch.setattr(study_plots, "save_png", keep("study"))
    return seen


def _legend(ax) -> list[str]:
    leg = ax.get_legend()
    return [t.get_text() for t in leg.get_texts()] if leg else []


def _panel(ax) -> tuple:
    return ax.get_title(), ax.get_xlabel(), ax.get_ylabel(), _legend(ax)


def test_hessian_density_is_one_panel_in_the_cli_and_the_report(captured, tmp_path):
    grid = np.linspace(-1.0, 5.0, 200)
    values = np.exp(-((grid - 0.2) ** 2) / 0.05)
    values[:30] = 0.0  # zeros: drawn at the floor, 1e-12 of the peak, on the log axis
    spec = HessianSpectrum(np.array([4.0, 3.1, 2.5]), -0.4, 10.0, None, None, 0,
                           SpectralDensity(grid, values), 321, 0.5, 2, 0)
    analysis_plots.plot_density(spec, tmp_path / "hessian.png")
    figures.hessian_density(json.loads(json.dumps(spec.to_dict())))  # as read from hessian.json
    (cli,), (report,) = captured["cli"], captured["report"]
    a, b = cli.axes[0], report.axes[0]
    assert _panel(a)[1:] == _panel(b)[1:]  # the titles say where each figure is shown
    assert _legend(a) == ["density", "λmax = 4", "other top eigenvalues", "λmin = -0.4"]
    assert (a.get_xlabel(), a.get_ylabel()) == ("eigenvalue λ", "density p(λ)")
    (da, *_), (db, *_) = a.get_lines(), b.get_lines()
    np.testing.assert_array_equal(da.get_ydata(), db.get_ydata())
    assert da.get_ydata().min() == pytest.approx(values.max() * analysis_plots.DENSITY_FLOOR)
    assert a.get_yscale() == b.get_yscale() == "log"
    # without a density the report still marks the eigenvalues, on an axis without ticks
    figures.hessian_density({"eigenvalues": [2.0, None], "min_eigenvalue": None})
    c = captured["report"][-1].axes[0]
    assert _legend(c) == ["λmax = 2"] and c.get_ylabel() == "" and not list(c.get_yticks())


def test_robustness_panels_in_the_same_order_with_the_same_labels(captured, tmp_path):
    curves = [
        RobustnessCurve("weight", [0.0, 0.1], [1.0, 0.8], [0.0, 0.1], [[1, 1], [0.9, 0.7]],
                        [0, 1], 1.0, "accuracy", "run"),
        RobustnessCurve("input", [0.0, 0.2], [1.0, 0.9], [0.0, 0.05], [[1, 1], [0.95, 0.85]],
                        [0, 1], 1.0, "accuracy", "run"),
    ]
    analysis_plots.plot_curves(curves, tmp_path / "robustness.png")
    stored = json.loads(json.dumps({c.kind: c.to_dict() for c in curves}))  # robustness.json
    figures.robustness_curves(stored, "accuracy")
    (cli,), (report,) = captured["cli"], captured["report"]
    panels = [_panel(ax) for ax in cli.axes]
    assert panels == [_panel(ax) for ax in report.axes]
    assert panels == [("input noise", "σ (absolute)", "accuracy", ["run"]),
                      ("weight noise", "σ (relative to tensor rms)", "accuracy", ["run"])]
    assert analysis_plots.noise_kinds(["zeta", "weight", "alpha", "input"]) == [
        "input", "weight", "alpha", "zeta"]


def _sweep_trials():
    rng = np.random.default_rng(0)
    rows, spectra, trials = [], {}, []
    for i in range(8):
        model = ("lstm", "rnn")[i % 2]
        lmax = {0: rng.normal(-0.5, 0.1), 1: rng.normal(0.0, 0.2)}
        best = 0.9 - 0.4 * lmax[1]
        row = {"trial": f"t{i:03d}", "model": model}
        for e, v in lmax.items():
            row[f"le{e}_max"] = v
            spectra[f"t{i:03d}_le{e}"] = v - 0.1 * np.arange(6)
        rows.append(row)
        trials.append({"model": model, "params": {"seed": i}, "best": best, "lmax": lmax,
                       "spectra": {e: spectra[f"t{i:03d}_le{e}"] for e in lmax}})
    return rows, spectra, trials


def test_study_and_report_draw_the_sweep_panels_alike_with_units(captured, tmp_path):
    rows, spectra, trials = _sweep_trials()
    y = np.array([t["best"] for t in trials])
    meta = {"metric": {"name": "accuracy", "mode": "max"}}
    result = {"lyapunov_epochs": [0, 1], "auc": [{"feature_set": "spectrum@1", "auc": 0.8}]}
    names = study_plots.write_study_plots(tmp_path, rows, y, meta, spectra, result)
    assert names == ["study_metric_vs_lmax.png", "study_spectra.png", "study_auc.png"]
    figures.metric_vs_lmax(trials, [0, 1], "accuracy")
    figures.trial_spectra(trials, [0, 1], ["seed"])
    study_lmax, study_spectra, _ = captured["study"]
    report_lmax, report_spectra = captured["report"]
    # metric against the largest exponent: same panels, x axis in exponents per step
    s_axes, r_axes = study_lmax.axes, report_lmax.axes
    assert [(ax.get_title(), ax.get_xlabel()) for ax in s_axes] == [
        (ax.get_title(), ax.get_xlabel()) for ax in r_axes] == [
        ("at initialisation", "largest exponent (per step)"),
        ("after epoch 1", "largest exponent (per step)")]
    for s_ax, r_ax in zip(s_axes, r_axes, strict=True):  # the same points, grouped by unit
        s_pts = sorted(map(tuple, np.concatenate([c.get_offsets() for c in s_ax.collections])))
        r_pts = sorted(map(tuple, np.concatenate([c.get_offsets() for c in r_ax.collections])))
        np.testing.assert_allclose(s_pts, r_pts)
    # spectra: exponent axes carry their unit in both (the study's colour bar is its own axis)
    label = analysis_plots.exponent_label(1.0)
    assert study_spectra.axes[0].get_ylabel() == label == report_spectra.axes[0].get_ylabel()
    assert [ax.get_title() for ax in study_spectra.axes[:2]] == [
        "at initialisation", "after epoch 1"]
    assert all(ax.get_xlabel() == "exponent index" for ax in study_spectra.axes[:2])
    assert len(study_spectra.axes[1].get_lines()) == 8 + 1  # every trial and the zero line
