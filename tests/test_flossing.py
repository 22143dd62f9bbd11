"""Gradient flossing: the loss is the spectrum's, and its gradient is right for every unit."""

import math

import pytest
import torch
from torch import nn

from lipschitz_rnn.analysis import flossing_loss, lyapunov_spectrum
from lipschitz_rnn.analysis.lyapunov import NonFiniteStateError, _initial_basis
from lipschitz_rnn.models import build
from lipschitz_rnn.models._base import RecurrentCell, RecurrentLayer

DT = torch.float64


def _alive_relu(F, H):
    """A ReLU RNN whose units stay active on the test inputs (a dead unit is an exactly zero
    direction: exponent -inf, and a loss of inf)."""
    rnn = nn.RNN(F, H, nonlinearity="relu")
    with torch.no_grad():
        rnn.bias_ih_l0.fill_(2.0)
        rnn.weight_ih_l0.mul_(0.2)
        rnn.weight_hh_l0.copy_(0.5 * torch.eye(H) + 0.1 * torch.randn(H, H))
    return rnn


def _units():
    """(name, float64 module, input features): every unit kind, small."""
    torch.manual_seed(0)
    F, H = 3, 5
    out = [
        ("rnn", nn.RNN(F, H)),
        ("rnn-relu", _alive_relu(F, H)),
        ("gru", nn.GRU(F, H)),
        ("lstm", nn.LSTM(F, H)),
        ("lstm-2layers", nn.LSTM(F, H, num_layers=2)),
        ("rnncell", nn.RNNCell(F, H)),
        ("lipschitz-euler", build("lipschitz", F, H, solver="euler", eps=0.3, init_std=3.0)),
        ("lipschitz-rk2", build("lipschitz", F, H, solver="rk2", eps=0.3, init_std=3.0)),
        ("lipschitz-stable", build("lipschitz", F, H, eps=0.5, init_std=3.0, gamma_A=0.1,
                                   parametrization="stable")),
        ("lipschitz-2layers", build("lipschitz", F, H, num_layers=2, eps=0.3, init_std=3.0)),
        ("odernn", build("odernn", F, H, eps=0.3)),
        ("antisymmetric", build("antisymmetric", F, H, eps=0.3)),
        ("antisymmetric-gated", build("antisymmetric", F, H, eps=0.3, gated=True)),
        ("cornn", build("cornn", F, H)),
        ("exprnn", build("exprnn", F, H)),
    ]
    return [(n, m.double(), F) for n, m in out]


UNITS = _units()


def _value(loss):
    return float(loss.detach())


def _inputs(F, T=12, B=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, F, generator=g, dtype=DT)


def _direction(module, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in module.parameters()]


def _shifted(module, d, s):
    with torch.no_grad():
        for p, v in zip(module.parameters(), d, strict=True):
            p.add_(v, alpha=s)


@pytest.mark.parametrize("name,module,F", UNITS, ids=[u[0] for u in UNITS])
def test_value_is_the_spectrums(name, module, F):
    x = _inputs(F)
    kw = dict(k=3, warmup=2)
    spec = lyapunov_spectrum(module, x, **kw)
    loss = flossing_loss(module, x, target=0.1, **kw)
    assert loss.dtype == DT and loss.dim() == 0
    want = ((spec.exponents - 0.1) ** 2).mean()
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("name,module,F", UNITS, ids=[u[0] for u in UNITS])
def test_gradient_against_central_differences(name, module, F):
    """The directional derivative along a random direction of all parameters, float64."""
    x = _inputs(F)
    kw = dict(k=3, warmup=2, target=0.05)
    module.zero_grad(set_to_none=True)
    flossing_loss(module, x, **kw).backward()
    d = _direction(module)
    g_dot_d = sum(float((p.grad * v).sum()) for p, v in zip(module.parameters(), d, strict=True)
                  if p.grad is not None)
    eps = 1e-6
    _shifted(module, d, eps)
    up = _value(flossing_loss(module, x, **kw))
    _shifted(module, d, -2 * eps)
    down = _value(flossing_loss(module, x, **kw))
    _shifted(module, d, eps)
    fd = (up - down) / (2 * eps)
    assert g_dot_d == pytest.approx(fd, rel=1e-5, abs=1e-8), name


