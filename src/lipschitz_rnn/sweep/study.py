"""The readout of a sweep: does the early Lyapunov spectrum predict how well a network trains?

:func:`run_study` reads a sweep directory (``trials.csv``, ``spectra.npz``, ``sweep.json``) and
scores, against the final best validation metric of every trial that trained to the end
(status ``ok`` or ``diverged``; a diverged trial without any finite validation metric counts as
the worst observed):

* ``cv``, ``paired``, ``ood``: the fair baselines of :mod:`.study_cv` -- every feature set
  (hyperparameters, a hyperparameter surrogate, the spectrum at initialisation and at each LE
  epoch, the validation metric, and combinations) through a ridge and a random-forest model,
  scored over ``repeats`` random grouped splits (median, 95 % interval and every split's value
  of R², Spearman's rho and AUC), paired differences of the spectrum against each baseline on
  the same splits, and out of distribution: leave one unit out, leave the top range of a swept
  key out, and (``predictor_from``) transfer from another sweep;
* ``spearman``: Spearman's rho of each single spectrum feature at each LE epoch against the
  final metric, with a 95 % bootstrap interval over groups (whole configurations and their
  near-duplicates are resampled, :func:`group_bootstrap_weights`; percentile method), per
  architecture and pooled;
* ``auc``, ``r2`` (one grouped split, kept for continuity): cross-validated ROC AUC of a
  logistic regression telling the top quartile of the final metric from the bottom quartile, and
  R^2 (and Spearman's rho of the out-of-fold predictions) of a ridge regression, per feature
  set: ``hyperparameters``, ``spectrum@0``, and at each LE epoch ``e`` after 0 ``spectrum@e``,
  ``full_spectrum@e`` (the mean spectrum resampled to :data:`FULL_POINTS` quantiles),
  ``valid@e`` and ``hyperparameters+spectrum@e``. The AUC's training folds always hold both
  classes (:func:`grouped_folds`).

Groups (:func:`~.study_cv.study_groups`): the seeds of a configuration, trials with the same
swept values up to the seed, and trials a declared equivalence (``equivalent``) makes
near-duplicates never straddle training and test, in every block. A metric where lower is
better (loss, bpc) is negated first: "top" always means best.

Any sweep with at least 8 trials trained to the end (one with a finite metric) gets a study: a
number that cannot be computed (a quartile that is the seeds of one configuration, a constant
feature or metric, too few values) is None with the entry's ``reason``, and ``notes`` says so in
words; scipy's and scikit-learn's warnings are recorded there, never emitted.

Outputs ``study.json`` (stable keys ``spearman``, ``auc``, ``r2``, ``cv``, ``paired``, ``ood``,
``notes``, each entry naming its feature set or feature and its epoch), ``study.md`` (tables of
:mod:`.study_tables`) and PNG plots (:mod:`.study_plots`). The readout it shares with
spectrum-guided pruning (the oriented final metric, the spectrum features of an epoch, the ridge
``predictor`` stored for a ``lyapunov`` scheduler) lives in :mod:`.readout`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import check_float, check_int
from .._io import atomic_write_text, write_json
from ..runs.sweepdir import SweepDir
from .readout import fit_predictor, number, scores, spectrum_vector
from .results import FEATURES
from .spec import check_ood_key, declared_study
from .study_cv import (
    FAMILIES,
    HyperEncoding,
    designs,
    feature_sets,
    finite_columns,
    group_splits,
    leave_one_unit_out,
    leave_range_out,
    paired_differences,
    repeated_cv,
    study_groups,
    transfer,
)
from .study_plots import write_study_plots
from .study_tables import fair_markdown, fair_notes

log = logging.getLogger(__name__)

__all__ = ["load_trials", "run_study", "feature_matrix", "grouped_folds", "study_notes",
           "group_bootstrap_weights", "resampled_rho", "FULL_POINTS", "STUDY_FILES",
           "DEFAULT_OOD_KEY"]

#: quantiles of the mean spectrum used by the ``full_spectrum`` feature set
FULL_POINTS = 16
#: the swept key whose top range is left out by default (``ood.leave_one_out_range``)
DEFAULT_OOD_KEY = "model.init_scale"
STUDY_FILES = ("study.json", "study.md")
_DONE = ("ok", "diverged")


def load_trials(sweep_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any], Any]:
    """(rows of ``trials.csv`` with numbers parsed, ``sweep.json``, ``spectra.npz``), read by
    :class:`~lipschitz_rnn.runs.sweepdir.SweepDir`."""
    sweep = SweepDir(sweep_dir)
    meta = sweep.meta()
    return sweep.trials(), meta, sweep.spectra()


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
        swept = meta.get("swept_keys", [])
        return HyperEncoding.fit(rows, swept).raw(rows)
    if name == "spectrum":
        names = [f"le{epoch}_{f}" for f in FEATURES]
        X = np.array([[r.get(n) if isinstance(r.get(n), float) else np.nan for n in names]
                      for r in rows])
        return finite_columns(X), names
    if name == "full_spectrum":
        return finite_columns(_full_spectrum(rows, spectra, epoch)), [
            f"le{epoch}_q{i}" for i in range(FULL_POINTS)]
    if name == "valid":
        names = [f"valid_{epoch}", f"valid_loss_{epoch}"]
        X = np.array([[r.get(n) if isinstance(r.get(n), float) else np.nan for n in names]
                      for r in rows])
        return finite_columns(X), names
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


def group_bootstrap_weights(groups, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) multiplicities of the trials in ``n_boot`` bootstrap resamples of whole
    groups: each resample draws as many groups as there are, with replacement, and takes every
    trial of a drawn group (near-copies of one network are one observation, not several)."""
    uniq, inv = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    draws = rng.integers(0, uniq.size, size=(n_boot, uniq.size))
    counts = np.zeros((n_boot, uniq.size))
    np.add.at(counts, (np.repeat(np.arange(n_boot), uniq.size), draws.ravel()), 1.0)
    return counts[:, inv]


