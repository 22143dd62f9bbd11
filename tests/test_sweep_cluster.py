"""Sweeps on a real Ray cluster with nothing shared but the network (issue 30).

The cluster is made on this machine as a user makes one (tests/ray_cluster.py): ``ray start
--head`` without CPUs and with token authentication, and worker nodes joined with ``ray start
--address``, each in a mount namespace of its own with an empty tmpfs over the sweep's output
root, so that the trials cannot see the driver's files. The driver is the CLI in a subprocess.
Skipped where the machine cannot make it (not Linux, not root, no ``unshare``). The first tests
need no cluster: the shipping of run directories, the storage's checkpoints, the exit status.
"""

import csv
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from formats import write_mnist
from ray_cluster import LocalCluster, why_no_cluster

from lipschitz_rnn.cli import EXIT_CODES, main
from lipschitz_rnn.runs.rundir import evaluate_run
from lipschitz_rnn.sweep import load_spec
from lipschitz_rnn.sweep.trial import RunShipper, receive_run_files, run_trial

SRC = str(Path(__file__).resolve().parents[1] / "src")

WHY = ("Ray Tune is not installed (pip install 'lipschitz-rnn[sweep]')"
       if importlib.util.find_spec("ray") is None else why_no_cluster())
needs_cluster = pytest.mark.skipif(WHY is not None, reason=WHY or "")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def epochs_of(trial_dir):
    return [json.loads(ln)["epoch"] for ln in (trial_dir / "metrics.jsonl").read_text().splitlines()]


def digits_spec(epochs=2, at_epochs=(0, 2)):
    """Four tiny GRU trials on the digits task (bundled with scikit-learn: no data files)."""
    return {"task": "digits", "model": "gru",
            "set": {"hidden_size": 8, "epochs": epochs, "batch_size": 64, "max_batches": 3,
                    "eval_batch_size": 512, "device": "cpu"},
            "grid": {"lr": [0.01, 0.05], "seed": [0, 1]},
            "lyapunov": {"at_epochs": list(at_epochs), "k": 2, "batch": 2}}


# ------------------------------------------------------------------------------------------
# no cluster needed
# ------------------------------------------------------------------------------------------
def _tiny_trial():
    spec = load_spec({"task": "adding", "model": "lipschitz",
                      "set": {"hidden_size": 4, "epochs": 2, "batch_size": 32, "max_batches": 2,
                              "device": "cpu",
                              "task": {"length": 10, "n_train": 100, "n_valid": 50,
                                       "n_test": 50}},
                      "grid": {"lr": [0.01]}, "lyapunov": {"at_epochs": [0, 2], "k": 4,
                                                           "batch": 2}})
    t = spec.trials[0]
    return spec, t


def test_a_shipped_run_directory_is_the_trials_own(tmp_path):
    """What a trial on another node ships with its reports rebuilds its run directory on the
    driver: every file but the resumable checkpoint, trial.json last, checksums recorded; a
    later attempt's first payload removes what the earlier one left."""
    spec, t = _tiny_trial()
    node = tmp_path / "node"
    driver = tmp_path / "driver" / "trials" / t.id
    tdir = node / "trials" / t.id
    shipper = RunShipper(tdir)
    assert shipper.payload() is None  # nothing yet
    seen = []

    def report(metrics):
        payload = shipper.payload()
        seen.append(sorted(payload["files"]))
        receive_run_files(driver, payload)

    outcome = run_trial(node, t.id, t.config, spec.lyapunov, torch.randn(10, 2, 2),
                        report=report, node={"id": "n1", "hostname": "h"})
    assert shipper.payload() is None  # the last report carried the outcome
    assert outcome["status"] == "ok" and outcome["node"] == {"id": "n1", "hostname": "h"}
    assert "config.toml" in seen[0] and "trial.json" not in seen[0]
    assert "trial.json" in seen[-1] and "results.json" in seen[-1]
    assert "config.toml" not in seen[-1]  # unchanged files travel once
    shipped = {p.relative_to(tdir).as_posix() for p in tdir.rglob("*") if p.is_file()}
    kept = {p.relative_to(driver).as_posix() for p in driver.rglob("*") if p.is_file()}
    assert kept == {p for p in shipped if not p.startswith("checkpoints/last")
                    and ".prev." not in p}
    assert "checkpoints/best.pt" in kept and "checkpoints/last.pt" in shipped
    for rel in kept:
        assert (driver / rel).read_bytes() == (tdir / rel).read_bytes(), rel
    # an ordinary run directory: evaluate reproduces the trial's test metric
    results = json.loads((driver / "results.json").read_text())
    assert evaluate_run(driver)["mse"] == pytest.approx(results["test"]["mse"], rel=1e-6)

    # a second attempt from scratch: its first payload removes the earlier outcome at once
    again = RunShipper(tmp_path / "other" / "trials" / t.id)
    (again.dir / "checkpoints").mkdir(parents=True)
    (again.dir / "config.toml").write_text((tdir / "config.toml").read_text())
    receive_run_files(driver, again.payload())
    assert sorted(p.name for p in driver.rglob("*") if p.is_file()) == ["config.toml"]

    with pytest.raises(ValueError, match="relative path"):
        receive_run_files(driver, {"files": {"../escape": b"x"}, "manifest": []})
    assert not (driver.parent / "escape").exists()