class _Functional(nn.Module):
    """``forward(x, h0) = flossing_loss(module, x, h0=h0, **kw)``, for ``functional_call``."""

    def __init__(self, module, **kw):
        super().__init__()
        self.m, self.kw = module, kw

    def forward(self, x, h0):
        return flossing_loss(self.m, x, h0=h0, **self.kw)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_the_taped_elman_run_passes_gradcheck(relu, bias, monkeypatch):
    """One Elman layer's whole run is one autograd node with its backward written out
    (analysis._taped): the gradient of every input -- inputs, initial state, each parameter --
    against finite differences, float64, with warmup and averaged blocks."""
    from lipschitz_rnn.analysis import _taped

    g = torch.Generator().manual_seed(3)
    rnn = nn.RNN(2, 5, nonlinearity="relu" if relu else "tanh", bias=bias).double()
    x = torch.randn(12, 2, 2, generator=g, dtype=DT)
    if relu:  # every pre-activation positive: no kink within eps, no direction annihilated
        x = x.abs() + 0.5
        with torch.no_grad():
            rnn.weight_ih_l0.abs_()
            rnn.weight_hh_l0.abs_().mul_(0.3)
            for b in (rnn.bias_ih_l0, rnn.bias_hh_l0) if bias else ():
                b.abs_()
    x.requires_grad_()
    h0 = torch.randn(1, 2, 5, generator=g, dtype=DT)
    h0 = (h0.abs() if relu else h0).requires_grad_()
    names = [n for n, _ in rnn.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in rnn.parameters()]
    wrapped = _Functional(rnn, k=3, warmup=2, reorth_every=3)

    def f(x, h0, *ps):
        return torch.func.functional_call(wrapped, dict(zip(["m." + n for n in names], ps,
                                                             strict=True)), (x, h0))

    calls = []
    backward = _taped._ElmanRun.backward
    monkeypatch.setattr(_taped._ElmanRun, "backward",
                        staticmethod(lambda ctx, g: calls.append(1) or backward(ctx, g)))
    assert torch.autograd.gradcheck(f, (x, h0, *params), eps=1e-6, atol=1e-8, rtol=1e-6)
    assert calls  # the taped node's own backward was checked


@pytest.mark.parametrize("reorth_every", [1, 5, "auto"])
@pytest.mark.parametrize("name", ["rnn", "rnn-relu", "rnncell"])
def test_an_elman_layer_runs_as_one_node(name, reorth_every, monkeypatch):
    """Under autograd a one-layer tanh/ReLU RNN runs as one node (the steps between two QRs
    at once, the QRs differentiated on the tape): the loss is the per-node path's to the
    bit, the gradient to round-off."""
    from lipschitz_rnn.analysis import _units

    module, F = next((m, f) for n, m, f in UNITS if n == name)
    x = _inputs(F, T=30)
    kw = dict(k=3, warmup=4, reorth_every=reorth_every)

    def run():
        module.zero_grad(set_to_none=True)
        loss = flossing_loss(module, x, **kw)
        loss.backward()
        # ReLU: the per-node path leaves the input weights without a gradient (None), the
        # taped node gives them zeros
        return loss.detach(), torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad)
                                         .reshape(-1) for p in module.parameters()])

    calls = []
    steps = _units._TorchRNNBlock.steps
    monkeypatch.setattr(_units._TorchRNNBlock, "steps",
                        lambda self, *a: calls.append(len(a[1])) or steps(self, *a))
    taped = run()
    # every block ran its steps at once (a rejected "auto" block runs again, shorter)
    assert sum(calls) >= 30 and (max(calls) == 1 if reorth_every == 1 else max(calls) >= 2)
    monkeypatch.delattr(_units._TorchRNNBlock, "steps")  # the per-step, per-node path
    per_node = run()
    assert torch.equal(taped[0], per_node[0])
    assert torch.allclose(taped[1], per_node[1], rtol=1e-12, atol=1e-14)


