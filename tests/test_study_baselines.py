"""The study's fair baselines (issue 29): groups of near-duplicates, repeated grouped
cross-validation with intervals and paired differences, out-of-distribution scores, transfer
between sweeps, and the Spearman bootstrap over groups -- on small synthetic sweep directories
written in the sweep's own formats (trials.csv, spectra.npz, sweep.json)."""

from __future__ import annotations

import numpy as np
import pytest
from formats import write_sweep_files

from lipschitz_rnn.analysis import spectrum_features
from lipschitz_rnn.cli import main
from lipschitz_rnn.sweep import run_study, study_cv
from lipschitz_rnn.sweep.spec import parse_equivalence
from lipschitz_rnn.sweep.study import resampled_rho
from lipschitz_rnn.sweep.study_cv import group_splits, study_groups

K = 12
FAST = {"bootstrap": 100, "plots": False}


def _spectrum(lmax: float) -> np.ndarray:
    return lmax - 0.15 * np.arange(K)


def trial(i, cid, model, params, seed, acc, lmax1, rng, lmax0=None):
    """One ``trials.csv`` row and its spectra (epochs 0 and 1); the validation metric after
    epoch 1 is only loosely tied to the final one."""
    row = {"trial": f"t{i:03d}", "config_id": cid, "status": "ok", "model": model, **params,
           "seed": seed, "best_valid": acc, "best_epoch": 2, "epochs_done": 2, "train_s": 1.0}
    v1 = 0.5 * acc + rng.uniform(0, 0.3)
    row.update(valid_1=v1, valid_loss_1=1.5 - v1, valid_2=acc, valid_loss_2=1.0 - acc)
    arrays = {}
    for e, lm in ((0, rng.normal(-0.5, 0.05) if lmax0 is None else lmax0), (1, lmax1)):
        arrays[f"{row['trial']}_le{e}"] = _spectrum(lm)
        row.update({f"le{e}_{f}": v for f, v in spectrum_features(_spectrum(lm)).items()})
    return row, arrays


def write_files(root, rows, arrays, *, swept, metric="accuracy", mode="max"):
    write_sweep_files(root, rows, arrays, swept=swept, metric=metric, mode=mode)


def spectrum_sweep(root, *, seed, units=("rnn", "lstm", "gru"), metric="accuracy",
                   swept=("model", "model.init_scale", "lr", "seed")):
    """Per unit 4 init scales x 2 learning rates x 2 seeds; the final metric falls with the
    largest exponent after epoch 1, which is a hidden per-configuration draw (the swept keys do
    not determine it). With ``metric="loss"`` the metric is 1 - accuracy (lower is better)."""
    rng = np.random.default_rng(seed)
    rows, arrays = [], {}
    for model in units:
        for scale in (0.1, 0.3, 0.9, 2.7):
            for lr in (1e-3, 3e-3):
                hidden = rng.uniform(-0.3, 0.3)
                cid = f"{model}-{scale}-{lr}"
                for s in (0, 1):
                    lmax1 = hidden + rng.normal(0, 0.01)
                    acc = 0.7 - 0.5 * lmax1 + rng.normal(0, 0.01)
                    params = {"model.init_scale": scale, "lr": lr}
                    r, a = trial(len(rows), cid, model, params, s, acc, lmax1, rng)
                    if metric == "loss":
                        r["best_valid"] = 1.0 - acc
                    rows.append({k: v for k, v in r.items() if k in swept or k not in params})
                    arrays.update(a)
    write_files(root, rows, arrays, swept=list(swept), metric=metric,
                mode="max" if metric == "accuracy" else "min")
    return rows


def _check_intervals(s, repeats):
    for e in s["cv"]["entries"]:
        if e["reason"] is not None:
            continue
        for m in ("r2", "rho", "auc"):
            assert len(e["repeats"][m]) == repeats
            if e["median"][m] is not None:
                lo, hi = e["ci95"][m]
                assert lo <= e["median"][m] <= hi, (e["feature_set"], e["model"], m)
    for p in s["paired"]:
        for m, med in p["median"].items():
            if med is not None:
                assert p["ci95"][m][0] <= med <= p["ci95"][m][1]
                assert 0.0 <= p["frac_positive"][m] <= 1.0


