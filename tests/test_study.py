"""The study readout and spectrum-guided pruning on a synthetic sweep directory written in the
sweep's own file formats (trials.csv, spectra.npz, sweep.json); no Ray run needed."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from lipschitz_rnn.analysis import spectrum_features
from lipschitz_rnn.sweep import replay, run_study
from lipschitz_rnn.sweep.pruning import fit_predictor, make_lyapunov_stopper, predict
from lipschitz_rnn.sweep.results import FEATURES
from lipschitz_rnn.sweep.schedulers import SchedulerContext
from lipschitz_rnn.sweep.spec import SchedulerSpec
from lipschitz_rnn.sweep.study import grouped_folds

K, EPOCHS = 12, 4


def _spectrum(lmax: float) -> np.ndarray:
    return lmax - 0.15 * np.arange(K)


def write_sweep(root, *, n_scales=6, seed=0, informative=True):
    """2 units x n_scales init scales x 2 lr x 2 seeds. The final accuracy falls with the largest
    exponent after epoch 1, which depends on a hidden per-configuration draw (not on the swept
    keys) when ``informative``; otherwise the accuracy is noise."""
    rng = np.random.default_rng(seed)
    rows, arrays, cid = [], {}, 0
    for model in ("rnn", "lstm"):
        for scale in np.geomspace(0.1, 1.6, n_scales):
            for lr in (1e-3, 3e-3):
                hidden = rng.uniform(-0.3, 0.3)
                cid += 1
                for s in (0, 1):
                    t = f"t{len(rows):03d}"
                    lmax1 = hidden + rng.normal(0, 0.01)
                    acc = 0.9 - 0.5 * lmax1 + rng.normal(0, 0.01) if informative else rng.uniform(
                        0.5, 0.9)
                    row = {"trial": t, "config_id": f"c{cid}", "status": "ok", "model": model,
                           "model.init_scale": scale, "lr": lr, "seed": s, "best_valid": acc,
                           "best_epoch": EPOCHS, "epochs_done": EPOCHS, "train_s": 10.0}
                    for e in range(1, EPOCHS + 1):
                        row[f"valid_{e}"] = acc - 0.2 * rng.uniform() / e
                        row[f"valid_loss_{e}"] = 1 - row[f"valid_{e}"]
                    for e, lm in ((0, rng.normal(-0.5, 0.05)), (1, lmax1)):
                        lam = _spectrum(lm)
                        arrays[f"{t}_le{e}"] = lam
                        row.update({f"le{e}_{f}": v for f, v in spectrum_features(lam).items()})
                    rows.append(row)
    rows[-1]["status"] = "failed"  # not trained to the end: left out
    root.mkdir(parents=True, exist_ok=True)
    cols = list(rows[0])
    with (root / "trials.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    np.savez(root / "spectra.npz", **arrays)
    (root / "sweep.json").write_text(json.dumps({
        "metric": {"name": "accuracy", "mode": "max"},
        "swept_keys": ["model", "model.init_scale", "lr", "seed"],
        "lyapunov": {"at_epochs": [0, 1]},
    }))
    return rows


def test_grouped_folds_never_split_a_configuration():
    groups = np.repeat(np.arange(12), 2)
    labels = np.tile([0, 1], 12)
    for folds in (grouped_folds(groups, 4), grouped_folds(groups, 3, labels=labels, seed=1)):
        assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(24))
        for tr, te in folds:
            assert not set(groups[tr]) & set(groups[te])


def test_study_finds_the_informative_spectrum(tmp_path):
    rows = write_sweep(tmp_path)
    s = run_study(tmp_path, bootstrap=200)
    assert s["n_trials"] == len(rows) - 1 and s["n_configs"] == 24
    assert s["status_counts"] == {"failed": 1, "ok": len(rows) - 1}
    auc = {a["feature_set"]: a["auc"] for a in s["auc"]}
    r2 = {a["feature_set"]: a["r2"] for a in s["r2"]}
    # the accuracy is a function of the epoch-1 spectrum, not of the swept keys
    assert auc["spectrum@1"] > 0.95 and r2["spectrum@1"] > 0.9
    assert auc["full_spectrum@1"] > 0.95
    # out of fold, keys that do not determine the accuracy explain none of it (the AUC of 12
    # configurations' quartiles is too noisy to bound at chance level)
    assert r2["hyperparameters"] < 0.3 and r2["spectrum@0"] < 0.3
    pooled = {(e["epoch"], e["feature"]): e for e in s["spearman"] if e["arch"] == "pooled"}
    top = pooled[(1, "max")]
    assert top["rho"] < -0.95 and top["ci_low"] <= top["rho"] <= top["ci_high"] < -0.9
    assert abs(pooled[(0, "max")]["rho"]) < 0.4
    per_arch = [e for e in s["spearman"] if e["arch"] == "lstm" and e["epoch"] == 1
                and e["feature"] == "max"]
    assert per_arch[0]["n"] == 23 and per_arch[0]["rho"] < -0.9
    # files: json as returned, markdown table, decodable PNGs
    assert json.loads((tmp_path / "study.json").read_text())["auc"] == s["auc"]
    assert "| spectrum@1 |" in (tmp_path / "study.md").read_text()
    for name in s["plots"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the stored predictor reproduces the trend: higher lambda_max, lower predicted accuracy
    p = s["predictor"]
    assert p["epoch"] == 1 and p["features"] == list(FEATURES)
    lo, hi = (np.array([list(spectrum_features(_spectrum(v)).values())]) for v in (-0.2, 0.2))
    assert predict(p, lo)[0] > predict(p, hi)[0] + 0.1


def test_study_refuses_too_few_trials_and_non_sweeps(tmp_path):
    with pytest.raises(FileNotFoundError, match="sweep"):
        run_study(tmp_path)
    write_sweep(tmp_path / "small", n_scales=1)  # 8 trials, one failed: 7 done
    with pytest.raises(ValueError, match="at least 8"):
        run_study(tmp_path / "small")
    with pytest.raises(ValueError, match="folds"):
        run_study(tmp_path / "small", folds=1)


def test_replay_compares_pruning_rules(tmp_path):
    write_sweep(tmp_path)
    r = replay(tmp_path, fraction=0.5, min_history=8, random_repeats=400)
    rules = r["rules"]
    assert r["decision_epoch"] == 1 and rules["none"]["stopped"] == 0
    assert rules["none"]["compute_saved_frac"] == 0 and rules["none"]["top5_recall"] == 1
    ly = rules["lyapunov"]
    # about half of the trials after the first 8 are stopped at epoch 1 of 4: 3/4 of their work
    assert 10 <= ly["stopped"] <= 30
    assert ly["epochs_saved"] == pytest.approx(3 * ly["stopped"])
    assert ly["compute_saved_frac"] == pytest.approx(ly["epochs_saved"] / (4 * 47))
    assert ly["top5_recall"] >= 0.8 and ly["best_kept"] == rules["none"]["best_kept"]
    # random pruning at the same fraction loses about half of the top 5
    assert 0.35 <= rules["random"]["top5_recall"] <= 0.65
    assert rules["random"]["stopped"] == pytest.approx(0.5 * 47, abs=2)
    with pytest.raises(ValueError, match="fraction"):
        replay(tmp_path, fraction=1.0)


def test_live_stopper_prunes_predicted_losers():
    pytest.importorskip("ray")
    ctx = SchedulerContext(spec=SchedulerSpec(kind="lyapunov", options={"min_history": 4}),
                           mode="max", max_epochs=3, at_epochs=(0, 1), sweep_dir=None)
    stop = make_lyapunov_stopper(ctx)

    def result(epoch, lmax, acc):
        r = {"epoch": epoch, "valid_metric": acc}
        if epoch >= 1:
            r.update({f"le1_{f}": v for f, v in spectrum_features(_spectrum(lmax)).items()})
        return r

    # four finished trials: the larger lambda_max, the lower the accuracy
    for i, lm in enumerate((-0.3, -0.1, 0.1, 0.3)):
        acc = 0.9 - 0.5 * lm
        for e in (1, 2, 3):
            assert stop(f"a{i}", result(e, lm, acc - 0.1 / e)) is False
    assert stop("good", result(1, -0.35, 0.5)) is False  # predicted best: continues
    assert stop("bad", result(1, 0.4, 0.5)) is True  # predicted worst: stopped at epoch 1
    assert stop.stop_all() is False
    bad = SchedulerContext(spec=SchedulerSpec(kind="lyapunov", options={"decision_epoch": 2}),
                           mode="max", max_epochs=3, at_epochs=(0, 1), sweep_dir=None)
    with pytest.raises(ValueError, match="decision_epoch"):
        make_lyapunov_stopper(bad)


def test_fit_predictor_recovers_a_linear_trend():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, len(FEATURES)))
    y = 2.0 * X[:, 0] - X[:, 3] + 0.5
    p = fit_predictor(X, y, 1)
    assert np.corrcoef(predict(p, X), y)[0, 1] > 0.99
