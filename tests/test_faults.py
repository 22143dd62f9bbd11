"""The command line under faults and bad input: every failure a named message and an exit code,
nothing half-written, nothing silently ignored."""

import io
import json
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile

import pytest
import torch
from formats import write_mnist

from lipschitz_rnn import _io
from lipschitz_rnn._io import load_checkpoint
from lipschitz_rnn.cli import EXIT_CODES, main

# a tiny digits run: 2 epochs of 6 batches
TINY = ["--task", "digits", "--model", "lipschitz", "--set", "hidden_size=8",
        "--set", "epochs=2", "--set", "batch_size=32", "--set", "max_batches=6",
        "--set", "model.eps=0.3"]


def _weights(run):
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def _same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted tiny run (2 epochs) shared by the tests that compare with it."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def test_exit_codes_are_documented(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for code in (0, 2, 3, 4, 130):
        assert code in EXIT_CODES
        assert f"  {code} " in text


# --- resume with overrides ----------------------------------------------------------------------
def test_resume_extends_a_run_and_records_it(tmp_path, reference, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert main(["train", "--resume", str(out), "--set", "epochs=3", "--set", "lr=0.002"]) == 0
    cfg = (out / "config.toml").read_text()
    assert "epochs = 3" in cfg and "lr = 0.002" in cfg
    (record,) = [json.loads(line) for line in (out / "resumes.jsonl").read_text().splitlines()]
    assert record["changed"] == {"epochs": [2, 3], "lr": [0.003, 0.002]}
    assert record["epoch"] == 3 and record["step"] == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3] and metrics[-1]["lr"] == 0.002
    assert json.loads((out / "results.json").read_text())["epochs"] == 3


def test_resume_refuses_settings_that_define_the_run(tmp_path, reference, capsys):
    before = (reference / "config.toml").read_text()
    assert main(["train", "--resume", str(reference), "--set", "hidden_size=32"]) == 2
    out = capsys.readouterr().out
    assert "hidden_size" in out and "define the run" in out
    assert main(["train", "--resume", str(reference), "--set", "model.eps=0.1"]) == 2
    assert "model.eps" in capsys.readouterr().out
    assert main(["train", "--resume", str(reference), "--task", "adding"]) == 2
    assert "--task" in capsys.readouterr().out
    assert main(["train", "--resume", str(reference), "--out", str(tmp_path / "x")]) == 2
    assert "--out" in capsys.readouterr().out
    assert main(["train", "--resume", str(reference), "--set", "epochs=1"]) == 2
    assert "fewer than the 2 epochs" in capsys.readouterr().out
    assert (reference / "config.toml").read_text() == before
    assert not (reference / "resumes.jsonl").exists()


# --- damaged checkpoints ------------------------------------------------------------------------
def test_truncated_last_checkpoint_names_file_and_falls_back(tmp_path, reference, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--set", "epochs=1", "--out", str(out)]) == 0
    # extend to 2 epochs, then damage the newest checkpoint
    assert main(["train", "--resume", str(out), "--set", "epochs=2"]) == 0
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    msg = capsys.readouterr().out
    assert str(last) in msg and "damaged" in msg and "--resume-from previous" in msg
    # the previous checkpoint (end of epoch 1) continues to the same weights as the reference
    assert main(["train", "--resume", str(out), "--resume-from", "previous"]) == 0
    assert _same_weights(out, reference)


def test_empty_best_checkpoint_on_evaluate(tmp_path, reference, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    best = out / "checkpoints" / "best.pt"
    best.write_bytes(b"")
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 2
    msg = capsys.readouterr().out
    assert str(best) in msg and "empty" in msg and "--checkpoint last" in msg
    assert main(["evaluate", str(out), "--checkpoint", "last"]) == 0
    assert "accuracy" in capsys.readouterr().out


# --- failed starts write nothing ----------------------------------------------------------------
@pytest.mark.parametrize("bad", ["model.eps=0", "lr=nan", "lr=-1", "hidden_size=0"])
def test_failed_start_leaves_nothing_behind(tmp_path, bad, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--set", bad, "--out", str(out)]) == 2
    assert bad.split("=")[0].split(".")[-1] in capsys.readouterr().out
    assert not out.exists()
    assert main(["train", *TINY, "--out", str(out)]) == 0  # the corrected command just works


def test_damaged_data_file_fails_before_writing(tmp_path, capsys):
    write_mnist(tmp_path / "data" / "mnist")
    bad = tmp_path / "data" / "mnist" / "t10k-labels-idx1-ubyte.gz"
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 2])
    out = tmp_path / "run"
    args = ["train", "--task", "rmnist", "--model", "rnn", "--set", "hidden_size=4",
            "--set", "epochs=1", "--set", "task.valid_size=2", "--out", str(out),
            "--data-dir", str(tmp_path / "data")]
    assert main(args) == 2
    msg = capsys.readouterr().out
    assert "task 'rmnist'" in msg and "t10k-labels-idx1-ubyte.gz is damaged" in msg
    assert not out.exists()
    bad.write_bytes(good)
    assert main(args) == 0


# --- divergence ---------------------------------------------------------------------------------
def test_divergence_before_the_first_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", *TINY, "--set", "model.eps=100000000.0", "--set", "model.init_std=10.0",
                 "--out", str(out)])
    assert code == 3
    msg = capsys.readouterr().out
    assert "epoch 1, step" in msg and "before the first checkpoint" in msg
    assert "last.pt" not in msg


