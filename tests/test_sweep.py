"""Sweeps on Ray Tune (lipschitz_rnn.sweep): tiny adding-task trials through a local Ray, resume after
the driver is killed, divergence, bad specs, init_scale."""

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch

from lipschitz_rnn.analysis import spectrum_features
from lipschitz_rnn.cli import main
from lipschitz_rnn.models import build
from lipschitz_rnn.runs.rundir import evaluate_run, load_run
from lipschitz_rnn.sweep import load_spec, run_sweep
from lipschitz_rnn.sweep.schedulers import SchedulerContext, make_scheduler
from lipschitz_rnn.sweep.spec import SchedulerSpec
from lipschitz_rnn.sweep.trial import EXIT_AFTER_LAST_EPOCH, is_done, run_trial

SRC = str(Path(__file__).resolve().parents[1] / "src")


def tiny_spec(**tables):
    """Four trials of a 4-unit Lipschitz RNN on a small adding task (no data files, no
    scikit-learn import in the workers), 2 epochs of 3 batches; the learning rate is multiplied
    by ``lr_decay_factor`` at epoch 2, so 1e12 diverges there."""
    spec = {
        "task": "adding",
        "model": "lipschitz",
        "set": {"hidden_size": 4, "epochs": 2, "batch_size": 32, "max_batches": 3,
                "eval_batch_size": 512, "device": "cpu", "lr_decay_epochs": [2],
                "task": {"length": 10, "n_train": 200, "n_valid": 100, "n_test": 100}},
        "grid": {"model.init_scale": [0.5, 2.0], "lr_decay_factor": [1.0, 1e12]},
        "lyapunov": {"at_epochs": [0, 1, 2], "k": 4, "batch": 4},
    }
    spec.update(tables)
    return spec


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray for the module (2 CPUs, no dashboard, no network); its address lets a
    subprocess driver attach to it."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.setenv("OMP_NUM_THREADS", "1")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


