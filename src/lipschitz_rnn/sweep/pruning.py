"""Spectrum-guided pruning of sweeps, and its comparison with ASHA and random pruning.

**The rule** (``[scheduler] kind = "lyapunov"``): at a decision epoch ``d`` (option
``decision_epoch``, default the first ``[lyapunov] at_epochs`` entry after 0) a trial's final
metric is predicted from its spectrum features ``le{d}_*`` by a ridge regression, fitted on the
trials that have finished so far (at least ``min_history``, default 8; until then nothing is
stopped) or loaded from an earlier study (option ``predictor``: a ``study.json`` holding a
``predictor`` entry, see :func:`fit_predictor`). The trial stops when its prediction falls in the
bottom ``fraction`` (default 0.5) of the predictions of the trials seen at ``d`` so far.

:func:`replay` runs the rule offline on a complete sweep, in trial order, beside two baselines at
the same decision epoch and fraction -- ``asha`` (one successive-halving rung on the validation
metric at ``d``: stop when it is in the bottom ``fraction`` of those seen so far) and ``random``
(stop with probability ``fraction``, averaged over repeats) -- and reports the compute saved
(epochs, and seconds from each trial's ``train_s`` pro rata), the best final metric kept and the
recall of the true top 5. A replay is unbiased because every trial's full curve is known.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import check_float, check_int
from .results import FEATURES
from .schedulers import SchedulerContext, register_scheduler

log = logging.getLogger(__name__)

__all__ = ["fit_predictor", "predict", "replay", "make_lyapunov_stopper"]


def _features(record: dict[str, Any], epoch: int) -> np.ndarray | None:
    x = [record.get(f"le{epoch}_{f}") for f in FEATURES]
    if any(not isinstance(v, (int, float)) or not np.isfinite(v) for v in x):
        return None
    return np.asarray(x, dtype=np.float64)


def fit_predictor(X: np.ndarray, y: np.ndarray, epoch: int) -> dict[str, Any]:
    """A ridge regression of ``y`` on standardised spectrum features (the columns of
    :data:`~lipschitz_rnn.sweep.results.FEATURES` at LE epoch ``epoch``), as a JSON-able dict."""
    from sklearn.linear_model import RidgeCV

    X = np.asarray(X, dtype=np.float64)
    mean, scale = X.mean(0), X.std(0)
    scale[scale == 0] = 1.0
    reg = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit((X - mean) / scale, y)
    return {"epoch": int(epoch), "features": list(FEATURES), "mean": mean.tolist(),
            "scale": scale.tolist(), "coef": reg.coef_.tolist(),
            "intercept": float(reg.intercept_)}


def predict(predictor: dict[str, Any], X: np.ndarray) -> np.ndarray:
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    z = (X - np.asarray(predictor["mean"])) / np.asarray(predictor["scale"])
    return z @ np.asarray(predictor["coef"]) + predictor["intercept"]


def _below(value: float, seen: list[float], fraction: float) -> bool:
    return bool(seen) and value < float(np.quantile(seen, fraction))


def replay(sweep_dir: str | Path, *, decision_epoch: int | None = None, fraction: float = 0.5,
           min_history: int = 8, random_repeats: int = 200, seed: int = 0) -> dict[str, Any]:
    """Replay the three pruning rules on the complete sweep in ``sweep_dir`` (see the module
    docstring); returns ``{"decision_epoch", "fraction", "rules": {name: {...}}}``."""
    from .study import _scores, load_trials

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
    y = _scores(rows, meta["metric"]["mode"])
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
    feats = [_features(r, d) for r in rows]
    for i, x in enumerate(feats):
        hist = [j for j in range(i) if not stopped[j] and feats[j] is not None]
        if x is None or len(hist) < min_history:
            continue
        pred = fit_predictor(np.stack([feats[j] for j in hist]), y[hist], d)
        seen = predict(pred, np.stack([f for f in feats[:i] if f is not None])).tolist()
        stopped[i] = _below(float(predict(pred, x)[0]), seen, fraction)
    rules = {"lyapunov": outcome(stopped)}

    stopped = np.zeros(len(rows), dtype=bool)
    early = [r.get(f"valid_{d}") for r in rows]
    early = np.array([sign * v if isinstance(v, float) else -np.inf for v in early])
    for i in range(len(rows)):
        if i >= min_history:
            stopped[i] = _below(early[i], early[:i].tolist(), fraction)
    rules["asha"] = outcome(stopped)

    rng = np.random.default_rng(seed)
    draws = [outcome(rng.random(len(rows)) < fraction) for _ in range(random_repeats)]
    rules["random"] = {k: float(np.mean([o[k] for o in draws if o[k] is not None]))
                       for k in draws[0]}
    rules["none"] = outcome(np.zeros(len(rows), dtype=bool))
    return {"decision_epoch": d, "fraction": fraction, "min_history": min_history,
            "n_trials": len(rows), "top5": sorted(str(rows[i]["trial"]) for i in top5),
            "rules": rules}


def make_lyapunov_stopper(ctx: SchedulerContext) -> Any:
    """The live rule as a Ray Tune ``Stopper`` (registered as ``kind = "lyapunov"``)."""
    from ray.tune import Stopper

    opts = dict(ctx.spec.options)
    later = [e for e in ctx.at_epochs if e > 0]
    d = check_int("[scheduler] decision_epoch", opts.get("decision_epoch", min(later or [0])),
                  ge=1)
    if d not in ctx.at_epochs:
        raise ValueError(f"[scheduler] decision_epoch = {d} must be one of [lyapunov] at_epochs "
                         f"{list(ctx.at_epochs)}")
    fraction = check_float("[scheduler] fraction", opts.get("fraction", 0.5), gt=0, lt=1)
    min_history = check_int("[scheduler] min_history", opts.get("min_history", 8), ge=1)
    loaded = None
    if opts.get("predictor"):
        loaded = json.loads(Path(opts["predictor"]).read_text())["predictor"]
        if loaded["epoch"] != d:
            raise ValueError(f"[scheduler] predictor was fitted at epoch {loaded['epoch']}, "
                             f"decision_epoch is {d}")
    sign = 1.0 if ctx.mode == "max" else -1.0

    class LyapunovStopper(Stopper):
        def __init__(self) -> None:
            self.at_d: dict[str, np.ndarray] = {}
            self.best: dict[str, float] = {}
            self.finished: set[str] = set()

        def __call__(self, trial_id: str, result: dict) -> bool:
            v = result.get(ctx.metric)
            if isinstance(v, (int, float)) and np.isfinite(v):
                self.best[trial_id] = max(self.best.get(trial_id, -np.inf), sign * v)
            epoch = int(result.get("epoch", 0))
            if epoch >= ctx.max_epochs:
                self.finished.add(trial_id)
                return False
            if epoch != d:
                return False
            x = _features(result, d)
            if x is None:
                return False
            others = dict(self.at_d)
            self.at_d[trial_id] = x
            pred = loaded
            hist = [t for t in self.finished if t in others and t in self.best]
            if pred is None:
                if len(hist) < min_history:
                    return False
                pred = fit_predictor(np.stack([others[t] for t in hist]),
                                     np.array([self.best[t] for t in hist]), d)
            if not others:
                return False
            mine = float(predict(pred, x)[0])
            seen = predict(pred, np.stack(list(others.values()))).tolist()
            stop = _below(mine, seen, fraction)
            if stop:
                log.info("lyapunov pruning stops %s at epoch %d (predicted %.4g)", trial_id, d,
                         sign * mine)
            return stop

        def stop_all(self) -> bool:
            return False

    return LyapunovStopper()


register_scheduler("lyapunov", make_lyapunov_stopper)