def test_latest_complete_checkpoint_of_each_trial_in_the_storage(tmp_path):
    """A resumed sweep continues each trial from its newest complete checkpoint among the
    sessions; one whose upload was cut short (a file missing, or shorter than its manifest says,
    or no manifest: it is written last) is passed over."""
    pytest.importorskip("ray.tune")
    from lipschitz_rnn.sweep._tune import CHECKPOINT_MANIFEST, latest_checkpoints, write_manifest

    def checkpoint(rel, cut=None):
        d = tmp_path / rel
        (d / "checkpoints").mkdir(parents=True)
        (d / "config.toml").write_text("epochs = 3\n")
        (d / "checkpoints" / "last.pt").write_bytes(bytes(100))
        write_manifest(d)
        if cut == "missing":
            (d / "checkpoints" / "last.pt").unlink()
        elif cut == "short":
            (d / "checkpoints" / "last.pt").write_bytes(bytes(60))
        elif cut == "no manifest":
            (d / CHECKPOINT_MANIFEST).unlink()

    for rel in ("session-1/t000/checkpoint_000003", "session-1/t000/checkpoint_000010",
                "session-2/t000/checkpoint_000001", "session-1/t001/checkpoint_000002",
                "session-10/t002/checkpoint_000000", "session-2/t003/checkpoint_000004",
                "session-1/t004/checkpoint_000009"):
        checkpoint(rel)
    (tmp_path / "session-2" / "t001").mkdir(parents=True)
    (tmp_path / "session-2" / "t001" / "error.txt").write_text("")
    # t003: the newer ones of its last session were cut short; t004: all of its last session's
    for rel, cut in (("session-2/t003/checkpoint_000005", "short"),
                     ("session-2/t003/checkpoint_000006", "missing"),
                     ("session-2/t003/checkpoint_000007", "no manifest"),
                     ("session-2/t004/checkpoint_000010", "short"),
                     ("session-1/t005/checkpoint_000000", "missing")):
        checkpoint(rel, cut)
    found = latest_checkpoints(str(tmp_path), [f"t00{i}" for i in range(7)])
    assert {k: Path(v.path).relative_to(tmp_path).as_posix() for k, v in found.items()} == {
        "t000": "session-2/t000/checkpoint_000001",
        "t001": "session-1/t001/checkpoint_000002",
        "t002": "session-10/t002/checkpoint_000000",
        "t003": "session-2/t003/checkpoint_000004",
        "t004": "session-1/t004/checkpoint_000009"}
    assert latest_checkpoints(str(tmp_path / "none"), ["t000"]) == {}


