"""Hessian spectrum (lipschitz_rnn.analysis.hessian) against the exact, dense Hessian.

Small float64 models (P ~ 60-150): the exact Hessian of the batch-averaged loss comes from
torch.autograd.functional.hessian on the flattened parameters through torch.func.functional_call.
Tolerances: top eigenvalues and the smallest eigenvalue within 1 % (relative), trace within
3 standard errors of the Hutchinson estimate.
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from lipschitz_rnn.analysis._curvature import build_operator
from lipschitz_rnn.analysis.hessian import HessianSpectrum, hessian_spectrum
from lipschitz_rnn.analysis.plots import plot_density
from lipschitz_rnn.models import SequenceModel, build
from lipschitz_rnn.models.fused import fused_disabled

DT = torch.float64
T, IN, CLASSES = 4, 2, 3


def _model(name: str, hidden: int, seed: int = 0, **kw) -> SequenceModel:
    torch.manual_seed(seed)
    return SequenceModel(build(name, IN, hidden, dtype=DT, **kw), CLASSES).to(DT)


def _batches(sizes, seed: int = 1, length: int = T):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(length, b, IN, generator=g, dtype=DT),
            torch.randint(0, CLASSES, (b,), generator=g),
        )
        for b in sizes
    ]


def _exact_hessian(model, data, weights=None) -> torch.Tensor:
    """Dense Hessian of sum_b w_b CE(model(X_b), y_b) (default w_b = 1/B) on a deep copy."""
    m = copy.deepcopy(model).eval()
    for mod in m.modules():
        if hasattr(mod, "use_fused"):
            mod.use_fused = False  # the plain loop: an independent path from the operator's
    weights = weights or [1.0 / len(data)] * len(data)
    named = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])

    def loss(v):
        params, i = {}, 0
        for n, p in named:
            params[n] = v[i : i + p.numel()].view_as(p)
            i += p.numel()
        return sum(
            w * F.cross_entropy(functional_call(m, params, (x,)), y)
            for (x, y), w in zip(data, weights, strict=True)
        )

    h = torch.autograd.functional.hessian(loss, flat)
    return 0.5 * (h + h.T)


def _close(a: float, b: float, rel: float = 0.01) -> bool:
    return abs(a - b) <= rel * abs(b) + 1e-9


# --------------------------------------------------------------------------------------------
# accuracy against the exact Hessian, for several units
# --------------------------------------------------------------------------------------------
CASES = {
    # name: (hidden, batch sizes) -- the Lipschitz case has batches of different sizes
    "lipschitz": (5, (6, 3)),
    "lstm": (4, (5,)),
    "gru": (4, (5,)),
    "odernn": (5, (6,)),
    "cornn": (4, (5,)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_exact_hessian(name):
    hidden, sizes = CASES[name]
    model = _model(name, hidden)
    data = _batches(sizes)
    spec = hessian_spectrum(model, F.cross_entropy, data, top_k=2, trace_samples=30, seed=3)

    h = _exact_hessian(model, data)
    ev = torch.linalg.eigvalsh(h).numpy()
    assert spec.num_parameters == h.shape[0]
    assert spec.num_parameters > spec.trace_samples  # the Hutchinson path, not the exact one
    assert spec.eigenvalues.shape == (2,)
    assert spec.eigenvalues[0] >= spec.eigenvalues[1]
    assert _close(spec.lambda_max, ev[-1]), (spec.lambda_max, ev[-1])
    assert _close(float(spec.eigenvalues[1]), ev[-2]), (spec.eigenvalues[1], ev[-2])
    assert _close(spec.min_eigenvalue, ev[0]), (spec.min_eigenvalue, ev[0])
    exact_trace = float(h.trace())
    assert spec.trace_stderr > 0
    assert abs(spec.trace - exact_trace) <= 3 * spec.trace_stderr, (
        spec.trace, spec.trace_stderr, exact_trace
    )
    assert spec.condition_number == pytest.approx(spec.lambda_max / abs(spec.min_eigenvalue))
    with torch.no_grad():
        loss = np.mean([float(F.cross_entropy(model.eval()(x), y)) for x, y in data])
    assert spec.loss == pytest.approx(loss, rel=1e-12)
    json.dumps(spec.to_dict())


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_float32_gated_units(name):
    """float32 CPU LSTM runs oneDNN's RNN kernel, which lacks forward-mode AD: it must be off."""
    torch.manual_seed(0)
    model = SequenceModel(build(name, IN, 3), CLASSES)
    data32 = [(x.float(), y) for x, y in _batches((5,), length=3)]
    spec = hessian_spectrum(model, F.cross_entropy, data32, trace=False, seed=0)
    exact = torch.linalg.eigvalsh(
        _exact_hessian(copy.deepcopy(model).to(DT), [(x.to(DT), y) for x, y in data32])
    ).numpy()
    assert _close(spec.lambda_max, exact[-1]) and _close(spec.min_eigenvalue, exact[0])


