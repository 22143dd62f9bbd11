"""Lyapunov spectra (lipschitz_rnn.analysis.lyapunov) against published values and a dense QR loop.

Tolerances (absolute, exponents per unit time):

* Hénon (a=1.4, b=0.3), 8 orbits x 1500 steps: lambda_1 = 0.41922 and lambda_2 = -1.62319
  within 0.01 each; lambda_1 + lambda_2 = ln 0.3 to 1e-12 (det J = -b at every step); Kaplan-Yorke
  dimension 1.2583 within 0.01.
* logistic map r=4, 8 orbits x 1000 steps: ln 2 within 1e-3.
* Lorenz-63 (10, 28, 8/3) as its RK4 step with dt=0.01, 8 orbits, 5 time units of warmup and 30
  averaged: (0.9056, 0, -14.5723) within 0.05 each; the sum within 1e-3 of -(sigma + 1 + beta).
* linear map, non-normal upper-triangular block + scaled rotation: log|eig| within 1e-2 after 2000
  steps without warmup, within 1e-6 with 300 warmup steps.
* sum of the full spectrum = time average of log|det J| (dense J by autograd): 1e-10.
* every fast path vs the dense-Jacobian Householder loop of tests/lyapunov_problems.py: 1e-10.
* reorth_every = 4 / "auto" vs 1 on a contracting system: 1e-9.
* the default "auto" vs reorth_every=1 on wide spectra (Hénon, a linear map with exponents over
  +-5 per step, one that switches to +-5 (float32: +-1) after 150 steps of a rotation, a
  saturated tanh RNN, a
  Lipschitz cell with large gamma, an LSTM), float64 and float32: relative 1e-10 (absolute
  1e-12) in float64, relative 1e-4 (absolute 1e-5) in float32 -- round-off, far below any
  statistical error; the same -inf entries (float32 tanh' == 0), nothing else non-finite.
"""

from __future__ import annotations

import json
import math
import os
import warnings

import lyapunov_problems as P
import pytest
import torch
from torch import nn

from lipschitz_rnn.analysis import LyapunovSpectrum, lyapunov_spectrum
from lipschitz_rnn.analysis._qr import householder_rows, orthonormalize_rows
from lipschitz_rnn.analysis.features import kaplan_yorke_dimension
from lipschitz_rnn.analysis.lyapunov import NonFiniteStateError, _initial_basis
from lipschitz_rnn.analysis.plots import plot_evolution, plot_spectrum
from lipschitz_rnn.models import (
    AntisymmetricRNNCell,
    CoRNNCell,
    ExpRNNCell,
    LipschitzRNN,
    LipschitzRNNCell,
    ODERNNCell,
    SequenceModel,
    build,
)

DT = torch.float64
IN, H, B, T, WARM = 3, 5, 2, 16, 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny LAPACK calls stall for a scheduler tick in OpenMP barriers on a busy 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# published spectra
# ------------------------------------------------------------------------------------------------
def test_henon_published():
    h0 = 0.2 * torch.rand(8, 2, generator=_gen(1), dtype=DT)
    r = lyapunov_spectrum(P.henon, steps=1500, h0=h0, warmup=100)
    assert r.exponents.shape == (8, 2) and r.k == 2 and r.state_size == 2
    assert abs(float(r.mean[0]) - P.HENON_EXPONENTS[0]) < 0.01
    assert abs(float(r.mean[1]) - P.HENON_EXPONENTS[1]) < 0.01
    assert torch.allclose(
        r.exponents.sum(-1), torch.full((8,), math.log(P.HENON_B), dtype=DT), rtol=0, atol=1e-12
    )
    assert abs(r.kaplan_yorke_dimension_of_mean - 1.2583) < 0.01
    assert abs(r.entropy_rate_of_mean - float(r.mean[0])) < 1e-15


def test_logistic_ln2():
    h0 = 0.1 + 0.8 * torch.rand(8, 1, generator=_gen(2), dtype=DT)
    r = lyapunov_spectrum(P.logistic, steps=1000, h0=h0, warmup=10)
    assert abs(float(r.mean[0]) - P.LOGISTIC_EXPONENT) < 1e-3


def test_lorenz_published():
    dt = 0.01
    h0 = 5.0 * torch.randn(8, 3, generator=_gen(0), dtype=DT) + torch.tensor(
        [0.0, 0.0, 25.0], dtype=DT
    )
    r = lyapunov_spectrum(
        P.lorenz_rk4(dt), steps=3000, h0=h0, warmup=500, dt=dt, reorth_every="auto"
    )
    for got, want in zip(r.mean.tolist(), P.LORENZ_EXPONENTS, strict=True):
        assert abs(got - want) < 0.05, (r.mean, P.LORENZ_EXPONENTS)
    assert abs(float(r.mean.sum()) - P.LORENZ_SUM) < 1e-3
    assert abs(r.kaplan_yorke_dimension_of_mean - 2.062) < 0.01
    assert r.reorth_every > 1  # auto lengthened the blocks on this flow


