"""The Lipschitz cell against the paper's equations, written independently in float64 loops."""

import math

import pytest
import torch

from lipschitz_rnn import LipschitzRNN, LipschitzRNNCell
from lipschitz_rnn.models.lipschitz import lipschitz_step

D = torch.float64


def paper_S(M, beta, gamma):
    """S(beta, gamma) = (1-beta)(M+M^T) + beta(M-M^T) - gamma I, entry by entry."""
    n = M.shape[0]
    S = torch.empty_like(M)
    for i in range(n):
        for j in range(n):
            S[i, j] = (1 - beta) * (M[i, j] + M[j, i]) + beta * (M[i, j] - M[j, i])
        S[i, i] -= gamma
    return S


def paper_step(h, x, A, W, U, b, eps, solver):
    """One step for ONE sequence with column vectors: f(h) = A h + tanh(W h + U x + b)."""

    def f(v):
        return A @ v + torch.tanh(W @ v + U @ x + b)

    if solver == "euler":
        return h + eps * f(h)
    if solver == "rk2":
        return h + eps * f(h + (eps / 2) * f(h))
    k1 = f(h)
    return h + (eps / 2) * (k1 + f(h + eps * k1))


def test_A_W_structure():
    cell = LipschitzRNNCell(3, 6, beta=0.3, gamma_A=0.2, gamma_W=0.05, dtype=D)
    with torch.no_grad():
        cell.M_A.normal_()
        cell.M_W.normal_()
    MA, MW = cell.M_A.detach(), cell.M_W.detach()
    torch.testing.assert_close(cell.A, paper_S(MA, 0.3, 0.2), rtol=0, atol=1e-14)
    torch.testing.assert_close(cell.W, paper_S(MW, 0.3, 0.05), rtol=0, atol=1e-14)
    A = cell.A.detach()
    eye = torch.eye(6, dtype=D)
    # symmetric part (1-beta)(M+M^T) - gamma I, skew part beta (M - M^T)
    torch.testing.assert_close((A + A.T) / 2, 0.7 * (MA + MA.T) - 0.2 * eye, rtol=0, atol=1e-14)
    torch.testing.assert_close((A - A.T) / 2, 0.3 * (MA - MA.T), rtol=0, atol=1e-14)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_beta_extremes(beta):
    cell = LipschitzRNNCell(2, 5, beta=beta, gamma_A=0.0, dtype=D)
    A = cell.A.detach()
    if beta == 0.0:
        torch.testing.assert_close(A, A.T)
    else:
        torch.testing.assert_close(A, -A.T)


def test_initialisation_scale():
    torch.manual_seed(1)
    cell = LipschitzRNNCell(1, 256, init_std=0.1, dtype=D)
    std = cell.M_A.detach().std().item()
    assert abs(std - 0.1 / 256) < 0.05 * 0.1 / 256
    bound = 1 / math.sqrt(1)
    assert cell.weight_ih.abs().max() <= bound and cell.bias_ih.abs().max() <= bound


@pytest.mark.parametrize("solver", ["euler", "rk2", "heun"])
def test_cell_step_matches_paper(solver):
    torch.manual_seed(2)
    cell = LipschitzRNNCell(
        3, 5, solver=solver, eps=0.2, beta=0.6, gamma_A=0.1, gamma_W=0.3, init_std=5.0, dtype=D
    )
    x = torch.randn(4, 3, dtype=D)
    h = torch.randn(4, 5, dtype=D)
    out = cell(x, h)
    A, W = paper_S(cell.M_A.detach(), 0.6, 0.1), paper_S(cell.M_W.detach(), 0.6, 0.3)
    U, b = cell.weight_ih.detach(), cell.bias_ih.detach()
    for i in range(4):
        ref = paper_step(h[i], x[i], A, W, U, b, 0.2, solver)
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-12)
        ref2 = lipschitz_step(h[i : i + 1], x[i : i + 1] @ U.T + b, A, W, 0.2, solver)[0]
        torch.testing.assert_close(ref2, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("solver", ["euler", "rk2", "heun"])
@pytest.mark.parametrize("fused", [True, False])
def test_layer_matches_paper_loop(solver, fused):
    torch.manual_seed(3)
    T, B, I, H = 9, 3, 2, 6
    rnn = LipschitzRNN(I, H, solver=solver, eps=0.1, init_std=4.0, dtype=D)
    rnn.use_fused = fused
    x = torch.randn(T, B, I, dtype=D)
    h0 = torch.randn(1, B, H, dtype=D)
    out, h_n = rnn(x, h0)
    cell = rnn.cells[0]
    A, W = (
        paper_S(cell.M_A.detach(), cell.beta, cell.gamma_A),
        paper_S(cell.M_W.detach(), cell.beta, cell.gamma_W),
    )
    U, b = cell.weight_ih.detach(), cell.bias_ih.detach()
    for i in range(B):
        h = h0[0, i]
        for t in range(T):
            h = paper_step(h, x[t, i], A, W, U, b, 0.1, solver)
            assert (out[t, i] - h).abs().max() < 1e-9
        assert (h_n[0, i] - h).abs().max() < 1e-9


def test_no_bias():
    cell = LipschitzRNNCell(2, 3, bias=False)
    assert cell.bias_ih is None
    assert sum(p.numel() for p in cell.parameters()) == 9 + 9 + 6


@pytest.mark.parametrize("solver", ["euler", "rk2"])
def test_gradcheck_cell(solver):
    cell = LipschitzRNNCell(2, 3, solver=solver, eps=0.3, init_std=3.0, dtype=D)
    x = torch.randn(2, 2, dtype=D, requires_grad=True)
    h = torch.randn(2, 3, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h, *p: cell(x, h), (x, h, *cell.parameters()))


@pytest.mark.parametrize("solver", ["euler", "rk2"])
def test_gradcheck_layer(solver):
    rnn = LipschitzRNN(2, 3, num_layers=2, solver=solver, eps=0.3, init_std=3.0, dtype=D)
    x = torch.randn(4, 2, 2, dtype=D, requires_grad=True)
    h = torch.randn(2, 2, 3, dtype=D, requires_grad=True)
    params = list(rnn.parameters())

    def fn(x, h, *p):
        out, h_n = rnn(x, h)
        return out, h_n

    assert torch.autograd.gradcheck(fn, (x, h, *params))


def test_unstable_eps_warns():
    with pytest.warns(RuntimeWarning, match="stability region"):
        LipschitzRNNCell(2, 4, eps=100.0, gamma_A=1.0, init_std=0.0)


def test_stable_eps_does_not_warn(recwarn):
    import warnings

    warnings.simplefilter("always")
    LipschitzRNNCell(2, 4, eps=0.1, gamma_A=1.0, init_std=0.0)
    assert not [w for w in recwarn if "stability region" in str(w.message)]