def test_operator_uses_the_average_over_batches_of_unequal_sizes():
    """Default: the plain mean of per-batch losses; batch_weights=sizes: the per-example mean."""
    model = _model("lipschitz", 4).eval()
    data = _batches((6, 2))
    params = list(model.parameters())
    num = sum(p.numel() for p in params)
    eye = torch.eye(num, dtype=DT)
    with fused_disabled():
        uniform = build_operator(model, F.cross_entropy, params, data, [0.5, 0.5]) @ eye
        sized = build_operator(model, F.cross_entropy, params, data, [0.75, 0.25]) @ eye
    exact_uniform = _exact_hessian(model, data)
    exact_sized = _exact_hessian(model, data, [0.75, 0.25])
    assert torch.allclose(uniform, exact_uniform, rtol=1e-9, atol=1e-12)
    assert torch.allclose(sized, exact_sized, rtol=1e-9, atol=1e-12)
    # the per-example mean over the concatenated data equals the size-weighted one
    x = torch.cat([d[0] for d in data], dim=1)
    y = torch.cat([d[1] for d in data])
    assert torch.allclose(exact_sized, _exact_hessian(model, [(x, y)]), rtol=1e-9, atol=1e-12)
    assert not torch.allclose(exact_uniform, exact_sized, rtol=1e-3)  # the test can tell


def test_batch_weights_match_the_per_example_mean():
    model = _model("odernn", 3)
    data = _batches((5, 2))
    spec = hessian_spectrum(
        model, F.cross_entropy, data, trace=False, batch_weights=[5, 2], seed=1
    )
    ev = torch.linalg.eigvalsh(_exact_hessian(model, data, [5 / 7, 2 / 7])).numpy()
    assert _close(spec.lambda_max, ev[-1]) and _close(spec.min_eigenvalue, ev[0])
    assert spec.trace is None and spec.trace_stderr is None and spec.trace_samples == 0


# --------------------------------------------------------------------------------------------
# side effects
# --------------------------------------------------------------------------------------------
def test_model_state_is_left_untouched():
    torch.manual_seed(0)
    rnn = build("lipschitz", IN, 3, num_layers=2, dropout=0.5, dtype=DT)
    model = SequenceModel(rnn, CLASSES).to(DT)
    model.train()
    model.readout.eval()  # mixed modes must come back per module
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    grad = torch.ones_like(params["readout.weight"])
    params["readout.weight"].grad = grad
    other = build("lipschitz", IN, 3, dtype=DT)
    other.use_fused = False  # an explicit instance setting is kept
    holder = torch.nn.ModuleDict({"m": model, "o": other})
    rng = torch.get_rng_state()

    hessian_spectrum(
        holder["m"], F.cross_entropy, _batches((4,)), top_k=1, trace_samples=4, seed=0
    )

    assert model.training and rnn.training and not model.readout.training
    for n, p in params.items():
        assert torch.equal(p, before[n]), n
        if n == "readout.weight":
            assert p.grad is grad and torch.equal(grad, torch.ones_like(grad))
        else:
            assert p.grad is None, n
    assert "use_fused" not in vars(rnn) and rnn.use_fused is type(rnn).use_fused
    assert other.use_fused is False
    assert torch.equal(torch.get_rng_state(), rng)


# --------------------------------------------------------------------------------------------
# small paths: dense eigenvalues, exact trace, reproducibility, density, errors
# --------------------------------------------------------------------------------------------
def _tiny():
    torch.manual_seed(0)
    return SequenceModel(build("odernn", 1, 2, dtype=DT), 2).to(DT)  # P = 14


def _tiny_data():
    g = torch.Generator().manual_seed(5)
    return [
        (torch.randn(3, n, 1, generator=g, dtype=DT), torch.randint(0, 2, (n,), generator=g))
        for n in (4, 3)
    ]