def _weighted_ranks(x: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ranks, distinct) of ``x`` in each resample of multiplicities ``W`` (rows): the average
    rank a trial would have in the resample written out with repeats, and the number of
    distinct values of ``x`` the resample holds."""
    u, inv = np.unique(x, return_inverse=True)
    member = np.zeros((x.size, u.size))
    member[np.arange(x.size), inv] = 1.0
    wu = W @ member  # weight of each distinct value
    below = np.cumsum(wu, axis=1) - wu
    return below[:, inv] + (wu[:, inv] + 1.0) / 2.0, (wu > 0).sum(axis=1)


def resampled_rho(x: np.ndarray, t: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Spearman's rho of ``x`` and ``t`` in each resample given by multiplicities ``W`` (rows),
    equal to scipy's spearmanr of the resample written out; NaN where either is constant."""
    (rx, nx), (rt, nt) = _weighted_ranks(x, W), _weighted_ranks(t, W)
    s = W.sum(axis=1, keepdims=True)
    rx = rx - (W * rx).sum(axis=1, keepdims=True) / s
    rt = rt - (W * rt).sum(axis=1, keepdims=True) / s
    num = (W * rx * rt).sum(axis=1)
    den = np.sqrt((W * rx * rx).sum(axis=1) * (W * rt * rt).sum(axis=1))
    out = np.full(num.shape, np.nan)
    ok = (nx > 1) & (nt > 1)
    out[ok] = num[ok] / den[ok]
    return np.clip(out, -1.0, 1.0)