# ------------------------------------------------------------------------------------------
# end to end through Ray: started by the CLI, its driver killed, resumed through the API
# ------------------------------------------------------------------------------------------
def _start_and_kill(spec_path, out, address):
    """``lipschitz-rnn sweep`` in a subprocess attached to ``address``, SIGKILLed as soon as
    its first trial has an outcome; returns the trials that had one."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lipschitz_rnn", "sweep", str(spec_path), "--out", str(out),
         "--address", address, "--max-concurrent", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("trials/*/trial.json")):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    return sorted(p.parent.name for p in out.glob("trials/*/trial.json"))


def _snapshot(out, trials):
    """Modification times and bytes of the files of finished trials."""
    snap = {}
    for t in trials:
        for name in ("metrics.jsonl", "trial.json", "probe_spectra.npz", "results.json"):
            p = out / "trials" / t / name
            if p.is_file():
                snap[f"{t}/{name}"] = (p.stat().st_mtime_ns, p.read_bytes())
    return snap


def test_sweep_end_to_end_killed_resumed_with_diverging_trials(ray_address, tmp_path):
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(tomli_w.dumps(tiny_spec()))
    out = tmp_path / "sweep"
    done = _start_and_kill(spec_path, out, ray_address)
    assert 1 <= len(done) < 4
    assert not (out / "trials.csv").exists()  # the driver died before gathering
    before = _snapshot(out, done)

    seen = []
    res = run_sweep(None, out, resume=True, max_concurrent=2,
                    progress=lambda p: seen.append((p.done, dict(p.counts))))
    assert res["counts"] == {"ok": 2, "diverged": 2}
    assert seen[-1] == (4, {"ok": 2, "diverged": 2})
    assert _snapshot(out, done) == before  # finished trials were not run again
    meta = json.loads((out / "sweep.json").read_text())
    assert [s["resume"] for s in meta["sessions"]] == [False, True]
    assert meta["sessions"][1]["trials_run"] == 4 - len(done)
    assert meta["sessions"][1]["wall_s"] > 0
    assert meta["metric"] == {"name": "mse", "mode": "min"}
    assert meta["swept_keys"] == ["model.init_scale", "lr_decay_factor"]
    assert meta["versions"]["ray"] and meta["versions"]["torch"]
    assert meta["counts"] == {"ok": 2, "diverged": 2} and meta["complete"]

    rows = read_csv(out / "trials.csv")
    assert [r["trial"] for r in rows] == ["t000", "t001", "t002", "t003"]
    by = {r["trial"]: r for r in rows}
    # the grid in spec order, the last key fastest
    assert [(r["model.init_scale"], r["lr_decay_factor"]) for r in rows] == [
        ("0.5", "1.0"), ("0.5", "1000000000000.0"), ("2.0", "1.0"), ("2.0", "1000000000000.0")]
    assert len({r["config_id"] for r in rows}) == 4
    for tid in ("t001", "t003"):  # diverged in epoch 2: status, last metrics, the error
        r = by[tid]
        assert r["status"] == "diverged" and r["epochs_done"] == "1"
        assert r["valid_1"] != "" and r["valid_2"] == "" and r["best_epoch"] == "1"
        assert "non-finite loss" in r["error"] and "epoch 2" in r["error"]
        assert r["le1_max"] != "" and r["le2_max"] == ""
        status = json.loads((out / "trials" / tid / "trial.json").read_text())
        assert status["status"] == "diverged" and status["last"]["epoch"] == 1
    for tid in ("t000", "t002"):
        r = by[tid]
        assert r["status"] == "ok" and r["epochs_done"] == "2" and r["error"] == ""
        run = out / "trials" / tid
        results = json.loads((run / "results.json").read_text())
        assert float(r["test"]) == pytest.approx(results["test"]["mse"])
        # an ordinary run directory: evaluate reproduces its test metric
        assert evaluate_run(run)["mse"] == pytest.approx(results["test"]["mse"], rel=1e-6)
        assert float(r["best_valid"]) == pytest.approx(results["best_valid"]["mse"])

    # spectra: the batch mean and every probe sequence; features computed from them
    with np.load(out / "spectra.npz") as z:
        npz = {k: z[k] for k in z.files}
    assert npz["t000_le2"].shape == (4,) and npz["t000_le2_batch"].shape == (4, 4)
    np.testing.assert_allclose(npz["t000_le1"], npz["t000_le1_batch"].mean(0))
    feats = spectrum_features(npz["t002_le1"])
    for f in ("max", "mean", "top10_mean", "frac_pos", "ky_dim", "entropy"):
        assert float(by["t002"][f"le1_{f}"]) == pytest.approx(feats[f])
    assert "t001_le2" not in npz
    # one probe for every trial: equal initial weights give equal spectra at epoch 0
    np.testing.assert_array_equal(npz["t000_le0"], npz["t001_le0"])
    assert not np.array_equal(npz["t000_le0"], npz["t002_le0"])
    probe = torch.load(out / "probe.pt", weights_only=True)
    assert probe["inputs"].shape == (10, 4, 2)  # adding: T=10, batch 4, (value, marker)
    # model.init_scale is the Lipschitz cell's init_std
    _, _, model = load_run(out / "trials" / "t002")
    assert model.rnn.cells[0].init_std == 2.0


def test_trial_killed_before_its_results_is_finished_on_resume(ray_address, tmp_path,
                                                                monkeypatch):
    """The process of the best trial dies right after its last epoch's checkpoint and metrics,
    before its last spectrum and results.json. The resumed sweep finishes it, and the summary,
    trials.csv and sweep.json name it as the best trial. The resume runs through the CLI with a
    local Ray of its own: none of Ray's log lines reach the terminal."""
    spec = {"task": "digits", "model": "gru",
            "set": {"hidden_size": 16, "epochs": 2, "batch_size": 64, "max_batches": 5,
                    "eval_batch_size": 512, "device": "cpu"},
            "grid": {"lr": [1e-5, 0.05]},  # t001 learns, t000 barely moves
            "lyapunov": {"at_epochs": [0, 2], "k": 2, "batch": 2}}
    out = tmp_path / "sweep"
    monkeypatch.setenv(EXIT_AFTER_LAST_EPOCH, "t001")
    first = run_sweep(spec, out, max_concurrent=1)
    tdir = out / "trials" / "t001"
    assert first["counts"] == {"ok": 1, "failed": 1} and first["best_trial"] == "t000"
    assert not (tdir / "results.json").exists()
    metrics = (tdir / "metrics.jsonl").read_text()
    best = max(json.loads(ln)["valid_accuracy"] for ln in metrics.splitlines())
    assert [json.loads(ln)["epoch"] for ln in metrics.splitlines()] == [1, 2]
    monkeypatch.delenv(EXIT_AFTER_LAST_EPOCH)

    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "lipschitz_rnn", "sweep", "--resume", "--out", str(out),
         "--num-cpus", "1"], env=env, capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert f"2 ok; best valid accuracy {best:.4g} (t001)" in text
    assert "Token authentication" not in text and "WARNING" not in text, text
    if "RAY_AUTH_MODE" not in env:  # Ray's notice of a new local cluster, kept in its log
        assert "Token authentication" in (out / "ray" / "driver.log").read_text()
    # finished from its checkpoint, not trained again
    assert (tdir / "metrics.jsonl").read_text() == metrics
    results = json.loads((tdir / "results.json").read_text())
    assert results["best_valid"]["accuracy"] == best
    rows = {r["trial"]: r for r in read_csv(out / "trials.csv")}
    assert rows["t001"]["status"] == "ok" and float(rows["t001"]["best_valid"]) == best
    assert rows["t001"]["le2_max"] != "" and float(rows["t000"]["best_valid"]) < best
    assert json.loads((out / "sweep.json").read_text())["best"] == {"trial": "t001",
                                                                   "best_valid": best}
    with np.load(out / "spectra.npz") as z:
        assert z["t001_le2"].shape == (2,)


