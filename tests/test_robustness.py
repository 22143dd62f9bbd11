"""Robustness curves (lipschitz_rnn.analysis.robustness) and the comparison table (analysis.compare)."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest
import torch
import torch.nn.functional as F

from lipschitz_rnn.analysis.compare import compare_table
from lipschitz_rnn.analysis.plots import plot_curves
from lipschitz_rnn.analysis.robustness import (
    RobustnessCurve,
    accuracy_metric,
    evaluate_metric,
    input_noise_curve,
    mse_metric,
    weight_noise_curve,
)
from lipschitz_rnn.models import SequenceModel, build

T = 6


def _toy_data(n: int, seed: int):
    """Two classes, separable: the sign of the mean of the (noisy) input sequence."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.3 * torch.randn(T, n, 1, generator=g) + (2.0 * y - 1.0).view(1, n, 1)
    return x, y


@pytest.fixture(scope="module")
def trained():
    """A tiny Lipschitz RNN trained briefly on the toy problem; test batches of unequal sizes."""
    torch.manual_seed(0)
    model = SequenceModel(build("lipschitz", 1, 6), 2)
    x, y = _toy_data(128, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    xt, yt = _toy_data(50, seed=1)
    batches = [(xt[:, :32], yt[:32]), (xt[:, 32:], yt[32:])]  # sizes 32 and 18
    return model, batches


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(model, snap):
    now = model.state_dict()
    assert now.keys() == snap.keys()
    for k, v in snap.items():
        assert torch.equal(now[k], v), k  # bit-exact


def test_pooled_metric_is_exact_over_unequal_batches(trained):
    model, batches = trained
    x = torch.cat([b[0] for b in batches], dim=1)
    y = torch.cat([b[1] for b in batches])
    with torch.no_grad():
        expected = float((model.eval()(x).argmax(-1) == y).double().mean())
    assert evaluate_metric(model, batches, accuracy_metric) == expected
    assert expected >= 0.95  # the toy model has learnt the task


def test_clean_at_sigma_zero_and_degradation(trained):
    model, batches = trained
    model.train()
    snap = _snapshot(model)
    clean = evaluate_metric(model, batches, accuracy_metric)
    seeds = tuple(range(8))
    inp = input_noise_curve(model, batches, accuracy_metric, [0.0, 0.5, 4.0], seeds=seeds,
                            label="lip")
    wgt = weight_noise_curve(model, batches, accuracy_metric, [0.0, 0.1, 5.0], seeds=seeds)
    for c, kind in ((inp, "input"), (wgt, "weight")):
        assert isinstance(c, RobustnessCurve) and c.kind == kind and c.metric == "accuracy"
        assert c.clean == clean
        assert c.mean[0] == clean and c.values[0] == [clean] * 8 and c.std[0] == 0.0
        assert len(c.values) == 3 and all(len(r) == 8 for r in c.values)
        assert c.mean[-1] < clean - 0.2  # heavy noise hurts, on average over seeds
        row = c.values[-1]  # sample std (Bessel) over seeds, computed here from the formula
        m = sum(row) / len(row)
        assert c.std[-1] == pytest.approx((sum((v - m) ** 2 for v in row) / (len(row) - 1)) ** 0.5)
        assert c.std[-1] > 0  # seeds give different noise
        d = json.loads(json.dumps(c.to_dict(), allow_nan=False))
        assert d["sigmas"][0] == 0.0 and d["clean"] == clean
    assert inp.label == "lip"
    assert inp.mean[1] >= inp.mean[2]
    assert model.training  # mode restored
    _assert_same(model, snap)
    assert all(p.grad is None for p in model.parameters())


def test_seeds_are_reproducible(trained):
    model, batches = trained
    a = weight_noise_curve(model, batches, accuracy_metric, [0.5], seeds=(3, 4))
    b = weight_noise_curve(model, batches, accuracy_metric, [0.5], seeds=(3, 4))
    assert a.values == b.values
    c = input_noise_curve(model, batches, mse_like_metric, [1.0], seeds=(0, 1))
    d = input_noise_curve(model, batches, mse_like_metric, [1.0], seeds=(0, 1))
    assert c.values == d.values
    assert c.values[0][0] != c.values[0][1]  # different seeds, different noise
    assert c.metric == "mse_like_metric"


def mse_like_metric(outputs, targets):
    """Mean logit of the true class: a continuous metric (sensitive to every noise draw)."""
    return float(outputs.gather(1, targets.view(-1, 1)).sum()), targets.numel()


def test_weights_restored_even_when_the_metric_fails(trained):
    model, batches = trained
    snap = _snapshot(model)
    calls = []

    def failing(outputs, targets):
        calls.append(1)
        if len(calls) > len(batches):  # the clean pass works, the noisy one raises
            raise RuntimeError("boom")
        return accuracy_metric(outputs, targets)

    with pytest.raises(RuntimeError, match="boom"):
        weight_noise_curve(model, batches, failing, [1.0], seeds=(0,))
    _assert_same(model, snap)


def test_plain_float_metric_and_mse_metric():
    torch.manual_seed(0)
    model = SequenceModel(build("odernn", 2, 3), 2, mode="all")
    x = torch.randn(4, 5, 2)
    y = torch.randn(4, 5, 2)
    with torch.no_grad():
        out = model(x)
    s, n = mse_metric(out, y)
    assert n == y.numel() and s == pytest.approx(float(((out - y) ** 2).sum()))
    pooled = evaluate_metric(model, [(x[:, :2], y[:, :2]), (x[:, 2:], y[:, 2:])], mse_metric)
    assert pooled == pytest.approx(float(F.mse_loss(out, y)), rel=1e-6)
    # a metric returning a float is averaged over batches with equal weights
    plain = evaluate_metric(model, [(x, y), (x, y)], lambda o, t: float(F.mse_loss(o, t)))
    assert plain == pytest.approx(float(F.mse_loss(out, y)), rel=1e-6)
    with pytest.raises(ValueError, match="targets"):
        mse_metric(out, y[:, :2])


def test_errors(trained):
    model, batches = trained
    for fn in (input_noise_curve, weight_noise_curve):
        with pytest.raises(ValueError, match="batches"):
            fn(model, [], accuracy_metric, [0.1])
        with pytest.raises(ValueError, match="sigmas"):
            fn(model, batches, accuracy_metric, [0.1, -0.1])
        with pytest.raises(ValueError, match="sigmas"):
            fn(model, batches, accuracy_metric, [float("nan")])
        with pytest.raises(ValueError, match="sigmas"):
            fn(model, batches, accuracy_metric, [])
        with pytest.raises(ValueError, match="seeds"):
            fn(model, batches, accuracy_metric, [0.1], seeds=())


def test_token_inputs():
    torch.manual_seed(0)
    lm = SequenceModel(build("lipschitz", 4, 5), 7, mode="all", vocab_size=7)
    tokens = torch.randint(0, 7, (5, 3))
    data = [(tokens, torch.randint(0, 7, (5, 3)))]
    with pytest.raises(TypeError, match="floating"):
        input_noise_curve(lm, data, accuracy_metric, [0.1])
    snap = _snapshot(lm)
    curve = weight_noise_curve(lm, data, accuracy_metric, [0.0, 0.2], seeds=(0, 1))
    assert curve.mean[0] == evaluate_metric(lm, data, accuracy_metric)
    _assert_same(lm, snap)


def test_plot_curves_writes_png_atomically(tmp_path):
    c1 = RobustnessCurve("input", [0.0, 0.1], [1.0, 0.9], [0.0, 0.05],
                         [[1.0, 1.0], [0.95, 0.85]], [0, 1], 1.0, "accuracy", "lipschitz")
    c2 = RobustnessCurve("weight", [0.0, 0.1], [1.0, 0.8], [0.0, 0.1],
                         [[1.0, 1.0], [0.9, 0.7]], [0, 1], 1.0, "accuracy", "lipschitz")
    out = tmp_path / "robustness.png"
    assert plot_curves([c1, c2], out) == os.fspath(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["robustness.png"]
    with pytest.raises(ValueError):
        plot_curves([], tmp_path / "none.png")


# --------------------------------------------------------------------------------------------
# compare_table
# --------------------------------------------------------------------------------------------
def test_compare_table():
    curve = RobustnessCurve("input", [0.0, 0.1], [0.97, 0.9], [0.0, 0.02],
                            [[0.97] * 2, [0.92, 0.88]], [0, 1], 0.97, "accuracy", "lipschitz")
    rows = [
        {
            "model": "lipschitz",
            "metric_name": "accuracy",
            "metric": 0.97,
            "lambda_max": 0.123456,
            "trace": 1.5,
            "condition_number": 12.0,
            "input_noise": curve.as_mapping(),
            "weight_noise": {0.05: {"mean": 0.95, "std": 1.2e-16}},  # identical seeds
        },
        {
            "model": "lstm",
            "metric_name": "accuracy",
            "metric": 0.95,
            "lambda_max": 2.0,
            "trace": None,
            "condition_number": float("inf"),
            "input_noise": {"0.1": 0.7, "0.2": {"mean": 0.5, "std": 0.1}},  # keys from JSON
        },
    ]
    md, text = compare_table(rows)
    lines = md.strip().splitlines()
    assert len(lines) == 4
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head == [
        "model", "test accuracy", "λ_max", "tr(H)", "κ",
        "input σ=0", "input σ=0.1", "input σ=0.2", "weight σ=0.05",
    ]
    lip = [c.strip() for c in lines[2].strip("|").split("|")]
    assert lip[:5] == ["lipschitz", "0.97", "0.1235", "1.5", "12"]
    assert lip[6] == "0.9 ± 0.02" and lip[7] == "—" and lip[8] == "0.95 ± 0"
    lstm = [c.strip() for c in lines[3].strip("|").split("|")]
    assert lstm[3] == "—" and lstm[4] == "∞" and lstm[6] == "0.7" and lstm[7] == "0.5 ± 0.1"

    table = list(csv.reader(io.StringIO(text)))
    assert table[0][:6] == ["model", "metric_name", "metric", "lambda_max", "trace",
                            "condition_number"]
    assert "input_noise@0.1" in table[0] and "input_noise@0.1_std" in table[0]
    rec = dict(zip(table[0], table[1], strict=True))
    assert float(rec["lambda_max"]) == 0.123456 and float(rec["input_noise@0.1"]) == 0.9
    assert float(rec["input_noise@0.1_std"]) == 0.02 and rec["input_noise@0.2"] == ""
    rec2 = dict(zip(table[0], table[2], strict=True))
    assert rec2["trace"] == "" and float(rec2["condition_number"]) == float("inf")

    # several metric names: a name column plus a value column
    md2, _ = compare_table([{"model": "a", "metric_name": "accuracy", "metric": 0.5},
                            {"model": "b", "metric_name": "mse", "metric": 0.1}])
    assert md2.splitlines()[0].startswith("| model | metric | test value |")

    with pytest.raises(ValueError):
        compare_table([])
    with pytest.raises(ValueError, match="model"):
        compare_table([{"metric": 1.0}])
    with pytest.raises(ValueError, match="sigma"):
        compare_table([{"model": "a", "input_noise": {"x": 1.0}}])