def test_cli_exit_status_and_summary_when_trials_failed(tmp_path, monkeypatch, capsys):
    import lipschitz_rnn.sweep as sweep_pkg

    result = {"counts": {"ok": 2, "failed": 1, "diverged": 1}, "best": 0.5, "best_trial": "t0",
              "metric": "accuracy", "mode": "max", "out": str(tmp_path / "s"),
              "driver_log": str(tmp_path / "s" / "ray" / "driver.log"), "ray_logs": "/x/logs"}
    monkeypatch.setattr(sweep_pkg, "run_sweep", lambda *a, **k: dict(result))
    spec = tmp_path / "s.toml"
    spec.write_text("")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "s")]) == 6
    text = capsys.readouterr().out
    assert "1 of 4 trials failed" in text and "trial.json" in text and "driver.log" in text
    assert 6 in EXIT_CODES and "failed trials" in EXIT_CODES[6]
    result["counts"] = {"ok": 2, "diverged": 1, "stopped": 1}  # outcomes, not failures
    assert main(["sweep", str(spec), "--out", str(tmp_path / "s")]) == 0


def test_storage_and_max_failures_are_checked_before_anything_is_written(tmp_path):
    pytest.importorskip("ray.tune")
    from lipschitz_rnn.sweep import run_sweep

    out = tmp_path / "out"
    with pytest.raises(ValueError, match="max_failures"):
        run_sweep(digits_spec(), out, max_failures=-1)
    with pytest.raises(TypeError, match="storage"):
        run_sweep(digits_spec(), out, storage=3)
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match="file"):
        run_sweep(digits_spec(), out, storage=tmp_path / "file" / "sub")
    assert not out.exists()


