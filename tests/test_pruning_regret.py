"""Pruning judged by regret (issue 29): the rules replayed over random trial orders on tiny sweep
directories written in the sweep's own formats (trials.csv, sweep.json, trials/<id>/metrics.jsonl);
ASHA and the median rule are Ray Tune's own classes, fed the recorded curves."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from lipschitz_rnn.analysis import spectrum_features
from lipschitz_rnn.sweep.pruning import (
    RegretSettings,
    asha_rungs,
    load_curves,
    regret_curve,
    regret_markdown,
    replay_regret,
    stops_in_order,
)

K = 12


def _row(t, cid, final, curve, lmax1, seconds, *, metric_min=False):
    row = {"trial": t, "config_id": cid, "status": "ok", "model": "rnn", "seed": 0,
           "best_valid": final, "best_epoch": len(curve), "epochs_done": len(curve),
           "train_s": 999.0}  # metrics.jsonl holds the seconds per epoch
    for e, v in enumerate(curve, 1):
        row[f"valid_{e}"], row[f"valid_loss_{e}"] = v, 1.0 - v
    for e, lm in ((0, -0.5), (1, lmax1)):
        feats = spectrum_features(lm - 0.15 * np.arange(K))
        row.update({f"le{e}_{f}": v for f, v in feats.items()})
    return row


def write_sweep(root, finals, curves, lmax1, seconds, *, mode="max", groups=None):
    """trials.csv, sweep.json and each trial's metrics.jsonl as a sweep writes them."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (final, curve, lm, sec) in enumerate(zip(finals, curves, lmax1, seconds, strict=True)):
        t = f"t{i:03d}"
        cid = f"c{groups[i] if groups is not None else i:03d}"
        rows.append(_row(t, cid, final, curve, lm, sec))
        d = root / "trials" / t
        d.mkdir(parents=True)
        d.joinpath("metrics.jsonl").write_text("".join(
            json.dumps({"epoch": e, "seconds": sec}) + "\n" for e in range(1, len(curve) + 1)))
    cols = list(dict.fromkeys(c for r in rows for c in r))
    with (root / "trials.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    (root / "sweep.json").write_text(json.dumps({
        "metric": {"name": "accuracy" if mode == "max" else "loss", "mode": mode},
        "swept_keys": ["model", "seed"], "max_epochs": len(curves[0]),
        "lyapunov": {"at_epochs": [0, 1]}}))
    return rows