# --- file permissions, output, presets, quick start ---------------------------------------------
def test_run_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert main(["train", *TINY, "--set", "epochs=1", "--out", str(out)]) == 0
    finally:
        os.umask(old)
    for name in ("config.toml", "metrics.jsonl", "results.json", "checkpoints/last.pt"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name


def test_preset_from_a_toml_file(tmp_path):
    preset = tmp_path / "mine.toml"
    preset.write_text('task = "digits"\nmodel = "gru"\nhidden_size = 8\nepochs = 1\n'
                      'max_batches = 2\n')
    out = tmp_path / "run"
    assert main(["train", "--preset", str(preset), "--out", str(out)]) == 0
    assert 'model = "gru"' in (out / "config.toml").read_text()
    assert main(["train", "--preset", str(tmp_path / "missing.toml"), "--out",
                 str(tmp_path / "r2")]) == 2


def test_quickstart_does_not_delete_an_existing_folder(tmp_path, capsys):
    out = tmp_path / "qs"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["quickstart", "--out", str(out), "--epochs", "1"]) == 2
    assert "--force" in capsys.readouterr().out
    assert (out / "notes.txt").read_text() == "mine"


def test_compare_warns_on_different_tasks(tmp_path, reference, caplog):
    other = tmp_path / "adding"
    assert main(["train", "--task", "adding", "--model", "rnn", "--set", "hidden_size=4",
                 "--set", "epochs=1", "--set", "max_batches=2", "--set", "task.length=10",
                 "--set", "task.n_train=64", "--out", str(other)]) == 0
    with pytest.warns(UserWarning, match="different tasks"):
        from lipschitz_rnn.runs.analyses import compare_runs

        md, _ = compare_runs([reference, other])
    assert "[digits]" in md and "[adding]" in md