# ------------------------------------------------------------------------------------------
# groups
# ------------------------------------------------------------------------------------------
def lipschitz_copies(root, rng_seed=0):
    """A Lipschitz sweep where the init scale changes nothing: 8 learning rates x 4 init
    scales x 2 seeds, the final accuracy a hidden draw per learning rate (the four init scales
    of one lr are near-copies of one network); the spectrum is noise."""
    rng = np.random.default_rng(rng_seed)
    rows, arrays = [], {}
    lrs = np.geomspace(1e-4, 1e-2, 8)
    level = rng.uniform(0.2, 0.9, lrs.size)
    for lr, h in zip(lrs, level, strict=True):
        for scale in (16.0, 32.0, 64.0, 128.0):
            for s in (0, 1):
                r, a = trial(len(rows), f"c{lr:.2e}-{scale}", "lipschitz",
                             {"lr": float(lr), "model.init_scale": scale}, s,
                             h + rng.normal(0, 0.005), rng.normal(0, 0.3), rng)
                rows.append(r)
                arrays.update(a)
    write_files(root, rows, arrays, swept=["model", "lr", "model.init_scale", "seed"])
    return rows


def test_groups_join_seeds_and_declared_near_duplicates(tmp_path):
    rows = lipschitz_copies(tmp_path)
    swept = ["model", "lr", "model.init_scale", "seed"]
    plain = study_groups(rows, swept)
    assert len(set(plain)) == 32  # the configurations: seeds together
    for eq in ("model=lipschitz:model.init_scale", "model.init_scale"):
        groups = np.array(study_groups(rows, swept, [eq]))
        assert len(set(groups.tolist())) == 8  # one group per learning rate
        for split in group_splits(groups, 5, 20, seed=3):
            assert sorted(np.concatenate([te for _, te in split]).tolist()) == list(
                range(len(rows)))
            for train, test in split:
                assert not set(groups[train]) & set(groups[test])
    # an equivalence for another unit changes nothing
    other = [dict(r, model="rnn") if i < 8 else r for i, r in enumerate(rows)]
    assert len(set(study_groups(other, swept, ["model=rnn:model.init_scale"]))) == 32 - 4 + 1
    assert parse_equivalence("model=lipschitz:lr, model.init_scale", swept) == (
        ("model", "lipschitz"), ("lr", "model.init_scale"))
    for bad, match in (("model=lipschitz:hidden_size", "not a swept key"),
                       ("model=:lr", "KEY=VALUE"), ("model=lipschitz:", "no key"),
                       ("model=lipschitz:seed", "not a swept key")):
        with pytest.raises(ValueError, match=match):
            parse_equivalence(bad, swept)
    with pytest.raises(TypeError, match="equivalent"):
        parse_equivalence(3, swept)
    with pytest.raises(ValueError, match="no trial has model = gru"):
        study_groups(rows, swept, ["model=gru:lr"])


def test_the_sweep_specs_study_table_sets_the_defaults(tmp_path):
    """``[study]`` in the sweep spec (recorded in sweep.json) declares the near-duplicates and
    the range left out; the caller's declarations are added, not substituted."""
    import json

    lipschitz_copies(tmp_path)
    meta = json.loads((tmp_path / "sweep.json").read_text())
    meta["spec"] = {"study": {"equivalent": "model=lipschitz:model.init_scale", "ood_key": "lr"}}
    (tmp_path / "sweep.json").write_text(json.dumps(meta))
    kw = dict(FAST, repeats=2, models=("ridge",))
    s = run_study(tmp_path, **kw)
    assert s["n_groups"] == 8 and s["equivalent"] == ["model=lipschitz:model.init_scale"]
    assert s["ood"]["leave_one_out_range"]["key"] == "lr"
    s = run_study(tmp_path, equivalent=["model=lipschitz:model.init_scale", "lr"],
                  ood_key="model.init_scale", **kw)
    assert s["equivalent"] == ["model=lipschitz:model.init_scale", "lr"]
    assert s["n_groups"] == 1 and s["ood"]["leave_one_out_range"]["key"] == "model.init_scale"


