"""Spectrum features (lipschitz_rnn.analysis.features) against values computed by hand."""

import math

import pytest
import torch

from lipschitz_rnn.analysis import entropy_rate, kaplan_yorke_dimension, spectrum_features


def test_features_of_a_known_spectrum():
    # unsorted on purpose; sorted: 0.5, 0.1, -0.2, -1.0
    f = spectrum_features([0.1, -1.0, 0.5, -0.2], k_top=2)
    # partial sums 0.5, 0.6, 0.4, -0.6: j = 3, D = 3 + 0.4 / |-1.0| = 3.4
    expected = {
        "max": 0.5, "mean": -0.15, "median": -0.05, "min": -1.0, "top2_mean": 0.3,
        "frac_pos": 0.5, "num_pos": 2.0, "ky_dim": 3.4, "entropy": 0.6,
    }
    assert f.keys() == expected.keys()
    for key, value in expected.items():
        assert f[key] == pytest.approx(value, abs=1e-12), key


def test_default_top10_and_odd_median():
    lam = torch.linspace(1.0, -1.0, 13, dtype=torch.float64)  # 13 values: median is the 7th, 0.0
    f = spectrum_features(lam)
    assert f["median"] == pytest.approx(0.0, abs=1e-12)
    assert f["top10_mean"] == pytest.approx(float(lam[:10].mean()))
    assert f["num_pos"] == 6 and f["frac_pos"] == pytest.approx(6 / 13)
    few = spectrum_features([-0.1, -0.3], k_top=10)  # fewer than k_top: the mean of all
    assert few["top10_mean"] == pytest.approx(-0.2) and few["ky_dim"] == 0.0


def test_kaplan_yorke_edge_cases():
    # every partial sum >= 0: D = k (a lower bound when k < n)
    assert float(kaplan_yorke_dimension(torch.tensor([0.3, 0.2]))) == 2.0
    # lambda_1 < 0: D = 0
    assert float(kaplan_yorke_dimension(torch.tensor([-0.1, -0.5]))) == 0.0
    # Henon's published pair: 1 + 0.41922 / 1.62319
    d = float(kaplan_yorke_dimension(torch.tensor([0.41922, -1.62319], dtype=torch.float64)))
    assert d == pytest.approx(1 + 0.41922 / 1.62319, rel=1e-12)
    # batched along the last dimension
    both = kaplan_yorke_dimension(torch.tensor([[0.3, 0.2], [-0.1, -0.5]]))
    assert both.tolist() == [2.0, 0.0]
    assert float(entropy_rate(torch.tensor([0.3, -0.2, 0.1]))) == pytest.approx(0.4)


def test_minus_infinity_allowed_nan_refused():
    f = spectrum_features([0.2, -math.inf])
    assert f["min"] == -math.inf and f["ky_dim"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="NaN"):
        spectrum_features([0.1, math.nan])
    with pytest.raises(ValueError, match="exponents"):
        spectrum_features([])
    with pytest.raises(TypeError, match="exponents"):
        spectrum_features("0.1 0.2")
    with pytest.raises(ValueError, match="k_top"):
        spectrum_features([0.1], k_top=0)