def linear_sweep(root, *, n=24, epochs=4, slope=0.5, mode="max", seed=0):
    """Final metric = 0.5 + slope * lambda_max(epoch 1) (+ noise), curves rising to it; for
    ``mode="min"`` the metric is a loss, 1 - that. Two seeds per configuration."""
    rng = np.random.default_rng(seed)
    lm = np.repeat(rng.uniform(-0.3, 0.3, n // 2), 2) + rng.normal(0, 0.005, n)
    acc = 0.5 + slope * lm + rng.normal(0, 0.002, n)
    ramp = np.linspace(0.7, 1.0, epochs)
    finals = acc if mode == "max" else 1.0 - acc
    curves = [a * ramp if mode == "max" else 1.0 - a * ramp for a in acc]
    write_sweep(root, finals, curves, lm, 1.0 + rng.uniform(0, 1, n), mode=mode,
                groups=np.arange(n) // 2)
    return acc


def test_no_pruning_has_zero_regret_at_full_compute(tmp_path):
    acc = linear_sweep(tmp_path)
    r = replay_regret(tmp_path, orders=6, rules=("none",))
    none = r["rules"]["none"]
    assert none["final_regret"] == {"median": 0.0, "ci95": [0.0, 0.0], "p_zero": 1.0}
    assert none["compute_frac_seconds"]["median"] == pytest.approx(1.0)
    assert none["stopped"]["median"] == 0 and r["seconds_source"] == "metrics.jsonl"
    for axis in ("seconds", "epochs"):
        c = np.array(none[f"regret_vs_{axis}"]["median"])
        assert c[0] == pytest.approx(acc.max() - acc.min())  # nothing finished yet
        assert (np.diff(c) <= 1e-12).all() and c[-1] == 0
    assert "| none | 100% [100%, 100%] | 0 |" in regret_markdown(r)
    # without the trials' metrics.jsonl, each epoch costs train_s / epochs_done
    for f in tmp_path.glob("trials/*/metrics.jsonl"):
        f.unlink()
    c = load_curves(tmp_path)
    assert c.seconds_source == "train_s / epochs_done" and (c.secs == 999.0 / 4).all()


def test_a_rule_that_stops_the_best_trial_pays_the_gap_to_the_second(tmp_path):
    # the best trial is a late bloomer: last at epochs 1 and 2, first at the end
    ramp = np.linspace(0.5, 0.8, 8)
    finals = [0.80, 0.78, 0.76, 0.74, 0.72, 0.70, 0.95]
    curves = [f * ramp / 0.8 for f in finals[:-1]] + [[0.1, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.95]]
    write_sweep(tmp_path, finals, curves, np.zeros(7), [1.0, 1, 1, 1, 1, 1, 3])
    c = load_curves(tmp_path)
    order = np.arange(7)  # the best comes last
    s = RegretSettings(decision_epoch=1, reduction_factor=2)
    stops = stops_in_order(c, order, [None] * 7, s, np.random.default_rng(0), ("none", "asha"))
    assert stops["asha"][6] == 1  # below the rung's median at epoch 1: stopped there
    budgets = np.linspace(0, 1, 101)
    secs, _ = c.cost(stops["asha"])
    assert secs[6] == 3.0  # one epoch of 3 s (metrics.jsonl, not train_s)
    total = c.cost(stops["none"])[0].sum()
    assert total == 6 * 8 + 3 * 8
    reg = regret_curve(c, order, stops["asha"], secs, total, budgets)
    assert reg[-1] == pytest.approx(0.95 - 0.80)
    ref = regret_curve(c, order, stops["none"], c.cost(stops["none"])[0], total, budgets)
    assert ref[-1] == 0 and ref[50] == pytest.approx(0.95 - 0.80)


def test_asha_replay_decides_at_its_rungs_only(tmp_path):
    # rf 2, grace 1, 8 epochs: rungs at 1, 2, 4; a trial in the bottom half at a rung stops there,
    # one that is bad only at epoch 3 (no rung) runs on
    assert asha_rungs(8, 1, 2) == [1, 2, 4] and asha_rungs(8, 1, 4) == [1, 4]
    ref = [[0.5 + 0.05 * e + 0.01 * j for e in range(1, 9)] for j in range(8)]
    top = [v + 0.2 for v in ref[-1]]
    bad_at = {e: [0.0 if k == e else v for k, v in enumerate(top, 1)] for e in (1, 2, 3, 4)}
    curves = ref + [bad_at[1], bad_at[2], bad_at[3], bad_at[4]]
    finals = [max(cv) for cv in curves]
    write_sweep(tmp_path, finals, curves, np.zeros(12), np.ones(12))
    c = load_curves(tmp_path)
    s = RegretSettings(decision_epoch=1, reduction_factor=2)
    stop = stops_in_order(c, np.arange(12), [None] * 12, s, np.random.default_rng(0),
                          ("asha",))["asha"]
    assert stop[8:].tolist() == [1, 2, 8, 4]
    assert (stop[:8] == 8).all()  # each reference trial beats every one before it
    state = np.random.get_state()
    stops_in_order(c, np.arange(12), [None] * 12, s, np.random.default_rng(0), ("asha",))
    assert np.random.get_state()[1].tolist() == state[1].tolist()  # global generator untouched


def test_the_predictor_comes_from_the_other_sweep_not_this_one(tmp_path):
    # sweep A: a loss that grows with lambda_max (the spectrum says: large is bad); sweep B: an
    # accuracy that grows with it. A's predictor stops B's best trials; one fitted on B would not.
    linear_sweep(tmp_path / "A", mode="min", slope=-0.5, seed=1)
    linear_sweep(tmp_path / "B", slope=0.5, seed=2)
    far = replay_regret(tmp_path / "B", orders=8, predictor_from_dir=tmp_path / "A",
                        rules=("lyapunov",))
    near = replay_regret(tmp_path / "B", orders=8, rules=("lyapunov",))
    assert far["predictor"]["source"] == "other sweep" and far["predictor"]["n_trials"] == 24
    assert far["predictor"]["from"] == str(tmp_path / "A")
    assert near["predictor"]["source"] == "cross-fitted"
    assert near["rules"]["lyapunov"]["final_regret"]["p_zero"] == 1.0
    assert far["rules"]["lyapunov"]["final_regret"]["p_zero"] <= 0.25
    assert far["rules"]["lyapunov"]["final_regret"]["median"] > 0.02
    write_sweep(tmp_path / "C", [0.5, 0.6], [[0.4, 0.5], [0.5, 0.6]], [0.0, 0.1], [1.0, 1.0])
    with pytest.raises(ValueError, match="predictor_from"):  # 2 trials cannot fit it
        replay_regret(tmp_path / "B", orders=2, predictor_from_dir=tmp_path / "C")


def test_orders_are_reproducible_and_differ_by_seed(tmp_path):
    linear_sweep(tmp_path, n=30)
    a = replay_regret(tmp_path, orders=5, seed=3, rules=("none", "lyapunov", "random"))
    b = replay_regret(tmp_path, orders=5, seed=3, rules=("none", "lyapunov", "random"))
    c = replay_regret(tmp_path, orders=5, seed=4, rules=("none", "lyapunov", "random"))
    assert a == b
    assert a["rules"]["none"]["regret_vs_epochs"] != c["rules"]["none"]["regret_vs_epochs"]
    # random pruning stops as many trials as the spectrum rule, at the same epoch
    assert a["rules"]["random"]["stopped"] == a["rules"]["lyapunov"]["stopped"]
    with pytest.raises(ValueError, match="orders"):
        replay_regret(tmp_path, orders=0)
    with pytest.raises(ValueError, match="rules"):
        replay_regret(tmp_path, orders=1, rules=("sometimes",))


def test_study_replay_writes_the_regret_files(tmp_path, capsys):
    from lipschitz_rnn.cli import main

    linear_sweep(tmp_path / "A", mode="min", slope=-0.5, seed=1)
    linear_sweep(tmp_path / "B", seed=2)
    assert main(["study", str(tmp_path / "B"), "--bootstrap", "100", "--replay", "--orders", "3",
                 "--predictor-from", str(tmp_path / "A")]) == 0
    rp = json.loads((tmp_path / "B" / "pruning.json").read_text())
    assert set(rp["rules"]) == {"lyapunov", "asha", "random", "none"}  # the one-order replay
    reg = rp["regret"]
    assert reg["orders"] == 3 and reg["predictor"]["from"] == str(tmp_path / "A")
    assert list(reg["rules"]) == ["none", "lyapunov", "asha", "median", "random"]
    assert (tmp_path / "B" / "pruning_regret.png").stat().st_size > 1000
    md = (tmp_path / "B" / "pruning.md").read_text()
    assert "| asha |" in md and "fitted on" in md
    assert "| median |" in capsys.readouterr().out