# ------------------------------------------------------------------------------------------
# no Ray needed
# ------------------------------------------------------------------------------------------
BAD_SPECS = [
    ({"bogus": 1}, ValueError, "bogus"),
    ({"grid": {"lr": [0.1], "learning_rate": [0.1]}}, ValueError, "learning_rate"),
    ({"set": {"hidden_size": 4, "epoch": 2}}, ValueError, "[set] epoch"),
    ({"grid": {"lr": []}}, ValueError, "[grid] lr"),
    ({"grid": {}}, ValueError, "[grid]"),
    ({"grid": {"lr": ["fast"]}}, TypeError, "[grid] lr"),
    ({"grid": {"lr": 0.1}}, TypeError, "[grid] lr"),
    ({"set": {"epochs": 1.5}}, TypeError, "[set] epochs"),
    ({"lyapunov": {"at_epochs": [0, 5]}}, ValueError, "at_epochs"),
    ({"lyapunov": {"at_epochs": [0], "kk": 3}}, ValueError, "[lyapunov] kk"),
    ({"lyapunov": {"at_epochs": [0], "k": 99}}, ValueError, "[lyapunov]"),
    ({"sample": {"n": 2, "lr": {"gaussian": [0, 1]}}}, TypeError, "[sample] lr"),
    ({"sample": {"n": 2, "hidden_size": {"uniform": [2, 8]}}}, TypeError, "[sample] hidden_size"),
    ({"sample": {"lr": {"uniform": [0.1, 0.2]}}}, ValueError, "[sample] n"),
    ({"scheduler": {"kind": "hyperband"}}, ValueError, "[scheduler] kind"),
    ({"scheduler": {"kind": "asha", "grace": 1}}, ValueError, "[scheduler] grace"),
    ({"grid": {"model.init_scael": [0.1]}}, TypeError, "init_scael"),
    ({"grid": {"task.length": [10]}}, ValueError, "task.length"),
]


@pytest.mark.parametrize("change,exc,needle", BAD_SPECS, ids=[b[2] for b in BAD_SPECS])
def test_bad_spec_is_refused_naming_the_key_and_writes_nothing(tmp_path, change, exc, needle):
    spec = {"task": "digits", "model": "lipschitz", "set": {"hidden_size": 4, "epochs": 2},
            "grid": {"lr": [0.01]}}
    for k, v in change.items():
        if k in spec and isinstance(v, dict) and k != "grid":
            spec[k] = {**spec[k], **v}
        else:
            spec[k] = v
    out = tmp_path / "out"
    with pytest.raises(exc) as e:
        run_sweep(spec, out)
    assert needle in str(e.value)
    assert not out.exists()


