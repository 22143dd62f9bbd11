"""The readout of a sweep: does the early Lyapunov spectrum predict how well a network trains?

:func:`run_study` reads a sweep directory (``trials.csv``, ``spectra.npz``, ``sweep.json``) and
scores, against the final best validation metric of every trial that trained to the end
(status ``ok`` or ``diverged``; a diverged trial without any finite validation metric counts as
the worst observed):

* ``spearman``: Spearman's rho of each single spectrum feature at each LE epoch against the
  final metric, with a bootstrap 95 % interval (``scipy.stats.bootstrap``, percentile method,
  trials resampled in pairs), per architecture and pooled;
* ``auc``: cross-validated ROC AUC of a logistic regression telling the top quartile of the final
  metric from the bottom quartile, per feature set;
* ``r2``: cross-validated R^2 (and Spearman's rho of the out-of-fold predictions) of a ridge
  regression of the final metric, per feature set.

Feature sets at each LE epoch ``e`` after 0 (epoch 0 is the initialisation): ``hyperparameters``
(the swept keys but the seed: numbers, on a log scale when positive and spanning a decade;
categories one-hot), ``spectrum@0`` and ``spectrum@e`` (the features of
:func:`lipschitz_rnn.analysis.spectrum_features`), ``full_spectrum@e`` (the mean spectrum
resampled to :data:`FULL_POINTS` quantiles), ``valid@e`` (validation metric and loss at epoch
``e``) and ``hyperparameters+spectrum@e``. Folds are grouped by ``config_id``
(scikit-learn's ``StratifiedGroupKFold`` / ``GroupKFold``), so that the seeds of one
configuration never straddle training and test. A metric where lower is better (loss, bpc) is
negated first: "top" always means best.

Outputs ``study.json`` (stable keys ``spearman``, ``auc``, ``r2``, each entry naming its feature
set or feature and its epoch), ``study.md`` and three PNG plots (:mod:`.study_plots`).
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import check_int
from .._io import atomic_write_text, write_json
from .results import FEATURES, SPECTRA_NPZ, TRIALS_FILE, read_sweep_json

log = logging.getLogger(__name__)

__all__ = ["load_trials", "run_study", "feature_matrix", "grouped_folds", "FULL_POINTS", "STUDY_FILES"]

#: quantiles of the mean spectrum used by the ``full_spectrum`` feature set
FULL_POINTS = 16
STUDY_FILES = ("study.json", "study.md")
_DONE = ("ok", "diverged")


def _number(v: str) -> float | str | None:
    if v == "":
        return None
    try:
        return float(v)
    except ValueError:
        return v


def load_trials(sweep_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any], Any]:
    """(rows of ``trials.csv`` with numbers parsed, ``sweep.json``, ``spectra.npz``)."""
    root = Path(sweep_dir)
    meta = read_sweep_json(root)
    path = root / TRIALS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{root}: {TRIALS_FILE} is missing (run the sweep to its end)")
    with path.open(newline="") as fh:
        rows = [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    npz = root / SPECTRA_NPZ
    spectra = np.load(npz) if npz.is_file() else {}
    return rows, meta, spectra


def _scores(rows: list[dict], mode: str) -> np.ndarray:
    """The final metric, oriented so that higher is better; never-finite trials get the worst."""
    y = np.array([r["best_valid"] if isinstance(r["best_valid"], float) else np.nan for r in rows])
    y = y if mode == "max" else -y
    finite = np.isfinite(y)
    if not finite.any():
        raise ValueError("no trial has a finite validation metric")
    y[~finite] = y[finite].min()
    return y


def _hyper_columns(rows: list[dict], swept: list[str]) -> tuple[np.ndarray, list[str]]:
    cols, names = [], []
    for key in swept:
        if key == "seed":
            continue
        vals = [r.get(key) for r in rows]
        if all(isinstance(v, float) for v in vals):
            v = np.array(vals, dtype=np.float64)
            if v.min() > 0 and v.max() >= 10 * v.min():
                v, key = np.log10(v), f"log10 {key}"
            cols.append(v)
            names.append(key)
        else:
            for level in sorted({str(v) for v in vals}):
                cols.append(np.array([str(v) == level for v in vals], dtype=np.float64))
                names.append(f"{key}={level}")
    if not cols:
        return np.zeros((len(rows), 0)), []
    return np.stack(cols, 1), names


def _finite_columns(X: np.ndarray) -> np.ndarray:
    """Non-finite entries (a -inf exponent of a singular Jacobian, a missing value) replaced by
    the column's finite minimum (0 when the column has none)."""
    X = np.array(X, dtype=np.float64)
    for j in range(X.shape[1]):
        col = X[:, j]
        ok = np.isfinite(col)
        col[~ok] = col[ok].min() if ok.any() else 0.0
    return X


