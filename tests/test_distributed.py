"""Data-parallel training under torchrun (CPU, gloo, 2 processes, tiny models).

Two processes follow the one-process trajectory: each takes its share of every global batch and
the gradients are averaged with the weights that make them the global batch's mean. What differs
is float32 summation order only: a batch's gradient is summed as two halves and then added
across the ranks (one rounding each, ~1e-7 relative per step); after at most a dozen Adam steps
of lr <= 0.01 the weights agree to ATOL (Adam's normalised step turns a relative gradient error
into at most a similar relative error of a step of size lr). Runs of the same number of
processes are compared exactly (resume is bit-identical on CPU).
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from formats import TEXTS as PTB_TEXTS
from formats import write_ptb
from fused_helpers import can_build_native
from torch import nn

from lipschitz_rnn._io import load_checkpoint
from lipschitz_rnn.data.task import Task
from lipschitz_rnn.runs import tasks
from lipschitz_rnn.runs.config import TrainConfig
from lipschitz_rnn.runs.rundir import evaluate_run
from lipschitz_rnn.train.distributed import DistContext, init_from_env
from lipschitz_rnn.train.loop import train

TESTS = Path(__file__).parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
WORKER = str(TESTS / "ddp_worker.py")
#: max |w_2proc - w_1proc| after the runs below (float32 summation order, see the docstring)
ATOL = 1e-5
#: a failed rank must bring the whole run down within this many seconds
FAIL_LIMIT_S = 60


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update(extra)
    return env


def _launch(args: list[str], timeout: float = 240, **env) -> subprocess.CompletedProcess:
    """torchrun ``args``; past ``timeout`` seconds the launcher and its ranks are killed (no
    rank outlives a failed test) and the test fails."""
    cmd = [*TORCHRUN, *args]
    proc = subprocess.Popen(cmd, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in _children(proc.pid):  # the ranks (torchrun starts them in sessions of their own)
            os.kill(pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun ran past {timeout} s:\n{out[-3000:]}{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _weights(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def _max_diff(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def _same(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _tiny(task="digits", model="lipschitz", **kw) -> dict:
    base = dict(task=task, model=model, hidden_size=8, epochs=1, batch_size=32, max_batches=3,
                eval_batch_size=64, lr=0.01, model_kwargs={})
    base.update(kw)
    return TrainConfig(**base).validate().to_dict()


LIPSCHITZ = _tiny(hidden_size=16, epochs=2, max_batches=6,
                  model_kwargs={"solver": "rk2", "eps": 0.3})
UNITS = ("lstm", "gru", "rnn", "irnn", "cornn", "odernn", "antisymmetric", "exprnn")


@pytest.fixture(scope="module")
def _unverified(tmp_path_factory):
    """As conftest's ``_data_files_as_written``, for the module-scoped fixtures (which run
    before any function-scoped one): tiny data files cannot match the canonical checksums."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIPSCHITZ_RNN_VERIFY_DATA", "0")
        mp.setenv("LIPSCHITZ_RNN_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, _unverified):
    root = tmp_path_factory.mktemp("data")
    write_ptb(root, {s: t * 6 for s, t in PTB_TEXTS.items()})
    _load(TESTS / "data" / "test_data_cifar.py", "_ddp_cifar").write_cifar(root)
    _load(TESTS / "data" / "test_data_speech.py", "_ddp_speech").make_tts(root)
    return root


@pytest.fixture(scope="module")
def cases(tmp_path_factory, data_dir):
    """Every case trained once by 2 processes (one torchrun) and once in this process."""
    d = str(data_dir)
    cs = [{"name": "lipschitz", "config": LIPSCHITZ},
          # 1259 training items in batches of 37: shares of 18 and 19, and a last batch of one
          # item, which leaves rank 0 without one
          {"name": "short-batch", "config": _tiny(batch_size=37, max_batches=0,
                                                 model_kwargs={"solver": "euler", "eps": 0.3})},
          *({"name": u, "config": _tiny(model=u)} for u in UNITS),
          {"name": "copy", "config": _tiny("copy", batch_size=16, task_kwargs={
              "length": 5, "n_train": 48, "n_valid": 16, "n_test": 16})},
          {"name": "adding", "config": _tiny("adding", model="odernn", batch_size=16, task_kwargs={
              "length": 12, "n_train": 48, "n_valid": 16, "n_test": 16})},
          # flossing phases before and during training: every rank draws and steps the same
          {"name": "flossing", "config": _tiny("delayed-xor", model="rnn", batch_size=16,
                                               epochs=2, task_kwargs={
              "delay": 4, "length": 12, "n_train": 48, "n_valid": 16, "n_test": 16},
              flossing={"k": 4, "warmup": 2, "steps": 8, "batch": 4, "before": 4, "every": 1,
                        "during": 2, "lr": 0.01})},
          {"name": "ptb", "config": _tiny("ptb-char", model="lstm", batch_size=3, bptt=4,
                                          epochs=2), "data_dir": d},
          {"name": "npcifar", "config": _tiny("npcifar", batch_size=3, task_kwargs={
              "valid_size": 2}), "data_dir": d},
          {"name": "speech", "config": _tiny("speech", batch_size=2, task_kwargs={
              "normalize": False}), "data_dir": d}]
    base = tmp_path_factory.mktemp("ddp")
    ref = tmp_path_factory.mktemp("one")
    # 1 -> 2 processes: a one-process run of one epoch, continued for a second one by two
    train(TrainConfig.from_dict({**LIPSCHITZ, "epochs": 1}), base / "rank0" / "resume-1to2")
    extra = [{"name": "resume-1to2", "resume": True, "overrides": {"epochs": 2}},
             {"name": "dropout", "config": _tiny(model="lstm", num_layers=2,
                                                  model_kwargs={"dropout": 0.5})},
             {"name": "nan", "config": LIPSCHITZ, "nan_rank": 1}]
    spec = base / "cases.json"
    spec.write_text(json.dumps(cs + extra))
    proc = _launch([WORKER, str(base), "cases", str(spec)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outcome = [json.loads((base / f"outcome{r}.json").read_text()) for r in (0, 1)]
    for c in cs:
        train(TrainConfig.from_dict(c["config"]), ref / c["name"], data_dir=c.get("data_dir"))
    return {"cases": cs, "base": base, "ref": ref, "outcome": outcome}


def test_two_processes_follow_one_process(cases):
    base, ref, outcome = cases["base"], cases["ref"], cases["outcome"]
    assert outcome[0]["native"] or not can_build_native()  # the Lipschitz runs used them
    for c in cases["cases"]:
        name = c["name"]
        for r in (0, 1):
            assert "error" not in outcome[r][name], outcome[r][name].get("traceback")
        assert _max_diff(base / "rank0" / name, ref / name) <= ATOL, name
        one = json.loads((ref / name / "results.json").read_text())
        two = json.loads((base / "rank0" / name / "results.json").read_text())
        assert two["world_size"] == 2 and one["world_size"] == 1
        assert two["test"] == pytest.approx(one["test"], rel=1e-4, abs=1e-6), name
        # every rank returns the results that rank 0 wrote
        assert outcome[1][name]["results"]["test"] == two["test"]


def test_metrics_equal_one_process_evaluation(cases):
    """Validation and test numbers of the 2-process run are those one process computes on the
    same weights (the evaluation is split over the ranks, its sums taken in batch order)."""
    run = cases["base"] / "rank0" / "lipschitz"
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    valid = evaluate_run(run, split="valid", which="last")
    assert valid["loss"] == pytest.approx(last["valid_loss"], rel=1e-6)
    assert valid["accuracy"] == last["valid_accuracy"]
    test = evaluate_run(run)
    results = json.loads((run / "results.json").read_text())
    assert test["loss"] == pytest.approx(results["test"]["loss"], rel=1e-6)
    assert test["accuracy"] == results["test"]["accuracy"]


def test_rank_zero_alone_writes(cases):
    # rank 1 ran in its own (empty) folder, as on another machine: it wrote nothing, and it
    # resumed a run whose files only rank 0 has
    assert list((cases["base"] / "rank1").iterdir()) == []
    lm = load_checkpoint(cases["base"] / "rank0" / "ptb" / "checkpoints" / "last.pt")
    assert lm["world_size"] == 2 and len(lm["rng_ranks"]) == 2
    assert all(p.shape[1] == 3 for p in lm["runner"]["carry"])  # both ranks' streams


def test_resume_from_one_process_in_two(cases):
    base, ref = cases["base"], cases["ref"]
    assert "error" not in cases["outcome"][0]["resume-1to2"]
    assert _max_diff(base / "rank0" / "resume-1to2", ref / "lipschitz") <= ATOL
    assert "error" not in cases["outcome"][0]["dropout"]


def test_divergence_on_one_rank_stops_all(cases):
    msgs = [cases["outcome"][r]["nan"] for r in (0, 1)]
    assert [m["error"] for m in msgs] == ["DivergenceError"] * 2
    assert msgs[0]["message"] == msgs[1]["message"]
    assert "non-finite loss (nan) at epoch 1, step 3/6 on rank 1 of 2" in msgs[0]["message"]
    assert [m["origin"] for m in msgs] == [0, 0]  # one report (rank 0's) for the command line


class _RankOneOfTwo(DistContext):
    """Rank 1 of 2 with canned collectives: rank 0 failed (no process group needed)."""

    def broadcast_object(self, obj):
        return ("error", ValueError("bad setting, found on rank 0"))

    def all_gather_object(self, obj):
        return [KeyError("rank 0's own"), obj]


def test_errors_of_another_rank_are_marked_and_reported_once(monkeypatch):
    from lipschitz_rnn.cli import error_line
    from lipschitz_rnn.train import distributed
    from lipschitz_rnn.train.distributed import origin_rank

    d = _RankOneOfTwo(rank=1, world_size=2)
    with pytest.raises(ValueError, match="found on rank 0") as e1:
        d.on_main(lambda: 1)
    with pytest.raises(KeyError) as e2:
        d.agree(lambda: 1)
    assert origin_rank(e1.value) == 0 and origin_rank(e2.value) == 0
    with pytest.raises(RuntimeError) as own:
        d.agree(lambda: (_ for _ in ()).throw(RuntimeError("mine")))
    assert origin_rank(own.value) is None  # its own error: this rank reports it
    with pytest.raises(KeyError) as same:  # the error rank 0 met too: rank 0 reports it
        d.agree(lambda: (_ for _ in ()).throw(KeyError("rank 0's own")))
    assert origin_rank(same.value) == 0

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    # before the processes joined, an error is one of the arguments: rank 0 prints it
    assert error_line("error: ", own.value) is None
    monkeypatch.setattr(distributed, "_GROUPS_CREATED", 1)  # as after init_from_env
    assert error_line("error: ", e1.value) is None  # rank 0 prints it
    assert error_line("error: ", own.value) == "rank 1: error: mine"
    assert error_line("interrupted", None, every_rank=False) is None
    monkeypatch.setenv("RANK", "0")
    assert error_line("error: ", e1.value) == "error: bad setting, found on rank 0"
    assert error_line("interrupted", None, every_rank=False) == "interrupted"
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert error_line("[b]x:[/] ", ValueError("[grid] literal")) == "[b]x:[/] \\[grid] literal"


# --- the command line: kill, resume, cross-resume, a hung rank --------------------------------
CLI = ["train", "--task", "digits", "--model", "lipschitz", "--set", "hidden_size=16",
       "--set", "epochs=3", "--set", "batch_size=32", "--set", "max_batches=12",
       "--set", "model.eps=0.3", "--set", "lr=0.005"]


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(p.name))
    return out


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in _children(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds ranks through /proc")
def test_kill_resume_and_cross_resume(tmp_path):
    # the documented command, uninterrupted (alongside the run that will be killed)
    full = tmp_path / "full"
    ref = subprocess.Popen([*TORCHRUN, "-m", "lipschitz_rnn", *CLI, "--out", str(full)],
                           env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = tmp_path / "killed"
    run = base / "rank0" / "run"
    p = subprocess.Popen([*TORCHRUN, WORKER, str(base), "cli", *CLI, "--out", "run"],
                         env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text()):
            assert p.poll() is None and time.monotonic() < deadline, "no epoch finished"
            time.sleep(0.05)
        victim = _rank_pid(p.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        p.wait(timeout=FAIL_LIMIT_S)
        assert time.monotonic() - killed < FAIL_LIMIT_S
        out, err = ref.communicate(timeout=240)
    finally:
        for q in (p, ref):
            if q.poll() is None:
                q.kill()
                q.wait()
    assert ref.returncode == 0, out + err
    assert out.count("run directory:") == 1  # rank 0 alone reports
    assert p.returncode != 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) < 3, "killed too late"
    cross = tmp_path / "cross"
    shutil.copytree(run, cross)

    # the same command with another setting that defines the run, plus --resume: refused on
    # rank 0 (the only one with the run directory), one message, nothing written
    files = lambda: {p.relative_to(run): p.read_bytes()  # noqa: E731
                     for p in run.rglob("*") if p.is_file()}
    before = files()
    proc = _launch([WORKER, str(base), "cli", *CLI, "--set", "hidden_size=8", "--out", "run",
                    "--resume"])
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert out.count("was started with another configuration") == 1, out
    assert "hidden_size: 16 in the run, 8 now" in out and "rank 1:" not in out
    assert files() == before

    # the same command plus --resume, as the README says (rank 1 has no run directory at all),
    # ends at the weights of the uninterrupted run
    proc = _launch([WORKER, str(base), "cli", *CLI, "--out", "run", "--resume"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _same(run, full)
    assert list((base / "rank1").iterdir()) == []
    strip = lambda line: {k: v for k, v in json.loads(line).items()  # noqa: E731
                          if k not in ("seconds", "seq_per_s")}
    assert ([strip(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            == [strip(line) for line in (full / "metrics.jsonl").read_text().splitlines()])

    # 2 -> 1 process: the two-process checkpoint continues in one process
    train(None, cross, resume=True)
    assert _max_diff(cross, full) <= ATOL


def test_a_hung_rank_stops_the_run_within_the_timeout(tmp_path):
    t0 = time.monotonic()
    proc = _launch([WORKER, str(tmp_path), "hang", *CLI, "--out", "run"], timeout=FAIL_LIMIT_S * 2,
                   LIPSCHITZ_RNN_DIST_TIMEOUT="3")
    assert time.monotonic() - t0 < FAIL_LIMIT_S
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "rank 0 of 2" in out and "did not answer within 3 s" in out, out


TINY_CLI = ["train", "--task", "digits", "--model", "rnn", "--set", "hidden_size=4",
            "--set", "epochs=1", "--set", "max_batches=2"]


def test_a_rank_failing_after_training_stops_the_others_at_once(tmp_path):
    """Rank 0 fails once training is over (the others wait at the final barrier) and is slow to
    exit: the others stop with its status within the CLI's report grace (10 s; not after the
    300 s timeout), and torchrun then ends rank 0; its message is printed once."""
    t0 = time.monotonic()
    proc = _launch([WORKER, str(tmp_path), "fail0-after", *TINY_CLI, "--out", "run"],
                   timeout=FAIL_LIMIT_S, LIPSCHITZ_RNN_DIST_TIMEOUT="300")
    assert time.monotonic() - t0 < FAIL_LIMIT_S
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert out.count("No space left on device") == 1, out
    assert "rank 1:" not in out
    assert "lipschitz_rnn/cli" not in out and "lipschitz_rnn/train" not in out  # no traceback
    assert (tmp_path / "rank0" / "run" / "results.json").is_file()  # it had trained


@pytest.mark.parametrize("mode", ["cli", "cli-late0"])
def test_a_usage_error_is_printed_once(tmp_path, mode):
    """Rank 0 prints it even when it meets the error after the others (a slow host): the silent
    ranks do not exit first, or torchrun would end rank 0 before it printed."""
    proc = _launch([WORKER, str(tmp_path), mode, "train", "--out", "run", "--resume",
                    "--no-such-option"], timeout=FAIL_LIMIT_S)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert out.count("unrecognized arguments: --no-such-option") == 1, out
    assert out.count("usage: ") == 1


def test_a_settings_error_is_printed_once_by_a_late_rank_zero(tmp_path):
    proc = _launch([WORKER, str(tmp_path), "cli-late0", *TINY_CLI, "--set", "lr=-1",
                    "--out", "run"], timeout=FAIL_LIMIT_S)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert out.count("lr") >= 1 and out.count("error:") == 1, out
    assert not (tmp_path / "rank0" / "run").exists()


def test_usage_and_settings_errors_only_on_rank_zero(tmp_path, monkeypatch, capsys):
    """Every rank meets the same usage or settings error before the processes join: rank 0
    prints it, the others exit with the same status silently."""
    from lipschitz_rnn.cli import main

    bad_args = ["train", "--task", "digits", "--model", "nope", "--out", str(tmp_path / "r")]
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, silent in (("1", True), ("0", False)):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as e:
            main(["train", "--preset"])
        assert e.value.code == 2
        usage = capsys.readouterr()
        assert main(bad_args) == 2
        settings = capsys.readouterr()
        if silent:
            assert usage.out + usage.err + settings.out + settings.err == ""
        else:
            assert "expected one argument" in usage.err
            assert "--model must be one of" in settings.out
    assert not (tmp_path / "r").exists()


# --- pieces, in this process ---------------------------------------------------------------------
def test_shares_cover_a_batch():
    for n in (0, 1, 2, 5, 37, 128):
        for world in (1, 2, 3, 8):
            parts = [DistContext(rank=r, world_size=world).share(n) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
            assert max(h - lo for lo, h in parts) - min(h - lo for lo, h in parts) <= 1


class _Noisy(torch.utils.data.Dataset):
    """Items with fresh noise from the dataset's own generator at every access (as npcifar)."""

    def __init__(self, n):
        self.n = n
        self.generator = torch.Generator().manual_seed(3)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.randn(4, 1, generator=self.generator) + i, torch.tensor(i % 2)


class _Probe(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 2)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.lin(x[-1])


def test_fresh_noise_is_drawn_as_in_one_process(monkeypatch):
    monkeypatch.setattr(tasks, "get_task", lambda *a, **k: Task(
        "noisy", "classification", 1, 2, "last", "accuracy", _Noisy(9), _Noisy(3), _Noisy(3)))
    cfg = TrainConfig(batch_size=5).validate()
    runners = [tasks.TaskRunner(cfg, device=torch.device("cpu")) for _ in range(3)]
    for r in (0, 1):
        runners[r].distribute(DistContext(rank=r, world_size=2))
    models = [_Probe() for _ in range(3)]
    for batch in runners[2].train_batches(1):  # a batch of 5, then one of 4
        out = [run.train_step(m, batch) for run, m in zip(runners, models, strict=True)]
        assert out[0][2] + out[1][2] == out[2][2]  # counts add up
    for k in range(2):
        whole = models[2].seen[k]
        assert torch.equal(torch.cat([models[0].seen[k], models[1].seen[k]], dim=1), whole)
    states = [run.task.train.generator.get_state() for run in runners]
    assert torch.equal(states[0], states[2]) and torch.equal(states[1], states[2])


def test_empty_share_has_zero_weight(monkeypatch):
    monkeypatch.setattr(tasks, "get_task", lambda *a, **k: Task(
        "noisy", "classification", 1, 2, "last", "accuracy", _Noisy(9), _Noisy(3), _Noisy(3)))
    run = tasks.TaskRunner(TrainConfig().validate(), device=torch.device("cpu"))
    run.distribute(DistContext(rank=0, world_size=2))
    model = _Probe()
    loss, ms, count, seqs = run.train_step(model, torch.tensor([4]))
    assert (float(loss.detach()), ms, count, seqs) == (0.0, 0.0, 0.0, 0)
    loss.backward()
    assert all(float(p.grad.abs().max()) == 0.0 for p in model.parameters())


def test_language_model_carry_is_cut_to_this_ranks_streams(data_dir):
    cfg = TrainConfig(task="ptb-char", batch_size=3).validate()
    run = tasks.TaskRunner(cfg, data_dir=data_dir, device=torch.device("cpu"))
    run.distribute(DistContext(rank=1, world_size=2))
    carry = [torch.arange(12.0).view(1, 3, 4), -torch.arange(12.0).view(1, 3, 4)]
    run.load_state({"data_rng": {}, "carry": carry})
    assert [torch.equal(p, c[:, 1:]) for p, c in zip(run._carry, carry, strict=True)] == [True, True]
    run.load_state(run.state())  # its own (already cut) state comes back unchanged
    assert run._carry[0].shape == (1, 2, 4)
    with pytest.raises(ValueError, match="batch_size=3 parallel streams cannot be shared by 4"):
        run.distribute(DistContext(rank=0, world_size=4))


def test_settings_and_their_errors(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    one = init_from_env()
    assert (one.enabled, one.is_main, one.world_size) == (False, True, 1)
    assert one.on_main(lambda: 3) == 3 and one.all_sum([1.0, 2.0]) == [1.0, 2.0]
    monkeypatch.setenv("LIPSCHITZ_RNN_DIST_TIMEOUT", "soon")
    with pytest.raises(ValueError, match=r"\$LIPSCHITZ_RNN_DIST_TIMEOUT must be a number"):
        init_from_env()
    with pytest.raises(ValueError, match="timeout_s must be a positive number"):
        init_from_env(timeout_s=-1)
    with pytest.raises(ValueError, match=r"device='cuda:1' pins one GPU"):
        DistContext(rank=0, world_size=2).device("cuda:1")
    assert DistContext(rank=1, world_size=2).device("cpu") == torch.device("cpu")


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_follow_one(tmp_path):  # pragma: no cover - needs a machine with two GPUs
    cfg = {**LIPSCHITZ, "device": "cuda"}
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps([{"name": "gpu", "config": cfg}]))
    proc = _launch([WORKER, str(tmp_path), "cases", str(spec)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outcome = json.loads((tmp_path / "outcome0.json").read_text())["gpu"]
    assert "error" not in outcome, outcome
    assert outcome["results"]["device"] == "cuda:0"
    train(TrainConfig.from_dict(cfg), tmp_path / "one")
    assert _max_diff(tmp_path / "rank0" / "gpu", tmp_path / "one") <= 1e-4