def test_a_diverging_elman_layer_under_autograd_names_the_step():
    rnn = nn.RNN(2, 3, nonlinearity="relu").double()
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(1e150 * torch.eye(3, dtype=DT))
        rnn.bias_ih_l0.fill_(1.0)
        rnn.bias_hh_l0.zero_()
    x = torch.zeros(12, 1, 2, dtype=DT)  # 1, 1e150, 1e300, inf at step 3
    for r in (8, "auto"):
        with pytest.raises(NonFiniteStateError, match="state became non-finite at step 3 "):
            flossing_loss(rnn, x, k=2, reorth_every=r)


def _plain_reference(rnn, x, k, target):
    """The textbook loop written from the formulas: tanh RNN, Householder QR every step."""
    W_ih, W_hh = rnn.weight_ih_l0, rnn.weight_hh_l0
    b = rnn.bias_ih_l0 + rnn.bias_hh_l0
    T, B, _ = x.shape
    n = W_hh.shape[0]
    Q = _initial_basis(n, k, None).to(DT).unsqueeze(0).expand(B, n, k)
    h = torch.zeros(B, n, dtype=DT)
    acc = torch.zeros(B, k, dtype=DT)
    for t in range(T):
        h = torch.tanh(x[t] @ W_ih.T + b + h @ W_hh.T)
        Q, R = torch.linalg.qr((1.0 - h * h).unsqueeze(-1) * (W_hh @ Q))
        acc = acc + torch.log(torch.diagonal(R, dim1=-2, dim2=-1).abs())
    lam = (acc / T).sort(-1, descending=True).values
    return ((lam - target) ** 2).mean()


@pytest.mark.parametrize("reorth_every", [1, 4, "auto"])
def test_matches_the_textbook_loop_value_and_gradient(reorth_every):
    torch.manual_seed(3)
    rnn = nn.RNN(2, 7).double()
    with torch.no_grad():
        rnn.weight_hh_l0.normal_(0.0, 1.3 / 7**0.5)
    x = _inputs(2, T=40, B=3)
    ref = _plain_reference(rnn, x, 5, 0.0)
    g_ref = torch.autograd.grad(ref, list(rnn.parameters()))
    loss = flossing_loss(rnn, x, k=5, reorth_every=reorth_every)
    g = torch.autograd.grad(loss, list(rnn.parameters()))
    assert _value(loss) == pytest.approx(_value(ref), rel=1e-11)
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["lstm", "lipschitz-rk2", "cornn", "gru"])
def test_block_qr_gradient_equals_the_qr_every_step_gradient(name):
    module, F = {u[0]: (u[1], u[2]) for u in UNITS}[name]
    x = _inputs(F, T=30)
    grads = {}
    for r in (1, 3, 8, "auto"):
        loss = flossing_loss(module, x, k=4, warmup=3, reorth_every=r)
        grads[r] = torch.cat([g.reshape(-1) for g in torch.autograd.grad(
            loss, list(module.parameters()), allow_unused=True, materialize_grads=True)])
    for r in (3, 8, "auto"):
        rel = float((grads[r] - grads[1]).norm() / grads[1].norm())
        assert rel < 1e-10, (r, rel)


def test_a_callable_step_is_differentiated_through_what_it_closes_over():
    torch.manual_seed(4)
    W = (torch.randn(4, 4, dtype=DT) * 0.6).requires_grad_(True)
    U = torch.randn(4, 2, dtype=DT)

    def step(h, x):
        return torch.tanh(h @ W.T + x @ U.T)

    x = _inputs(2, T=15)
    h0 = torch.zeros(2, 4, dtype=DT)
    loss = flossing_loss(step, x, h0=h0, k=2)
    (g,) = torch.autograd.grad(loss, W)
    d = torch.randn(4, 4, dtype=DT)
    eps = 1e-6
    with torch.no_grad():
        up = _value(flossing_loss(lambda h, xx: torch.tanh(h @ (W + eps * d).T + xx @ U.T),
                                 x, h0=h0, k=2))
        down = _value(flossing_loss(lambda h, xx: torch.tanh(h @ (W - eps * d).T + xx @ U.T),
                                   x, h0=h0, k=2))
    assert float((g * d).sum()) == pytest.approx((up - down) / (2 * eps), rel=1e-6)