def test_linear_nonnormal_and_warmup():
    M, exact = P.nonnormal_matrix()
    exact = torch.tensor(exact, dtype=DT)
    h0 = torch.ones(1, 5, dtype=DT)
    r0 = lyapunov_spectrum(P.linear_map(M), steps=2000, h0=h0)
    rw = lyapunov_spectrum(P.linear_map(M), steps=600, h0=h0, warmup=300)
    assert (r0.mean - exact).abs().max() < 1e-2
    assert (rw.mean - exact).abs().max() < 1e-6
    # warmup only moves the start of the basis: no shift beyond the O(1/T) transient
    assert (r0.mean - rw.mean).abs().max() < 1e-2


# ------------------------------------------------------------------------------------------------
# fast paths == dense-Jacobian loop
# ------------------------------------------------------------------------------------------------
class _SubclassCell(LipschitzRNNCell):
    """A RecurrentCell subclass with its own step: must take the generic autograd path."""

    def step(self, h, u, ctx):
        return h + self.eps * torch.tanh(h @ ctx[2][:, : self.hidden_size] + u) * 0.5


def _relu_rnn():
    rnn = nn.RNN(IN, H, nonlinearity="relu", dtype=DT)
    with torch.no_grad():  # a regime without dead units (exponent -inf would be round-off)
        rnn.weight_hh_l0.copy_(0.9 * torch.eye(H, dtype=DT) + 0.02 * torch.rand(H, H, dtype=DT))
        rnn.weight_ih_l0.uniform_(0.0, 0.1)
        rnn.bias_ih_l0.fill_(1.0)
        rnn.bias_hh_l0.zero_()
    return rnn


def _exprnn():
    c = ExpRNNCell(IN, H, dtype=DT)
    with torch.no_grad():
        c.bias_mod.fill_(0.3)  # |z| + b > 0 everywhere: no dead zone
    return c


def _layer(name, L, comps, hidden=H, **kw):
    m = build(name, IN, hidden, num_layers=L, dtype=DT, **kw)
    return m, P.layer_step_fn(m, L, comps), L * sum(comps)


def _cell(c):
    return c, P.cell_step_fn(c), c.state_size


_W20 = torch.randn(20, 20, generator=_gen(5), dtype=DT) / 4
_U20 = torch.randn(IN, 20, generator=_gen(6), dtype=DT)


def _callable(n):
    W, U = _W20[:n, :n], _U20[:, :n]
    f = lambda h, x: torch.tanh(h @ W + x @ U) + 0.1 * h
    return f, f, n