def _spearman_entries(rows, y, groups, epochs, feature_names, n_boot, seed) -> list[dict]:
    """Spearman's rho per (feature, epoch, architecture or pooled) with its bootstrap interval
    over groups (:func:`group_bootstrap_weights`; percentile interval).

    rho is undefined where a feature or the final metric is constant across the trials (or
    fewer than 5 have a value): the entry's ``rho`` is None and ``reason`` says why. Bootstrap
    resamples in which either is constant have no rho either: ``undefined_resamples`` counts
    them and the interval is taken over the others."""
    from scipy.stats import spearmanr

    subsets = {"pooled": np.ones(len(rows), dtype=bool)}
    for arch in sorted({str(r["model"]) for r in rows}):
        subsets[arch] = np.array([str(r["model"]) == arch for r in rows])
    groups = np.asarray(groups, dtype=str)
    out = []
    rng = np.random.default_rng(seed)
    for e in epochs:
        for f in feature_names:
            x_all = np.array([number(r.get(f"le{e}_{f}")) for r in rows])
            for arch, sel in subsets.items():
                ok = sel & np.isfinite(x_all)
                x, t = x_all[ok], y[ok]
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
                    dist = resampled_rho(x, t, group_bootstrap_weights(groups[ok], n_boot, rng))
                    defined = dist[~np.isnan(dist)]
                    entry["undefined_resamples"] = int(dist.size - defined.size)
                    if defined.size:
                        lo, hi = np.quantile(defined, [0.025, 0.975])
                        entry["ci_low"], entry["ci_high"] = float(lo), float(hi)
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


def _finished(root: Path) -> tuple[list[dict], list[dict], dict, Any]:
    """(all rows, the rows trained to the end, ``sweep.json``, ``spectra.npz``) of a sweep that
    has at least 8 trials trained to the end (else ValueError)."""
    rows_all, meta, spectra = load_trials(root)
    rows = [r for r in rows_all if r.get("status") in _DONE]
    if len(rows) < 8:
        raise ValueError(
            f"{root}: {len(rows)} trial(s) trained to the end; a study needs at least 8"
        )
    return rows_all, rows, meta, spectra


def _ood_key(meta: dict, key: str | None) -> str | None:
    swept = meta.get("swept_keys", [])
    if key is None:
        return DEFAULT_OOD_KEY if DEFAULT_OOD_KEY in swept else None
    return check_ood_key(key, swept)


def _aelle_designs(rows, spectra, epochs) -> list[dict[str, Any]]:
    """The ``aelle@e`` feature sets: the mean spectrum at LE epoch ``e`` resampled to
    :data:`FULL_POINTS` quantiles, read by :class:`~.aelle.AeLLERegressor` (model ``aelle``)."""
    out = []
    for e in (e for e in epochs if e > 0):
        X = finite_columns(_full_spectrum(rows, spectra, e))
        d = {"feature_set": f"aelle@{e}", "epoch": e, "model": "aelle", "X": None,
             "key": None, "reason": None}
        if X.shape[1] == 0 or np.ptp(X, axis=0).max() == 0:
            d["reason"] = "no spectrum varies across the trials at this epoch"
        else:
            d["X"], d["key"] = X, ("aelle", e)
        out.append(d)
    return out


