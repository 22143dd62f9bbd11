"""The scripts of the flossing experiment (docs/flossing.md): the sweep specifications that
experiments/flossing.sh, flossing_baselines.sh and flossing_k.sh write load and hold the
methods the doc's table lists, and experiments/flossing_report.py names, merges and tabulates trials."""

import importlib.util
import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from lipschitz_rnn.sweep.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"


def _report():
    spec = importlib.util.spec_from_file_location("flossing_report",
                                                  EXPERIMENTS / "flossing_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _specs(script: str, tmp_path: Path) -> dict[int, object]:
    """The script's sweep specifications, one per delay (its ``lipschitz-rnn sweep`` calls
    replaced by ``true``)."""
    env = {**os.environ, "OUT": str(tmp_path), "LRNN": "true"}
    subprocess.run(["bash", str(EXPERIMENTS / script)], env=env, check=True, timeout=60)
    return {int(p.stem.removeprefix("delay")): load_spec(p) for p in tmp_path.glob("delay*.toml")}


def _methods(spec) -> Counter:
    name = _report().method
    return Counter(name(t.config) for t in spec.trials)


def test_the_main_experiment_runs_seven_methods_with_three_seeds(tmp_path):
    specs = _specs("flossing.sh", tmp_path)
    assert sorted(specs) == [10, 20, 40, 80]
    for delay, spec in specs.items():
        assert _methods(spec) == Counter({m: 3 for m in _report().ORDER})
        assert {t.config.task_kwargs["delay"] for t in spec.trials} == {delay}
        assert {t.config.lr for t in spec.trials} == {1e-3}


def test_the_tuned_baselines_are_what_the_doc_lists(tmp_path):
    specs = _specs("flossing_baselines.sh", tmp_path)
    lipschitz = {"lipschitz (eps 0.3)", "lipschitz (eps 0.9)", "lipschitz (eps 0.9, lr 0.003)",
                 "lipschitz (eps 0.9) + flossing before"}
    others = {"rnn (lr 0.003)", "lstm (forget bias 1)", "lstm (forget bias 1, lr 0.003)",
              "gru (lr 0.003)"}
    assert sorted(specs) == [10, 20, 40, 80]
    for delay, spec in specs.items():
        expected = lipschitz if delay == 10 else lipschitz | others
        assert _methods(spec) == Counter({m: 3 for m in expected})
        assert {t.config.seed for t in spec.trials} == {0, 1, 2}
        # everything but the tuned settings is the main experiment's
        assert {(t.config.hidden_size, t.config.epochs, t.config.batch_size,
                 t.config.weight_decay, t.config.clip_grad_norm) for t in spec.trials} == {
            (64, 15, 16, 0.01, 1.0)}


def test_flossing_with_k_close_to_n_is_the_main_experiments_flossed_rnn(tmp_path):
    main = _specs("flossing.sh", tmp_path / "main")
    specs = _specs("flossing_k.sh", tmp_path / "k")
    assert sorted(specs) == [40, 80]
    flossed = ("rnn + flossing before", "rnn + flossing before and during")
    for delay, spec in specs.items():
        assert _methods(spec) == Counter({f"{m} (k 60)": 3 for m in flossed})
        # the same trials as the main experiment's flossed RNN but for k
        ours = sorted((t.config for t in spec.trials), key=lambda c: (c.flossing.every, c.seed))
        theirs = sorted((t.config for t in main[delay].trials
                         if _report().method(t.config) in flossed),
                        key=lambda c: (c.flossing.every, c.seed))
        assert [c.flossing.k for c in ours] == [60] * 6
        for a, b in zip(ours, theirs, strict=True):
            a.flossing.k = b.flossing.k
            a.description = b.description
            assert a == b


def _trial(tid, seed, acc):
    return {"trial": tid, "seed": seed, "test_accuracy": acc, "wall_s": 10.0,
            "flossing_s": 0.0, "train_s": 9.0, "phases": []}


def test_the_report_merges_recorded_trials_and_tabulates_ranges(tmp_path):
    report = _report()
    path = tmp_path / "flossing.json"
    path.write_text(json.dumps({"threshold": 0.95, "rows": [], "trials": {
        "rnn @ 20": [_trial("t000", 0, 1.0), _trial("t001", 1, 0.5), _trial("t002", 2, 0.96)],
        "lstm (forget bias 1) @ 20": [_trial("t003", 0, 0.9)]}}))
    cells = report.recorded(path, 0.95)
    assert [t["success"] for t in cells[("rnn", 20)]] == [True, False, True]
    rows = {r["method"]: r for r in report.summarise(cells)}
    assert rows["rnn"]["successes"] == 2 and rows["rnn"]["trials"] == 3
    assert rows["rnn"]["mean_test_accuracy"] == pytest.approx((1.0 + 0.5 + 0.96) / 3)
    text = report.table(list(rows.values()), 0.95)
    assert "| rnn | 2/3 (0.820; 0.500-1.000) |" in text
    assert "| lstm (forget bias 1) | 0/1 (0.900; 0.900-0.900) |" in text
    # the main experiment's methods first, each tuned variant after its unit's
    assert text.index("| rnn |") < text.index("| lstm (forget bias 1) |")
    assert report._rank("lstm (forget bias 1)") > report._rank("lstm")
    assert report._rank("lstm (forget bias 1)") < report._rank("gru")