CASES = {
    "lipschitz-euler": lambda: _cell(
        LipschitzRNNCell(IN, H, solver="euler", eps=0.3, init_std=6.0, dtype=DT)
    ),
    "lipschitz-rk2": lambda: _cell(
        LipschitzRNNCell(IN, H, solver="rk2", eps=0.3, init_std=6.0, dtype=DT)
    ),
    "lipschitz-heun": lambda: _cell(
        LipschitzRNNCell(IN, H, solver="heun", eps=0.3, init_std=6.0, dtype=DT)
    ),
    "odernn": lambda: _cell(ODERNNCell(IN, H, eps=0.3, init_std=5.0, dtype=DT)),
    "antisymmetric": lambda: _cell(AntisymmetricRNNCell(IN, H, eps=0.3, dtype=DT)),
    "antisymmetric-gated": lambda: _cell(
        AntisymmetricRNNCell(IN, H, eps=0.3, gated=True, dtype=DT)
    ),
    "cornn": lambda: _cell(CoRNNCell(IN, H, dt=0.2, dtype=DT)),
    "exprnn": lambda: _cell(_exprnn()),
    "subclass-cell": lambda: _cell(_SubclassCell(IN, H, eps=0.3, init_std=6.0, dtype=DT)),
    "nn.RNN-tanh": lambda: _layer("rnn", 1, [H]),
    "nn.RNN-relu": lambda: (lambda m: (m, P.layer_step_fn(m, 1, [H]), H))(_relu_rnn()),
    "nn.GRU": lambda: _layer("gru", 1, [H]),
    "nn.LSTM": lambda: _layer("lstm", 1, [H, H]),
    "nn.LSTM-2layer-proj": lambda: (lambda m: (m, P.layer_step_fn(m, 2, [2, H]), 2 * (2 + H)))(
        nn.LSTM(IN, H, num_layers=2, proj_size=2, dtype=DT)
    ),
    "lipschitz-2layer-rk2": lambda: _layer(
        "lipschitz", 2, [H], eps=0.3, solver="rk2", init_std=6.0
    ),
    "cornn-2layer": lambda: _layer("cornn", 2, [H, H], dt=0.2),
    "gru-2layer": lambda: _layer("gru", 2, [H]),
    "callable-dense": lambda: _callable(4),
    "callable-jvp": lambda: _callable(20),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fast_path_matches_dense(name):
    system, step, n = CASES[name]()
    x = torch.randn(T, B, IN, generator=_gen(3), dtype=DT)
    h0 = 0.5 * torch.rand(B, n, generator=_gen(4), dtype=DT)
    k = n if n <= 12 else 7  # the full spectrum, or a partial one for the larger states
    r = lyapunov_spectrum(system, x, h0=h0, k=k, warmup=WARM)
    ref, _ = P.dense_reference(step, x, h0, _initial_basis(n, k, None), warmup=WARM)
    assert r.exponents.shape == (B, k)
    assert (r.exponents - ref).abs().max() < 1e-10, (r.method, r.exponents, ref)
    # the final state is the model's own trajectory
    with torch.no_grad():
        h = h0
        for t in range(T):
            h = step(h, x[t])
    assert torch.allclose(r.final_state, h, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["lipschitz", "lstm"])
def test_sum_equals_mean_logdet(kind):
    if kind == "lipschitz":
        system, step, n = _cell(
            LipschitzRNNCell(IN, 6, solver="rk2", eps=0.4, init_std=8.0, dtype=DT)
        )
    else:
        system, step, n = _layer("lstm", 1, [4, 4], hidden=4)
    x = torch.randn(30, B, IN, generator=_gen(7), dtype=DT)
    h0 = 0.3 * torch.randn(B, n, generator=_gen(8), dtype=DT)
    r = lyapunov_spectrum(system, x, h0=h0, warmup=5)
    _, logdets = P.dense_reference(step, x, h0, _initial_basis(n, n, None), warmup=5)
    mean_logdet = torch.stack(logdets).mean(0)
    assert torch.allclose(r.exponents.sum(-1), mean_logdet, rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------------------------
# settings
# ------------------------------------------------------------------------------------------------
def _contracting_cell():
    return LipschitzRNNCell(IN, 8, eps=0.1, gamma_A=2.0, gamma_W=0.5, init_std=8.0, dtype=DT)


def test_reorth_every_same_exponents():
    cell = _contracting_cell()
    x = torch.randn(60, B, IN, generator=_gen(9), dtype=DT)
    r1 = lyapunov_spectrum(cell, x, warmup=5, reorth_every=1)
    r4 = lyapunov_spectrum(cell, x, warmup=5, reorth_every=4)
    ra = lyapunov_spectrum(cell, x, warmup=5)  # the default: "auto"
    assert ra.reorth_every > 1 and ra.history.shape[0] < 55
    assert (r4.exponents - r1.exponents).abs().max() < 1e-9
    assert (ra.exponents - r1.exponents).abs().max() < 1e-9
    assert float(r1.mean[0]) < 0  # contracting
    assert r1.history.shape == (55, 8) and r4.history.shape == (14, 8)
    assert r4.history_steps.tolist()[-2:] == [52, 55]
    # the last running estimate is the final batch mean (per column; the sum is order-free)
    assert abs(float(r1.history[-1].sum() - r1.mean.sum())) < 1e-12


def test_batch_first_equals_time_major():
    cell = LipschitzRNN(IN, 6, num_layers=2, eps=0.3, init_std=6.0, dtype=DT)
    x = torch.randn(12, 3, IN, generator=_gen(10), dtype=DT)
    a = lyapunov_spectrum(cell, x, k=4)
    b = lyapunov_spectrum(cell, x.transpose(0, 1).contiguous(), k=4, batch_first=True)
    assert torch.allclose(a.exponents, b.exponents, rtol=0, atol=1e-13)  # GEMM layouts differ


def test_h0_formats_and_defaults():
    lstm = nn.LSTM(IN, 4, num_layers=2, dtype=DT)
    x = torch.randn(10, 2, IN, generator=_gen(11), dtype=DT)
    hx = (0.3 * torch.randn(2, 2, 4, dtype=DT), 0.3 * torch.randn(2, 2, 4, dtype=DT))
    flat = P.hx_to_flat(hx)
    a = lyapunov_spectrum(lstm, x, h0=hx, k=5)
    b = lyapunov_spectrum(lstm, x, h0=flat, k=5)
    assert torch.equal(a.exponents, b.exponents)
    # zeros by default, (n,) broadcasts over the batch
    c = lyapunov_spectrum(lstm, x, k=5)
    d = lyapunov_spectrum(lstm, x, h0=torch.zeros(16, dtype=DT), k=5)
    assert torch.equal(c.exponents, d.exponents)
    assert c.state_size == 16 and "torch-lstm" in c.method


def test_autonomous_rnn_is_zero_input():
    cell = LipschitzRNNCell(IN, 6, eps=0.3, init_std=6.0, dtype=DT)
    h0 = 0.5 * torch.randn(2, 6, generator=_gen(12), dtype=DT)
    a = lyapunov_spectrum(cell, steps=20, h0=h0)
    b = lyapunov_spectrum(cell, torch.zeros(20, 2, IN, dtype=DT), h0=h0)
    assert torch.allclose(a.exponents, b.exponents, rtol=0, atol=1e-14)


def test_sequence_model_tokens_and_model_untouched():
    torch.manual_seed(3)
    model = SequenceModel(build("lipschitz", 4, 6, eps=0.3), 5, vocab_size=11)  # float32
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = torch.randint(0, 11, (9, 2), generator=_gen(13))
    r = lyapunov_spectrum(model, tokens, k=3)
    x = model.embedding(tokens).detach().double()
    ref = lyapunov_spectrum(model.rnn, x, k=3)
    assert torch.allclose(r.exponents, ref.exponents, rtol=0, atol=1e-12)
    after = model.state_dict()
    assert all(
        torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype for k in before
    )
    assert r.exponents.dtype == DT


def test_generator_seeds_initial_basis():
    cell = LipschitzRNNCell(IN, 6, eps=0.3, init_std=6.0, dtype=DT)
    x = torch.randn(5, 2, IN, generator=_gen(14), dtype=DT)
    a = lyapunov_spectrum(cell, x, k=2)
    b = lyapunov_spectrum(cell, x, k=2, generator=torch.Generator().manual_seed(0))
    c = lyapunov_spectrum(cell, x, k=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.exponents, b.exponents)
    assert not torch.equal(a.exponents, c.exponents)


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------
def _x(t=5, b=2, f=IN):
    return torch.randn(t, b, f, dtype=DT)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"k": 6}, ValueError, "k=6 is larger than the state size n=5"),
        ({"k": 0}, ValueError, "k must be"),
        ({"steps": 0}, ValueError, "steps must be"),
        ({"steps": 5}, ValueError, "steps=5 \\+ warmup=1 exceeds"),
        ({"dt": 0.0}, ValueError, "dt must be"),
        ({"dt": -1.0}, ValueError, "dt must be"),
        ({"reorth_every": 0}, ValueError, "reorth_every must be"),
        ({"reorth_every": "often"}, ValueError, "reorth_every must be"),
        ({"warmup": -1}, ValueError, "warmup must be"),
        ({"warmup": 5}, ValueError, "warmup=5 must be smaller"),
        (
            {"inputs": torch.randn(5, 2, IN + 1, dtype=DT)},
            ValueError,
            "4 features .* input_size is 3",
        ),
        ({"inputs": torch.randn(5, 2, 3, 1, dtype=DT)}, ValueError, "inputs must be"),
        ({"inputs": None}, ValueError, "steps is required"),
        ({"h0": torch.zeros(3, 5, dtype=DT)}, ValueError, "h0 has batch 3"),
        ({"h0": torch.zeros(2, 4, dtype=DT)}, ValueError, "h0 must have shape"),
        ({"generator": 3}, TypeError, "generator must be"),
    ],
)
def test_argument_errors(kwargs, exc, match):
    cell = LipschitzRNNCell(IN, H, dtype=DT)
    args = {"inputs": _x(), "warmup": 1}
    args.update(kwargs)
    inputs = args.pop("inputs")
    with pytest.raises(exc, match=match):
        lyapunov_spectrum(cell, inputs, **args)