def _full_spectrum(rows, spectra, epoch: int) -> np.ndarray:
    out = []
    q = np.linspace(0.0, 1.0, FULL_POINTS)
    for r in rows:
        key = f"{r['trial']}_le{epoch}"
        lam = np.asarray(spectra[key]) if key in spectra else np.full(FULL_POINTS, np.nan)
        lam = lam[np.isfinite(lam)] if np.isfinite(lam).any() else np.full(FULL_POINTS, np.nan)
        out.append(np.interp(q, np.linspace(0.0, 1.0, lam.size), np.sort(lam)[::-1]))
    return np.stack(out)


def feature_matrix(rows, meta, spectra, name: str, epoch: int) -> tuple[np.ndarray, list[str]]:
    """The feature set ``name`` (see the module docstring) of ``rows`` at LE epoch ``epoch``."""
    if name == "hyperparameters":
        return _hyper_columns(rows, meta.get("swept_keys", []))
    if name == "spectrum":
        names = [f"le{epoch}_{f}" for f in FEATURES]
        X = np.array([[r.get(n) if isinstance(r.get(n), float) else np.nan for n in names]
                      for r in rows])
        return _finite_columns(X), names
    if name == "full_spectrum":
        return _finite_columns(_full_spectrum(rows, spectra, epoch)), [
            f"le{epoch}_q{i}" for i in range(FULL_POINTS)]
    if name == "valid":
        names = [f"valid_{epoch}", f"valid_loss_{epoch}"]
        X = np.array([[r.get(n) if isinstance(r.get(n), float) else np.nan for n in names]
                      for r in rows])
        return _finite_columns(X), names
    if name == "hyperparameters+spectrum":
        a, na = feature_matrix(rows, meta, spectra, "hyperparameters", epoch)
        b, nb = feature_matrix(rows, meta, spectra, "spectrum", epoch)
        return np.concatenate([a, b], 1), na + nb
    raise ValueError(f"unknown feature set {name!r}")


def _feature_sets(epochs: list[int]) -> list[tuple[str, str, int]]:
    """(label, feature set, epoch) to score: hyperparameters, spectrum at 0, and per later
    LE epoch the spectrum, full spectrum, validation metric and the combination."""
    sets = [("hyperparameters", "hyperparameters", 0)]
    if 0 in epochs:
        sets.append(("spectrum@0", "spectrum", 0))
    for e in epochs:
        if e == 0:
            continue
        sets += [(f"spectrum@{e}", "spectrum", e), (f"full_spectrum@{e}", "full_spectrum", e),
                 (f"valid@{e}", "valid", e),
                 (f"hyperparameters+spectrum@{e}", "hyperparameters+spectrum", e)]
    return sets


