"""AeLLE: an autoencoder over the Lyapunov spectrum with a linear head (Vogt et al. 2022,
arXiv 2204.04876), as a scikit-learn regressor for the study's ``aelle@E`` feature set.

The follow-up to the seed paper reads a network's quality from its whole spectrum through a
small autoencoder: the encoder maps the spectrum (interpolated to a fixed number of points, here
the study's ``full_spectrum`` quantiles) to a low-dimensional latent ``z``; a decoder
reconstructs the spectrum from ``z``; a linear head predicts the target from ``z``. Both losses
are trained together, so the latent keeps what describes the spectrum *and* what predicts the
outcome::

    z = enc(x),    loss = ||dec(z) - x||^2 / P  +  alpha * (head(z) - y)^2

with ``x`` and ``y`` standardised on the training data. Full-batch Adam, a fixed number of
epochs, float64, seeded: the fit is deterministic. The paper classifies (top vs rest); the study
regresses the final metric, so the head here is a linear regression, the one change.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from torch import nn

from .._checks import check_float, check_int

__all__ = ["AeLLERegressor"]


class AeLLERegressor(RegressorMixin, BaseEstimator):
    """The AeLLE readout as a regressor (``fit(X, y)``, ``predict(X)``; ``clone``-able).

    ``latent``: the latent dimension; ``hidden``: the width of the encoder's and decoder's one
    hidden layer (tanh); ``alpha``: the weight of the prediction loss against the reconstruction
    loss; ``epochs`` full-batch Adam steps at ``lr``; ``weight_decay`` on every weight;
    ``seed`` for the initialisation.
    """

    def __init__(self, latent: int = 4, hidden: int = 32, alpha: float = 1.0, epochs: int = 400,
                 lr: float = 1e-2, weight_decay: float = 1e-3, seed: int = 0) -> None:
        self.latent = latent
        self.hidden = hidden
        self.alpha = alpha
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.seed = seed

    def _check(self) -> None:
        check_int("latent", self.latent, ge=1)
        check_int("hidden", self.hidden, ge=1)
        check_int("epochs", self.epochs, ge=1)
        check_int("seed", self.seed, ge=0)
        check_float("alpha", self.alpha, ge=0)
        check_float("lr", self.lr, gt=0)
        check_float("weight_decay", self.weight_decay, ge=0)

    def fit(self, X, y) -> AeLLERegressor:
        self._check()
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if X.ndim != 2 or X.shape[0] != y.shape[0] or X.shape[0] < 2:
            raise ValueError(f"X must be (n, features) with n >= 2 rows matching y, got "
                             f"X {X.shape}, y {y.shape}")
        if not (np.isfinite(X).all() and np.isfinite(y).all()):
            raise ValueError("X and y must be finite")
        self.x_mean_, self.x_scale_ = X.mean(0), X.std(0)
        self.x_scale_[self.x_scale_ == 0] = 1.0
        self.y_mean_, self.y_scale_ = float(y.mean()), float(y.std()) or 1.0
        x = torch.as_tensor((X - self.x_mean_) / self.x_scale_)
        t = torch.as_tensor((y - self.y_mean_) / self.y_scale_)
        gen = torch.Generator().manual_seed(int(self.seed))
        p = X.shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            self.encoder_ = nn.Sequential(nn.Linear(p, self.hidden), nn.Tanh(),
                                          nn.Linear(self.hidden, self.latent)).double()
            self.decoder_ = nn.Sequential(nn.Linear(self.latent, self.hidden), nn.Tanh(),
                                          nn.Linear(self.hidden, p)).double()
            self.head_ = nn.Linear(self.latent, 1).double()
        params = [*self.encoder_.parameters(), *self.decoder_.parameters(),
                  *self.head_.parameters()]
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(self.epochs):
            opt.zero_grad(set_to_none=True)
            z = self.encoder_(x)
            recon = (self.decoder_(z) - x).pow(2).mean()
            pred = (self.head_(z).squeeze(-1) - t).pow(2).mean()
            loss = recon + self.alpha * pred
            loss.backward()
            opt.step()
        self.loss_ = float(loss.detach())
        self.n_features_in_ = p
        return self

    def transform(self, X) -> np.ndarray:
        """The latent codes ``z`` of the rows of ``X``."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X must have {self.n_features_in_} columns, got shape {X.shape}")
        with torch.no_grad():
            return self.encoder_(torch.as_tensor((X - self.x_mean_) / self.x_scale_)).numpy()

    def predict(self, X) -> np.ndarray:
        z = torch.as_tensor(self.transform(X))
        with torch.no_grad():
            out = self.head_(z).squeeze(-1).numpy()
        return out * self.y_scale_ + self.y_mean_
