"""The AeLLE readout (sweep/aelle.py): deterministic, learns a nonlinear readout of spectra,
reconstructs them, refuses bad input and fits scikit-learn's protocol."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics import r2_score
from sklearn.model_selection import cross_val_predict

from lipschitz_rnn.sweep.aelle import AeLLERegressor


def _spectra(n, seed=0, points=16):
    """Spectra of one hidden factor ``u`` (how expanding the network is), and an outcome that is
    an inverted U in ``u`` (best at the edge of chaos)."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(-1, 1, n)
    q = np.linspace(0, 1, points)
    X = u[:, None] * (1 - q)[None, :] - 2 * q[None, :] ** 2 + 0.02 * rng.normal(size=(n, points))
    y = 1 - u**2 + 0.02 * rng.normal(size=n)
    return X, y


def test_fits_a_nonlinear_readout_out_of_sample():
    X, y = _spectra(160)
    Xt, yt = _spectra(80, seed=1)
    model = AeLLERegressor(latent=2, epochs=600).fit(X, y)
    assert r2_score(yt, model.predict(Xt)) > 0.8
    # a linear readout of the same spectra cannot see an inverted U
    from sklearn.linear_model import RidgeCV

    assert r2_score(yt, RidgeCV().fit(X, y).predict(Xt)) < 0.2
    # the latent keeps the spectrum: the reconstruction error is small next to its variance
    assert model.loss_ < 0.2 and model.transform(Xt).shape == (80, 2)


def test_is_deterministic_and_leaves_the_global_rng_alone():
    X, y = _spectra(40)
    state = torch.get_rng_state()
    a = AeLLERegressor(epochs=50).fit(X, y).predict(X)
    assert torch.equal(torch.get_rng_state(), state)
    b = AeLLERegressor(epochs=50).fit(X, y).predict(X)
    c = AeLLERegressor(epochs=50, seed=1).fit(X, y).predict(X)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_sklearn_protocol():
    X, y = _spectra(30)
    model = AeLLERegressor(epochs=30, latent=3)
    assert clone(model).get_params()["latent"] == 3
    pred = cross_val_predict(model, X, y, cv=3)
    assert pred.shape == (30,) and np.isfinite(pred).all()


@pytest.mark.parametrize("kw, X, y, match", [
    ({"latent": 0}, np.zeros((4, 3)), np.zeros(4), "latent"),
    ({"lr": -1.0}, np.zeros((4, 3)), np.zeros(4), "lr"),
    ({}, np.zeros((4, 3)), np.zeros(5), "X must be"),
    ({}, np.full((4, 3), np.nan), np.zeros(4), "finite"),
])
def test_bad_input(kw, X, y, match):
    with pytest.raises((ValueError, TypeError), match=match):
        AeLLERegressor(**kw).fit(X, y)
    fitted = AeLLERegressor(epochs=5).fit(np.random.default_rng(0).normal(size=(6, 3)),
                                          np.arange(6.0))
    with pytest.raises(ValueError, match="3 columns"):
        fitted.predict(np.zeros((2, 4)))
