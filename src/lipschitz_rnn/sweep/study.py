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
configuration never straddle training and test; the AUC's training folds always hold both
classes (:func:`grouped_folds`). A metric where lower is better (loss, bpc) is negated first:
"top" always means best.

Any sweep with at least 8 trials trained to the end (one with a finite metric) gets a study: a
number that cannot be computed (a quartile that is the seeds of one configuration, a constant
feature or metric, too few values) is None with the entry's ``reason``, and ``notes`` says so in
words; scipy's and scikit-learn's warnings are recorded there, never emitted.

Outputs ``study.json`` (stable keys ``spearman``, ``auc``, ``r2``, ``notes``, each entry naming
its feature set or feature and its epoch), ``study.md`` and PNG plots (:mod:`.study_plots`).
The readout it shares with spectrum-guided pruning (the oriented final metric, the spectrum
features of an epoch, the ridge ``predictor`` stored for a ``lyapunov`` scheduler) lives in
:mod:`.readout`.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import check_int
from .._io import atomic_write_text, write_json
from ..runs.sweepdir import SweepDir
from .readout import fit_predictor, scores, spectrum_vector
from .results import FEATURES
from .study_plots import write_study_plots

log = logging.getLogger(__name__)

__all__ = ["load_trials", "run_study", "feature_matrix", "grouped_folds", "study_notes",
           "FULL_POINTS", "STUDY_FILES"]

#: quantiles of the mean spectrum used by the ``full_spectrum`` feature set
FULL_POINTS = 16
STUDY_FILES = ("study.json", "study.md")
_DONE = ("ok", "diverged")


def load_trials(sweep_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any], Any]:
    """(rows of ``trials.csv`` with numbers parsed, ``sweep.json``, ``spectra.npz``), read by
    :class:`~lipschitz_rnn.runs.sweepdir.SweepDir`."""
    sweep = SweepDir(sweep_dir)
    meta = sweep.meta()
    return sweep.trials(), meta, sweep.spectra()


def _hyper_columns(rows: list[dict], swept: list[str]) -> tuple[np.ndarray, list[str]]:
    cols, names = [], []
    for key in swept:
        if key == "seed":
            continue
        vals = [r.get(key) for r in rows]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
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
    """Spearman's rho per (feature, epoch, architecture or pooled) with its bootstrap interval.

    rho is undefined where a feature or the final metric is constant across the trials (or
    fewer than 5 have a value): the entry's ``rho`` is None and ``reason`` says why. Bootstrap
    resamples in which either is constant have no rho either: ``undefined_resamples`` counts
    them and the interval is taken over the others."""
    from scipy.stats import DegenerateDataWarning, bootstrap, rankdata, spearmanr

    def stat(a, b, axis=-1):
        """rho of each resample (one per row): Pearson's r of the ranks, NaN for a constant
        resample (where scipy's spearmanr would warn and return NaN)."""
        ra, rb = (rankdata(v, axis=axis) for v in (a, b))
        ra, rb = (r - r.mean(axis=axis, keepdims=True) for r in (ra, rb))
        num = (ra * rb).sum(axis=axis)
        den = np.sqrt((ra * ra).sum(axis=axis) * (rb * rb).sum(axis=axis))
        out = np.full(np.shape(num), np.nan)
        np.divide(num, den, out=out, where=den > 0)
        return out

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
                         "ci_low": None, "ci_high": None, "undefined_resamples": 0,
                         "reason": None}
                if x.size < 5:
                    entry["reason"] = f"{x.size} trial(s) with a value (at least 5 needed)"
                elif np.ptp(x) == 0:
                    entry["reason"] = "the feature is constant across these trials"
                elif np.ptp(t) == 0:
                    entry["reason"] = "the final metric is constant across these trials"
                else:
                    entry["rho"] = float(spearmanr(x, t).statistic)
                    with warnings.catch_warnings():  # NaN resamples: handled below
                        warnings.simplefilter("ignore", DegenerateDataWarning)
                        ci = bootstrap((x, t), stat, paired=True, vectorized=True,
                                       n_resamples=n_boot, method="percentile",
                                       random_state=rng)
                    lo, hi = ci.confidence_interval
                    dist = np.asarray(ci.bootstrap_distribution)
                    undefined = int(np.isnan(dist).sum())
                    if undefined:
                        entry["undefined_resamples"] = undefined
                        defined = dist[~np.isnan(dist)]
                        lo, hi = np.quantile(defined, [0.025, 0.975]) if defined.size else (
                            np.nan, np.nan)
                    entry["ci_low"] = float(lo) if math.isfinite(lo) else None
                    entry["ci_high"] = float(hi) if math.isfinite(hi) else None
                out.append(entry)
    return out


