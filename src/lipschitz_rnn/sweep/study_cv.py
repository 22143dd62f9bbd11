"""Fair baselines of the study (:func:`lipschitz_rnn.sweep.study.run_study`): feature sets through
two model families, scored by repeated grouped cross-validation, paired differences, out of
distribution and across sweeps.

**Groups** (:func:`study_groups`). Trials that are near-copies of one network never straddle
training and test: the seeds of a configuration (``config_id``), trials whose swept values
agree up to the seed, and trials that agree once a declared equivalence drops some keys
(:func:`~.spec.parse_equivalence`: ``model=lipschitz:model.init_scale`` -- for the trials whose
``model`` is ``lipschitz`` the init scale is ignored -- or ``KEY[,KEY]`` for every trial).

**Feature sets** (:func:`feature_sets`) at each LE epoch ``E`` after 0: ``hyperparameters``
(the swept keys but the seed: categories one-hot, numbers on a log10 scale when positive and
spanning a decade), ``hyperparameters_surrogate`` (what a Bayesian-optimisation surrogate
knows; see below), ``spectrum@0`` (before any training: a control), ``spectrum@E`` (the
features of :func:`lipschitz_rnn.analysis.spectrum_features`), ``validation@E`` (validation
metric and loss at epoch ``E``), ``hyperparameters+validation@E`` and
``hyperparameters+spectrum@E`` (in both, the hyperparameters enter as the surrogate encodes
them). The learning curve within the first epoch is not recorded by a sweep (``trials.csv``
holds per-epoch validation numbers), so there is no feature set for it.

**Model families** (:data:`FAMILIES`): ``ridge`` (standardised features, ridge regression
with the penalty chosen by inner folds over groups -- leave-one-trial-out would let a seed's
twin vouch for a penalty too weak -- and features clipped to their training range before
predicting) and ``forest`` (a random forest of :data:`FOREST_TREES` trees, leaves of at least 2
trials, one thread, seeded). For ``hyperparameters_surrogate`` the forest sees the raw columns
of ``hyperparameters`` (a forest over the raw keys is SMAC's surrogate; its row equals the
forest row of ``hyperparameters``), and the ridge step functions (:meth:`HyperEncoding.steps`):
per numeric key ``1[value > t]`` at every midpoint between consecutive distinct values, shared
by all units and again per unit, with the unit one-hot -- a smoothed piecewise-constant
response per unit and key, which can follow an accuracy that peaks at an intermediate init
scale or falls off a cliff (on a grid it spans the one-hot of unit x level). The validation
loss enters on a log10 scale (a diverging network's loss of 1e5 would otherwise dominate a
linear fit).

**Scores** (:func:`repeated_cv`): ``repeats`` splits into ``folds`` folds by group, each a
fresh random assignment of the groups (:func:`group_splits`); per split, the out-of-fold
predictions of every trial give R², Spearman's rho with the final metric and the AUC of the
predictions telling the top quartile of the final metric from the bottom quartile. Per feature
set and family: the median over splits, the 2.5 and 97.5 percentiles (``ci95``) and every
split's value (``repeats``). :func:`paired_differences`: ``spectrum@E`` (and
``hyperparameters+spectrum@E``) minus each baseline, split by split, with the fraction of splits
where the difference is positive.

**Out of distribution** (:func:`leave_one_unit_out`, :func:`leave_range_out`,
:func:`transfer`): fit on all but one unit and predict it; fit below a quantile of a swept key
(per unit) and predict above it; fit on another sweep and predict this one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .aelle import AeLLERegressor
from .readout import number
from .results import FEATURES
from .spec import parse_equivalence

__all__ = ["FAMILIES", "FOREST_TREES", "MEASURES", "HyperEncoding",
           "study_groups", "group_splits", "feature_sets", "designs", "measures",
           "repeated_cv", "paired_differences", "leave_one_unit_out", "leave_range_out",
           "transfer", "finite_columns"]

FAMILIES = ("ridge", "forest")
#: trees of the forest family: small, so that a study of ~160 trials takes about a minute
FOREST_TREES = 30
MEASURES = ("r2", "rho", "auc")
_RIDGE_ALPHAS = np.logspace(-3, 4, 15)


# --- groups -----------------------------------------------------------------------------------
def study_groups(rows: Sequence[Mapping[str, Any]], swept: Sequence[str],
                 equivalent: Sequence[str] = ()) -> list[str]:
    """One group label per row: rows with the same ``config_id``, or the same swept values but
    the seed and the keys an equivalence (:func:`~.spec.parse_equivalence`) ignores for them, share a
    group (transitively). A label is the first ``config_id`` of its group.

    Raises:
        ValueError: an equivalence is malformed or its condition matches no row.
    """
    rules = [parse_equivalence(t, swept) for t in equivalent]
    for (when, _), text in zip(rules, equivalent, strict=True):
        if when is not None and not any(str(r.get(when[0])) == when[1] for r in rows):
            raise ValueError(f"equivalent {text!r}: no trial has {when[0]} = {when[1]}")
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[Any, int] = {}
    for i, r in enumerate(rows):
        drop = {k for when, keys in rules
                if when is None or str(r.get(when[0])) == when[1] for k in keys}
        values = tuple((k, str(r.get(k))) for k in swept if k != "seed" and k not in drop)
        for key in (("config", str(r.get("config_id"))), ("values", values)):
            j = first.setdefault(key, i)
            parent[find(i)] = find(j)
    labels = {}
    return [labels.setdefault(find(i), str(rows[i].get("config_id"))) for i in range(len(rows))]


def group_splits(groups: Sequence, folds: int, repeats: int,
                 seed: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """``repeats`` splits of the rows into ``min(folds, groups)`` folds, each a list of (train,
    test) index arrays; a group is never on both sides. Each split assigns the groups in a fresh
    random order (``seed``) to the fold holding the fewest rows so far."""
    uniq, inv = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    k = min(folds, uniq.size)
    if k < 2:
        raise ValueError(f"grouped folds need at least 2 groups, got {uniq.size}")
    size = np.bincount(inv)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(repeats):
        fold_of = np.empty(uniq.size, dtype=int)
        load = np.zeros(k)
        for g in rng.permutation(uniq.size):
            f = int(np.argmin(load))
            fold_of[g], load[f] = f, load[f] + size[g]
        per_row = fold_of[inv]
        out.append([(np.flatnonzero(per_row != f), np.flatnonzero(per_row == f))
                    for f in range(k)])
    return out


# --- features ---------------------------------------------------------------------------------
def finite_columns(X: np.ndarray) -> np.ndarray:
    """Non-finite entries (a -inf exponent of a singular Jacobian, a missing value) replaced by
    the column's finite minimum (0 when the column has none)."""
    X = np.array(X, dtype=np.float64)
    for j in range(X.shape[1]):
        col = X[:, j]
        ok = np.isfinite(col)
        col[~ok] = col[ok].min() if ok.any() else 0.0
    return X


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: at most this many step thresholds per numeric key and unit (quantiles beyond that)
MAX_STEPS = 32