@pytest.mark.parametrize(
    "system",
    ["lstm", 3, torch.zeros(3), nn.Linear(3, 3), nn.Transformer],
    ids=["str", "int", "tensor", "linear", "class"],
)
def test_unknown_system(system):
    with pytest.raises(TypeError, match="system"):
        lyapunov_spectrum(system, _x(), h0=torch.zeros(2, 3))


@pytest.mark.parametrize(
    "system",
    [
        LipschitzRNN(IN, 4, bidirectional=True),
        nn.LSTM(IN, 4, bidirectional=True),
        SequenceModel(nn.GRU(IN, 4, bidirectional=True), 2),
    ],
    ids=["package", "torch", "sequence-model"],
)
def test_bidirectional_raises(system):
    with pytest.raises(ValueError, match="bidirectional"):
        lyapunov_spectrum(system, _x(f=IN).float())


def test_callable_needs_h0_and_wrong_output():
    with pytest.raises(ValueError, match="h0 is required"):
        lyapunov_spectrum(P.henon, steps=3)
    with pytest.raises(ValueError, match="shaped like h"):
        lyapunov_spectrum(lambda h: h[:, :1], steps=3, h0=torch.ones(2, 2))
    with pytest.raises(TypeError, match="calling the callable"):
        lyapunov_spectrum(lambda h, x: h @ torch.ones(5, 5), _x(), h0=torch.ones(2, 2))


def test_nonfinite_state_names_the_step():
    grow = lambda h: h * 1e200
    with pytest.raises(NonFiniteStateError, match="non-finite at step 1"):
        lyapunov_spectrum(grow, steps=10, h0=torch.ones(2, 2))
    with pytest.raises(ValueError):  # also a ValueError ...
        lyapunov_spectrum(grow, steps=10, h0=torch.ones(2, 2))
    with pytest.raises(FloatingPointError):  # ... and a FloatingPointError
        lyapunov_spectrum(grow, steps=10, h0=torch.ones(2, 2))


def test_nonfinite_tangents_with_long_blocks():
    # the state stays finite (a fixed point) but tangents grow by e^100 per step
    f = lambda h: math.exp(100.0) * (h - 1.0) * 0.0 + 1.0 + (h - h.detach()) * math.exp(100.0)
    with pytest.raises(NonFiniteStateError, match="tangent vectors became non-finite"):
        lyapunov_spectrum(f, steps=20, h0=torch.ones(1, 2), reorth_every=10)