class _ShiftedCell(RecurrentCell):
    """A cell with its own step (no hand-written tangent map): the autograd route."""

    def __init__(self, F, H):
        super().__init__(F, H)
        self.weight_ih = nn.Parameter(torch.randn(H, F) * 0.5)
        self.weight_hh = nn.Parameter(torch.randn(H, H) * 0.5)

    def input_projection(self, x):
        return x @ self.weight_ih.T

    def recurrence(self):
        return (self.weight_hh,)

    def step(self, h, u, ctx):
        return torch.tanh(h @ ctx[0].T + u) + 0.1 * h


class _ShiftedLayer(RecurrentLayer):
    cell_class = _ShiftedCell


def test_a_generic_cell_goes_through_forward_mode_and_is_differentiable():
    torch.manual_seed(5)
    cell = _ShiftedCell(2, 20).double()  # 20 > the size where the analysis uses reverse mode
    x = _inputs(2, T=10)
    cell.zero_grad(set_to_none=True)
    flossing_loss(cell, x, k=3).backward()
    d = _direction(cell)
    g_dot_d = sum(float((p.grad * v).sum()) for p, v in zip(cell.parameters(), d, strict=True))
    eps = 1e-6
    _shifted(cell, d, eps)
    up = _value(flossing_loss(cell, x, k=3))
    _shifted(cell, d, -2 * eps)
    down = _value(flossing_loss(cell, x, k=3))
    _shifted(cell, d, eps)
    assert g_dot_d == pytest.approx((up - down) / (2 * eps), rel=1e-5)


def test_gradients_land_on_float32_parameters_unchanged():
    torch.manual_seed(6)
    rnn = nn.GRU(3, 6)  # float32: the loss runs in float64 on cast views of the parameters
    before = {n: p.detach().clone() for n, p in rnn.named_parameters()}
    x = _inputs(3).float()
    loss = flossing_loss(rnn, x, k=4)
    assert loss.dtype == DT
    loss.backward()
    for n, p in rnn.named_parameters():
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
        assert torch.equal(p.detach(), before[n])
        assert bool(torch.isfinite(p.grad).all())
    # the spectrum of the untouched module is unchanged by having been differentiated
    assert float(loss.detach()) == pytest.approx(
        float((lyapunov_spectrum(rnn, x, k=4).exponents ** 2).mean()), rel=1e-12)


def test_flossing_drives_an_edge_of_chaos_rnn_to_the_target_on_held_out_inputs():
    torch.manual_seed(7)
    N, k = 16, 8
    rnn = nn.RNN(1, N)
    with torch.no_grad():  # gain 1.6: chaotic, largest exponents well above 0
        rnn.weight_hh_l0.normal_(0.0, 1.6 / N**0.5)
    g = torch.Generator().manual_seed(8)
    held_out = torch.randn(60, 8, 1, generator=g)

    def top_k(module):
        return lyapunov_spectrum(module, held_out, k=k, warmup=10).mean

    before = top_k(rnn)
    opt = torch.optim.Adam(rnn.parameters(), lr=0.01)
    for _ in range(150):
        x = torch.randn(40, 8, 1, generator=g)
        opt.zero_grad()
        flossing_loss(rnn, x, k=k, warmup=10).backward()
        opt.step()
    after = top_k(rnn)
    assert float(before.abs().max()) > 0.15
    assert float(after.abs().max()) < 0.5 * float(before.abs().max())
    assert float((after**2).mean()) < 0.1 * float((before**2).mean())


@pytest.mark.parametrize(
    "kw,exc,needle",
    [
        ({"target": "0"}, TypeError, "target"),
        ({"target": math.nan}, ValueError, "target"),
        ({"k": 99}, ValueError, "k=99"),
        ({"reorth_every": 0}, ValueError, "reorth_every"),
        ({"dtype": torch.int64}, TypeError, "dtype"),
    ],
)
def test_bad_arguments_name_themselves(kw, exc, needle):
    rnn = nn.RNN(2, 4)
    with pytest.raises(exc, match=needle):
        flossing_loss(rnn, _inputs(2), **kw)