def test_dense_fallback_and_exact_trace():
    model, data = _tiny(), _tiny_data()
    h = _exact_hessian(model, data)
    num = h.shape[0]
    spec = hessian_spectrum(model, F.cross_entropy, data, top_k=num, trace_samples=num)
    ev = torch.linalg.eigvalsh(h).numpy()
    np.testing.assert_allclose(spec.eigenvalues, ev[::-1], rtol=1e-8, atol=1e-10)
    assert spec.min_eigenvalue == pytest.approx(ev[0], rel=1e-8, abs=1e-10)
    assert spec.trace == pytest.approx(float(h.trace()), rel=1e-10, abs=1e-12)
    assert spec.trace_stderr == 0.0 and spec.trace_samples == num


def test_same_seed_same_result():
    model, data = _tiny(), _tiny_data()
    a = hessian_spectrum(model, F.cross_entropy, data, trace_samples=6, seed=7)
    b = hessian_spectrum(model, F.cross_entropy, iter(data), trace_samples=6, seed=7)
    c = hessian_spectrum(model, F.cross_entropy, data, trace_samples=6, seed=8)
    assert a.trace == b.trace and a.trace_stderr == b.trace_stderr
    assert a.lambda_max == pytest.approx(b.lambda_max, rel=1e-12)
    assert a.trace != c.trace  # other probes


def test_density_integrates_to_one_and_plots(tmp_path):
    model = _model("odernn", 5)
    data = _batches((6,))
    spec = hessian_spectrum(
        model, F.cross_entropy, data, trace=False, density=True, density_ncv=24,
        density_points=400, seed=2,
    )
    assert isinstance(spec, HessianSpectrum)
    grid, values = spec.density.grid, spec.density.values
    assert grid.shape == values.shape == (400,)
    assert np.all(np.diff(grid) > 0)
    # a sum of Gaussians of positive weights: non-negative, peaked inside the grid
    assert values.min() >= 0 and 0 < values.argmax() < len(values) - 1
    assert np.trapezoid(values, grid) == pytest.approx(1.0, abs=0.02)
    assert grid[0] <= spec.min_eigenvalue and grid[-1] >= spec.lambda_max
    d = json.loads(json.dumps(spec.to_dict()))
    assert len(d["density"]["grid"]) == 400 and d["trace"] is None

    out = tmp_path / "sub" / "density.png"
    assert plot_density(spec, out) == os.fspath(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(out.parent) == ["density.png"]  # no temporary file left behind
    no_density = hessian_spectrum(_tiny(), F.cross_entropy, _tiny_data(), trace=False)
    with pytest.raises(ValueError, match="density"):
        plot_density(no_density, tmp_path / "x.png")


def test_infinite_condition_number_is_strict_json():
    spec = HessianSpectrum(
        eigenvalues=np.array([1.0]), min_eigenvalue=0.0, condition_number=float("inf"),
        trace=None, trace_stderr=None, trace_samples=0, density=None, num_parameters=3,
        loss=0.5, num_batches=1, seed=0,
    )
    d = spec.to_dict()
    assert d["condition_number"] is None
    json.dumps(d, allow_nan=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"top_k": 0}, "top_k"),
        ({"top_k": 10_000}, "top_k"),
        ({"tol": 0.0}, "tol"),
        ({"tol": -1e-3}, "tol"),
        ({"max_iter": 0}, "max_iter"),
        ({"trace_samples": 1}, "trace_samples"),
        ({"batch_weights": [1.0]}, "batch_weights"),
    ],
)
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hessian_spectrum(_tiny(), F.cross_entropy, _tiny_data(), **kwargs)


def test_empty_batches_and_bad_loss():
    with pytest.raises(ValueError, match="batches"):
        hessian_spectrum(_tiny(), F.cross_entropy, [])
    with pytest.raises(ValueError, match="batches"):
        hessian_spectrum(_tiny(), F.cross_entropy, iter(()))
    with pytest.raises(ValueError, match="scalar"):
        hessian_spectrum(
            _tiny(), lambda o, y: F.cross_entropy(o, y, reduction="none"), _tiny_data()
        )


def test_progress_names_each_phase_and_counts_products():
    model = _model("odernn", 5)
    seen: list[str] = []
    hessian_spectrum(model, F.cross_entropy, _batches((6,)), trace_samples=4, density=True,
                     density_ncv=8, seed=0, progress=seen.append)
    text = "\n".join(seen)
    for phase in ("top 1 eigenvalue", "smallest eigenvalue", "trace (Hutchinson, 4 probes)",
                  "spectral density", "done"):
        assert phase in text, phase
    counts = [int(m.rsplit("[", 1)[1].split()[0]) for m in seen]
    assert counts == sorted(counts) and counts[-1] > 4  # Lanczos products, then 4 probes, ...