def test_output_is_not_wrapped_when_not_a_terminal(tmp_path, capsys):
    long_dir = tmp_path / ("a-very-long-run-directory-name-" * 4)
    assert main(["train", *TINY, "--set", "epochs=1", "--out", str(long_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(str(long_dir) in line for line in lines)  # the path was never split
    assert any("valid_accuracy" in line and "seq_per_s" in line for line in lines)


# --- disk full during a checkpoint write ---------------------------------------------------------
def test_failing_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--set", "epochs=1", "--out", str(out)]) == 0
    before = (out / "checkpoints" / "last.pt").read_bytes()
    real_fsync = os.fsync
    calls = {"n": 0}

    def full_disk(fd):
        calls["n"] += 1
        if calls["n"] >= 3:  # the metrics/config writes pass, then the disk "fills up"
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(_io.os, "fsync", full_disk)
    code = main(["train", "--resume", str(out), "--set", "epochs=2"])
    monkeypatch.setattr(_io.os, "fsync", real_fsync)
    assert code == 4
    msg = capsys.readouterr().out
    assert "No space left on device" in msg and "could not write" in msg
    ck = out / "checkpoints"
    assert not [p for p in ck.iterdir() if p.name.endswith(".tmp")]  # no temp file left
    assert (ck / "last.pt").read_bytes() == before or load_checkpoint(ck / "last.pt")


# --- kill -9 at random points, then --resume ----------------------------------------------------
def _run(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "lipschitz_rnn", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def test_kill_at_random_points_then_resume(tmp_path):
    args = [*TINY, "--set", "epochs=3", "--set", "max_batches=0"]
    ref = tmp_path / "ref"
    t0 = time.perf_counter()
    assert _run(["train", *args, "--out", str(ref)]).wait(timeout=300) == 0
    duration = time.perf_counter() - t0
    for seed in range(3):
        out = tmp_path / f"killed-{seed}"
        proc = _run(["train", *args, "--out", str(out)])
        time.sleep(random.Random(seed).uniform(0.2, 1.0) * duration)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        if (out / "config.toml").is_file():
            resumed = _run(["train", "--resume", str(out)])
        else:  # killed before the run existed: start it again
            resumed = _run(["train", *args, "--out", str(out)])
        _, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err.decode()[-2000:]
        assert _same_weights(out, ref), f"seed {seed}"
        assert json.loads((out / "results.json").read_text())["test"] == json.loads(
            (ref / "results.json").read_text()
        )["test"]


def test_messages_keep_their_brackets(tmp_path, capsys, monkeypatch):
    """rich reads "[grid]" as a style tag and drops it; the CLI prints messages literally."""
    from lipschitz_rnn.runs import rundir

    def load_run(*a, **k):
        raise ValueError("[grid] lr: the list is empty")

    monkeypatch.setattr(rundir, "load_run", load_run)
    assert main(["certify", str(tmp_path)]) == 2
    assert "[grid] lr: the list is empty" in capsys.readouterr().out


# --- resume: the same command plus --resume ---------------------------------------------------
def test_the_same_command_plus_resume_continues_the_run(tmp_path, reference, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--set", "epochs=1", "--out", str(out)]) == 0
    # the command of the reference run (epochs=2), plus --resume: one more epoch, the same
    # weights as the uninterrupted run; the resumable difference is recorded
    assert main(["train", *TINY, "--out", str(out), "--resume"]) == 0
    assert _same_weights(out, reference)
    (record,) = [json.loads(line) for line in (out / "resumes.jsonl").read_text().splitlines()]
    assert record["changed"] == {"epochs": [1, 2]}
    # the finished run, the same command again: nothing left to train, nothing changed
    before = (out / "checkpoints" / "last.pt").read_bytes()
    assert main(["train", *TINY, "--out", str(out), "--resume"]) == 0
    assert (out / "checkpoints" / "last.pt").read_bytes() == before


def test_the_same_command_plus_resume_refuses_another_configuration(tmp_path, reference,
                                                                   capsys):
    files = {p: p.read_bytes() for p in reference.rglob("*") if p.is_file()}
    capsys.readouterr()
    code = main(["train", *TINY, "--set", "hidden_size=16", "--set", "model.solver=rk2",
                 "--out", str(reference), "--resume"])
    assert code == 2
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert "hidden_size: 8 in the run, 16 now" in line and "model.solver: None in the run" in line
    assert str(reference) in line
    # --resume without a value needs --out; --force and --resume contradict each other; the
    # value form keeps refusing what it refused
    assert main(["train", *TINY, "--resume"]) == 2
    assert "--out RUN_DIR" in capsys.readouterr().out
    assert main(["train", *TINY, "--out", str(reference), "--resume", "--force"]) == 2
    assert "--force" in capsys.readouterr().out
    assert main(["train", "--resume", str(reference), "--preset", "digits-lipschitz"]) == 2
    assert "--out RUN_DIR --resume" in capsys.readouterr().out
    assert main(["train", *TINY, "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "config.toml missing" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in reference.rglob("*") if p.is_file()} == files


# --- output paths that cannot be created or written ----------------------------------------------
def _one_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_output_paths_through_a_file_exit_4(tmp_path, reference, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    spec = tmp_path / "spec.toml"
    spec.write_text('task = "digits"\nmodel = "rnn"\n[set]\nepochs = 1\n[grid]\nlr = [0.001]\n')
    for args, target in (
        (["train", *TINY, "--out", str(blocker / "run")], blocker / "run"),
        (["train", *TINY, "--out", str(blocker)], blocker),
        (["sweep", str(spec), "--out", str(blocker / "sweep")], blocker / "sweep"),
        (["report", str(reference), "--out", str(blocker / "r.html")], blocker / "r.html"),
    ):
        assert main(args) == 4, args
        line = _one_line(capsys)
        assert line.startswith("error: could not") and str(target) in line, line
        assert "Not a directory" in line and "File exists" not in line, line
    assert blocker.read_text() == "mine" and sorted(tmp_path.iterdir()) == [blocker, spec]


def test_unwritable_report_exits_4_and_leaves_nothing(tmp_path, reference, monkeypatch, capsys):
    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(_io.tempfile, "mkstemp", refuse)
    target = tmp_path / "r.html"
    assert main(["report", str(reference), "--out", str(target)]) == 4
    assert _one_line(capsys) == f"error: could not write {target}: Permission denied"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_parent_exits_4_before_training(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    assert main(["train", *TINY, "--out", str(ro / "run")]) == 4
    line = _one_line(capsys)
    assert str(ro / "run") in line and "Permission denied" in line
    assert list(ro.iterdir()) == []


def test_os_errors_about_an_output_path_exit_4(tmp_path, reference, monkeypatch, capsys):
    from lipschitz_rnn import report

    target = tmp_path / "r.html"

    def fail(paths, out):
        raise IsADirectoryError(21, "Is a directory", str(out))

    monkeypatch.setattr(report, "write_report", fail)
    assert main(["report", str(reference), "--out", str(target)]) == 4
    assert _one_line(capsys) == f"error: could not create or write {target}: Is a directory"

    def elsewhere(paths, out):  # not about the output: an internal error, not hidden
        raise IsADirectoryError(21, "Is a directory", "/somewhere/else")

    monkeypatch.setattr(report, "write_report", elsewhere)
    with pytest.raises(IsADirectoryError):
        main(["report", str(reference), "--out", str(target)])


# --- checksums: damaged checkpoints and results ---------------------------------------------------
def _pickle_corruptions(good: bytes, n: int = 512) -> list[tuple[str, bytes]]:
    """``good`` (a torch zip file) with byte 0x8a written at each of the first ``n`` bytes of
    its pickle (where parsing fails in many ways: IndexError, TypeError, AssertionError)."""
    info = next(i for i in zipfile.ZipFile(io.BytesIO(good)).infolist()
                if i.filename.endswith("data.pkl"))
    local = info.header_offset  # the local header: 30 bytes, the name, the extra field
    start = local + 30 + int.from_bytes(good[local + 26:local + 28], "little") + int.from_bytes(
        good[local + 28:local + 30], "little")
    out = []
    for at in range(start, start + min(n, info.file_size)):
        if good[at] != 0x8A:
            out.append((f"0x8a at {at}", good[:at] + b"\x8a" + good[at + 1:]))
    return out


def _corruptions(good: bytes, n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` copies of ``good`` with random bytes written at random offsets, truncations, and
    the empty file."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        b = bytearray(good)
        size = rng.choice([1, 2, 8, 64, 512])
        at = rng.randrange(len(b) - size)
        b[at:at + size] = rng.randbytes(size)
        if bytes(b) != good:
            out.append((f"{size} bytes at {at}", bytes(b)))
    out += [(f"cut to {f}", good[: int(len(good) * f)]) for f in (0.999, 0.9, 0.5, 0.1, 0.01)]
    return [*out, ("empty", b"")]


def test_every_damaged_checkpoint_is_refused_naming_it(tmp_path, reference):
    src = reference / "checkpoints"
    good = (src / "last.pt").read_bytes()
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    path = folder / "last.pt"
    (folder / "last.pt.sha256").write_bytes((src / "last.pt.sha256").read_bytes())
    path.write_bytes(good)
    assert load_checkpoint(path)["epoch"] == 3  # the checksum matches the file written
    for what, data in _corruptions(good, 60) + _pickle_corruptions(good):
        path.write_bytes(data)
        with pytest.raises(_io.CheckpointError) as e:
            load_checkpoint(path)
        msg = str(e.value)
        assert msg.startswith(f"checkpoint {path} is damaged") and "\n" not in msg, what


def test_damaged_checkpoints_without_checksum_never_escape(tmp_path, reference, caplog):
    """A checkpoint of an older version (no checksum) loads unverified, with a logged note; a
    damaged one either loads or raises CheckpointError: never another exception."""
    import logging
    import warnings

    path = tmp_path / "last.pt"
    good = (reference / "checkpoints" / "last.pt").read_bytes()
    path.write_bytes(good)
    with caplog.at_level(logging.INFO, logger="lipschitz_rnn._io"):
        assert load_checkpoint(path)["epoch"] == 3
    assert "no recorded checksum" in caplog.text and str(path) in caplog.text
    for what, data in _corruptions(good, 60, seed=1) + _pickle_corruptions(good):
        path.write_bytes(data)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            try:
                load_checkpoint(path)
            except _io.CheckpointError as e:
                # one line: no warning before it, no second line in it
                assert str(path) in str(e) and "\n" not in str(e) and not seen, what


def test_damaged_checkpoint_on_the_command_line(tmp_path, reference, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--set", "epochs=1", "--out", str(out)]) == 0
    assert main(["train", "--resume", str(out), "--set", "epochs=2"]) == 0
    last = out / "checkpoints" / "last.pt"
    good = last.read_bytes()
    capsys.readouterr()
    for what, data in _corruptions(good, 6, seed=2)[::2]:
        last.write_bytes(data)
        assert main(["train", "--resume", str(out), "--set", "epochs=3"]) == 2, what
        line = _one_line(capsys)
        assert str(last) in line and "damaged" in line and "--resume-from previous" in line
        assert main(["evaluate", str(out), "--checkpoint", "last"]) == 2, what
        line = _one_line(capsys)
        assert str(last) in line and "--checkpoint best" in line
    # the previous checkpoint (end of epoch 1) continues to the reference's weights
    assert main(["train", "--resume", str(out), "--resume-from", "previous"]) == 0
    assert _same_weights(out, reference)


def test_damaged_results_are_refused(tmp_path, reference, capsys):
    from lipschitz_rnn.runs.rundir import read_results

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    path = out / "results.json"
    good = path.read_text()
    assert read_results(out) == json.loads(good)
    res = json.loads(good)
    res["test"]["accuracy"] = 0.99  # still valid JSON: only the checksum tells
    for text in (json.dumps(res, indent=2) + "\n", good[: len(good) // 2], ""):
        path.write_text(text)
        with pytest.raises(_io.DamagedFileError, match=f"{re.escape(str(path))} is damaged"):
            read_results(out)
        assert main(["compare", str(out), "--out", str(tmp_path / "cmp")]) == 2
        line = _one_line(capsys)
        assert str(path) in line and "damaged" in line
    assert not (tmp_path / "cmp").exists()


def _crash_at(monkeypatch, k: int):
    """Make the k-th atomic write from now on "crash" (raise; nothing after it runs)."""
    real = _io.atomic_write_bytes
    calls = {"n": 0}

    class Crash(Exception):
        pass

    def write(path, data):
        calls["n"] += 1
        if calls["n"] == k:
            raise Crash(path)
        real(path, data)

    monkeypatch.setattr(_io, "atomic_write_bytes", write)
    return Crash, calls


@pytest.mark.parametrize("legacy", [False, True])
def test_a_crash_while_saving_never_makes_a_good_checkpoint_look_damaged(tmp_path, monkeypatch,
                                                                        legacy):
    """Crash at every write of save_checkpoint (sidecars, file, previous version), twice in a
    row: the checkpoint and its previous version always load, as one of the versions saved."""
    versions = [{"v": torch.full((64,), float(i))} for i in range(4)]
    for k1 in range(1, 8):
        for k2 in (0, 2, 4, 5):
            path = tmp_path / f"{k1}-{k2}" / "last.pt"
            _io.save_checkpoint(path, versions[0], keep_previous=True)
            _io.save_checkpoint(path, versions[1], keep_previous=True)
            if legacy:  # written by an older version: no checksums
                for p in path.parent.glob("*.sha256"):
                    p.unlink()
            for i, k in ((2, k1), (3, k2)):
                crash, calls = _crash_at(monkeypatch, k)
                try:
                    _io.save_checkpoint(path, versions[i], keep_previous=True)
                except crash:
                    pass
                monkeypatch.undo()
            got = float(load_checkpoint(path)["v"][0])
            prev = float(load_checkpoint(_io.previous_path(path))["v"][0])
            assert got in (1.0, 2.0, 3.0) and prev in (0.0, 1.0, 2.0) and prev <= got, (k1, k2)


def test_a_damaged_checkpoint_is_not_kept_as_the_previous_version(tmp_path, caplog):
    path = tmp_path / "last.pt"
    _io.save_checkpoint(path, {"v": 1}, keep_previous=True)
    _io.save_checkpoint(path, {"v": 2}, keep_previous=True)
    path.write_bytes(path.read_bytes()[:-10])
    _io.save_checkpoint(path, {"v": 3}, keep_previous=True)
    assert load_checkpoint(path)["v"] == 3
    assert load_checkpoint(_io.previous_path(path))["v"] == 1  # the good one, kept
    assert "not kept as last.prev.pt" in caplog.text
