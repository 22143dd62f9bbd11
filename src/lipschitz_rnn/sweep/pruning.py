"""Spectrum-guided pruning of sweeps, and its comparison with ASHA and random pruning.

**The rule** (``[scheduler] kind = "lyapunov"``, :class:`LyapunovRule`): at a decision epoch
``d`` (option ``decision_epoch``, default the first ``[lyapunov] at_epochs`` entry after 0) a
trial's final metric is predicted from its spectrum features ``le{d}_*`` by a ridge regression
(:func:`~lipschitz_rnn.sweep.readout.fit_predictor`), fitted on the trials that have finished so
far (at least ``min_history``, default 8; until then nothing is stopped) or loaded from an
earlier study (option ``predictor``: a ``study.json`` holding a ``predictor`` entry). The trial
stops when its prediction falls in the bottom ``fraction`` (default 0.5) of the predictions of
the trials seen at ``d`` so far. :mod:`.schedulers` runs it as a Ray Tune ``Stopper``.

:func:`replay` runs the rule offline on a complete sweep, in trial order, beside two baselines at
the same decision epoch and fraction -- ``asha`` (one successive-halving rung on the validation
metric at ``d``: stop when it is in the bottom ``fraction`` of those seen so far) and ``random``
(stop with probability ``fraction``, averaged over repeats) -- and reports the compute saved
(epochs, and seconds from each trial's ``train_s`` pro rata), the best final metric kept and the
recall of the true top 5. A replay is unbiased because every trial's full curve is known.

**Regret** (:func:`replay_regret`, ``pruning.json``'s ``regret``): the rules replayed over many
random trial orders (``orders``, default 30, seeded). The model is a sweep with one trial at a
time: trials arrive in the order's sequence, each runs epoch by epoch on its recorded learning
curve (``valid_<e>`` of ``trials.csv``), and a rule decides at its decision points from what it
has seen so far whether to stop it. A trial's compute is its optimisation seconds per epoch
(``seconds`` of ``trials/<id>/metrics.jsonl``; ``train_s / epochs_done`` per epoch where that
file is missing; the spectra's own cost is not counted) and its epochs, up to where it
stopped. The regret after spending a fraction
``b`` of the compute of the whole sweep without pruning is the best final metric of the sweep
minus the best among the trials that were kept to their end within that compute (0: the best
was found; before any trial ends, the spread best - worst of the sweep), in the metric's units
with lower regret better. The rules (:data:`REGRET_RULES`):

* ``none``: every trial runs to its end (regret 0 at full compute);
* ``lyapunov``: :class:`LyapunovRule` with a predictor that never saw the judged trial's
  outcome: fitted on another sweep (``predictor_from``, its trials with a spectrum at the
  decision epoch), or else cross-fitted (each trial judged by a ridge fitted on the folds that
  do not hold its configuration: grouped K-fold on ``config_id``; those folds include trials
  that come later in the order, which a live sweep would not have);
* ``asha``: Ray Tune's own ``AsyncHyperBandScheduler`` (``time_attr = "epoch"``, ``max_t`` the
  sweep's epochs, ``grace_period``, ``reduction_factor``: rungs at grace * rf^k), driven through
  its ``on_trial_add`` / ``on_trial_result`` / ``on_trial_complete`` API with stand-in trials;
* ``median``: Ray Tune's ``MedianStoppingRule`` in the same way (``time_attr = "epoch"``,
  ``grace_period``, ``min_samples_required``; hard stop, never paused: with one trial at a time
  no trial waits);
* ``random``: stops, at the decision epoch, as many trials as ``lyapunov`` stopped in the same
  order, drawn at random among those that run past it (matched compute in epochs).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import check_float, check_int
from .._io import atomic_write_text, write_json
from ..analysis.plots import new_figure, save_png
from ..runs.sweepdir import SweepDir
from .readout import below_quantile, fit_predictor, number, predict, scores, spectrum_vector
from .results import FEATURES
from .study import load_trials

log = logging.getLogger(__name__)

__all__ = ["LyapunovRule", "replay", "replay_regret", "load_curves", "stops_in_order",
           "RegretSettings", "regret_markdown", "write_regret_plot", "write_pruning",
           "predictor_from", "REGRET_RULES"]


class LyapunovRule:
    """The live rule (see the module docstring), called with every report of every trial;
    True stops the trial.

    A report is a dict with ``epoch``, the validation ``metric`` (higher is better when ``mode``
    is ``"max"``) and, from LE epoch ``decision_epoch`` on, the features ``le{d}_*``. A trial
    is finished when it reports epoch ``max_epochs``; ``predictor`` (a
    :func:`~lipschitz_rnn.sweep.readout.fit_predictor` dict) replaces the one fitted on the
    finished trials.
    """

    def __init__(self, *, decision_epoch: int, fraction: float, min_history: int,
                 max_epochs: int, mode: str, metric: str,
                 predictor: Mapping[str, Any] | None = None) -> None:
        self.decision_epoch, self.fraction, self.min_history = decision_epoch, fraction, min_history
        self.max_epochs, self.metric, self.predictor = max_epochs, metric, predictor
        self.sign = 1.0 if mode == "max" else -1.0
        self.at_d: dict[str, np.ndarray] = {}
        self.best: dict[str, float] = {}
        self.finished: set[str] = set()

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, at_epochs: Sequence[int],
                     max_epochs: int, mode: str, metric: str) -> LyapunovRule:
        """The rule of ``[scheduler]`` ``options`` (``decision_epoch``, ``fraction``,
        ``min_history``, ``predictor``), checked against the sweep's LE epochs ``at_epochs``.

        Raises:
            ValueError: an option out of range, a decision epoch without a spectrum, or a
                predictor fitted at another epoch.
        """
        opts = dict(options)
        later = [e for e in at_epochs if e > 0]
        d = check_int("[scheduler] decision_epoch", opts.get("decision_epoch", min(later or [0])),
                      ge=1)
        if d not in at_epochs:
            raise ValueError(f"[scheduler] decision_epoch = {d} must be one of [lyapunov] "
                             f"at_epochs {list(at_epochs)}")
        fraction = check_float("[scheduler] fraction", opts.get("fraction", 0.5), gt=0, lt=1)
        min_history = check_int("[scheduler] min_history", opts.get("min_history", 8), ge=1)
        loaded = None
        if opts.get("predictor"):
            loaded = json.loads(Path(opts["predictor"]).read_text())["predictor"]
            if loaded["epoch"] != d:
                raise ValueError(f"[scheduler] predictor was fitted at epoch {loaded['epoch']}, "
                                 f"decision_epoch is {d}")
        return cls(decision_epoch=d, fraction=fraction, min_history=min_history,
                   max_epochs=max_epochs, mode=mode, metric=metric, predictor=loaded)

    def __call__(self, trial_id: str, result: Mapping[str, Any]) -> bool:
        d = self.decision_epoch
        v = result.get(self.metric)
        if isinstance(v, (int, float)) and np.isfinite(v):
            self.best[trial_id] = max(self.best.get(trial_id, -np.inf), self.sign * v)
        epoch = int(result.get("epoch", 0))
        if epoch >= self.max_epochs:
            self.finished.add(trial_id)
            return False
        if epoch != d:
            return False
        x = spectrum_vector(result, d)
        if x is None:
            return False
        others = dict(self.at_d)
        self.at_d[trial_id] = x
        pred = self.predictor
        hist = [t for t in self.finished if t in others and t in self.best]
        if pred is None:
            if len(hist) < self.min_history:
                return False
            pred = fit_predictor(np.stack([others[t] for t in hist]),
                                 np.array([self.best[t] for t in hist]), d)
        if not others:
            return False
        mine = float(predict(pred, x)[0])
        seen = predict(pred, np.stack(list(others.values()))).tolist()
        stop = below_quantile(mine, seen, self.fraction)
        if stop:
            log.info("lyapunov pruning stops %s at epoch %d (predicted %.4g)", trial_id, d,
                     self.sign * mine)
        return stop


def replay(sweep_dir: str | Path, *, decision_epoch: int | None = None, fraction: float = 0.5,
           min_history: int = 8, random_repeats: int = 200, seed: int = 0) -> dict[str, Any]:
    """Replay the three pruning rules on the complete sweep in ``sweep_dir`` (see the module
    docstring); returns ``{"decision_epoch", "fraction", "rules": {name: {...}}}``."""
    fraction = check_float("fraction", fraction, gt=0, lt=1)
    min_history = check_int("min_history", min_history, ge=2)
    rows_all, meta, _ = load_trials(sweep_dir)
    rows = [r for r in rows_all if r.get("status") in ("ok", "diverged")]
    if decision_epoch is None:
        later = [e for e in meta["lyapunov"]["at_epochs"] if e > 0]
        if not later:
            raise ValueError("the sweep has no spectrum after epoch 0 to decide on")
        decision_epoch = min(later)
    d = check_int("decision_epoch", decision_epoch, ge=1)
    y = scores(rows, meta["metric"]["mode"])
    sign = 1.0 if meta["metric"]["mode"] == "max" else -1.0
    epochs = np.array([r.get("epochs_done") or 0 for r in rows], dtype=np.float64)
    secs = np.array([r.get("train_s") or 0.0 for r in rows], dtype=np.float64)
    top5 = set(np.argsort(-y)[:5].tolist())

    def outcome(stopped: np.ndarray) -> dict[str, Any]:
        cut = np.minimum(epochs, d)
        used_ep = np.where(stopped, cut, epochs)
        used_s = np.where(stopped, secs * cut / np.maximum(epochs, 1), secs)
        kept = ~stopped
        return {
            "stopped": int(stopped.sum()),
            "epochs_saved": float(epochs.sum() - used_ep.sum()),
            "compute_saved_frac": float(1 - used_s.sum() / secs.sum()) if secs.sum() else None,
            "best_kept": float(sign * y[kept].max()) if kept.any() else None,
            "top5_recall": len([i for i in top5 if kept[i]]) / len(top5),
        }

    # lyapunov: predictor fitted on the finished (not stopped) trials before this one
    stopped = np.zeros(len(rows), dtype=bool)
    feats = [spectrum_vector(r, d) for r in rows]
    for i, x in enumerate(feats):
        hist = [j for j in range(i) if not stopped[j] and feats[j] is not None]
        if x is None or len(hist) < min_history:
            continue
        pred = fit_predictor(np.stack([feats[j] for j in hist]), y[hist], d)
        seen = predict(pred, np.stack([f for f in feats[:i] if f is not None])).tolist()
        stopped[i] = below_quantile(float(predict(pred, x)[0]), seen, fraction)
    rules = {"lyapunov": outcome(stopped)}

    stopped = np.zeros(len(rows), dtype=bool)
    early = [r.get(f"valid_{d}") for r in rows]
    early = np.array([sign * v if isinstance(v, float) else -np.inf for v in early])
    for i in range(len(rows)):
        if i >= min_history:
            stopped[i] = below_quantile(early[i], early[:i].tolist(), fraction)
    rules["asha"] = outcome(stopped)

    rng = np.random.default_rng(seed)
    draws = [outcome(rng.random(len(rows)) < fraction) for _ in range(random_repeats)]
    rules["random"] = {k: float(np.mean([o[k] for o in draws if o[k] is not None]))
                       for k in draws[0]}
    rules["none"] = outcome(np.zeros(len(rows), dtype=bool))
    return {"decision_epoch": d, "fraction": fraction, "min_history": min_history,
            "n_trials": len(rows), "top5": sorted(str(rows[i]["trial"]) for i in top5),
            "rules": rules}


# --- regret over random trial orders ----------------------------------------------------------

#: the rules of :func:`replay_regret`, in the order of its tables
REGRET_RULES = ("none", "lyapunov", "asha", "median", "random")
#: budget fractions of the regret curves, and those of the table
BUDGET_POINTS = 101
TABLE_BUDGETS = (0.25, 0.5, 0.75, 1.0)
_DONE = ("ok", "diverged")
_METRIC = "valid_metric"  # the key the replayed reports carry (the live sweep's METRIC)


@dataclass(frozen=True)
class RegretSettings:
    """The knobs of the replayed rules: the spectrum rule's ``decision_epoch`` and ``fraction``
    (also where and how many ``random`` stops), ASHA's ``grace_period`` and
    ``reduction_factor``, the median rule's ``median_grace`` and ``min_samples``."""

    decision_epoch: int
    fraction: float = 0.5
    grace_period: int = 1
    reduction_factor: float = 2.0
    median_grace: int = 1
    min_samples: int = 3