# ------------------------------------------------------------------------------------------------
# the QR step's own derivative (analysis._qr._RowsQR), whichever algorithm ran
# ------------------------------------------------------------------------------------------------
def _rows(seed, B=3, k=4, n=7, scales=None, couple=0.0):
    """(B, k, n) float64 rows: Gaussian, graded by ``scales`` and pulled toward the first row
    by ``couple`` (a larger alignment, i.e. a worse conditioned basis)."""
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(B, k, n, generator=g, dtype=DT)
    if scales is not None:
        V = V * torch.tensor(scales, dtype=DT).unsqueeze(-1)
    V[:, 1:] += couple * V[:, :1]
    return V.requires_grad_(True)


def _qr_outputs(fn):
    return lambda V: tuple(fn(V)[:2])


@pytest.mark.parametrize(
    "case,two_pass,V,householders",
    [
        ("well-conditioned", False, _rows(0), 0),
        ("graded rows", False, _rows(1, scales=[1, 0.1, 0.03, 0.01]), 0),
        # one sequence's alignment above REFINE_TOL: Householder QR for it alone on the CPU (a
        # mixed batch), a second Cholesky pass on accelerators
        ("aligned rows, cpu", False, _rows(2, scales=[1, 0.1, 0.03, 0.01], couple=1.0), 1),
        ("aligned rows, two passes", True, _rows(2, scales=[1, 0.1, 0.03, 0.01], couple=1.0), 0),
    ],
)
def test_the_qr_step_passes_gradcheck(case, two_pass, V, householders):
    from lipschitz_rnn.analysis._qr import REFINE_TOL, orthonormalize_rows

    _, _, n_h, align = orthonormalize_rows(V.detach(), two_pass=two_pass)
    assert n_h == householders, case
    assert (align > REFINE_TOL) == ("aligned" in case)
    fn = _qr_outputs(lambda W: orthonormalize_rows(W, two_pass=two_pass))
    assert torch.autograd.gradcheck(fn, (V,)), case


def test_the_qr_step_passes_gradcheck_on_a_planned_householder_block():
    from lipschitz_rnn.analysis._qr import Orthonormalizer

    V = _rows(3, scales=[1, 0.3, 0.1, 0.05])
    ortho = Orthonormalizer()
    assert torch.autograd.gradcheck(_qr_outputs(lambda W: ortho(W, True)), (V,))
    assert ortho.householder_count == 0  # planned, not a fallback


def _torch_qr_rows(V):
    """The reference: torch.linalg.qr and its own backward (signs fixed, diag R > 0)."""
    Q, R = torch.linalg.qr(V.mT)
    d = torch.diagonal(R, dim1=-2, dim2=-1)
    return (Q * torch.sign(d).unsqueeze(-2)).mT, torch.log(d.abs())


@pytest.mark.parametrize("two_pass", [False, True])
def test_the_qr_step_gradient_of_a_mixed_batch_equals_torchs(two_pass):
    """One sequence nearly singular (Cholesky fails: Householder QR for it alone), the others
    Cholesky-QR: each element's backward uses its own factor (before, autograd went through
    Householder QR for the whole batch)."""
    from lipschitz_rnn.analysis._qr import orthonormalize_rows

    V = _rows(4).detach()
    V[1, 1:] = V[1, :1] + 1e-7 * V[1, 1:]
    V.requires_grad_(True)
    Vn, logd, n_h, _ = orthonormalize_rows(V, two_pass=two_pass)
    assert n_h == 1
    g = torch.Generator().manual_seed(5)
    gVn, glogd = torch.randn(Vn.shape, generator=g, dtype=DT), torch.randn(logd.shape, generator=g,
                                                                           dtype=DT)
    (ours,) = torch.autograd.grad((Vn * gVn).sum() + (logd * glogd).sum(), V)
    Qt, logt = _torch_qr_rows(V)
    (ref,) = torch.autograd.grad((Qt * gVn).sum() + (logt * glogd).sum(), V)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=0.0)


def _tanh_rnn(N, gain=1.0, seed=3):
    torch.manual_seed(seed)
    rnn = nn.RNN(2, N).double()
    with torch.no_grad():
        rnn.weight_hh_l0.normal_(0.0, gain / N**0.5)
    return rnn