@dataclass(frozen=True)
class HyperEncoding:
    """How the swept keys (but the seed) become columns, fitted on a reference set of trials:
    the categorical keys with their levels, the numeric keys (log10 where positive and spanning
    a decade), and per unit (combination of categorical levels) and numeric key the thresholds
    of :meth:`steps`: the midpoints between the unit's consecutive distinct values."""

    categorical: tuple[tuple[str, tuple[str, ...]], ...]
    numeric: tuple[tuple[str, bool], ...]
    thresholds: tuple[tuple[tuple[str, ...], tuple[tuple[float, ...], ...]], ...]

    @classmethod
    def fit(cls, rows: Sequence[Mapping[str, Any]], swept: Sequence[str]) -> HyperEncoding:
        cat, num = [], []
        for key in swept:
            if key == "seed":
                continue
            vals = [r.get(key) for r in rows]
            if vals and all(_is_number(v) for v in vals):
                v = np.array(vals, dtype=np.float64)
                num.append((key, bool(v.min() > 0 and v.max() >= 10 * v.min())))
            else:
                cat.append((key, tuple(sorted({str(v) for v in vals}))))
        enc = cls(tuple(cat), tuple(num), ())
        values, cells = enc._numbers(rows), enc._cells(rows)
        subsets = [(cell, np.array([c == cell for c in cells])) for cell in sorted(set(cells))]
        if cat:  # steps shared by every unit first: what an unseen unit gets
            subsets.insert(0, ((), np.ones(len(rows), dtype=bool)))
        thresholds = []
        for cell, sel in subsets:
            per_key = []
            for j in range(values.shape[1]):
                d = np.unique(values[sel, j])
                t = (d[1:] + d[:-1]) / 2
                if t.size > MAX_STEPS:
                    t = np.quantile(values[sel, j], np.linspace(0, 1, MAX_STEPS + 2)[1:-1])
                per_key.append(tuple(float(x) for x in t))
            thresholds.append((cell, tuple(per_key)))
        return cls(tuple(cat), tuple(num), tuple(thresholds))

    @property
    def keys(self) -> list[str]:
        return [k for k, _ in self.categorical] + [k for k, _ in self.numeric]

    def _cells(self, rows) -> list[tuple[str, ...]]:
        return [tuple(str(r.get(k)) for k, _ in self.categorical) for r in rows]

    def _numbers(self, rows) -> np.ndarray:
        cols = []
        for key, log in self.numeric:
            v = np.array([number(r.get(key)) for r in rows])
            if log:
                with np.errstate(divide="ignore", invalid="ignore"):
                    v = np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)
            cols.append(v)
        return finite_columns(np.stack(cols, 1)) if cols else np.zeros((len(rows), 0))

    def raw(self, rows) -> tuple[np.ndarray, list[str]]:
        """One-hot categories, then the numbers (log10 where the reference spans a decade)."""
        cols, names = [], []
        for key, levels in self.categorical:
            for level in levels:
                cols.append(np.array([str(r.get(key)) == level for r in rows], dtype=float))
                names.append(f"{key}={level}")
        names += [f"log10 {k}" if log else k for k, log in self.numeric]
        X = np.concatenate([np.stack(cols, 1) if cols else np.zeros((len(rows), 0)),
                            self._numbers(rows)], 1)
        return X, names

    def steps(self, rows) -> tuple[np.ndarray, list[str]]:
        """Per numeric key the steps ``1[value > t]`` at thresholds shared by all units, then
        per unit its one-hot and its own steps at the unit's thresholds (without categorical
        keys: one set of steps) -- with a ridge penalty, a smoothed piecewise-constant response
        per key, shared by the units plus each unit's deviation (on a grid: the one-hot of
        unit x level)."""
        values, cells = self._numbers(rows), self._cells(rows)
        cols, names = [], []
        for cell, per_key in self.thresholds:
            shared = bool(self.categorical) and cell == ()
            ind = np.array([shared or c == cell for c in cells], dtype=float)
            label = "all" if shared else ",".join(cell)
            if self.categorical and not shared:
                cols.append(ind)
                names.append(f"[{label}]")
            for j, ((key, _), ts) in enumerate(zip(self.numeric, per_key, strict=True)):
                cols += [ind * (values[:, j] > t) for t in ts]
                names += [f"[{label}] {key}>{t:.4g}" for t in ts]
        return (np.stack(cols, 1) if cols else np.zeros((len(rows), 0)), names)