def test_near_duplicates_in_separate_groups_inflate_the_score(tmp_path):
    """Near-copies in different groups let a model look up a twin's outcome: with the
    equivalence declared, the learning rates the test folds hold were never seen."""
    lipschitz_copies(tmp_path)
    kw = dict(FAST, repeats=5, models=("ridge",))
    loose = run_study(tmp_path, **kw)
    fair = run_study(tmp_path, equivalent=["model=lipschitz:model.init_scale"], **kw)
    assert (loose["n_groups"], fair["n_groups"]) == (32, 8)
    assert fair["equivalent"] == ["model=lipschitz:model.init_scale"]

    def r2(s):
        return next(e["median"]["r2"] for e in s["cv"]["entries"]
                    if e["feature_set"] == "hyperparameters_surrogate")

    assert r2(loose) > 0.8 and r2(fair) < 0.3
    _check_intervals(fair, 5)
    md = (tmp_path / "study.md").read_text()
    assert "declared equivalent: `model=lipschitz:model.init_scale`" in md
    assert "## Repeated grouped cross-validation" in md and "## Paired differences" in md


# ------------------------------------------------------------------------------------------
# out of distribution
# ------------------------------------------------------------------------------------------
def test_leave_one_unit_out_and_a_range_out(tmp_path):
    rows = spectrum_sweep(tmp_path, seed=0)
    s = run_study(tmp_path, repeats=3, models=("ridge",), **FAST)
    louo = s["ood"]["leave_one_unit_out"]
    assert louo["units"] == ["gru", "lstm", "rnn"] and louo["reason"] is None
    by = {(e["unit"], e["feature_set"]): e for e in louo["entries"]}
    for unit in louo["units"]:
        e = by[(unit, "spectrum@1")]
        assert (e["n_train"], e["n_test"]) == (32, 16)
        # one relation for every unit: it carries over to the unit the fit never saw
        assert e["rho"] > 0.9 and e["r2"] > 0.8
        assert by[(unit, "hyperparameters")]["n_test"] == 16
    rng_block = s["ood"]["leave_one_out_range"]
    assert rng_block["key"] == "model.init_scale" and rng_block["reason"] is None
    thr = rng_block["thresholds"]
    assert set(thr) == {"gru", "lstm", "rnn"}
    n_test = sum(r["model.init_scale"] >= thr[r["model"]] for r in rows)
    e = next(x for x in rng_block["entries"] if x["feature_set"] == "spectrum@1")
    assert e["n_test"] == n_test and e["n_train"] == len(rows) - n_test and e["rho"] > 0.9
    md = (tmp_path / "study.md").read_text()
    assert "## Out of distribution: leave one unit out" in md
    assert "## Out of distribution: leave a range out" in md
    with pytest.raises(ValueError, match="ood_key"):
        run_study(tmp_path, ood_key="hidden_size", **FAST)
    s = run_study(tmp_path, ood_key="lr", ood_quantile=0.5, repeats=2, models=("ridge",),
                  **FAST)
    assert s["ood"]["leave_one_out_range"]["thresholds"] == pytest.approx({u: 2e-3 for u in thr})