@dataclass
class SweepCurves:
    """The recorded curves of a sweep's finished trials (``ok`` or ``diverged``)."""

    rows: list[dict[str, Any]]
    mode: str
    max_epochs: int
    y: np.ndarray  # final metric, oriented so that higher is better (readout.scores)
    valid: np.ndarray  # (n, max_epochs) validation metric as reported, NaN where missing
    secs: np.ndarray  # (n, max_epochs) optimisation seconds per epoch, 0 past epochs_done
    epochs: np.ndarray  # (n,) epochs done
    seconds_source: str

    @property
    def ids(self) -> list[str]:
        return [str(r["trial"]) for r in self.rows]

    def cost(self, stop_at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(seconds, epochs) each trial spends when it stops after epoch ``stop_at``."""
        cum = np.concatenate([np.zeros((len(self.rows), 1)), np.cumsum(self.secs, 1)], 1)
        return cum[np.arange(len(self.rows)), stop_at], stop_at.astype(np.float64)


def _epoch_seconds(sweep: SweepDir, row: Mapping[str, Any], n_epochs: int,
                   width: int) -> tuple[np.ndarray, bool]:
    """A trial's seconds per epoch from its ``metrics.jsonl`` (True), else ``train_s`` pro rata
    (1 s per epoch where neither is recorded)."""
    out = np.zeros(width)
    recs = {r.get("epoch"): number(r.get("seconds")) for r in sweep.trial(row["trial"]).records()}
    got = [recs.get(e, np.nan) for e in range(1, n_epochs + 1)]
    if n_epochs and np.isfinite(got).all():
        out[:n_epochs] = got
        return out, True
    total = number(row.get("train_s"))
    out[:n_epochs] = total / n_epochs if np.isfinite(total) and n_epochs else 1.0
    return out, False


def load_curves(sweep_dir: str | Path) -> SweepCurves:
    """The :class:`SweepCurves` of the sweep in ``sweep_dir``.

    Raises:
        ValueError: fewer than 2 finished trials.
    """
    rows_all, meta, _ = load_trials(sweep_dir)
    rows = [r for r in rows_all if r.get("status") in _DONE]
    if len(rows) < 2:
        raise ValueError(f"sweep_dir {sweep_dir} has {len(rows)} finished trials; the regret "
                         "replay needs at least 2")
    mode = meta["metric"]["mode"]
    done = [int(np.nan_to_num(number(r.get("epochs_done")))) for r in rows]
    width = int(meta.get("max_epochs") or max(done))
    epochs = np.minimum(np.array(done), width)
    valid = np.array([[number(r.get(f"valid_{e}")) for e in range(1, width + 1)] for r in rows])
    sweep = SweepDir(sweep_dir)
    secs, from_log = zip(*(_epoch_seconds(sweep, r, int(n), width)
                           for r, n in zip(rows, epochs, strict=True)), strict=True)
    source = ("metrics.jsonl" if all(from_log) else
              "train_s / epochs_done" if not any(from_log) else "metrics.jsonl, else train_s")
    return SweepCurves(rows=rows, mode=mode, max_epochs=width, y=scores(rows, mode),
                       valid=valid, secs=np.stack(secs), epochs=epochs, seconds_source=source)


def _features(rows: Sequence[Mapping[str, Any]], epoch: int) -> list[np.ndarray | None]:
    return [spectrum_vector(r, epoch) for r in rows]


def predictor_from(other_dir: str | Path, epoch: int) -> dict[str, Any]:
    """The ridge predictor (:func:`~lipschitz_rnn.sweep.readout.fit_predictor`) of the final
    metric from the spectrum features at LE epoch ``epoch``, fitted on the finished trials of
    the sweep in ``other_dir``; ``n_trials`` and ``from`` say on what.

    Raises:
        ValueError: fewer than 3 of its finished trials have a spectrum at ``epoch``.
    """
    rows_all, meta, _ = load_trials(other_dir)
    rows = [r for r in rows_all if r.get("status") in _DONE]
    feats = _features(rows, epoch)
    keep = [i for i, f in enumerate(feats) if f is not None]
    if len(keep) < 3:
        raise ValueError(f"predictor_from: {other_dir} has {len(keep)} finished trials with a "
                         f"spectrum at epoch {epoch}; expected at least 3")
    y = scores(rows, meta["metric"]["mode"])[keep]
    pred = fit_predictor(np.stack([feats[i] for i in keep]), y, epoch)
    pred.update({"from": str(other_dir), "n_trials": len(keep),
                 "metric": dict(meta["metric"])})
    return pred


def _crossfit(curves: SweepCurves, epoch: int, folds: int = 5) -> list[dict | None]:
    """A predictor per trial fitted on the configurations of the other grouped folds."""
    from sklearn.model_selection import GroupKFold

    feats = _features(curves.rows, epoch)
    idx = np.array([i for i, f in enumerate(feats) if f is not None])
    groups = np.array([str(curves.rows[i].get("config_id", curves.rows[i]["trial"]))
                       for i in idx])
    out: list[dict | None] = [None] * len(feats)
    k = min(folds, len(set(groups.tolist())))
    if k < 2:
        raise ValueError(f"the sweep has {k} configuration(s) with a spectrum at epoch {epoch}; "
                         "a cross-fitted predictor needs at least 2 (or give predictor_from)")
    for train, test in GroupKFold(n_splits=k).split(idx, groups=groups):
        pred = fit_predictor(np.stack([feats[i] for i in idx[train]]), curves.y[idx[train]],
                             epoch)
        for i in idx[test]:
            out[i] = pred
    return out


def _report(curves: SweepCurves, i: int, e: int, feats: np.ndarray | None,
            d: int) -> dict[str, Any]:
    """The report of trial ``i`` after epoch ``e`` (as :func:`~.trial.report_metrics`)."""
    rep = {"epoch": e, _METRIC: float(curves.valid[i, e - 1])}
    if feats is not None and e >= d:
        rep.update({f"le{d}_{f}": float(v) for f, v in zip(FEATURES, feats, strict=True)})
    return rep


def _lyapunov_stops(curves: SweepCurves, order: Sequence[int], predictors: Sequence[Any],
                    s: RegretSettings) -> np.ndarray:
    d = s.decision_epoch
    rule = LyapunovRule(decision_epoch=d, fraction=s.fraction, min_history=1,
                        max_epochs=curves.max_epochs, mode=curves.mode, metric=_METRIC)
    stop_at = curves.epochs.copy()
    for i in order:
        # trial i is judged by its own predictor (one for all when it comes from another sweep)
        rule.predictor = predictors[i]
        feats = spectrum_vector(curves.rows[i], d) if predictors[i] is not None else None
        for e in range(1, int(curves.epochs[i]) + 1):
            if rule(curves.ids[i], _report(curves, i, e, feats, d)) and e < curves.epochs[i]:
                stop_at[i] = e
                break
    return stop_at


class _Trial:
    """What Ray's schedulers read of a trial: its ``trial_id`` (hashed by identity)."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


class _Controller:
    """What Ray's schedulers read of the controller: no trial waits (one trial at a time)."""

    def get_live_trials(self) -> list:
        return []


def _ray_scheduler(kind: str, curves: SweepCurves, s: RegretSettings) -> Any:
    from ray.tune.schedulers import AsyncHyperBandScheduler, MedianStoppingRule

    if kind == "asha":
        return AsyncHyperBandScheduler(
            time_attr="epoch", metric=_METRIC, mode=curves.mode, max_t=curves.max_epochs,
            grace_period=s.grace_period, reduction_factor=s.reduction_factor)
    return MedianStoppingRule(time_attr="epoch", metric=_METRIC, mode=curves.mode,
                              grace_period=s.median_grace, min_samples_required=s.min_samples,
                              hard_stop=True)


def _ray_stops(kind: str, curves: SweepCurves, order: Sequence[int],
               s: RegretSettings) -> np.ndarray:
    """Ray's scheduler ``kind`` (``asha`` or ``median``) fed the recorded curves in ``order``."""
    from ray.tune.schedulers import TrialScheduler

    sched, ctl = _ray_scheduler(kind, curves, s), _Controller()
    stop_at = curves.epochs.copy()
    state = np.random.get_state()  # ASHA draws a bracket from NumPy's global generator
    try:
        for i in order:
            trial, last = _Trial(curves.ids[i]), None
            sched.on_trial_add(ctl, trial)
            for e in range(1, int(curves.epochs[i]) + 1):
                if not np.isfinite(curves.valid[i, e - 1]):
                    continue  # no metric reported: the scheduler is not asked
                last = _report(curves, i, e, None, 0)
                if sched.on_trial_result(ctl, trial, last) == TrialScheduler.STOP:
                    if e < curves.epochs[i]:
                        stop_at[i] = e
                    break
            if last is None:
                sched.on_trial_remove(ctl, trial)
            else:  # Ray's controller calls this for stopped and finished trials alike
                sched.on_trial_complete(ctl, trial, last)
    finally:
        np.random.set_state(state)
    return stop_at


def asha_rungs(max_t: int, grace_period: int, reduction_factor: float) -> list[float]:
    """The rungs (epochs) at which Ray's one-bracket ASHA decides, below ``max_t`` (where it
    stops every trial anyway)."""
    n = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
    return [grace_period * reduction_factor**k for k in range(n)
            if grace_period * reduction_factor**k < max_t]


def stops_in_order(curves: SweepCurves, order: Sequence[int], predictors: Sequence[Any],
                   settings: RegretSettings, rng: np.random.Generator,
                   rules: Sequence[str] = REGRET_RULES) -> dict[str, np.ndarray]:
    """For each rule of ``rules``, the epoch after which each trial stops when the trials arrive
    in ``order`` (``curves.epochs`` where it runs to its end); ``predictors[i]`` judges trial
    ``i`` for ``lyapunov`` (None: it has no spectrum to be judged on)."""
    out: dict[str, np.ndarray] = {}
    for name in rules:
        if name == "none":
            out[name] = curves.epochs.copy()
        elif name == "lyapunov":
            out[name] = _lyapunov_stops(curves, order, predictors, settings)
        elif name in ("asha", "median"):
            out[name] = _ray_stops(name, curves, order, settings)
        elif name == "random":
            d = settings.decision_epoch
            ly = out.get("lyapunov")
            if ly is None:
                ly = _lyapunov_stops(curves, order, predictors, settings)
            k = int((ly < curves.epochs).sum())
            stop_at = curves.epochs.copy()
            eligible = np.flatnonzero(curves.epochs > d)
            stop_at[rng.choice(eligible, size=min(k, eligible.size), replace=False)] = d
            out[name] = stop_at
        else:
            raise ValueError(f"rules: expected names among {list(REGRET_RULES)}, got {name!r}")
    return out


def regret_curve(curves: SweepCurves, order: Sequence[int], stop_at: np.ndarray,
                 cost: np.ndarray, total: float, budgets: np.ndarray) -> np.ndarray:
    """The regret after spending each fraction of ``budgets`` of ``total`` when trial ``i``
    costs ``cost[i]`` and the trials kept to their end are those with ``stop_at == epochs``."""
    order = np.asarray(order)
    spent = np.cumsum(cost[order])
    kept = stop_at[order] >= curves.epochs[order]
    best = np.maximum.accumulate(np.where(kept, curves.y[order], -np.inf))
    last = np.searchsorted(spent, budgets * total * (1 + 1e-12), side="right") - 1
    found = np.where(last >= 0, best[np.maximum(last, 0)], -np.inf)
    top = curves.y.max()
    return np.where(np.isfinite(found), top - found, top - curves.y.min())


def _band(samples: np.ndarray) -> dict[str, Any]:
    """Median and 95 % interval over orders (axis 0)."""
    lo, med, hi = np.percentile(samples, [2.5, 50, 97.5], axis=0)
    if np.ndim(med) == 0:
        return {"median": float(med), "ci95": [float(lo), float(hi)]}
    return {"median": med.tolist(), "lo": lo.tolist(), "hi": hi.tolist()}


def _lyapunov_predictors(curves: SweepCurves, d: int,
                         other: str | Path | None) -> tuple[list[Any], dict[str, Any]]:
    if other is not None:
        pred = predictor_from(other, d)
        feats = _features(curves.rows, d)
        info = {"source": "other sweep", "from": str(other), "n_trials": pred["n_trials"],
                "metric": pred["metric"], "epoch": d}
        return [pred if f is not None else None for f in feats], info
    preds = _crossfit(curves, d)
    return preds, {"source": "cross-fitted", "folds": "grouped by config_id, up to 5",
                   "epoch": d}


def _summarise(curves: SweepCurves, samples: dict[str, list],
               budgets: np.ndarray) -> dict[str, Any]:
    out = {}
    for name, per_order in samples.items():
        stop = np.stack([p["stop_at"] for p in per_order])
        entry: dict[str, Any] = {"stopped": _band((stop < curves.epochs).sum(1))}
        for axis in ("seconds", "epochs"):
            curve = np.stack([p[axis] for p in per_order])
            entry[f"compute_frac_{axis}"] = _band(np.array([p[f"frac_{axis}"]
                                                            for p in per_order]))
            entry[f"regret_vs_{axis}"] = _band(curve)
            entry[f"at_{axis}"] = {f"{b:g}": _band(curve[:, int(round(b * (len(budgets) - 1)))])
                                   for b in TABLE_BUDGETS}
        final = np.stack([p["seconds"][-1] for p in per_order])
        entry["final_regret"] = {**_band(final), "p_zero": float(np.mean(final <= 0))}
        out[name] = entry
    return out


def replay_regret(sweep_dir: str | Path, *, orders: int = 30, seed: int = 0,
                  predictor_from_dir: str | Path | None = None,
                  decision_epoch: int | None = None, fraction: float = 0.5,
                  grace_period: int = 1, reduction_factor: float = 2.0,
                  rules: Sequence[str] = REGRET_RULES) -> dict[str, Any]:
    """Regret against compute of the pruning rules over ``orders`` random trial orders (see the
    module docstring); ``pruning.json``'s ``regret``.

    Raises:
        ValueError: an option out of range, or no spectrum after epoch 0 to decide on.
    """
    orders = check_int("orders", orders, ge=1)
    fraction = check_float("fraction", fraction, gt=0, lt=1)
    grace_period = check_int("grace_period", grace_period, ge=1)
    reduction_factor = check_float("reduction_factor", reduction_factor, gt=1)
    curves = load_curves(sweep_dir)
    meta = SweepDir(sweep_dir).meta()
    if decision_epoch is None:
        later = [e for e in meta["lyapunov"]["at_epochs"] if 0 < e < curves.max_epochs]
        if not later:
            raise ValueError("the sweep has no spectrum between epoch 0 and its last to decide "
                             "on")
        decision_epoch = min(later)
    d = check_int("decision_epoch", decision_epoch, ge=1, lt=curves.max_epochs)
    if grace_period >= curves.max_epochs:
        raise ValueError(f"grace_period must be below the sweep's {curves.max_epochs} epochs, "
                         f"got {grace_period}")
    s = RegretSettings(decision_epoch=d, fraction=fraction, grace_period=grace_period,
                       reduction_factor=reduction_factor)
    predictors, info = (_lyapunov_predictors(curves, d, predictor_from_dir)
                        if {"lyapunov", "random"} & set(rules) else ([], {}))
    budgets = np.linspace(0.0, 1.0, BUDGET_POINTS)
    full = tuple(float(c.sum()) for c in curves.cost(curves.epochs))
    order_rng, rule_rng = (np.random.default_rng(q) for q in np.random.SeedSequence(seed).spawn(2))
    samples: dict[str, list] = {name: [] for name in rules}
    for _ in range(orders):
        order = order_rng.permutation(len(curves.rows))
        for name, stop_at in stops_in_order(curves, order, predictors, s, rule_rng,
                                            rules).items():
            rec: dict[str, Any] = {"stop_at": stop_at}
            for axis, cost, total in zip(("seconds", "epochs"), curves.cost(stop_at), full,
                                         strict=True):
                rec[axis] = regret_curve(curves, order, stop_at, cost, total, budgets)
                rec[f"frac_{axis}"] = float(cost.sum() / total) if total else 0.0
            samples[name].append(rec)
    return {
        "orders": orders, "seed": seed, "n_trials": len(curves.rows),
        "metric": dict(meta["metric"]), "max_epochs": curves.max_epochs,
        "model": "one trial at a time in a random order; each rule decides from the trials "
                 "seen so far; regret = best final metric of the sweep - best among the trials "
                 "kept to their end within the budget (metric units, 0 = the best was found)",
        "seconds_source": curves.seconds_source,
        "decision_epoch": d, "fraction": fraction, "predictor": info,
        "asha": {"scheduler": "ray.tune.schedulers.AsyncHyperBandScheduler",
                 "time_attr": "epoch", "max_t": curves.max_epochs,
                 "grace_period": grace_period, "reduction_factor": reduction_factor,
                 "rungs": asha_rungs(curves.max_epochs, grace_period, reduction_factor)},
        "median": {"scheduler": "ray.tune.schedulers.MedianStoppingRule", "time_attr": "epoch",
                   "grace_period": s.median_grace, "min_samples_required": s.min_samples},
        "random": "as many trials as lyapunov stopped in the same order, at its decision epoch",
        "budget": budgets.tolist(),
        "rules": _summarise(curves, samples, budgets),
    }


def regret_markdown(regret: Mapping[str, Any]) -> str:
    """A table of :func:`replay_regret`'s regret (median [95 % interval] over orders) at the
    budgets :data:`TABLE_BUDGETS` of the compute in seconds, with each rule's compute used."""
    m, p = regret["metric"], regret["predictor"]
    src = (f"fitted on {p['from']} ({p['n_trials']} trials, {p['metric']['name']})"
           if p.get("source") == "other sweep" else "cross-fitted on this sweep (grouped folds)")
    head = " | ".join(f"{b:.0%} compute" for b in TABLE_BUDGETS)
    lines = [f"Regret in {m['name']} (best of the sweep minus best kept; median [95 % interval] "
             f"over {regret['orders']} trial orders) against the fraction of the sweep's "
             f"optimisation seconds spent. Spectrum predictor at epoch "
             f"{regret['decision_epoch']}: {src}. ASHA rungs at epochs "
             f"{[int(r) if float(r).is_integer() else r for r in regret['asha']['rungs']]}.", "",
             f"| rule | compute used | stopped | {head} |",
             "|---|---|---|" + "---|" * len(TABLE_BUDGETS)]
    for name, e in regret["rules"].items():
        used, st = e["compute_frac_seconds"], e["stopped"]
        cells = [f"{c['median']:.4f} [{c['ci95'][0]:.4f}, {c['ci95'][1]:.4f}]"
                 for c in e["at_seconds"].values()]
        lines.append(f"| {name} | {used['median']:.0%} [{used['ci95'][0]:.0%}, "
                     f"{used['ci95'][1]:.0%}] | {st['median']:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_regret_plot(regret: Mapping[str, Any], path: str | Path) -> str:
    """The regret curves (median and 95 % band over orders) against the fraction of the sweep's
    seconds and epochs, one line per rule, as a PNG at ``path``."""
    fig, axes = new_figure(1, 2, figsize=(10.0, 4.0))
    b = np.asarray(regret["budget"])
    # symlog: the spread of the first trials and the last few thousandths on one axis
    spread = max(max(e["regret_vs_seconds"]["hi"]) for e in regret["rules"].values())
    styles = ("-", "--", "-.", ":", (0, (5, 1)))
    for ax, axis in zip(axes[0], ("seconds", "epochs"), strict=True):
        for k, (name, e) in enumerate(regret["rules"].items()):
            c = e[f"regret_vs_{axis}"]
            (line,) = ax.plot(b, c["median"], label=name, ls=styles[k % len(styles)])
            ax.fill_between(b, c["lo"], c["hi"], color=line.get_color(), alpha=0.12, lw=0)
        ax.set_yscale("symlog", linthresh=max(spread, 1e-12) * 1e-3)
        ax.set_xlabel(f"fraction of the sweep's {axis} spent")
        ax.set_ylabel(f"regret ({regret['metric']['name']}, symlog)")
        ax.set_title(f"median and 95 % band over {regret['orders']} trial orders",
                     fontsize="medium")
    axes[0][0].legend()
    return save_png(fig, path)


def write_pruning(sweep_dir: str | Path, replayed: Mapping[str, Any]) -> list[str]:
    """Write ``pruning.json`` (``replayed``: :func:`replay`'s dict, with :func:`replay_regret`'s
    under ``regret`` when given) and, with a regret, ``pruning.md`` (its table) and
    ``pruning_regret.png`` (its curves) into ``sweep_dir``; returns the paths written."""
    root = Path(sweep_dir)
    write_json(root / "pruning.json", dict(replayed))
    paths = [str(root / "pruning.json")]
    if replayed.get("regret"):
        md = "# Pruning judged by regret\n\n" + regret_markdown(replayed["regret"])
        atomic_write_text(root / "pruning.md", md)
        paths += [str(root / "pruning.md"),
                  write_regret_plot(replayed["regret"], root / "pruning_regret.png")]
    return paths