def _columns(rows, prefix: str, names: Sequence[str]) -> np.ndarray:
    return finite_columns(np.array([[number(r.get(f"{prefix}{n}")) for n in names]
                                    for r in rows]).reshape(len(rows), len(names)))


def feature_sets(epochs: Sequence[int]) -> list[tuple[str, str, int]]:
    """(label, kind, epoch) of the feature sets scored at the LE epochs ``epochs``."""
    sets = [("hyperparameters", "hyperparameters", 0),
            ("hyperparameters_surrogate", "surrogate", 0)]
    if 0 in epochs:
        sets.append(("spectrum@0", "spectrum", 0))
    for e in (e for e in epochs if e > 0):
        sets += [(f"spectrum@{e}", "spectrum", e), (f"validation@{e}", "validation", e),
                 (f"hyperparameters+validation@{e}", "surrogate+validation", e),
                 (f"hyperparameters+spectrum@{e}", "surrogate+spectrum", e)]
    return sets


def _matrix(rows, enc: HyperEncoding, kind: str, epoch: int, family: str):
    """(X, names) of one feature set for one family."""
    if kind == "spectrum":
        return _columns(rows, f"le{epoch}_", FEATURES), [f"le{epoch}_{f}" for f in FEATURES]
    if kind == "validation":
        metric = np.array([number(r.get(f"valid_{epoch}")) for r in rows])
        loss = np.array([number(r.get(f"valid_loss_{epoch}")) for r in rows])
        with np.errstate(divide="ignore", invalid="ignore"):
            loss = np.where(loss > 0, np.log10(np.where(loss > 0, loss, 1.0)), np.nan)
        return finite_columns(np.stack([metric, loss], 1)), [
            f"valid_{epoch}", f"log10 valid_loss_{epoch}"]
    if kind == "hyperparameters" or (kind == "surrogate" and family == "forest"):
        return enc.raw(rows)
    if kind == "surrogate":
        return enc.steps(rows)
    head, _, tail = kind.partition("+")
    a, na = _matrix(rows, enc, head, epoch, family)
    b, nb = _matrix(rows, enc, tail, epoch, family)
    return np.concatenate([a, b], 1), na + nb