def test_transfer_between_two_sweeps(tmp_path, capsys):
    spectrum_sweep(tmp_path / "a", seed=1)
    spectrum_sweep(tmp_path / "b", seed=2)
    spectrum_sweep(tmp_path / "loss", seed=3, metric="loss")
    spectrum_sweep(tmp_path / "keys", seed=4, swept=("model", "lr", "seed"))
    kw = dict(FAST, repeats=2, models=("ridge",))
    tr = run_study(tmp_path / "b", predictor_from=tmp_path / "a", **kw)["ood"]["transfer"]
    assert tr["from"] == str(tmp_path / "a") and tr["r2_comparable"] and tr["n_from"] == 48
    by = {e["feature_set"]: e for e in tr["entries"]}
    assert by["spectrum@1"]["rho"] > 0.9 and by["spectrum@1"]["r2"] > 0.8
    assert by["hyperparameters"]["reason"] is None  # same keys: scored
    # another metric (loss, lower is better): ranks compare, R² does not
    s = run_study(tmp_path / "loss", predictor_from=tmp_path / "a", **kw)
    tr = s["ood"]["transfer"]
    assert not tr["r2_comparable"]
    by = {e["feature_set"]: e for e in tr["entries"]}
    assert by["spectrum@1"]["rho"] > 0.9 and by["spectrum@1"]["auc"] > 0.95
    assert all(e.get("r2") is None for e in tr["entries"])
    assert "validation metrics differ" in by["validation@1"]["reason"]
    assert any("only ρ and AUC" in n for n in s["notes"])
    # keys of A that B does not sweep: no hyperparameter sets
    tr = run_study(tmp_path / "keys", predictor_from=tmp_path / "a", **kw)["ood"]["transfer"]
    by = {e["feature_set"]: e for e in tr["entries"]}
    assert "hyperparameter keys differ" in by["hyperparameters_surrogate"]["reason"]
    assert "hyperparameter keys differ" in by["hyperparameters+spectrum@1"]["reason"]
    assert by["spectrum@1"]["rho"] > 0.9
    # the command
    assert main(["study", str(tmp_path / "b"), "--repeats", "2", "--models", "ridge",
                 "--bootstrap", "100", "--predictor-from", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "2 grouped splits" in out and "spectrum@1" in out
    assert "## Transfer between sweeps" in (tmp_path / "b" / "study.md").read_text()
    assert main(["study", str(tmp_path / "b"), "--equivalent", "model=rnn:hidden_size"]) == 2
    assert "not a swept key" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------
# a fair surrogate
# ------------------------------------------------------------------------------------------
def test_surrogate_wins_where_the_hyperparameters_act_nonlinearly(tmp_path, monkeypatch):
    """Accuracy an inverted U in log init scale (peak in the middle of the range; the lstm a
    little better than the rnn; lr does nothing): additive and linear in log p, the
    ``hyperparameters`` baseline sees nothing; the surrogate (both families) sees the U, and
    the uninformative spectrum loses to it on every split."""
    monkeypatch.setattr(study_cv, "FOREST_TREES", 10)
    rng = np.random.default_rng(0)
    rows, arrays = [], {}
    for model, offset in (("rnn", 0.0), ("lstm", 0.05)):
        for c in range(20):
            logp = -1.0 + rng.uniform(-1, 1)
            lr = float(10 ** rng.uniform(-4, -2))
            acc = 0.85 + offset - 0.6 * (logp + 1.0) ** 2
            for s in (0, 1):
                r, a = trial(len(rows), f"{model}{c}", model,
                             {"model.init_scale": float(10 ** logp), "lr": lr}, s,
                             acc + rng.normal(0, 0.01), rng.normal(0, 0.3), rng)
                rows.append(r)
                arrays.update(a)
    write_files(tmp_path, rows, arrays, swept=["model", "model.init_scale", "lr", "seed"])
    s = run_study(tmp_path, repeats=5, **FAST)
    med = {(e["feature_set"], e["model"]): e["median"]["r2"] for e in s["cv"]["entries"]}
    assert med[("hyperparameters", "ridge")] < 0.2
    assert med[("hyperparameters_surrogate", "ridge")] > 0.7
    assert med[("hyperparameters_surrogate", "forest")] > 0.7
    # the forest's surrogate is the forest on the raw keys
    assert med[("hyperparameters_surrogate", "forest")] == med[("hyperparameters", "forest")]
    for p in s["paired"]:
        if p["a"] == "spectrum@1" and p["b"] == "hyperparameters_surrogate":
            assert p["median"]["r2"] < -0.5 and p["frac_positive"]["r2"] == 0.0
    _check_intervals(s, 5)


# ------------------------------------------------------------------------------------------
# the Spearman bootstrap resamples groups
# ------------------------------------------------------------------------------------------
def test_resampled_rho_is_spearman_of_the_written_out_resample():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x, t = rng.integers(0, 6, 15).astype(float), rng.integers(0, 9, 15).astype(float)
    W = rng.integers(0, 4, (50, 15)).astype(float)
    got = resampled_rho(x, t, W)
    for w, g in zip(W.astype(int), got, strict=True):
        xs, ts = np.repeat(x, w), np.repeat(t, w)
        if np.ptp(xs) == 0 or np.ptp(ts) == 0:
            assert np.isnan(g)
        else:
            assert g == pytest.approx(spearmanr(xs, ts).statistic, abs=1e-12)


def test_copies_of_a_trial_do_not_narrow_the_spearman_interval(tmp_path):
    """Each configuration written three times (seeds with identical outcomes): resampling whole
    configurations gives the interval of the configurations alone; resampling trials (what the
    study did before) would count every copy as evidence and narrow it."""
    from scipy.stats import bootstrap, spearmanr

    rng = np.random.default_rng(0)
    base = []
    for c in range(20):
        lmax1 = rng.normal(0, 0.3)
        base.append((f"c{c}", lmax1, 0.6 - 0.3 * lmax1 + rng.normal(0, 0.12)))
    for name, copies in (("one", 1), ("three", 3)):
        rows, arrays = [], {}
        for cid, lmax1, acc in base:
            for s in range(copies):
                r, a = trial(len(rows), cid, "rnn", {"lr": float(cid[1:])}, s, acc, lmax1,
                             np.random.default_rng(7), lmax0=-0.5)
                rows.append(r)
                arrays.update(a)
        write_files(tmp_path / name, rows, arrays, swept=["lr", "seed"])
    ci = {}
    for name in ("one", "three"):
        s = run_study(tmp_path / name, bootstrap=400, plots=False, repeats=2, models=("ridge",))
        e = next(x for x in s["spearman"] if (x["epoch"], x["feature"], x["arch"]) == (
            1, "max", "pooled"))
        ci[name] = (e["rho"], e["ci_low"], e["ci_high"])
    assert ci["three"] == pytest.approx(ci["one"], abs=1e-9)
    width = ci["one"][2] - ci["one"][1]
    assert width > 0.1
    # trial-level resampling of the tripled sweep: markedly narrower
    x = np.repeat([b[1] for b in base], 3)
    t = np.repeat([b[2] for b in base], 3)
    trial_level = bootstrap((x, t), lambda a, b: spearmanr(a, b).statistic, paired=True,
                            vectorized=False, n_resamples=400, method="percentile",
                            random_state=0).confidence_interval
    assert trial_level.high - trial_level.low < 0.75 * width


def test_aelle_reads_the_spectrum(tmp_path):
    """``models`` with ``aelle`` adds the ``aelle@E`` feature sets (the autoencoder over the
    resampled spectrum with a linear head): here the final metric is a function of the largest
    exponent after epoch 1, which the whole-spectrum readout recovers out of sample."""
    spectrum_sweep(tmp_path, seed=3)
    s = run_study(tmp_path, repeats=2, models=("ridge", "aelle"), **FAST)
    by = {(e["feature_set"], e["model"]): e for e in s["cv"]["entries"]}
    aelle = by[("aelle@1", "aelle")]
    assert aelle["median"]["r2"] > 0.7 and aelle["median"]["rho"] > 0.8
    assert ("aelle@1", "ridge") not in by and ("spectrum@1", "aelle") not in by
    assert "| aelle@1 | aelle |" in (tmp_path / "study.md").read_text()
    with pytest.raises(ValueError, match="aelle"):
        run_study(tmp_path, models=("svm",), **FAST)