def _fair_baselines(rows, meta, spectra, y, groups, epochs, opts: dict[str, Any],
                    source: tuple | None) -> dict[str, Any]:
    """The ``cv``, ``paired`` and ``ood`` blocks of ``study.json`` (see :mod:`.study_cv`)."""
    families, seed = opts["models"], opts["seed"]
    ds = designs(rows, HyperEncoding.fit(rows, meta.get("swept_keys", [])),
                 feature_sets(epochs), families=[f for f in families if f in FAMILIES])
    if "aelle" in families:
        ds += _aelle_designs(rows, spectra, epochs)
    n_groups = len(set(groups))
    cv = {"folds": min(opts["folds"], n_groups), "repeats": opts["repeats"], "seed": seed,
          "models": list(families), "entries": [], "reason": None}
    if n_groups < 2:
        cv["reason"] = "one group: grouped folds need at least 2"
    elif np.ptp(y) == 0:
        cv["reason"] = "the final metric is the same for every trial"
    else:
        splits = group_splits(groups, opts["folds"], opts["repeats"], seed)
        cv["entries"] = repeated_cv(ds, y, groups, splits, seed)
    ood: dict[str, Any] = {"leave_one_unit_out": leave_one_unit_out(rows, ds, y, groups, seed)}
    key = opts["ood_key"]
    ood["leave_one_out_range"] = (
        leave_range_out(rows, ds, y, groups, key, opts["ood_quantile"], seed) if key else
        {"key": None, "quantile": opts["ood_quantile"], "entries": [],
         "reason": f"{DEFAULT_OOD_KEY} is not swept and no ood_key was given"})
    if source is not None:
        path, rows_a, meta_a, y_a = source
        groups_a = study_groups(rows_a, meta_a.get("swept_keys", []))
        ood["transfer"] = {"from": str(path), "n_from": len(rows_a), **transfer(
            rows_a, meta_a, rows, meta, y_a, y, groups_a, seed, families)}
    return {"cv": cv, "paired": paired_differences(cv["entries"], epochs), "ood": ood}


def run_study(sweep_dir: str | Path, *, folds: int = 5, bootstrap: int = 1000, seed: int = 0,
              plots: bool = True, repeats: int = 20, equivalent: Sequence[str] = (),
              ood_key: str | None = None, ood_quantile: float = 0.75,
              predictor_from: str | Path | None = None,
              models: Sequence[str] = FAMILIES) -> dict[str, Any]:
    """Score the sweep in ``sweep_dir``; write ``study.json``, ``study.md`` and plots there;
    return the content of ``study.json``.

    ``repeats`` grouped splits of ``folds`` folds score every feature set with every family of
    ``models`` (:data:`~.study_cv.FAMILIES`); ``equivalent`` declares near-duplicates
    (:func:`~.spec.parse_equivalence`), added to those of the sweep spec's ``[study]``
    table; ``ood_key`` (default: the spec's ``[study] ood_key``, else the init scale) and
    ``ood_quantile`` the range left out per unit; ``predictor_from`` another sweep whose
    trials fit the predictors scored on this one (``ood.transfer``)."""
    folds = check_int("folds", folds, ge=2)
    bootstrap = check_int("bootstrap", bootstrap, ge=100)
    seed = check_int("seed", seed, ge=0)
    repeats = check_int("repeats", repeats, ge=1)
    ood_quantile = check_float("ood_quantile", ood_quantile, gt=0.0, lt=1.0)
    if isinstance(equivalent, str):
        equivalent = [equivalent]
    models = tuple(models)
    if not models or any(m not in (*FAMILIES, "aelle") for m in models):
        raise ValueError(f"models must name some of {', '.join(FAMILIES)}, aelle, got "
                         f"{models!r}")
    root = Path(sweep_dir)
    rows_all, rows, meta, spectra = _finished(root)
    # the sweep spec's [study] table: its declarations first, then the caller's
    declared = declared_study(meta.get("spec") or {})
    equivalent = list(dict.fromkeys([*declared.equivalent, *equivalent]))
    if ood_key is None:
        ood_key = declared.ood_key
    opts = {"folds": folds, "repeats": repeats, "seed": seed, "models": models,
            "ood_key": _ood_key(meta, ood_key), "ood_quantile": ood_quantile}
    groups = study_groups(rows, meta.get("swept_keys", []), equivalent)
    source = None
    if predictor_from is not None:
        _, rows_a, meta_a, _ = _finished(Path(predictor_from))
        source = (Path(predictor_from), rows_a, meta_a, scores(rows_a, meta_a["metric"]["mode"]))
    mode = meta["metric"]["mode"]
    y = scores(rows, mode)
    epochs = sorted(int(e) for e in meta["lyapunov"]["at_epochs"])
    # what scipy and scikit-learn warn about ends up in the study's notes, in words
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = {
            "sweep": str(root),
            "metric": meta["metric"],
            "target": "best validation metric" + ("" if mode == "max" else " (negated)"),
            "n_trials": len(rows),
            "n_configs": len({str(r["config_id"]) for r in rows}),
            "n_groups": len(set(groups)),
            "equivalent": list(equivalent),
            "status_counts": {s: sum(r.get("status") == s for r in rows_all)
                              for s in sorted({str(r.get("status")) for r in rows_all})},
            "lyapunov_epochs": epochs,
            "folds": folds,
            "bootstrap": bootstrap,
            "spearman": _spearman_entries(rows, y, groups, epochs, FEATURES, bootstrap, seed),
            **_single_split(rows, meta, spectra, y, groups, epochs, folds, seed),
            **_fair_baselines(rows, meta, spectra, y, groups, epochs, opts, source),
        }
        predictor = _predictor(rows, y, epochs)
        if predictor is not None:
            result["predictor"] = predictor
        if plots:
            result["plots"] = write_study_plots(root, rows, y, meta, spectra, result)
    result["notes"] = study_notes(result) + fair_notes(result) + list(dict.fromkeys(
        f"{w.category.__name__}: {w.message}" for w in caught))
    write_json(root / "study.json", result)
    atomic_write_text(root / "study.md", study_markdown(result))
    log.info("study of %s: %d trials", root, len(rows))
    return result