# ------------------------------------------------------------------------------------------------
# results, QR, plots
# ------------------------------------------------------------------------------------------------
def test_kaplan_yorke_values():
    ky = kaplan_yorke_dimension(
        torch.tensor([[0.5, -1.0], [-0.1, -1.0], [1.0, 0.5], [0.3, -math.inf]])
    )
    assert torch.allclose(ky, torch.tensor([1.5, 0.0, 2.0, 1.0], dtype=DT))
    lorenz = kaplan_yorke_dimension(torch.tensor(P.LORENZ_EXPONENTS, dtype=DT))
    assert abs(float(lorenz) - (2 + 0.9056 / 14.5723)) < 1e-12


def test_to_dict_is_json_and_round_trips():
    cell = LipschitzRNNCell(IN, 4, eps=0.3, init_std=6.0, dtype=DT)
    r = lyapunov_spectrum(cell, _x(8, 3), warmup=2)
    d = r.to_dict()
    text = json.dumps(d, allow_nan=False)
    back = LyapunovSpectrum.from_dict(json.loads(text))
    assert torch.equal(back.exponents, r.exponents) and torch.equal(back.history, r.history)
    assert d["batch_size"] == 3 and d["k"] == 4 and d["steps"] == 6 and d["warmup"] == 2
    assert len(d["kaplan_yorke_dimension"]) == 3 and isinstance(d["entropy_rate_of_mean"], float)
    # -inf exponents (a singular Jacobian) become null, still strict JSON
    with pytest.warns(RuntimeWarning, match="-inf"):
        z = lyapunov_spectrum(
            lambda h: h * torch.tensor([1.0, 0.0], dtype=h.dtype),
            steps=3,
            h0=torch.ones(1, 2),
            warmup=1,
        )
    assert z.exponents[0, 1] == -math.inf and z.exponents[0, 0] == 0.0
    assert json.loads(json.dumps(z.to_dict(), allow_nan=False))["exponents"][0][1] is None


@pytest.mark.parametrize("two_pass", [False, True], ids=["cpu-policy", "accelerator-policy"])
def test_orthonormalize_rows_paths(two_pass):
    g = _gen(15)
    base = torch.linalg.qr(torch.randn(4, 12, 6, generator=g, dtype=DT))[0].mT  # (4, 6, 12)
    one = torch.ones(6, dtype=DT)
    cases = [
        # (diag R, coupling to the first direction, expected Householder count on the CPU /
        # on accelerators)
        ([1.0] * 6, 0.3, 0, 0),  # orthonormal-ish
        ([1, 1e-2, 1e-4, 1e-6, 1e-8, 1e-11], None, 0, 0),  # graded rows: Cholesky-QR is exact
        ([1, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3], 1.0, 4, 0),  # rows aligned to 1e-3: refine
        ([1, 1e-7, 1e-7, 1e-7, 1e-7, 1e-7], 1.0, 4, 4),  # aligned to 1e-7: Householder
    ]
    for scales, c, fb_cpu, fb_acc in cases:
        s = torch.tensor(scales, dtype=DT)
        # V^T = base^T R with R upper triangular, diag R = s and off-diagonals 0.3 s_j N(0, 1)
        # in column j; with c, column j couples to the first direction with weight c (rows
        # nearly aligned when c >> s_j)
        R = torch.triu(torch.randn(4, 6, 6, generator=g, dtype=DT), 1) * 0.3 * s
        if c is not None:
            R[:, 0, 1:] = c
        R = R + torch.diag_embed(s.expand(4, 6))
        V = R.mT @ base
        Vn, logd, fb, align = orthonormalize_rows(V, two_pass=two_pass)
        _, logd_h = householder_rows(V)
        assert fb == (fb_acc if two_pass else fb_cpu), (scales, fb)
        assert align >= 1.0
        eye = torch.eye(6, dtype=DT).expand(4, 6, 6)
        assert torch.allclose(Vn @ Vn.mT, eye, atol=1e-12)
        assert torch.allclose(logd, logd_h, atol=1e-8)
        assert torch.allclose(logd, torch.log(s * one).expand(4, 6), atol=1e-8)


def test_plots_write_png(tmp_path):
    cell = LipschitzRNNCell(IN, 4, eps=0.3, init_std=6.0, dtype=DT)
    r = lyapunov_spectrum(cell, _x(8, 3))
    p1 = plot_spectrum(r, tmp_path / "sub" / "spectrum.png")
    p2 = plot_spectrum(r.to_dict(), tmp_path / "spectrum_dict.png")
    recs = [(0, r.mean.tolist()), (5, (r.mean * 2).tolist()), (10, r.exponents.tolist())]
    p3 = plot_evolution(recs, tmp_path / "evolution.png")
    for p in (p1, p2, p3):
        with open(p, "rb") as fh:
            head = fh.read(8)
        assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(p) > 1000
        mask = os.umask(0o022)
        os.umask(mask)
        assert os.stat(p).st_mode & 0o777 == 0o666 & ~mask  # like any file, not mkstemp's 0600
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
    with pytest.raises(ValueError, match="records is empty"):
        plot_evolution([], tmp_path / "e.png")


