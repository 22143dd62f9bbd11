"""The readout shared by the study and by spectrum-guided pruning: spectrum features -> predictor
-> scores.

* :func:`scores`: a trial's final metric oriented so that higher is better (a metric where lower
  is better, loss or bpc, is negated; a trial without a finite value counts as the worst);
* :func:`spectrum_vector`: a trial's spectrum features ``le{e}_*`` at LE epoch ``e`` (the
  columns :data:`~lipschitz_rnn.sweep.results.FEATURES`), from a ``trials.csv`` row or a Ray
  report alike;
* :func:`fit_predictor` / :func:`predict`: a ridge regression of the scores on the standardised
  features of one LE epoch, as a JSON-able dict (``study.json``'s ``predictor``, which a
  ``[scheduler] kind = "lyapunov"`` can load);
* :func:`below_quantile`: the pruning decision, a value in the bottom ``fraction`` of the values
  seen so far.

:mod:`.study` and :mod:`.pruning` import these from here, and nothing from each other's
internals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .results import FEATURES

__all__ = ["number", "scores", "spectrum_vector", "fit_predictor", "predict", "below_quantile"]


def number(value: Any) -> float:
    """A ``trials.csv`` cell or a reported value as a float: NaN unless it is a number (an int or
    a float; a missing cell is None, a bool or a text is no number)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return float("nan")


def scores(rows: Sequence[Mapping[str, Any]], mode: str) -> np.ndarray:
    """The final metric (``best_valid``) of ``rows``, oriented so that higher is better (negated
    when ``mode`` is ``"min"``); trials without a finite value get the worst finite score.

    Raises:
        ValueError: no row has a finite ``best_valid``.
    """
    y = np.array([number(r["best_valid"]) for r in rows])
    y = y if mode == "max" else -y
    finite = np.isfinite(y)
    if not finite.any():
        raise ValueError("no trial has a finite validation metric")
    y[~finite] = y[finite].min()
    return y


def spectrum_vector(record: Mapping[str, Any], epoch: int) -> np.ndarray | None:
    """The features ``le{epoch}_{f}`` for ``f`` in :data:`FEATURES` of ``record`` as a float64
    vector, or None when one is missing or not finite."""
    x = np.array([number(record.get(f"le{epoch}_{f}")) for f in FEATURES])
    return x if np.isfinite(x).all() else None


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


def predict(predictor: Mapping[str, Any], X: np.ndarray) -> np.ndarray:
    """The predictions of a :func:`fit_predictor` dict for the rows of ``X`` (or one vector)."""
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    z = (X - np.asarray(predictor["mean"])) / np.asarray(predictor["scale"])
    return z @ np.asarray(predictor["coef"]) + predictor["intercept"]


def below_quantile(value: float, seen: Sequence[float], fraction: float) -> bool:
    """Whether ``value`` lies below the ``fraction`` quantile of ``seen`` (False when nothing
    was seen): the pruning rule's "in the bottom ``fraction``"."""
    return bool(len(seen)) and value < float(np.quantile(seen, fraction))