#: shuffles of StratifiedGroupKFold tried per number of folds before fewer folds are tried
_SHUFFLES = 20


def grouped_folds(groups, folds: int, labels=None, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    """(train, test) index pairs of ``folds`` folds in which no group (configuration) has
    members on both sides.

    With binary ``labels`` the folds are stratified (``StratifiedGroupKFold``, shuffled with
    ``seed``) and every training fold holds both classes, so that a classifier can be fitted on
    it: splits that leave a class out of a training fold are redrawn (other shuffles, then fewer
    folds, down to 2), and where no drawn split works a 2-fold split is built from the groups.
    Such a split exists exactly when each class has members in at least 2 groups; otherwise
    ValueError says which class does not.
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    groups = np.asarray(groups)
    idx = np.arange(len(groups))
    if labels is None:
        return list(GroupKFold(n_splits=folds).split(idx, groups=groups))
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if classes.size != 2:
        raise ValueError(f"labels: expected two classes, got {classes.size}")
    for c in classes:
        n = len(set(groups[labels == c].tolist()))
        if n < 2:
            raise ValueError(f"every member of class {c} is in a single group: a fold holding "
                             "that group would train without the class")

    def usable(split) -> bool:
        return all(len(te) > 0 and np.unique(labels[tr]).size == 2 for tr, te in split)

    for k in range(min(folds, len(set(groups.tolist()))), 1, -1):
        for attempt in range(_SHUFFLES):
            cv = StratifiedGroupKFold(n_splits=k, shuffle=True,
                                      random_state=(seed + attempt) % 2**32)
            with warnings.catch_warnings():  # "least populated class ... < n_splits"
                warnings.simplefilter("ignore", UserWarning)
                try:
                    split = list(cv.split(idx, labels, groups=groups))
                except ValueError:  # more folds than members of every class
                    break
            if usable(split):
                return split
    return _two_folds(groups, labels, classes)


def _two_folds(groups: np.ndarray, labels: np.ndarray, classes) -> list[tuple[np.ndarray, ...]]:
    """Two grouped folds, each holding both classes (so that the other trains on both): groups
    with both classes are spread first, then one group of each single class per fold."""
    mixed, single = [], {c: [] for c in classes}
    for g in dict.fromkeys(groups.tolist()):
        has = set(labels[groups == g].tolist())
        if len(has) == 2:
            mixed.append(g)
        else:
            single[has.pop()].append(g)
    a, b = [], []
    if len(mixed) >= 2:
        a.append(mixed.pop(0))
        b.append(mixed.pop(0))
    elif mixed:
        a.append(mixed.pop(0))
        b += [single[c].pop(0) for c in classes]
    else:
        a += [single[c].pop(0) for c in classes]
        b += [single[c].pop(0) for c in classes]
    size = {g: int((groups == g).sum()) for g in set(groups.tolist())}
    for g in mixed + [g for c in classes for g in single[c]]:
        smaller = a if sum(size[x] for x in a) <= sum(size[x] for x in b) else b
        smaller.append(g)
    in_a = np.isin(groups, a)
    idx = np.arange(len(groups))
    return [(idx[~in_a], idx[in_a]), (idx[in_a], idx[~in_a])]


def _cv_scores(X, y, groups, label, folds: int, seed: int) -> tuple[dict, dict]:
    """(auc entry, r2 entry) of one feature matrix. A measure that cannot be computed is None,
    with ``reason`` saying why; ``folds`` is the number of folds used, ``note`` says why it is
    fewer than asked."""
    from scipy.stats import spearmanr
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.metrics import r2_score, roc_auc_score
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    auc = {"feature_set": label, "auc": None, "n": 0, "folds": None, "reason": None,
           "note": None}
    r2 = {"feature_set": label, "r2": None, "rho": None, "n": int(len(y)), "folds": None,
          "reason": None, "note": None}
    if X.shape[1] == 0:
        auc["reason"] = r2["reason"] = "no features (only the seed is swept)"
        return auc, r2
    groups = np.asarray(groups)
    n_groups = len(set(groups.tolist()))
    if n_groups < 2:
        r2["reason"] = "one configuration: grouped folds need at least 2"
    elif np.ptp(y) == 0:
        r2["reason"] = "the final metric is the same for every trial: R² is undefined"
    else:
        k = min(folds, n_groups)
        reg = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
        try:
            pred = cross_val_predict(reg, X, y, cv=grouped_folds(groups, k))
        except ValueError as e:  # a fold scikit-learn cannot fit
            r2["reason"] = f"the regression could not be fitted ({e})"
        else:
            r2["r2"], r2["folds"] = float(r2_score(y, pred)), k
            if k < folds:
                r2["note"] = f"{k} folds: only {n_groups} configurations"
            if np.ptp(pred) > 0:
                r2["rho"] = float(spearmanr(pred, y).statistic)
            else:
                r2["reason"] = "the out-of-fold predictions are constant: their ρ is undefined"
    q1, q3 = np.quantile(y, [0.25, 0.75])
    sel = (y <= q1) | (y >= q3)
    lab = (y[sel] >= q3).astype(int)
    g = groups[sel]
    auc["n"] = int(sel.sum())
    n_pos, n_neg = int(lab.sum()), int(lab.size - lab.sum())
    pos_groups, neg_groups = (len(set(g[lab == c].tolist())) for c in (1, 0))
    if n_neg == 0:
        auc["reason"] = ("the final metric's lower and upper quartiles are equal (tied trials): "
                         "there is no bottom quartile to tell from the top")
    elif min(pos_groups, neg_groups) < 2:
        which, n = ("top", n_pos) if pos_groups < 2 else ("bottom", n_neg)
        what = f"'s {n} trials are seeds of one configuration" if n > 1 else " is one trial"
        auc["reason"] = (f"the {which} quartile{what}: folds grouped by configuration would "
                         "train one fold without that class")
    else:
        k = min(folds, len(set(g.tolist())), n_pos, n_neg)
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
        try:
            cv = grouped_folds(g, k, labels=lab, seed=seed)
            prob = cross_val_predict(clf, X[sel], lab, cv=cv, method="predict_proba")[:, 1]
        except ValueError as e:  # a fold scikit-learn cannot fit
            auc["reason"] = f"the classifier could not be fitted ({e})"
        else:
            auc["auc"], auc["folds"] = float(roc_auc_score(lab, prob)), len(cv)
            if len(cv) < folds:
                auc["note"] = (f"{len(cv)} folds: the top and bottom quartiles hold {n_pos} + "
                               f"{n_neg} trials of {len(set(g.tolist()))} configurations")
    return auc, r2


def run_study(sweep_dir: str | Path, *, folds: int = 5, bootstrap: int = 1000, seed: int = 0,
              plots: bool = True) -> dict[str, Any]:
    """Score the sweep in ``sweep_dir``; write ``study.json``, ``study.md`` and plots there;
    return the content of ``study.json``."""
    folds = check_int("folds", folds, ge=2)
    bootstrap = check_int("bootstrap", bootstrap, ge=100)
    seed = check_int("seed", seed, ge=0)
    root = Path(sweep_dir)
    rows_all, meta, spectra = load_trials(root)
    rows = [r for r in rows_all if r.get("status") in _DONE]
    if len(rows) < 8:
        raise ValueError(
            f"{root}: {len(rows)} trial(s) trained to the end; a study needs at least 8"
        )
    mode = meta["metric"]["mode"]
    y = scores(rows, mode)
    epochs = sorted(int(e) for e in meta["lyapunov"]["at_epochs"])
    groups = [str(r["config_id"]) for r in rows]
    # what scipy and scikit-learn warn about ends up in the study's notes, in words
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
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
            "bootstrap": bootstrap,
            "spearman": _spearman_entries(rows, y, epochs, FEATURES, bootstrap, seed),
            "auc": auc,
            "r2": r2,
        }
        later = [e for e in epochs if e > 0]
        if later:  # the spectrum-only predictor at the first later epoch, for pruning sweeps
            xs = [(spectrum_vector(r, later[0]), t) for r, t in zip(rows, y, strict=True)]
            xs = [(x, t) for x, t in xs if x is not None]
            if len(xs) >= 8:
                result["predictor"] = fit_predictor(
                    np.stack([x for x, _ in xs]), np.array([t for _, t in xs]), later[0])
        if plots:
            result["plots"] = write_study_plots(root, rows, y, meta, spectra, result)
    result["notes"] = study_notes(result) + list(dict.fromkeys(
        f"{w.category.__name__}: {w.message}" for w in caught))
    write_json(root / "study.json", result)
    atomic_write_text(root / "study.md", study_markdown(result))
    log.info("study of %s: %d trials", root, len(rows))
    return result


def _scope(arches: list[str]) -> str:
    return ", ".join("all trials" if a == "pooled" else a for a in arches)


def _sets(entries: list[dict], n_all: int) -> str:
    names = [e["feature_set"] for e in entries]
    return "every feature set" if len(names) == n_all and n_all > 1 else ", ".join(names)


def _feature_list(pairs: list[tuple[str, int]], n_epochs: int) -> str:
    """``[(feature, epoch)]`` in words: "every feature", "max, mean at epoch 1; ..."."""
    if len(pairs) == len(FEATURES) * n_epochs:
        return "every feature"
    by_epoch: dict[int, list[str]] = {}
    for f, e in pairs:
        by_epoch.setdefault(e, []).append(f)
    return "; ".join(f"{', '.join(fs)} at epoch {e}" for e, fs in by_epoch.items())


def study_notes(s: dict[str, Any]) -> list[str]:
    """What could not be computed, and why, in words (``notes`` of ``study.json``)."""
    notes: list[str] = []
    n_epochs = len(s["lyapunov_epochs"])
    missing: dict[tuple[str, str], list[tuple[str, int]]] = {}  # (reason, arch) -> features
    resampled = []
    for e in s["spearman"]:
        if e["reason"] is not None:
            missing.setdefault((e["reason"], e["arch"]), []).append((e["feature"], e["epoch"]))
        elif e.get("undefined_resamples"):
            resampled.append(f"{e['feature']} at epoch {e['epoch']} ({_scope([e['arch']])}: "
                             f"{e['undefined_resamples']} of {s.get('bootstrap')})")
    grouped: dict[tuple[str, str], list[str]] = {}  # (reason, features) -> arches
    for (reason, arch), pairs in missing.items():
        grouped.setdefault((reason, _feature_list(pairs, n_epochs)), []).append(arch)
    for (reason, feats), arches in grouped.items():
        if reason.startswith("the feature is constant"):
            notes.append(f"constant across trials ({_scope(arches)}): {feats}; the Spearman ρ "
                         "of a constant feature is undefined")
        else:
            feats = "any feature" if feats == "every feature" else feats
            notes.append(f"no Spearman ρ of {feats} ({_scope(arches)}): {reason}")
    if resampled:
        notes.append("features constant in some bootstrap resamples, where their ρ is "
                     "undefined (the interval is taken over the other resamples): "
                     + "; ".join(resampled))
    for measure, entries, value in (("AUC", s["auc"], "auc"), ("R²", s["r2"], "r2")):
        groups: dict[tuple, list[dict]] = {}
        for e in entries:
            if e.get("reason") is not None:
                what = measure if e[value] is None else "the out-of-fold ρ"
                if measure == "R²" and e[value] is None:
                    what = "R² (and ρ)"
                groups.setdefault((what, "not computed", e["reason"]), []).append(e)
            if e.get("note") is not None:
                groups.setdefault((measure, "note", e["note"]), []).append(e)
        for (what, kind, text), es in groups.items():
            if kind == "note":
                notes.append(f"{what} of {_sets(es, len(entries))}: {text}")
            else:
                notes.append(f"{what} not computed for {_sets(es, len(entries))}: {text}")
    return notes


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
    if s.get("notes"):
        lines += ["", "## Notes", "", "What could not be computed (— in the tables) and why, and what "
                  "changed how a number was computed:", ""]
        lines += [f"- {n}" for n in s["notes"]]
    return "\n".join(lines) + "\n"