@pytest.mark.parametrize("solver", ["euler", "rk2", "heun"])
@pytest.mark.parametrize("layers", [1, 2])
def test_lipschitz_dense_chain_step_equals_the_generic_step(monkeypatch, layers, solver):
    """The euler and rk2 tangents as one baddbmm per stage (the dense per-sequence Jacobian, the
    default path; heun goes through rk_step with it) and the shared-weight form through rk_step
    (used for states too large to form Jf) give the same exponents, and the same states to the
    last bit (the state update is rk_step's order)."""
    from lipschitz_rnn.analysis import _units

    assert (_units.chain_coefficients(solver) is None) == (solver == "heun")
    m = LipschitzRNN(IN, 6, num_layers=layers, eps=0.3, init_std=6.0, solver=solver, dtype=DT)
    x = torch.randn(40, 3, IN, generator=_gen(21), dtype=DT)
    dense = lyapunov_spectrum(m, x, k=5, reorth_every=1)
    monkeypatch.setattr(_units, "DENSE_JF_BYTES", 0)
    shared = lyapunov_spectrum(m, x, k=5, reorth_every=1)
    assert torch.equal(dense.final_state, shared.final_state)
    assert (dense.exponents - shared.exponents).abs().max() < 1e-12
    assert float(dense.exponents.abs().max()) > 1e-3  # a non-trivial spectrum is compared


def test_chain_coefficients_of_the_schemes():
    from lipschitz_rnn.analysis._units import chain_coefficients
    from lipschitz_rnn.models.solvers import Scheme

    assert chain_coefficients("euler") == (1.0,)
    assert chain_coefficients("rk2") == (0.5, 1.0)
    assert chain_coefficients("heun") is None
    # a three-stage chain, and one whose third stage also uses the first
    assert chain_coefficients(Scheme("c3", ((), (0.5,), (0.0, 0.5)), (0.0, 0.0, 1.0))) == (0.5, 0.5, 1.0)
    assert chain_coefficients(Scheme("x3", ((), (0.5,), (0.1, 0.5)), (0.0, 0.0, 1.0))) is None


def test_auto_takes_long_blocks_on_a_default_lipschitz_cell():
    """Issue 12, item 5: on a default-initialised Lipschitz cell (nearly neutral, spectrum within
    ~1e-3 of 0) ``auto`` re-orthonormalises only every AUTO_MAX_BLOCK steps and agrees with a QR
    at every step."""
    from lipschitz_rnn.analysis._qr import AUTO_MAX_BLOCK

    torch.manual_seed(0)
    cell = LipschitzRNNCell(1, 64, dtype=DT)
    x = torch.randn(200, 4, 1, generator=_gen(22), dtype=DT)
    auto = lyapunov_spectrum(cell, x)
    every = lyapunov_spectrum(cell, x, reorth_every=1)
    assert auto.reorth_every == AUTO_MAX_BLOCK
    assert auto.householder_fallbacks == 0
    assert (auto.exponents - every.exponents).abs().max() < 1e-12


# ------------------------------------------------------------------------------------------------
# wide spectra: the default reorth_every="auto" against reorth_every=1 (issue 26)
# ------------------------------------------------------------------------------------------------
#: "auto" vs reorth_every=1: round-off, far below any statistical error of the exponents
AUTO_TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-5)}
BOTH = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])


def _auto_and_every_step(system, dtype, **kw):
    """The default call and reorth_every=1: the same non-finite entries (a -inf only where
    reorth_every=1 has one), the finite ones equal to AUTO_TOL."""
    auto = lyapunov_spectrum(system, dtype=dtype, **kw)
    every = lyapunov_spectrum(system, dtype=dtype, reorth_every=1, **kw)
    assert not torch.isnan(auto.exponents).any()
    fin = torch.isfinite(every.exponents)
    assert torch.equal(torch.isfinite(auto.exponents), fin)
    assert torch.equal(auto.exponents[~fin], every.exponents[~fin])
    torch.testing.assert_close(auto.exponents[fin], every.exponents[fin], **AUTO_TOL[dtype])
    return auto, every


@BOTH
def test_auto_henon_is_finite_and_matches_every_step(dtype):
    """The issue's call: over long blocks the contracting column of the Hénon map (lambda_1 -
    lambda_2 = 2.04 per step) fell below round-off relative to the expanding one; "auto" gave
    -inf (float32) or -1.33 (float64) for lambda_2."""
    h0 = torch.full((4, 2), 0.1, dtype=dtype)
    auto, every = _auto_and_every_step(P.henon, dtype, steps=1500, h0=h0, warmup=100)
    assert torch.isfinite(auto.exponents).all()
    for j in range(2):
        assert abs(float(auto.mean[j]) - P.HENON_EXPONENTS[j]) < 0.02
    tol = 1e-12 if dtype == torch.float64 else 1e-5  # det J = -b at every step
    sums = auto.exponents.sum(-1)
    assert torch.allclose(sums, torch.full_like(sums, math.log(P.HENON_B)), rtol=0, atol=tol)