# ------------------------------------------------------------------------------------------
# on a cluster
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node without CPUs and a worker node ``w1`` with one, which sees the output root
    ``cluster.out_root`` as an empty directory."""
    root = tmp_path_factory.mktemp("cluster")
    c = LocalCluster(env={"PYTHONPATH": SRC})
    c.out_root = root / "out"
    c.out_root.mkdir()
    try:
        c.start_head()
        c.add_worker("w1", hide=[c.out_root])
        yield c
    finally:
        c.stop()


def _command(spec_path, out, cluster, *extra):
    return [sys.executable, "-m", "lipschitz_rnn", "sweep", str(spec_path), "--out", str(out),
            "--address", cluster.address, *extra]


def _env(cluster, token=True, **more):
    return {**cluster.client_env(os.environ, token=token), "PYTHONPATH": SRC,
            "OMP_NUM_THREADS": "1", **more}


def _sweep(cluster, spec, out, *extra, token=True, timeout=300, **env):
    spec_path = out.parent / f"{out.name}.toml"
    spec_path.write_text(tomli_w.dumps(spec))
    return subprocess.run(_command(spec_path, out, cluster, *extra),
                          env=_env(cluster, token, **env), capture_output=True, text=True,
                          timeout=timeout)


def _no_ray_noise(text, expected: tuple[str, ...] = ()):
    """No Ray noise and no warning in ``text``, except lines with one of ``expected``."""
    kept = "\n".join(line for line in text.splitlines() if not any(e in line for e in expected))
    for needle in ("(raylet)", "Raylet is terminated", "Traceback", "gcs_client", "WARNING",
                   "Token authentication"):
        assert needle not in kept, text


@needs_cluster
def test_cluster_sweep_without_a_shared_filesystem(cluster):
    out = cluster.out_root / "s1"
    proc = _sweep(cluster, digits_spec(), out)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "4 ok" in text
    assert text.count("no --storage") == 1  # said once, at the start
    _no_ray_noise(text)
    assert not (out / ".locks").exists()  # no trial wrote here itself

    rows = read_csv(out / "trials.csv")
    assert [r["trial"] for r in rows] == ["t000", "t001", "t002", "t003"]
    w1 = cluster.node_id("w1")
    for r in rows:
        assert r["status"] == "ok" and r["epochs_done"] == "2" and r["le2_max"] != ""
        assert (r["node_id"], r["hostname"]) == (w1, socket.gethostname())
        tdir = out / "trials" / r["trial"]
        assert epochs_of(tdir) == [1, 2]
        assert json.loads((tdir / "trial.json").read_text())["status"] == "ok"
        with np.load(tdir / "probe_spectra.npz") as z:
            assert sorted(z.files) == ["le0", "le2"] and z["le2"].shape == (2, 2)
        assert (tdir / "checkpoints" / "best.pt").is_file()
        assert not (tdir / "checkpoints" / "last.pt").exists()  # stayed on the node
    results = json.loads((out / "trials" / "t003" / "results.json").read_text())
    assert float(rows[3]["test"]) == pytest.approx(results["test"]["accuracy"])
    assert evaluate_run(out / "trials" / "t003")["accuracy"] == pytest.approx(
        results["test"]["accuracy"])
    with np.load(out / "spectra.npz") as z:
        assert z["t001_le2_batch"].shape == (2, 2)
    # the shipped files are taken out of what Tune records
    assert "_lipschitz_rnn" not in (out / "ray" / "session-1" / "t000" / "result.json").read_text()


@needs_cluster
def test_cluster_sweep_whose_trials_all_fail_exits_non_zero(cluster):
    """The data are on the driver only (--data-dir under the output root, downloads off): every
    trial fails on the worker node."""
    data = cluster.out_root / "data"
    write_mnist(data / "mnist")
    spec = {"task": "rmnist", "model": "rnn",
            "set": {"hidden_size": 4, "epochs": 1, "batch_size": 4, "device": "cpu",
                    "task": {"valid_size": 2, "split_seed": 0}},
            "grid": {"lr": [0.01, 0.1]}, "lyapunov": {"at_epochs": [0], "k": 2, "batch": 2}}
    out = cluster.out_root / "s2"
    proc = _sweep(cluster, spec, out, "--data-dir", str(data), LIPSCHITZ_RNN_NO_DOWNLOAD="1")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 6, text
    assert "2 of 2 trials failed" in text and "trial.json" in text and "driver.log" in text
    _no_ray_noise(text)
    for r in read_csv(out / "trials.csv"):
        assert r["status"] == "failed" and "mnist" in r["error"], r
        assert r["node_id"] == cluster.node_id("w1")
        assert "Traceback" in json.loads((out / "trials" / r["trial"] / "trial.json")
                                         .read_text())["traceback"]


@needs_cluster
def test_token_cluster_reached_without_the_token_is_one_line(cluster):
    out = cluster.out_root / "s3"
    t0 = time.monotonic()
    proc = _sweep(cluster, digits_spec(), out, token=False, timeout=120)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, lines
    assert "token" in lines[0] and "RAY_AUTH_MODE=token" in lines[0]
    assert "RAY_AUTH_TOKEN_PATH" in lines[0] and "RAY_AUTH_TOKEN " in lines[0]
    assert time.monotonic() - t0 < 60  # at once, not after Ray's 20 s of retries
    assert not out.exists()  # nothing written: the same command works once the token is set


def _node_trial_dirs(cluster) -> dict[str, Path]:
    """Trial id -> the run directory of an attempt on a node without the driver's files (in
    the node's temporary folder: sweep/_tune.py ``_run_shipped``); removed when it ends."""
    return {p.name: p for p in (cluster.root / "tmp").glob("lipschitz-rnn-t*-*/trials/t*")}


