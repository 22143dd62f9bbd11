"""The certificate on hand-built matrices with known answers."""

import math

import numpy as np
import pytest
import torch

from lipschitz_rnn import LipschitzRNN, LipschitzRNNCell
from lipschitz_rnn.models import max_stable_step
from lipschitz_rnn.stability import certify

D = torch.float64


def cell_with(A_M, W_M, beta=0.5, gamma_A=0.0, gamma_W=0.0, solver="euler", eps=0.1):
    cell = LipschitzRNNCell(
        1,
        A_M.shape[0],
        beta=beta,
        gamma_A=gamma_A,
        gamma_W=gamma_W,
        solver=solver,
        eps=eps,
        init_std=0.0,
        dtype=D,
    )
    with torch.no_grad():
        cell.M_A.copy_(A_M)
        cell.M_W.copy_(W_M)
    return cell


def test_euler_bound_closed_form():
    # Euler on lambda = a + ib (a<0) is stable for eps < -2a/|lambda|^2
    lam = [complex(-1.0, 2.0), complex(-0.5, 0.0)]
    assert max_stable_step(lam, "euler") == pytest.approx(min(2 / 5, 2 / 0.5), rel=1e-12)
    assert max_stable_step([complex(-2.0, 0.0)], "euler") == pytest.approx(1.0, rel=1e-12)


def test_rk2_bound_known_values():
    # on the negative real axis RK2 is stable for eps*|lambda| < 2; on it |R| = 1 exactly at 2
    assert max_stable_step([complex(-4.0, 0.0)], "rk2") == pytest.approx(0.5, rel=1e-10)
    # check against brute force for a complex eigenvalue
    lam = complex(-0.3, 1.7)
    e_star = max_stable_step([lam], "rk2")
    for e in np.linspace(1e-4, e_star * 0.999, 200):
        z = e * lam
        assert abs(1 + z + z * z / 2) < 1
    z = e_star * 1.001 * lam
    assert abs(1 + z + z * z / 2) > 1


def test_no_stable_step_for_unstable_or_imaginary():
    assert max_stable_step([complex(0.1, 0.0)], "euler") == 0.0
    assert max_stable_step([complex(0.0, 1.0)], "rk2") == 0.0


def test_unknown_solver():
    with pytest.raises(ValueError, match="solver"):
        max_stable_step([complex(-1, 0)], "rk4")


def test_condition_a_holds():
    # beta = 0, M_A = -I -> A = -2 I; M_W = 0.1 I -> W = 0.2 I: sigma_min(A_sym)=2 > sigma_max(W)=0.2
    n = 3
    cell = cell_with(-torch.eye(n, dtype=D), 0.1 * torch.eye(n, dtype=D), beta=0.0, eps=0.5)
    (cert,) = certify(cell)
    assert cert.A_sym_eig_min == pytest.approx(-2) and cert.A_sym_eig_max == pytest.approx(-2)
    assert cert.W_sigma_max == pytest.approx(0.2) and cert.W_sigma_min == pytest.approx(0.2)
    assert cert.A_sym_negative_definite and cert.W_nonsingular
    assert cert.condition_a and not cert.condition_b  # W + W^T is positive definite
    assert cert.globally_stable
    assert cert.A_spectral_abscissa == pytest.approx(-2)
    assert cert.max_stable_eps == pytest.approx(1.0)  # euler: 2/2
    assert cert.eps_stable
    assert "globally exponentially stable: yes" in str(cert)
    d = cert.to_dict()
    assert d["condition_a"] is True and d["max_stable_eps"] == pytest.approx(1.0)


def test_condition_b_only():
    # A = -I, W = -2 I: sigma_min(A_sym) = 1 < sigma_max(W) = 2 so (a) fails;
    # W + W^T = -4I < 0 and A^T W + W^T A = 4 I > 0 so (b) holds
    n = 2
    cell = cell_with(-0.5 * torch.eye(n, dtype=D), -1.0 * torch.eye(n, dtype=D), beta=0.0)
    (cert,) = certify(cell)
    assert not cert.condition_a and cert.condition_b and cert.globally_stable


def test_not_negative_definite():
    cell = cell_with(0.5 * torch.eye(2, dtype=D), -torch.eye(2, dtype=D), beta=0.0)
    (cert,) = certify(cell)
    assert not cert.A_sym_negative_definite
    assert not cert.globally_stable and not cert.condition_a and not cert.condition_b
    assert cert.max_stable_eps == 0.0 and not cert.eps_stable


def test_singular_W():
    W = torch.zeros(2, 2, dtype=D)
    cell = cell_with(-torch.eye(2, dtype=D), W, beta=0.0)
    (cert,) = certify(cell)
    assert not cert.W_nonsingular and not cert.globally_stable


def test_skew_A_rk2_bound():
    # beta = 1: A = M - M^T - gamma I, eigenvalues -gamma +- i*w for M = [[0, w], [0, 0]]
    w, g = 1.5, 0.2
    M = torch.tensor([[0.0, w], [0.0, 0.0]], dtype=D)
    cell = cell_with(M, -torch.eye(2, dtype=D), beta=1.0, gamma_A=g, solver="rk2", eps=0.01)
    (cert,) = certify(cell)
    assert cert.A_spectral_abscissa == pytest.approx(-g)
    expected = max_stable_step([complex(-g, w), complex(-g, -w)], "rk2")
    assert cert.max_stable_eps == pytest.approx(expected)
    # brute-force: |R(eps lambda)| crosses 1 there
    lam = complex(-g, w)
    z = expected * lam
    assert abs(abs(1 + z + z * z / 2) - 1) < 1e-9
    assert math.isfinite(cert.max_stable_eps) and cert.eps_stable


def test_layer_gives_one_certificate_per_cell():
    rnn = LipschitzRNN(2, 4, num_layers=2, bidirectional=True)
    certs = certify(rnn)
    assert len(certs) == 4


def test_certify_rejects_other_modules():
    with pytest.raises(TypeError, match="cell_or_layer"):
        certify(torch.nn.LSTM(2, 3))
    with pytest.raises(TypeError, match="cell_or_layer"):
        certify("not a module")