def test_cli_bad_spec_exit_2_and_nothing_written(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text('task = "digits"\nmodel = "lstm"\n[grid]\nlr = []\n')
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out)]) == 2
    assert "[grid] lr" in capsys.readouterr().out
    assert not out.exists()


def test_missing_ray_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ImportError, match=r"lipschitz-rnn\[sweep\]"):
        run_sweep(tiny_spec(), tmp_path / "out")
    spec = tmp_path / "s.toml"
    spec.write_text('task = "digits"\nmodel = "lstm"\n[grid]\nlr = [0.1]\n')
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 2
    assert "lipschitz-rnn[sweep]" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_refuses_an_existing_directory_without_resume(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    with pytest.raises(ValueError, match="--resume"):
        run_sweep(tiny_spec(), tmp_path / "out")


def test_grid_times_sample_and_config_ids():
    spec = load_spec({
        "task": "digits", "model": "lstm", "set": {"hidden_size": 4},
        "grid": {"seed": [0, 1]},
        "sample": {"n": 3, "seed": 7, "lr": {"loguniform": [1e-4, 1e-2]},
                   "model.init_scale": {"uniform": [0.1, 1.0]},
                   "model": {"choice": ["lstm", "gru"]}},
    })
    assert [t.id for t in spec.trials] == [f"t{i:03d}" for i in range(6)]
    assert spec.swept_keys == ["seed", "lr", "model.init_scale", "model"]
    first, second = spec.trials[:3], spec.trials[3:]
    # the same sampled points for every seed: seeds repeat a configuration
    assert [t.params["lr"] for t in first] == [t.params["lr"] for t in second]
    assert [t.config_id for t in first] == [t.config_id for t in second]
    assert len({t.config_id for t in first}) == 3
    for t in spec.trials:
        assert 1e-4 <= t.config.lr <= 1e-2 and 0.1 <= t.params["model.init_scale"] <= 1.0
        assert t.config.model_kwargs["init_scale"] == t.params["model.init_scale"]
        assert t.config.model in ("lstm", "gru")
    again = load_spec(spec.raw)  # deterministic draws
    assert [t.params for t in again.trials] == [t.params for t in spec.trials]


def test_toml_spec_with_tables(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text(
        'preset = "digits-lipschitz"\n[set]\nepochs = 3\n[set.model]\neps = 0.1\n'
        '[grid]\n"model.init_scale" = [0.5, 1.0]\n[lyapunov]\nat_epochs = [0, 3]\n'
        '[scheduler]\nkind = "lyapunov"\nafter_epoch = 1\nfraction = 0.5\n'
    )
    spec = load_spec(p)
    assert [t.config.model_kwargs["eps"] for t in spec.trials] == [0.1, 0.1]
    assert spec.lyapunov.at_epochs == (0, 3)
    # options of the spectrum-guided scheduler pass through unchecked
    assert spec.scheduler == SchedulerSpec("lyapunov", {"after_epoch": 1, "fraction": 0.5})


def test_asha_scheduler_on_the_validation_metric(tmp_path):
    pytest.importorskip("ray")
    sched, stopper = make_scheduler(SchedulerContext(
        SchedulerSpec("asha", {"grace_period": 2, "reduction_factor": 3}), "min", 9, (0,), tmp_path
    ))
    assert stopper is None
    assert sched._time_attr == "epoch" and sched._metric == "valid_metric"
    assert sched._max_t == 9 and sched._metric_op == -1.0
    assert make_scheduler(SchedulerContext(SchedulerSpec(), "max", 2, (), tmp_path)) == (None, None)
    # spectrum-guided pruning (sweep/pruning.py) is a Stopper deciding at an LE epoch after 0
    sched, stopper = make_scheduler(
        SchedulerContext(SchedulerSpec("lyapunov"), "max", 2, (0, 1), tmp_path))
    assert sched is None and type(stopper).__name__ == "LyapunovStopper"
    with pytest.raises(ValueError, match="decision_epoch"):
        make_scheduler(SchedulerContext(SchedulerSpec("lyapunov"), "max", 2, (0,), tmp_path))


def test_trials_log_to_tensorboard_when_the_spec_asks(tmp_path):
    pytest.importorskip("tensorboard")
    spec = tiny_spec(grid={"lr_decay_factor": [1.0]})
    spec["set"]["tensorboard"] = True
    t = load_spec(spec).trials[0]
    outcome = run_trial(tmp_path, t.id, t.config, load_spec(spec).lyapunov, torch.randn(10, 2, 2),
                        report=lambda r: None)
    assert outcome["status"] == "ok"
    assert list((tmp_path / "trials" / t.id / "tb").glob("events.out.tfevents.*"))


def test_run_trial_reports_each_epoch_with_spectrum_features(tmp_path):
    spec = load_spec(tiny_spec(grid={"lr_decay_factor": [1.0]}))
    t = spec.trials[0]
    inputs = torch.randn(10, 2, 2)
    reports = []
    outcome = run_trial(tmp_path, t.id, t.config, spec.lyapunov, inputs, report=reports.append)
    assert outcome["status"] == "ok" and outcome["epochs_done"] == 2
    assert [r["epoch"] for r in reports] == [1, 2]
    assert {"valid_metric", "valid_loss", "train_loss", "le0_max", "le1_ky_dim"} <= set(reports[0])
    assert "le2_max" not in reports[0] and "le2_max" in reports[1]
    assert reports[1]["valid_metric"] == outcome["last"]["valid_mse"]

    # killed after the last checkpoint, before the spectrum and results: the next attempt
    # continues the run and computes the missing spectrum from the restored model
    tdir = tmp_path / "trials" / t.id
    with np.load(tdir / "probe_spectra.npz") as z:
        spectra = {k: z[k] for k in z.files}
    np.savez(tdir / "probe_spectra.npz", le0=spectra["le0"], le1=spectra["le1"])
    assert is_done(tdir)
    (tdir / "results.json").unlink()
    assert not is_done(tdir)  # "ok" without its final files: finished on resume
    (tdir / "trial.json").unlink()
    again_reports = []
    again = run_trial(tmp_path, t.id, t.config, spec.lyapunov, inputs,
                      report=again_reports.append)
    assert again["status"] == "ok" and again["resumed"] and is_done(tdir)
    with np.load(tdir / "probe_spectra.npz") as z:
        np.testing.assert_allclose(z["le2"], spectra["le2"])
        np.testing.assert_array_equal(z["le0"], spectra["le0"])
    # no epoch ran, yet the scheduler gets the last epoch's report, with the new spectrum
    assert len(again_reports) == 1 and again_reports[0]["epoch"] == 2
    assert again_reports[0]["valid_metric"] == reports[1]["valid_metric"]
    assert again_reports[0]["le2_max"] == pytest.approx(reports[1]["le2_max"])


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru", "odernn", "antisymmetric", "cornn",
                                  "exprnn"])