def _spearman_entries(rows, y, epochs, feature_names, n_boot, seed) -> list[dict]:
    from scipy.stats import bootstrap, spearmanr

    groups = {"pooled": np.ones(len(rows), dtype=bool)}
    for arch in sorted({str(r["model"]) for r in rows}):
        groups[arch] = np.array([str(r["model"]) == arch for r in rows])
    out = []
    rng = np.random.default_rng(seed)
    for e in epochs:
        for f in feature_names:
            x_all = np.array([r.get(f"le{e}_{f}") if isinstance(r.get(f"le{e}_{f}"), float)
                              else np.nan for r in rows])
            for arch, sel in groups.items():
                x, t = x_all[sel], y[sel]
                ok = np.isfinite(x)
                x, t = x[ok], t[ok]
                entry = {"feature": f, "epoch": e, "arch": arch, "n": int(x.size), "rho": None,
                         "ci_low": None, "ci_high": None}
                if x.size >= 5 and np.ptp(x) > 0 and np.ptp(t) > 0:
                    stat = lambda a, b: spearmanr(a, b).statistic
                    entry["rho"] = float(stat(x, t))
                    ci = bootstrap((x, t), stat, paired=True, vectorized=False,
                                   n_resamples=n_boot, method="percentile", random_state=rng)
                    lo, hi = ci.confidence_interval
                    entry["ci_low"] = float(lo) if math.isfinite(lo) else None
                    entry["ci_high"] = float(hi) if math.isfinite(hi) else None
                out.append(entry)
    return out