def _single_split(rows, meta, spectra, y, groups, epochs, folds, seed) -> dict[str, list]:
    """The ``auc`` and ``r2`` blocks: one grouped split, ridge and logistic regression."""
    auc, r2 = [], []
    for label, name, e in _feature_sets(epochs):
        X, _ = feature_matrix(rows, meta, spectra, name, e)
        a, b = _cv_scores(X, y, groups, label, folds, seed)
        a["epoch"] = b["epoch"] = e
        auc.append(a)
        r2.append(b)
    return {"auc": auc, "r2": r2}


def _predictor(rows, y, epochs) -> dict[str, Any] | None:
    """The spectrum-only ridge predictor at the first LE epoch after 0 (for pruning sweeps)."""
    later = [e for e in epochs if e > 0]
    if not later:
        return None
    xs = [(spectrum_vector(r, later[0]), t) for r, t in zip(rows, y, strict=True)]
    xs = [(x, t) for x, t in xs if x is not None]
    if len(xs) < 8:
        return None
    return fit_predictor(np.stack([x for x, _ in xs]), np.array([t for _, t in xs]), later[0])


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
    eq = s.get("equivalent") or []
    lines = [
        f"# Study of `{s['sweep']}`", "",
        f"{s['n_trials']} trials that trained to the end ({s['n_configs']} configurations, "
        f"{s['n_groups']} groups: the seeds of a configuration and near-duplicates together"
        + (f"; declared equivalent: {', '.join(f'`{t}`' for t in eq)}" if eq else "")
        + f"), target: {s['target']} ({s['metric']['name']}).", "",
        *fair_markdown(s),
        "## One grouped split (kept for continuity)", "",
        f"One {s['folds']}-fold split by group: AUC of a logistic regression on the top and "
        "bottom quartiles, R² and ρ of a ridge regression's out-of-fold predictions.", "",
        "| feature set | AUC top vs bottom quartile (n) | R² | ρ (out-of-fold) |",
        "|---|---|---|---|",
    ]
    for a, b in zip(s["auc"], s["r2"], strict=True):
        lines.append(f"| {a['feature_set']} | {_fmt(a['auc'])} ({a['n']}) | {_fmt(b['r2'])} | "
                     f"{_fmt(b['rho'])} |")
    lines += ["", "## Spearman ρ of single features (pooled, 95 % bootstrap interval over "
              "groups)", "",
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