def test_householder_blocks_under_autograd_keep_the_every_step_gradient(monkeypatch):
    """A spectrum spread over ~1 nat per step (10 units, k=8): Cholesky-QR's alignment bound
    allows blocks of ~2, Householder's ~4-9, so the auto policy plans Householder blocks under
    autograd; value and gradient stay those of reorth_every=1 (round-off)."""
    from lipschitz_rnn.analysis import _qr

    blocks = []
    after = _qr.AutoBlocks.after

    def spy(self, since, accepted, measured):
        blocks.append((since, self.householder_next, accepted))
        after(self, since, accepted, measured)

    monkeypatch.setattr(_qr.AutoBlocks, "after", spy)
    rnn = _tanh_rnn(10)
    x = _inputs(2, T=60)
    params = list(rnn.parameters())
    loss = flossing_loss(rnn, x, k=8, warmup=5)
    g = torch.cat([a.reshape(-1) for a in torch.autograd.grad(loss, params)])
    assert any(h and ok and s > 2 for s, h, ok in blocks), blocks
    every = flossing_loss(rnn, x, k=8, warmup=5, reorth_every=1)
    g1 = torch.cat([a.reshape(-1) for a in torch.autograd.grad(every, params)])
    assert float((g - g1).norm() / g1.norm()) < 1e-10
    spec = lyapunov_spectrum(rnn, x, k=8, warmup=5)
    assert _value(loss) == pytest.approx(float((spec.exponents**2).mean()), rel=1e-12)


def _saturated_rnn():
    """tanh' from ~1 down to ~0: a wide spectrum, blocks of one or two steps."""
    torch.manual_seed(1)
    rnn = nn.RNN(3, 16)
    with torch.no_grad():
        for p in rnn.parameters():
            p.mul_(5.0)
    return rnn, torch.randn(60, 2, 3, generator=torch.Generator().manual_seed(5))


def _switching_rnn():
    """Orthogonal W_hh and quiet inputs (blocks grow to 32 steps), then loud ones from step 60:
    the spectrum widens suddenly, so "auto" rejects blocks and redoes them shorter."""
    torch.manual_seed(1)
    rnn = nn.RNN(3, 16)
    with torch.no_grad():
        nn.init.orthogonal_(rnn.weight_hh_l0)
        rnn.weight_ih_l0.mul_(4.0)
    x = torch.randn(120, 2, 3, generator=torch.Generator().manual_seed(5))
    x[:60] *= 0.01
    return rnn, x


@pytest.mark.parametrize(
    "case, dtype",
    [("saturated", torch.float64), ("saturated", torch.float32), ("switching", torch.float64)],
)
def test_the_taped_run_matches_the_per_node_path_where_auto_is_stressed(case, dtype,
                                                                        monkeypatch):
    """The cases built to break "auto", through the taped node: a saturated RNN (wide
    spectrum) in both precisions and a spectrum that widens suddenly (rejected blocks, which
    must leave nothing on the tape). The loss is the per-node path's to the bit, the gradient
    equal to round-off (float32's own, ~1e-6, summed in another order)."""
    from lipschitz_rnn.analysis import _qr, _units

    rnn, x = _saturated_rnn() if case == "saturated" else _switching_rnn()
    rnn, x = rnn.to(dtype), x.to(dtype)
    blocks = []
    after = _qr.AutoBlocks.after
    monkeypatch.setattr(_qr.AutoBlocks, "after", lambda self, since, ok, m:
                        blocks.append((since, ok)) or after(self, since, ok, m))

    def run():
        rnn.zero_grad(set_to_none=True)
        loss = flossing_loss(rnn, x, k=12, warmup=5, dtype=dtype)
        loss.backward()
        return loss.detach(), torch.cat([p.grad.reshape(-1) for p in rnn.parameters()])

    taped = run()
    if case == "switching":
        assert any(not ok for _, ok in blocks) and max(s for s, _ in blocks) == 32, blocks
    monkeypatch.delattr(_units._TorchRNNBlock, "steps")  # the per-step, per-node path
    per_node = run()
    assert torch.isfinite(taped[1]).all() and float(per_node[1].norm()) > 0
    assert torch.equal(taped[0], per_node[0])
    rel = float((taped[1] - per_node[1]).norm() / per_node[1].norm())
    assert rel < (1e-11 if dtype == torch.float64 else 1e-4), rel