@BOTH
def test_auto_linear_map_spread_over_plus_minus_5(dtype):
    M, exact = P.wide_linear_matrix(5, 5.0)
    h0 = torch.zeros(2, 5, dtype=dtype)  # the state stays 0; only the tangents grow
    auto, _ = _auto_and_every_step(P.linear_map(M), dtype, steps=300, h0=h0, warmup=30)
    assert torch.allclose(auto.mean, torch.tensor(exact, dtype=DT), rtol=0, atol=1e-3)


@BOTH
def test_auto_redoes_a_block_when_the_spectrum_widens_suddenly(dtype):
    """150 steps of a rotation (blocks grow to AUTO_MAX_BLOCK), then exponents spread over
    +-w per step: the block that spans the switch loses the lower directions unless it is
    redone. w = 5 in float64; 1 in float32, where one step of +-5 (e^10) already costs a QR
    at every step ~eps e^8.6 = 6e-4 per step: reorth_every=1's own round-off, which two runs
    with different rounding histories do not share."""
    from lipschitz_rnn.analysis._qr import AUTO_MAX_BLOCK

    w = 5.0 if dtype == torch.float64 else 1.0
    M, _ = P.wide_linear_matrix(5, w)
    x = torch.zeros(400, 2, 1, dtype=dtype)
    x[150:] = 1.0
    h0 = torch.zeros(2, 5, dtype=dtype)
    auto, every = _auto_and_every_step(P.switching_linear(M), dtype, inputs=x, h0=h0)
    assert AUTO_MAX_BLOCK in torch.diff(auto.history_steps).tolist()  # long blocks were taken
    # after the switch: +-w per step over 250 of the 400 steps
    exact = torch.linspace(w, -w, 5, dtype=DT) * 250 / 400
    assert torch.allclose(every.mean, exact, rtol=0, atol=0.02)


@BOTH
def test_auto_saturated_tanh_rnn(dtype):
    torch.manual_seed(1)
    rnn = nn.RNN(3, 16)
    with torch.no_grad():
        for p in rnn.parameters():
            p.mul_(5.0)  # saturated: tanh' from ~1 down to 0 (exactly 0 in float32)
    x = torch.randn(200, 2, 3, generator=_gen(5))
    with warnings.catch_warnings():
        # float32: tanh' == 0 exactly annihilates a direction for both schedules (-inf)
        warnings.simplefilter("ignore", RuntimeWarning)
        auto, _ = _auto_and_every_step(rnn, dtype, inputs=x.to(dtype), warmup=20)
    assert float(auto.exponents[:, -1].max()) < -5  # a wide spectrum indeed


@BOTH
def test_auto_lipschitz_cell_large_gamma(dtype):
    cell = LipschitzRNNCell(3, 16, eps=0.1, gamma_A=5.0, gamma_W=5.0, init_std=4.0, dtype=DT)
    x = torch.randn(200, 2, 3, generator=_gen(6), dtype=dtype)
    auto, _ = _auto_and_every_step(cell, dtype, inputs=x, warmup=20)
    assert float(auto.mean[0] - auto.mean[-1]) > 1.0  # spread over > 1 nat per step


@BOTH
def test_auto_lstm_h_and_c(dtype):
    torch.manual_seed(2)
    lstm = nn.LSTM(3, 8)
    x = torch.randn(200, 2, 3, generator=_gen(7), dtype=dtype)
    auto, _ = _auto_and_every_step(lstm, dtype, inputs=x, warmup=20)
    assert auto.k == 16 and torch.isfinite(auto.exponents).all()


def test_exactly_annihilated_direction_is_minus_inf_with_a_warning():
    """A Jacobian with an exactly zero direction: -inf for every schedule, never silently."""
    step = P.linear_map(torch.diag(torch.tensor([2.0, 0.5, 0.0], dtype=DT)))
    for every in ("auto", 1):
        with pytest.warns(RuntimeWarning, match="1 exponent.* -inf"):
            r = lyapunov_spectrum(
                step, steps=50, h0=torch.zeros(1, 3), warmup=30, reorth_every=every
            )
        assert r.exponents[0, 2] == -math.inf
        exact = torch.tensor([math.log(2.0), math.log(0.5)], dtype=DT)
        assert torch.allclose(r.exponents[0, :2], exact, rtol=0, atol=1e-12)


def test_auto_blocks_verification():
    """A block is accepted only with a positive definite Gram matrix, a small alignment and a
    small spread of log R_ii; a block of one step always (that is reorth_every=1)."""
    from lipschitz_rnn.analysis._qr import AutoBlocks, Orthonormalizer

    pol = AutoBlocks(torch.float64)
    # two equal rows: the Gram matrix is singular (Cholesky fails, alignment inf)
    V = torch.tensor([[[1.0, 2.0, 0.0], [1.0, 2.0, 0.0]]], dtype=DT)
    measured, overflow = pol.measure(*Orthonormalizer()(V)[1:])
    assert not overflow and not pol.accept(4, *measured) and pol.accept(1, *measured)
    # orthogonal rows (alignment 1) graded by e^-20: rejected by the spread alone
    V = torch.tensor([[[1.0, 0.0, 0.0], [0.0, math.exp(-20.0), 0.0]]], dtype=DT)
    measured, _ = pol.measure(*Orthonormalizer()(V)[1:])
    assert measured[0] < 1e-12 and abs(measured[1] - 20.0) < 1e-12
    assert not pol.accept(4, *measured)
    # well conditioned: accepted, and the next block plans longer
    V = torch.tensor([[[1.0, 0.1, 0.0], [0.0, 0.5, 0.0]]], dtype=DT)
    measured, _ = pol.measure(*Orthonormalizer()(V)[1:])
    assert pol.accept(4, *measured)
    pol.block = 4
    pol.after(4, True, measured)
    assert pol.block > 4
    # a rejected block is redone at most half as long
    pol.after(16, False, (50.0, 50.0, 1.0))
    assert pol.block == 1 and pol.redone_steps == 16
    # float32 budgets are tighter than float64's
    assert AutoBlocks(torch.float32).accept_spread < pol.accept_spread


