"""The study readout and spectrum-guided pruning on a synthetic sweep directory written in the
sweep's own file formats (trials.csv, spectra.npz, sweep.json); no Ray run needed."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from formats import write_sweep_files

from lipschitz_rnn.analysis import spectrum_features
from lipschitz_rnn.cli import main
from lipschitz_rnn.sweep import replay, run_study, study_cv
from lipschitz_rnn.sweep.pruning import LyapunovRule
from lipschitz_rnn.sweep.readout import fit_predictor, predict
from lipschitz_rnn.sweep.results import FEATURES
from lipschitz_rnn.sweep.schedulers import SchedulerContext, make_scheduler
from lipschitz_rnn.sweep.spec import SchedulerSpec
from lipschitz_rnn.sweep.study import grouped_folds

K, EPOCHS = 12, 4
#: the fair-baseline blocks are tested in test_study_baselines.py: here few splits, ridge only
QUICK = {"repeats": 2, "models": ("ridge",)}
QUICK_CLI = ["--repeats", "2", "--models", "ridge"]


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
    write_files(root, rows, arrays, swept=["model", "model.init_scale", "lr", "seed"],
                at_epochs=[0, 1])
    return rows


def write_files(root, rows, arrays, *, swept, at_epochs, mode="max"):
    """trials.csv (None: an empty cell), spectra.npz and sweep.json as the sweep writes them."""
    write_sweep_files(root, rows, arrays, swept=swept, at_epochs=at_epochs, mode=mode)


def test_grouped_folds_never_split_a_configuration():
    groups = np.repeat(np.arange(12), 2)
    labels = np.tile([0, 1], 12)
    for folds in (grouped_folds(groups, 4), grouped_folds(groups, 3, labels=labels, seed=1)):
        assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(24))
        for tr, te in folds:
            assert not set(groups[tr]) & set(groups[te])


def test_study_finds_the_informative_spectrum(tmp_path):
    rows = write_sweep(tmp_path)
    s = run_study(tmp_path, bootstrap=200, **QUICK)
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
    sched, stop = make_scheduler(ctx)
    assert sched is None and isinstance(stop.rule, LyapunovRule)

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
        make_scheduler(bad)


def test_fit_predictor_recovers_a_linear_trend():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, len(FEATURES)))
    y = 2.0 * X[:, 0] - X[:, 3] + 0.5
    p = fit_predictor(X, y, 1)
    assert np.corrcoef(predict(p, X), y)[0, 1] > 0.99


# ------------------------------------------------------------------------------------------
# small sweeps: folds that cannot be scored, undefined measures, notes instead of exceptions
# ------------------------------------------------------------------------------------------
def seeds_sweep(root, acc, lmax1, *, lmax0=None, num_pos0=None):
    """The 8 trials of docs/sweep.md's layout: 2 units x 2 learning rates x ``seed = [0, 1]``
    (4 configurations); trial i ends at accuracy ``acc[i]`` with largest exponent ``lmax1[i]``
    after epoch 1."""
    lmax0 = [-0.5] * 8 if lmax0 is None else lmax0
    rows, arrays = [], {}
    for i, (model, lr, seed) in enumerate(
            (m, lr, s) for m in ("rnn", "lstm") for lr in (1e-3, 3e-3) for s in (0, 1)):
        t = f"t{i:03d}"
        row = {"trial": t, "config_id": f"{model}-{lr}", "status": "ok", "model": model,
               "lr": lr, "seed": seed, "best_valid": acc[i], "best_epoch": 2, "epochs_done": 2,
               "train_s": 1.0}
        for e in (1, 2):
            row[f"valid_{e}"], row[f"valid_loss_{e}"] = acc[i], 1 - acc[i]
        for e, lm in ((0, lmax0[i]), (1, lmax1[i])):
            lam = _spectrum(lm)
            arrays[f"{t}_le{e}"] = lam
            row.update({f"le{e}_{f}": v for f, v in spectrum_features(lam).items()})
        if num_pos0 is not None:
            row["le0_num_pos"] = float(num_pos0[i])
        rows.append(row)
    write_files(root, rows, arrays, swept=["model", "lr", "seed"], at_epochs=[0, 1])


def test_study_of_eight_trials_with_repeated_seeds(tmp_path, capsys):
    # the top quartile (2 trials) is the two seeds of one configuration, and so is the bottom:
    # no fold grouped by configuration can train on both classes
    acc = [0.2, 0.21, 0.3, 0.31, 0.4, 0.41, 0.8, 0.81]
    seeds_sweep(tmp_path, acc, [-a for a in acc])
    s = run_study(tmp_path, bootstrap=100, plots=False, **QUICK)
    assert s["n_trials"] == 8 and s["n_configs"] == 4
    for a in s["auc"]:
        assert a["auc"] is None and a["n"] == 4 and "seeds of one configuration" in a["reason"]
    for r in s["r2"]:  # regression: 4 configurations, 4 folds
        assert r["r2"] is not None and r["folds"] == 4 and r["reason"] is None
    assert any(n.startswith("AUC not computed for every feature set: the top quartile")
               for n in s["notes"])
    md = (tmp_path / "study.md").read_text()
    assert "| spectrum@1 | — (4) |" in md and "seeds of one configuration" in md
    assert json.loads((tmp_path / "study.json").read_text())["auc"] == s["auc"]
    assert main(["study", str(tmp_path), "--bootstrap", "100", *QUICK_CLI]) == 0
    out = capsys.readouterr().out
    assert "AUC —" in out and "note: AUC not computed" in out and "seeds of one" in out


def test_study_of_eight_trials_scores_two_stratified_folds(tmp_path):
    # top and bottom quartiles in two configurations each: 2 folds, each training on one
    # trial of each class; the epoch-1 exponent orders the trials exactly
    acc = [0.2, 0.5, 0.45, 0.8, 0.22, 0.55, 0.6, 0.81]
    seeds_sweep(tmp_path, acc, [-a for a in acc], lmax0=[0.1 * (i % 3) for i in range(8)])
    s = run_study(tmp_path, bootstrap=100, plots=False, **QUICK)
    auc = {a["feature_set"]: a for a in s["auc"]}
    assert all(a["auc"] is not None and a["folds"] == 2 for a in s["auc"])
    assert auc["spectrum@1"]["auc"] == 1.0
    assert "2 folds: the top and bottom quartiles hold 2 + 2 trials" in auc["spectrum@1"]["note"]
    pooled = {(e["epoch"], e["feature"]): e for e in s["spearman"] if e["arch"] == "pooled"}
    assert pooled[(1, "max")]["rho"] == pytest.approx(-1.0)


def _check_folds(folds, groups, labels):
    assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(len(groups)))
    for tr, te in folds:
        assert len(te) and not set(groups[tr]) & set(groups[te])
        assert set(labels[tr]) == {0, 1}  # a classifier can be fitted on every training fold


def test_grouped_folds_keep_both_classes_in_every_training_fold():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(4, 16))
        groups = rng.integers(0, int(rng.integers(2, 7)), n)
        labels = rng.integers(0, 2, n)
        if min(len(set(groups[labels == c])) for c in (0, 1)) < 2:
            with pytest.raises(ValueError, match="single group|two classes"):
                grouped_folds(groups, 3, labels=labels)
            continue
        _check_folds(grouped_folds(groups, int(rng.integers(2, 6)), labels=labels,
                                   seed=int(rng.integers(100))), groups, labels)
    # the hand-built 2-fold split, for each way the classes can share groups
    from lipschitz_rnn.sweep.study import _two_folds

    for groups, labels in (([0, 0, 1, 1, 2], [0, 1, 0, 1, 1]),  # two mixed groups
                           ([0, 0, 1, 2, 3], [0, 1, 0, 1, 1]),  # one mixed group
                           ([0, 1, 2, 3, 3], [0, 0, 1, 1, 1])):  # none
        groups, labels = np.array(groups), np.array(labels)
        _check_folds(_two_folds(groups, labels, [0, 1]), groups, labels)


def _random_sweep(root, rng):
    """A random small sweep that passes the study's preconditions (at least 8 trials trained to
    the end, one with a finite metric): few configurations, repeated seeds, ties, diverged and
    failed trials, missing spectra, constant features, zero to two LE epochs."""
    n_configs = int(rng.integers(1, 6))
    n_seeds = int(rng.integers(1, 4))
    while n_configs * n_seeds < 8:
        n_seeds += 1
    models = ["rnn", "lstm", "gru"][:int(rng.integers(1, 4))]
    at_epochs = [[], [0], [1], [0, 1], [0, 2]][int(rng.integers(5))]
    levels = rng.choice([0.1, 0.5, 0.9], size=n_configs) if rng.random() < 0.3 else (
        rng.uniform(0, 1, n_configs))
    swept = ["seed"] if n_configs == 1 or rng.random() < 0.15 else ["lr", "seed"]
    rows, arrays = [], {}
    for c in range(n_configs):
        for seed in range(n_seeds):
            t = f"t{len(rows):03d}"
            acc = float(levels[c] + (rng.normal(0, 0.05) if rng.random() < 0.5 else 0.0))
            status = "ok" if rng.random() < 0.8 else "diverged"
            row = {"trial": t, "config_id": f"c{c}", "status": status,
                   "model": models[c % len(models)], "lr": 10.0 ** -(c + 1), "seed": seed,
                   "best_valid": acc if status == "ok" or rng.random() < 0.5 else None,
                   "best_epoch": 1, "epochs_done": 2, "train_s": 1.0,
                   "valid_1": acc, "valid_loss_1": 1 - acc, "valid_2": None,
                   "valid_loss_2": None}
            for e in at_epochs:
                if rng.random() < 0.1:
                    continue  # no spectrum (e.g. a non-finite state)
                lam = _spectrum(-0.8 if rng.random() < 0.4 else float(rng.normal(0, 0.3)))
                arrays[f"{t}_le{e}"] = lam
                row.update({f"le{e}_{f}": v for f, v in spectrum_features(lam).items()})
            rows.append(row)
    rows[0]["best_valid"] = rows[0]["best_valid"] if rows[0]["best_valid"] is not None else 0.5
    rows.append({**rows[-1], "trial": f"t{len(rows):03d}", "status": "failed"})
    write_files(root, rows, arrays, swept=swept, at_epochs=at_epochs,
                mode="max" if rng.random() < 0.7 else "min")


def test_study_never_raises_on_small_random_sweeps(tmp_path, monkeypatch):
    monkeypatch.setattr(study_cv, "FOREST_TREES", 4)
    rng = np.random.default_rng(1)
    for i in range(16):
        root = tmp_path / f"s{i}"
        _random_sweep(root, rng)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing reaches the caller as a raw warning
            s = run_study(root, folds=int(rng.integers(2, 6)), bootstrap=100, plots=i < 2,
                          repeats=2, models=("ridge", "forest") if i < 4 else ("ridge",))
        for a in s["auc"]:
            assert (a["auc"] is None) == (a["reason"] is not None), a
        for r in s["r2"]:
            assert r["r2"] is not None or r["reason"], r
        for e in s["spearman"]:
            assert (e["rho"] is None) == (e["reason"] is not None), e
        for e in s["cv"]["entries"]:  # scored, or a reason why not
            assert (e["reason"] is None) == bool(e["repeats"]), e
        assert all(isinstance(n, str) and n for n in s["notes"])
        assert json.loads((root / "study.json").read_text())["notes"] == s["notes"]
        assert (root / "study.md").read_text().startswith("# Study of")


def test_constant_features_are_reported_in_words_not_as_warnings(tmp_path, capsys, caplog):
    # num_pos after epoch 1 is 1 for one trial and 0 for the others (a bootstrap resample
    # often misses that trial); frac_pos, num_pos and entropy at epoch 0 are 0 for all
    acc = [0.2, 0.5, 0.45, 0.8, 0.22, 0.55, 0.6, 0.81]
    lmax1 = [-0.2] * 7 + [0.05]
    seeds_sweep(tmp_path, acc, [lm - 0.01 * a for lm, a in zip(lmax1, acc, strict=True)],
                lmax0=[-0.5 + 0.01 * i for i in range(8)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = run_study(tmp_path, bootstrap=200, plots=False, **QUICK)
    pooled = {(e["epoch"], e["feature"]): e for e in s["spearman"] if e["arch"] == "pooled"}
    for f in ("frac_pos", "num_pos", "ky_dim", "entropy"):
        e = pooled[(0, f)]
        assert e["rho"] is None and e["reason"] == "the feature is constant across these trials"
    e = pooled[(1, "num_pos")]
    assert e["rho"] is not None and 20 < e["undefined_resamples"] < 150
    assert e["ci_low"] is not None and e["ci_low"] <= e["ci_high"]
    notes = "\n".join(s["notes"])
    assert "constant across trials (all trials): frac_pos, num_pos, ky_dim, entropy at epoch 0; " \
           "the Spearman ρ of a constant feature is undefined" in notes
    assert "num_pos at epoch 1 (all trials: " in notes
    assert "Spearman ρ of a constant feature is undefined" in (tmp_path / "study.md").read_text()
    caplog.clear()
    assert main(["study", str(tmp_path), "--bootstrap", "200", *QUICK_CLI]) == 0
    out, err = capsys.readouterr()
    assert "note: constant across trials" in out
    for text in (out, err, caplog.text):
        assert "Warning" not in text and "py.warnings" not in text


def test_sweep_modules_import_the_package_at_the_top_only():
    """The study and pruning share sweep/readout.py: no module of sweep/ imports a module of the
    package inside a function (an import circle in disguise; the optional Ray adapter ``_tune``
    aside), and none registers a scheduler as a side effect of being imported."""
    import ast
    from pathlib import Path

    import lipschitz_rnn.sweep

    hidden, registered = [], []
    for path in sorted(Path(lipschitz_rnn.sweep.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            call = node.value if isinstance(node, ast.Expr) else None
            if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "register_scheduler":
                registered.append(path.name)
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for n in ast.walk(fn):
                names = [n.module] if getattr(n, "module", None) else [
                    a.name for a in getattr(n, "names", [])]
                if isinstance(n, ast.ImportFrom) and n.level > 0 and names != ["_tune"]:
                    hidden.append(f"{path.name}:{n.lineno} {'.' * n.level}{names}")
    assert hidden == [] and registered == []
    # every kind is in the static table, whatever was imported before
    from lipschitz_rnn.sweep.schedulers import _FACTORIES
    from lipschitz_rnn.sweep.spec import SCHEDULER_KINDS

    assert set(_FACTORIES) == set(SCHEDULER_KINDS)


def test_scores_read_integer_cells_as_numbers():
    """A trials.csv reader may give an integer cell as int (an accuracy of exactly 1): it is a
    metric like any other, not a missing one; a bool or a text is none."""
    from lipschitz_rnn.sweep.readout import number, scores, spectrum_vector

    rows = [{"best_valid": 1}, {"best_valid": 0.5}, {"best_valid": None}, {"best_valid": "nan?"}]
    np.testing.assert_array_equal(scores(rows, "max"), [1.0, 0.5, 0.5, 0.5])
    np.testing.assert_array_equal(scores(rows, "min"), [-1.0, -0.5, -1.0, -1.0])
    assert np.isnan(number(True)) and number(2) == 2.0
    record = {f"le1_{f}": i for i, f in enumerate(FEATURES)}
    np.testing.assert_array_equal(spectrum_vector(record, 1), np.arange(len(FEATURES)))
    assert spectrum_vector({**record, f"le1_{FEATURES[0]}": None}, 1) is None