def grouped_folds(groups, folds: int, labels=None, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    """(train, test) index pairs of ``folds`` folds in which no group (configuration) has
    members on both sides; stratified by ``labels`` when given."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    groups = np.asarray(groups)
    idx = np.arange(len(groups))
    if labels is None:
        return list(GroupKFold(n_splits=folds).split(idx, groups=groups))
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(cv.split(idx, np.asarray(labels), groups=groups))


def _cv_scores(X, y, groups, label, folds: int, seed: int) -> tuple[dict, dict]:
    """(auc entry, r2 entry) of one feature matrix."""
    from scipy.stats import spearmanr
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.metrics import r2_score, roc_auc_score
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    auc = {"feature_set": label, "auc": None, "n": 0}
    r2 = {"feature_set": label, "r2": None, "rho": None, "n": int(len(y))}
    if X.shape[1] == 0:
        return auc, r2
    n_groups = len(set(groups))
    k = min(folds, n_groups)
    if k >= 2:
        reg = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
        pred = cross_val_predict(reg, X, y, cv=grouped_folds(groups, k))
        r2["r2"] = float(r2_score(y, pred))
        r2["rho"] = float(spearmanr(pred, y).statistic) if np.ptp(pred) > 0 else None
    q1, q3 = np.quantile(y, [0.25, 0.75])
    sel = (y <= q1) | (y >= q3)
    lab = (y[sel] >= q3).astype(int)
    g = np.asarray(groups)[sel]
    auc["n"] = int(sel.sum())
    k = min(folds, len(set(g)), int(lab.sum()), int((1 - lab).sum()))
    if k >= 2 and 0 < lab.sum() < lab.size:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
        cv = grouped_folds(g, k, labels=lab, seed=seed)
        prob = cross_val_predict(clf, X[sel], lab, cv=cv, method="predict_proba")[:, 1]
        auc["auc"] = float(roc_auc_score(lab, prob))
    return auc, r2


def run_study(sweep_dir: str | Path, *, folds: int = 5, bootstrap: int = 1000, seed: int = 0,
              plots: bool = True) -> dict[str, Any]:
    """Score the sweep in ``sweep_dir``; write ``study.json``, ``study.md`` and plots there;
    return the content of ``study.json``."""
    folds = check_int("folds", folds, ge=2)
    bootstrap = check_int("bootstrap", bootstrap, ge=100)
    root = Path(sweep_dir)
    rows_all, meta, spectra = load_trials(root)
    rows = [r for r in rows_all if r.get("status") in _DONE]
    if len(rows) < 8:
        raise ValueError(
            f"{root}: {len(rows)} trial(s) trained to the end; a study needs at least 8"
        )
    mode = meta["metric"]["mode"]
    y = _scores(rows, mode)
    epochs = sorted(int(e) for e in meta["lyapunov"]["at_epochs"])
    groups = [str(r["config_id"]) for r in rows]
    auc, r2 = [], []
    for label, name, e in _feature_sets(epochs):
        X, _ = feature_matrix(rows, meta, spectra, name, e)
        a, b = _cv_scores(X, y, groups, label, folds, seed)
        a["epoch"] = b["epoch"] = e
        auc.append(a)
        r2.append(b)
    result = {
        "sweep": str(root),
        "metric": meta["metric"],
        "target": "best validation metric" + ("" if mode == "max" else " (negated)"),
        "n_trials": len(rows),
        "n_configs": len(set(groups)),
        "status_counts": {s: sum(r.get("status") == s for r in rows_all)
                          for s in sorted({str(r.get("status")) for r in rows_all})},
        "lyapunov_epochs": epochs,
        "folds": folds,
        "spearman": _spearman_entries(rows, y, epochs, FEATURES, bootstrap, seed),
        "auc": auc,
        "r2": r2,
    }
    later = [e for e in epochs if e > 0]
    if later:  # the spectrum-only predictor at the first later epoch, for pruning later sweeps
        from .pruning import _features, fit_predictor

        xs = [(_features(r, later[0]), t) for r, t in zip(rows, y, strict=True)]
        xs = [(x, t) for x, t in xs if x is not None]
        if len(xs) >= 8:
            result["predictor"] = fit_predictor(
                np.stack([x for x, _ in xs]), np.array([t for _, t in xs]), later[0])
    write_json(root / "study.json", result)
    atomic_write_text(root / "study.md", study_markdown(result))
    if plots:
        from .study_plots import write_study_plots

        result["plots"] = write_study_plots(root, rows, y, meta, spectra, result)
        write_json(root / "study.json", result)
    log.info("study of %s: %d trials", root, len(rows))
    return result


def _fmt(x: Any, nd: int = 3) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def study_markdown(s: dict[str, Any]) -> str:
    lines = [
        f"# Study of `{s['sweep']}`", "",
        f"{s['n_trials']} trials that trained to the end ({s['n_configs']} configurations), "
        f"target: {s['target']} ({s['metric']['name']}); {s['folds']}-fold cross-validation "
        "grouped by configuration.", "",
        "## Cross-validated prediction of the final metric", "",
        "| feature set | AUC top vs bottom quartile (n) | R² | ρ (out-of-fold) |",
        "|---|---|---|---|",
    ]
    for a, b in zip(s["auc"], s["r2"], strict=True):
        lines.append(f"| {a['feature_set']} | {_fmt(a['auc'])} ({a['n']}) | {_fmt(b['r2'])} | "
                     f"{_fmt(b['rho'])} |")
    lines += ["", "## Spearman ρ of single features (pooled, 95 % bootstrap interval)", "",
              "| epoch | feature | ρ | interval | n |", "|---|---|---|---|---|"]
    for e in s["spearman"]:
        if e["arch"] == "pooled":
            lines.append(f"| {e['epoch']} | {e['feature']} | {_fmt(e['rho'])} | "
                         f"[{_fmt(e['ci_low'])}, {_fmt(e['ci_high'])}] | {e['n']} |")
    archs = sorted({e["arch"] for e in s["spearman"]} - {"pooled"})
    if archs:
        lines += ["", "## Spearman ρ of the largest exponent per architecture", "",
                  "| epoch | " + " | ".join(archs) + " |", "|---|" + "---|" * len(archs)]
        for ep in s["lyapunov_epochs"]:
            cells = []
            for a in archs:
                e = next(x for x in s["spearman"] if x["arch"] == a and x["epoch"] == ep
                         and x["feature"] == "max")
                cells.append(_fmt(e["rho"]))
            lines.append(f"| {ep} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