def designs(rows, enc: HyperEncoding, sets: Sequence[tuple[str, str, int]],
            skip: Mapping[str, str] | None = None,
            families: Sequence[str] = FAMILIES) -> list[dict[str, Any]]:
    """One design per feature set and family: ``feature_set``, ``epoch``, ``model`` (the
    family), ``X``, ``key`` (equal keys: equal columns) and ``reason`` (why it cannot be
    scored: a kind named in ``skip``, no columns, or every column constant)."""
    out = []
    for label, kind, epoch in sets:
        for family in families:
            d = {"feature_set": label, "epoch": epoch, "model": family, "X": None,
                 "key": None, "reason": None}
            why = next((r for k, r in (skip or {}).items() if k in kind.split("+")), None)
            if why is not None:
                d["reason"] = why
            else:
                X, names = _matrix(rows, enc, kind, epoch, family)
                if X.shape[1] == 0:
                    d["reason"] = "no features (only the seed is swept)"
                elif np.ptp(X, axis=0).max() == 0:
                    d["reason"] = "every feature is constant (or missing) across the trials"
                else:
                    d["X"], d["key"] = X, (family, tuple(names))
            out.append(d)
    return out


# --- fitting and scoring ----------------------------------------------------------------------
def _ridge_alpha(Z: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    """The penalty of :data:`_RIDGE_ALPHAS` with the least squared error over inner folds by
    group (5, or one per group when fewer): near-copies of a trial, which share its group, never
    vouch for a penalty too weak to generalise (leave-one-trial-out would let them)."""
    uniq, inv = np.unique(groups, return_inverse=True)
    if uniq.size < 3:
        return 1.0
    k = min(5, uniq.size)
    fold = np.random.default_rng(0).permutation(uniq.size)[inv] % k
    err = np.zeros(_RIDGE_ALPHAS.size)
    for f in range(k):
        tr, te = fold != f, fold == f
        zm, ym = Z[tr].mean(0), y[tr].mean()
        U, sv, Vt = np.linalg.svd(Z[tr] - zm, full_matrices=False)
        shrink = sv[:, None] / (sv[:, None] ** 2 + _RIDGE_ALPHAS)  # (rank, alphas)
        B = Vt.T @ (shrink * (U.T @ (y[tr] - ym))[:, None])
        err += (((Z[te] - zm) @ B + ym - y[te][:, None]) ** 2).sum(0)
    return float(_RIDGE_ALPHAS[len(err) - 1 - np.argmin(err[::-1])])  # ties: the stronger


class _Ridge:
    """Ridge regression on standardised features, the penalty chosen by :func:`_ridge_alpha`;
    features are clipped to the range seen in training before predicting, so that one outlying
    trial in a test fold cannot send a linear prediction far beyond the data."""

    def fit(self, X, y, groups):
        self.mean, self.scale = X.mean(0), X.std(0)
        self.scale[self.scale == 0] = 1.0
        Z = (X - self.mean) / self.scale
        self.lo, self.hi = Z.min(0), Z.max(0)
        self.alpha = _ridge_alpha(Z, y, np.asarray(groups, dtype=str))
        self.intercept = float(y.mean())
        self.coef = np.linalg.solve(Z.T @ Z + self.alpha * np.eye(Z.shape[1]),
                                    Z.T @ (y - self.intercept))
        return self

    def predict(self, X):
        Z = np.clip((X - self.mean) / self.scale, self.lo, self.hi)
        return Z @ self.coef + self.intercept


def _fit(X, y, groups, family: str, seed: int):
    from sklearn.ensemble import RandomForestRegressor

    if family == "ridge":
        return _Ridge().fit(X, y, groups)
    if family == "aelle":
        return AeLLERegressor(seed=seed).fit(X, y)
    return RandomForestRegressor(n_estimators=FOREST_TREES, min_samples_leaf=2, n_jobs=1,
                                 random_state=seed).fit(X, y)


def _fit_predict(X, y, groups, train, test, family: str, seed: int) -> np.ndarray:
    return _fit(X[train], y[train], groups[train], family, seed).predict(X[test])


def measures(y: np.ndarray, pred: np.ndarray, *, r2: bool = True) -> dict[str, float | None]:
    """R² of ``pred`` (None when ``r2`` is False or ``y`` is constant), Spearman's rho of
    ``pred`` with ``y`` (None when either is constant) and the AUC of ``pred`` telling the top
    quartile of ``y`` from the bottom one (None when the quartiles tie)."""
    from scipy.stats import spearmanr
    from sklearn.metrics import r2_score, roc_auc_score

    y, pred = np.asarray(y, dtype=float), np.asarray(pred, dtype=float)
    out: dict[str, float | None] = {"r2": None, "rho": None, "auc": None}
    if y.size < 3 or np.ptp(y) == 0:
        return out
    if r2:
        out["r2"] = float(r2_score(y, pred))
    if np.ptp(pred) > 0:
        out["rho"] = float(spearmanr(pred, y).statistic)
    q1, q3 = np.quantile(y, [0.25, 0.75])
    if q1 < q3:
        sel = (y <= q1) | (y >= q3)
        out["auc"] = float(roc_auc_score(y[sel] >= q3, pred[sel]))
    return out


def _summary(values: Sequence[float | None]) -> tuple[float | None, list[float | None]]:
    v = np.array([x for x in values if x is not None], dtype=float)
    if not v.size:
        return None, [None, None]
    lo, med, hi = np.quantile(v, [0.025, 0.5, 0.975])
    return float(med), [float(lo), float(hi)]


def _cached(d: dict, cache: dict, compute):
    if d["key"] is None:
        return compute()
    if d["key"] not in cache:
        cache[d["key"]] = compute()
    return cache[d["key"]]


def repeated_cv(ds: Sequence[dict], y: np.ndarray, groups, splits,
                seed: int) -> list[dict[str, Any]]:
    """Per design: the measures of its out-of-fold predictions on every split of ``splits``
    (:func:`group_splits`), summarised as ``median``, ``ci95`` and ``repeats`` per measure."""
    cache: dict = {}
    groups = np.asarray(groups, dtype=str)

    def run(d):
        per = {m: [] for m in MEASURES}
        for split in splits:
            pred = np.empty_like(y)
            for train, test in split:
                pred[test] = _fit_predict(d["X"], y, groups, train, test, d["model"], seed)
            for m, v in measures(y, pred).items():
                per[m].append(v)
        return per

    out = []
    for d in ds:
        e = {k: d[k] for k in ("feature_set", "epoch", "model")}
        e.update(n=int(y.size), folds=len(splits[0]) if splits else None, median={}, ci95={},
                 repeats={}, reason=d["reason"])
        if d["reason"] is None:
            e["repeats"] = _cached(d, cache, lambda d=d: run(d))
            for m in MEASURES:
                e["median"][m], e["ci95"][m] = _summary(e["repeats"][m])
        out.append(e)
    return out


def _pairs(epochs: Sequence[int]) -> list[tuple[str, str]]:
    out = []
    for e in (e for e in epochs if e > 0):
        base = ["hyperparameters", "hyperparameters_surrogate"] + (
            ["spectrum@0"] if 0 in epochs else []) + [
            f"validation@{e}", f"hyperparameters+validation@{e}"]
        out += [(f"spectrum@{e}", b) for b in base]
        out += [(f"hyperparameters+spectrum@{e}", b)
                for b in ("hyperparameters_surrogate", f"hyperparameters+validation@{e}")]
    return out


def paired_differences(cv: Sequence[dict], epochs: Sequence[int]) -> list[dict[str, Any]]:
    """``a`` minus ``b`` split by split (the same splits, the same family): per measure the
    median and 95 % interval of the differences and the fraction of splits where a > b."""
    by = {(e["feature_set"], e["model"]): e for e in cv}
    out = []
    for a, b in _pairs(epochs):
        for family in FAMILIES:
            ea, eb = by.get((a, family)), by.get((b, family))
            if ea is None or eb is None:
                continue
            p = {"a": a, "b": b, "model": family, "epoch": ea["epoch"], "median": {},
                 "ci95": {}, "frac_positive": {}, "repeats": 0, "reason": None}
            if ea["reason"] or eb["reason"]:
                p["reason"] = f"{a if ea['reason'] else b}: {ea['reason'] or eb['reason']}"
                out.append(p)
                continue
            for m in MEASURES:
                d = [x - z for x, z in zip(ea["repeats"][m], eb["repeats"][m], strict=True)
                     if x is not None and z is not None]
                p["median"][m], p["ci95"][m] = _summary(d)
                p["frac_positive"][m] = float(np.mean(np.array(d) > 0)) if d else None
                p["repeats"] = max(p["repeats"], len(d))
            out.append(p)
    return out


# --- out of distribution ----------------------------------------------------------------------
def _held_out(ds, y, groups, train, test, seed) -> list[dict[str, Any]]:
    cache: dict = {}
    groups = np.asarray(groups, dtype=str)
    out = []
    for d in ds:
        e = {k: d[k] for k in ("feature_set", "epoch", "model")}
        e.update(n_train=int(train.size), n_test=int(test.size), reason=d["reason"])
        if d["reason"] is None:
            pred = _cached(d, cache, lambda d=d: _fit_predict(d["X"], y, groups, train, test,
                                                              d["model"], seed))
            e.update(measures(y[test], pred))
        out.append(e)
    return out


def _split_clean(test: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: the train side without any group that has a member in test."""
    in_test = np.isin(groups, groups[test])
    return np.flatnonzero(~in_test), np.flatnonzero(in_test)


def leave_one_unit_out(rows, ds, y, groups, seed: int) -> dict[str, Any]:
    """Per unit (``model`` column): fit on the other units, score on it."""
    units = np.array([str(r.get("model")) for r in rows])
    levels = sorted(set(units.tolist()))
    if len(levels) < 2:
        return {"units": levels, "entries": [], "reason": "one unit: nothing to leave out"}
    entries = []
    for u in levels:
        train, test = _split_clean(np.flatnonzero(units == u), np.asarray(groups))
        if train.size < 4:
            continue
        for e in _held_out(ds, y, groups, train, test, seed):
            entries.append({"unit": u, **e})
    return {"units": levels, "entries": entries, "reason": None}


def leave_range_out(rows, ds, y, groups, key: str, quantile: float, seed: int) -> dict:
    """Fit on the trials below the ``quantile`` of ``key`` within their unit, score on those at
    or above it (units where ``key`` does not vary stay on the training side)."""
    out = {"key": key, "quantile": quantile, "entries": [], "reason": None,
           "thresholds": {}}
    vals = np.array([number(r.get(key)) for r in rows])
    units = np.array([str(r.get("model")) for r in rows])
    test = np.zeros(len(rows), dtype=bool)
    for u in sorted(set(units.tolist())):
        sel = (units == u) & np.isfinite(vals)
        if sel.sum() >= 2 and np.ptp(vals[sel]) > 0:
            thr = float(np.quantile(vals[sel], quantile))
            out["thresholds"][u] = thr
            test |= sel & (vals >= thr)
    train, test_idx = _split_clean(np.flatnonzero(test), np.asarray(groups))
    if test_idx.size < 4 or train.size < 8:
        out["reason"] = (f"{test_idx.size} trial(s) at or above the {quantile:g} quantile of "
                         f"{key} and {train.size} below it (at least 4 and 8 needed)")
        return out
    out["entries"] = _held_out(ds, y, groups, train, test_idx, seed)
    return out


def transfer(rows_a, meta_a, rows_b, meta_b, y_a, y_b, groups_a, seed: int,
             families: Sequence[str] = FAMILIES) -> dict[str, Any]:
    """Fit every feature set on all trials of sweep A, score on sweep B. Spectrum features are
    task-agnostic; hyperparameter sets need every key of A swept in B; validation sets the same
    metric. R² only when the metric is the same (else rho and AUC, which compare ranks)."""
    same_metric = meta_a["metric"] == meta_b["metric"]
    keys_a = [k for k in meta_a.get("swept_keys", []) if k != "seed"]
    keys_b = set(meta_b.get("swept_keys", []))
    ep_a, ep_b = (set(int(e) for e in m["lyapunov"]["at_epochs"]) for m in (meta_a, meta_b))
    skip = {}
    if not keys_a or any(k not in keys_b for k in keys_a):
        skip["hyperparameters"] = skip["surrogate"] = (
            f"hyperparameter keys differ (A: {', '.join(keys_a) or 'only the seed'}; B: "
            f"{', '.join(sorted(keys_b - {'seed'})) or 'only the seed'})")
    if not same_metric:
        skip["validation"] = (f"the validation metrics differ ({meta_a['metric']['name']} "
                              f"and {meta_b['metric']['name']})")
    enc = HyperEncoding.fit(rows_a, keys_a)
    sets = feature_sets(sorted(ep_a & ep_b))
    da, db = (designs(r, enc, sets, skip, families) for r in (rows_a, rows_b))
    entries = []
    for a, b in zip(da, db, strict=True):
        e = {k: a[k] for k in ("feature_set", "epoch", "model")}
        e.update(n_train=len(rows_a), n_test=len(rows_b), reason=a["reason"] or b["reason"])
        if e["reason"] is None:
            pred = _fit(a["X"], y_a, np.asarray(groups_a, dtype=str), a["model"],
                        seed).predict(b["X"])
            e.update(measures(y_b, pred, r2=same_metric))
        entries.append(e)
    return {"metric_from": meta_a["metric"], "metric_to": meta_b["metric"],
            "r2_comparable": same_metric, "epochs": sorted(ep_a & ep_b), "entries": entries}