def _freeze_mid_trial(cluster, node, out, proc, since, timeout=300):
    """Freeze node ``node`` (every process stopped) in the middle of one of its trials whose
    checkpoint the driver has; return that trial's id. The caller kills or thaws the node.

    Polled on files, not timed: the driver has the trial's first two epochs (a trial reports
    epoch 2 only after the driver took epoch 1's checkpoint: Tune's function trainables report
    synchronously) and no outcome of it. The node is then frozen, and kept frozen only if its
    own run directory of that trial holds no outcome either (else it is thawed and the wait
    goes on): that attempt cannot end. ``since``: node run directories of earlier sweeps."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no trial reached its second epoch on the node"
        started = [d.name for d in sorted((out / "trials").glob("t*"))
                   if not (d / "trial.json").exists() and (d / "metrics.jsonl").is_file()
                   and len(epochs_of(d)) >= 2]
        if started:
            cluster.freeze_node(node)
            mid = [tid for tid, d in _node_trial_dirs(cluster).items()
                   if d not in since and tid in started and not (d / "trial.json").exists()]
            if len(mid) == 1:
                return mid[0]
            cluster.thaw_node(node)
        time.sleep(0.02)


@needs_cluster
def test_cluster_node_lost_during_a_trial_is_retried_from_its_checkpoint(cluster, tmp_path):
    """The worker node is lost (all its processes killed) in the middle of a trial whose
    checkpoint the driver has; a second worker node joins. The trial runs again from its
    checkpoint on the new node, and the sweep finishes with every trial once."""
    epochs = 6
    out = cluster.out_root / "s4"
    spec_path = cluster.out_root / "s4.toml"
    spec_path.write_text(tomli_w.dumps(digits_spec(epochs, (0, 1))))
    storage = tmp_path / "storage"
    since = set(_node_trial_dirs(cluster).values())
    proc = subprocess.Popen(_command(spec_path, out, cluster, "--storage", str(storage),
                                     "--max-failures", "1"),
                            env=_env(cluster), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        victim = _freeze_mid_trial(cluster, "w1", out, proc, since)
        cluster.kill_node("w1")
        cluster.add_worker("w2", hide=[cluster.out_root])
        text, _ = proc.communicate(timeout=600)  # a bound for a loaded machine
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, text
    assert "4 ok" in text and "no --storage" not in text
    _no_ray_noise(text)
    w2 = cluster.node_id("w2")
    rows = {r["trial"]: r for r in read_csv(out / "trials.csv")}
    assert sorted(rows) == ["t000", "t001", "t002", "t003"]
    for tid, r in rows.items():
        assert r["status"] == "ok", r
        assert epochs_of(out / "trials" / tid) == list(range(1, epochs + 1))  # none twice
    status = json.loads((out / "trials" / victim / "trial.json").read_text())
    assert status["attempts"] == 2 and status["resumed"] is True  # from its checkpoint
    assert status["node"]["id"] == w2 == rows[victim]["node_id"]
    assert "Trial task failed" in (out / "ray" / "driver.log").read_text()


@needs_cluster
def test_cluster_sweep_resumed_after_its_driver_died_continues_from_the_storage(cluster,
                                                                                tmp_path):
    """The driver is killed in the middle of a trial with a checkpoint in the storage;
    ``--resume`` (without --storage: the sweep's own) continues that trial from it."""
    epochs = 6
    out = cluster.out_root / "s5"
    spec_path = cluster.out_root / "s5.toml"
    spec_path.write_text(tomli_w.dumps(digits_spec(epochs, (0, 1))))
    storage = tmp_path / "storage"
    node = cluster.nodes[-1]  # the worker node that is alive (w2 after the lost-node test)
    since = set(_node_trial_dirs(cluster).values())
    proc = subprocess.Popen(_command(spec_path, out, cluster, "--storage", str(storage)),
                            env=_env(cluster), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        victim = _freeze_mid_trial(cluster, node, out, proc, since)
    finally:
        proc.kill()
        proc.communicate()
        # the node goes on a moment (its raylet ends the dead driver's workers): the victim's
        # next checkpoint may be cut short in the storage, and is then not resumed from
        cluster.thaw_node(node)
    again = subprocess.run([sys.executable, "-m", "lipschitz_rnn", "sweep", "--resume", "--out",
                            str(out), "--address", cluster.address], env=_env(cluster),
                           capture_output=True, text=True, timeout=600)
    text = again.stdout + again.stderr
    assert again.returncode == 0, text
    assert "4 ok" in text and "no --storage" not in text
    # the victim's last checkpoint may have been cut short (above): the sweep says so, once
    cut = f"WARNING lipschitz_rnn.sweep._tune: trial {victim}: checkpoint "
    assert text.count(cut) <= 1, text
    _no_ray_noise(text, expected=(cut,))
    for tid in ("t000", "t001", "t002", "t003"):
        assert epochs_of(out / "trials" / tid) == list(range(1, epochs + 1))
    status = json.loads((out / "trials" / victim / "trial.json").read_text())
    assert status["status"] == "ok" and status["resumed"] is True  # from the checkpoint
    meta = json.loads((out / "sweep.json").read_text())
    assert [s["storage"] for s in meta["sessions"]] == [str(storage)] * 2
    assert meta["storage"] == str(storage)
