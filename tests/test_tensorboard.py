"""TensorBoard logging of training runs: the event files are read back with tensorboard's own
reader and hold the scalars, the histogram and nothing twice after a resume."""

import json
import sys

import pytest
import torch

from lipschitz_rnn.cli import main
from lipschitz_rnn.runs.config import TrainConfig, resolve_config
from lipschitz_rnn.runs.rundir import load_run
from lipschitz_rnn.stability import certify
from lipschitz_rnn.train.callbacks import Callback, RunContext, StepInfo
from lipschitz_rnn.train.loop import RunInterrupted, train
from lipschitz_rnn.train.tensorboard import TensorBoardLogger, tensorboard_callbacks

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="the tensorboard package (lipschitz-rnn[tensorboard]) is not installed",
)


def tiny(**kw):
    base = dict(
        task="digits",
        model="lipschitz",
        hidden_size=6,
        epochs=2,
        batch_size=32,
        max_batches=4,
        lr=0.01,
        model_kwargs={"solver": "rk2", "eps": 0.3},
    )
    base.update(kw)
    return TrainConfig(**base).validate()


def read_events(folder):
    acc = event_accumulator.EventAccumulator(
        str(folder), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0}
    )
    acc.Reload()
    return acc


def steps_of(acc, tag):
    return [e.step for e in acc.Scalars(tag)]


def test_events_hold_step_epoch_certificate_and_lyapunov(tmp_path):
    out = tmp_path / "run"
    cfg = tiny(lyapunov_every=1, lyapunov_batch=3, test_every=1)
    res = train(cfg, out, callbacks=[TensorBoardLogger()])
    acc = read_events(out / "tb")
    tags = set(acc.Tags()["scalars"])
    expected = {
        "step/loss", "step/lr", "step/grad_norm",
        "train/loss", "train/accuracy", "valid/loss", "valid/accuracy",
        "test/loss", "test/accuracy", "epoch/epoch", "epoch/lr", "epoch/seconds",
        "certificate/cell0/A_spectral_abscissa", "certificate/cell0/A_sym_eig_max",
        "certificate/cell0/max_stable_eps", "certificate/cell0/stable_step_margin",
        "lyapunov/max", "lyapunov/mean", "lyapunov/median", "lyapunov/kaplan_yorke_dimension",
        "final/test_accuracy", "final/test_loss",
    }
    assert expected <= tags, expected - tags
    assert steps_of(acc, "step/loss") == list(range(1, 9))  # 2 epochs x 4 batches
    assert steps_of(acc, "valid/accuracy") == [4, 8]  # epochs at their last global step
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    got = [e.value for e in acc.Scalars("valid/loss")]
    assert got == pytest.approx([r["valid_loss"] for r in records], rel=1e-6)
    got = [e.value for e in acc.Scalars("lyapunov/max")]
    assert got == pytest.approx([r["lyapunov"]["max"] for r in records], rel=1e-5, abs=1e-7)
    assert all(e.value > 0 for e in acc.Scalars("step/grad_norm"))
    # the certificate of the final weights matches the stability module's
    _, _, model = load_run(out, which="last")
    cert = certify(model)[0]
    last = acc.Scalars("certificate/cell0/stable_step_margin")[-1].value
    assert last == pytest.approx(cert.max_stable_eps - cert.eps, rel=1e-5)
    assert acc.Scalars("final/test_accuracy")[0].value == pytest.approx(res["test"]["accuracy"])
    hist = acc.Histograms("lyapunov/spectrum")
    assert [h.step for h in hist] == [4, 8]
    assert hist[-1].histogram_value.num == 6  # the full spectrum of a hidden-6 cell
    assert "config/text_summary" in acc.Tags()["tensors"]


def test_logging_leaves_the_trajectory_unchanged(tmp_path):
    a = train(tiny(), tmp_path / "a")
    b = train(tiny(), tmp_path / "b", callbacks=[TensorBoardLogger()])
    assert a["test"] == b["test"]
    wa = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_non_cell_model_logs_no_certificate(tmp_path):
    out = tmp_path / "gru"
    train(tiny(model="gru", model_kwargs={}, epochs=1), out, callbacks=[TensorBoardLogger()])
    tags = read_events(out / "tb").Tags()["scalars"]
    assert "valid/accuracy" in tags
    assert not [t for t in tags if t.startswith("certificate/")]


def test_resume_logs_every_step_once(tmp_path):
    out = tmp_path / "run"

    class StopAfter3(Callback):
        calls = 0

        def should_stop(self, run):
            self.calls += 1
            return self.calls == 3

    with pytest.raises(RunInterrupted):
        train(tiny(epochs=3), out, callbacks=[TensorBoardLogger(), StopAfter3()])
    train(None, out, resume=True, callbacks=[TensorBoardLogger()])
    acc = read_events(out / "tb")
    assert steps_of(acc, "step/loss") == list(range(1, 13))
    assert steps_of(acc, "valid/loss") == [4, 8, 12]


def test_other_ranks_write_nothing(tmp_path):
    cfg = tiny()
    model = torch.nn.GRU(2, 3)
    ctx = RunContext(tmp_path, cfg, model, None, None, "cpu", is_main=False)
    cb = TensorBoardLogger()
    cb.on_train_start(ctx)
    cb.on_step_end(ctx, StepInfo(1, 1, 1, 1, 0.5, 0.01, 1.0))
    cb.on_epoch_end(ctx, {"epoch": 1, "valid_loss": 0.3})
    cb.on_train_end(ctx, {"test": {"loss": 0.3}})
    cb.close()
    assert not (tmp_path / "tb").exists()


def test_missing_tensorboard_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"lipschitz-rnn\[tensorboard\]"):
        TensorBoardLogger()
    out = tmp_path / "run"
    rc = main(["train", "--task", "digits", "--model", "gru", "--out", str(out), "--tensorboard",
               "--set", "epochs=1"])
    assert rc == 2
    assert "lipschitz-rnn[tensorboard]" in capsys.readouterr().out
    assert not out.exists()  # refused before anything was written


def test_config_key_and_cli_flag(tmp_path):
    assert tensorboard_callbacks(tiny()) == []
    assert isinstance(tensorboard_callbacks(tiny(tensorboard=True))[0], TensorBoardLogger)
    cfg = resolve_config(task="digits", model="gru", overrides={"tensorboard": True})
    assert cfg.tensorboard is True
    with pytest.raises(ValueError, match="tensorboard"):
        tiny(tensorboard="yes")
    with pytest.raises(ValueError, match="log_dir|flush_secs"):
        TensorBoardLogger(flush_secs=0)
    out = tmp_path / "cli"
    args = ["train", "--task", "digits", "--model", "gru", "--out", str(out), "--tensorboard",
            "--set", "epochs=1", "--set", "hidden_size=4", "--set", "max_batches=2"]
    assert main(args) == 0
    assert TrainConfig.from_toml((out / "config.toml").read_text()).tensorboard is True
    assert "valid/accuracy" in read_events(out / "tb").Tags()["scalars"]