def test_init_scale_draws_every_weight_uniformly(name):
    p = 0.05
    layer = build(name, 3, 16, num_layers=2 if name in ("lstm", "odernn") else 1, init_scale=p)
    weights = {k: w for k, w in layer.named_parameters()
               if k.rsplit(".", 1)[-1].startswith("weight_") or k.endswith("log_hh")}
    assert weights
    for k, w in weights.items():
        w = w.detach()
        assert float(w.abs().max()) <= p, k
        assert float(w.abs().max()) > 0.8 * p, k  # spread over the box, not a smaller init


def test_init_scale_of_lipschitz_irnn_and_biases():
    assert build("lipschitz", 3, 8, init_scale=0.7).cells[0].init_std == 0.7
    with pytest.raises(ValueError, match="init_scale or init_std"):
        build("lipschitz", 3, 8, init_scale=0.7, init_std=0.1)
    irnn = build("irnn", 3, 4, init_scale=0.5)
    torch.testing.assert_close(irnn.weight_hh_l0.detach(), 0.5 * torch.eye(4))
    lstm = build("lstm", 3, 4, init_scale=0.01, forget_bias=1.0)
    assert float(lstm.bias_ih_l0.detach()[4:8].min()) == 1.0  # biases keep their initialisation
    with pytest.raises(ValueError, match="init_scale"):
        build("gru", 3, 4, init_scale=-1.0)
