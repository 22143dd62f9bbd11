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
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import check_float, check_int
from .readout import below_quantile, fit_predictor, predict, scores, spectrum_vector
from .study import load_trials

log = logging.getLogger(__name__)

__all__ = ["LyapunovRule", "replay"]


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