def test_auto_blocks_under_autograd_plan_householder_where_the_alignment_limits():
    """Under autograd (the flossing loss) the plan aims at GRAD_PLAN_FRACTION of the bounds and
    takes Householder QR, whose alignment bound is twice Cholesky-QR's in nats, where that
    makes blocks at least HOUSEHOLDER_COST times longer; without autograd nothing changes."""
    from lipschitz_rnn.analysis._qr import HOUSEHOLDER_COST, AutoBlocks

    # ~1.6 nats of ln(alignment) and of spread per step (a wide spectrum)
    wide = (1.6 * 4, 1.6 * 4, 3.0)
    plain = AutoBlocks(torch.float64)
    plain.after(4, True, wide)
    assert plain.block == 1 and not plain.householder_next  # the spectrum's own plan
    grad = AutoBlocks(torch.float64, differentiable=True, householder=True)
    grad.after(4, True, wide)
    assert grad.householder_next and grad.block >= 4
    no_h = AutoBlocks(torch.float64, differentiable=True, householder=False)
    no_h.after(4, True, wide)
    assert not no_h.householder_next and grad.block >= HOUSEHOLDER_COST * no_h.block
    # a block with ln(alignment) 6 (a = 400) fails Cholesky-QR's bound (4.5 nats in float64)
    # and passes Householder's (9.0); the spread bound is the same for both
    assert not grad.accept(4, 6.0, 6.0, 3.0) and grad.accept(4, 6.0, 6.0, 3.0, True)
    assert not grad.accept(4, 6.0, 9.5, 3.0, True)
    # a narrow spectrum, limited by the spread alike for both: Cholesky-QR (cheaper per block)
    narrow = AutoBlocks(torch.float64, differentiable=True, householder=True)
    narrow.after(4, True, (0.2, 2.0, 1.0))
    assert not narrow.householder_next and narrow.block > 4


def test_auto_blocks_measure_one_transfer():
    """The block's statistics: spread, largest |ln R_jj|, overflow (nan or +inf, not -inf),
    the alignment as a number or per sequence."""
    from lipschitz_rnn.analysis._qr import AutoBlocks

    logd = torch.tensor([[0.5, -1.0, -3.0], [2.0, 1.0, 0.0]], dtype=DT)
    (la, spread, norm), over = AutoBlocks.measure(logd, math.e)
    assert (la, spread, norm, over) == (pytest.approx(1.0), 3.5, 3.0, False)
    (la, _, _), _ = AutoBlocks.measure(logd, torch.tensor([2.0, math.e**2], dtype=DT))
    assert la == pytest.approx(2.0)
    minus_inf = logd.clone()
    minus_inf[0, 2] = -math.inf
    (_, spread, norm), over = AutoBlocks.measure(minus_inf, 1.0)
    assert spread == math.inf and norm == math.inf and not over
    for bad in (math.nan, math.inf):
        worse = logd.clone()
        worse[1, 0] = bad
        (_, spread, _), over = AutoBlocks.measure(worse, 1.0)
        assert over and (math.isnan(spread) or spread == math.inf)


def test_nonfinite_state_inside_a_long_block_names_its_step():
    """The states are checked at each re-orthonormalisation (not at every step): the first
    non-finite one is still named, even when the state is finite again by the block's end."""
    grow = lambda h: h * 1e100  # 1e100, 1e200, 1e300, inf at step 3
    with pytest.raises(NonFiniteStateError, match="non-finite at step 3 "):
        lyapunov_spectrum(grow, steps=12, h0=torch.ones(1, 2), reorth_every=8)
    # inf at step 1, back to 0 at step 2
    back = lambda h: torch.where(torch.isinf(h), torch.zeros_like(h), h * 1e200)
    with pytest.raises(NonFiniteStateError, match="non-finite at step 1 "):
        lyapunov_spectrum(back, steps=12, h0=torch.ones(1, 2), reorth_every=8)


def test_default_initial_basis_is_drawn_once_and_not_shared():
    first = _initial_basis(6, 4, None)
    assert torch.equal(first, _initial_basis(6, 4, torch.Generator().manual_seed(0)))
    first.zero_()  # a caller's change does not reach the next call
    again = _initial_basis(6, 4, None)
    assert torch.allclose(again.T @ again, torch.eye(4, dtype=DT), atol=1e-14)
