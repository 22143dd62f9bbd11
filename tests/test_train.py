"""The training command end to end on tiny real runs: digits and adding."""

import json

import pytest
import torch

from lipschitz_rnn._io import load_checkpoint
from lipschitz_rnn.cli import main
from lipschitz_rnn.runs.config import TrainConfig, list_presets, parse_set, resolve_config
from lipschitz_rnn.runs.rundir import evaluate_run, load_run
from lipschitz_rnn.train.callbacks import Callback
from lipschitz_rnn.train.loop import DivergenceError, RunInterrupted, train


def tiny(task="digits", **kw):
    base = dict(
        task=task,
        model="lipschitz",
        hidden_size=16,
        epochs=2,
        batch_size=32,
        max_batches=6,
        eval_batch_size=256,
        lr=0.01,
        model_kwargs={"solver": "rk2", "eps": 0.3},
    )
    base.update(kw)
    return TrainConfig(**base).validate()


def test_digits_end_to_end(tmp_path):
    out = tmp_path / "run"
    res = train(tiny(), out)
    assert set(res["test"]) == {"accuracy", "loss"}
    assert 0.0 <= res["test"]["accuracy"] <= 1.0
    assert res["num_parameters"] > 0 and res["wall_time_s"] > 0
    assert res["eigenvalues"][0]["A_eig_real_max"] >= res["eigenvalues"][0]["A_eig_real_min"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2]
    assert TrainConfig.from_toml((out / "config.toml").read_text()) == tiny()
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["test"] == res["test"]
    # evaluate recomputes the same test metrics from the best checkpoint
    again = evaluate_run(out)
    assert again["accuracy"] == pytest.approx(res["test"]["accuracy"], abs=1e-12)
    ck = load_checkpoint(out / "checkpoints" / "best.pt")
    assert "model" in ck


def test_adding_end_to_end(tmp_path):
    cfg = tiny(
        "adding", task_kwargs={"length": 20}, model="odernn", model_kwargs={"eps": 0.3}, epochs=1
    )
    res = train(cfg, tmp_path / "run")
    # the metric is the mean squared error itself: the same number as the loss, and the same
    # again when the best checkpoint is re-evaluated
    assert res["test"]["mse"] == pytest.approx(res["test"]["loss"], rel=1e-6)
    assert evaluate_run(tmp_path / "run")["mse"] == pytest.approx(res["test"]["mse"], rel=1e-6)


def test_training_learns_digits(tmp_path):
    cfg = tiny(epochs=4, max_batches=0, hidden_size=32)
    res = train(cfg, tmp_path / "run")
    assert res["test"]["accuracy"] > 0.6


def test_test_every_logs_curve_without_changing_training(tmp_path):
    plain = train(tiny(), tmp_path / "plain")
    curve = train(tiny(test_every=1), tmp_path / "curve")
    recs = [json.loads(l) for l in (tmp_path / "curve" / "metrics.jsonl").read_text().splitlines()]
    assert [("test_accuracy" in r, "test_loss" in r) for r in recs] == [(True, True)] * 2
    # monitoring the test set leaves the training trajectory (weights, RNG, data order) unchanged
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "curve")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert curve["test"] == plain["test"]
    plain_recs = (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()
    assert all("test_accuracy" not in json.loads(l) for l in plain_recs)


def _weights(out):
    return load_checkpoint(out / "checkpoints" / "last.pt")["model"]


def test_resume_is_bit_identical(tmp_path):
    cfg = tiny(epochs=3, max_batches=5, model_kwargs={"solver": "euler", "eps": 0.3})
    full = tmp_path / "full"
    train(cfg, full)

    part = tmp_path / "part"

    class StopAfter7(Callback):
        calls = 0

        def should_stop(self, run):
            self.calls += 1
            return self.calls >= 7  # mid-epoch 2 (5 steps per epoch)

    with pytest.raises(RunInterrupted):
        train(cfg, part, callbacks=[StopAfter7()])
    ck = load_checkpoint(part / "checkpoints" / "last.pt")
    # 5 step polls + 1 end-of-epoch poll in epoch 1, then stop after step 1 of epoch 2
    assert (int(ck["epoch"]), int(ck["step"])) == (2, 1)
    res = train(None, part, resume=True)
    a, b = _weights(full), _weights(part)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    full_metrics = (full / "metrics.jsonl").read_text().splitlines()
    part_metrics = (part / "metrics.jsonl").read_text().splitlines()
    strip = lambda l: {k: v for k, v in json.loads(l).items() if k not in ("seconds", "seq_per_s")}
    assert [strip(l) for l in full_metrics] == [strip(l) for l in part_metrics]
    assert res["test"] == json.loads((full / "results.json").read_text())["test"]


class Kick(Callback):
    """A phase at the start of every epoch that changes the model, as gradient flossing will:
    steps of its own drawn from its own generator, its state in the checkpoint, its own timing
    in the epoch's record."""

    state_key = "kick"

    def __init__(self):
        self.generator = torch.Generator().manual_seed(7)
        self.steps = 0

    def on_epoch_start(self, run, epoch):
        with torch.no_grad():
            for p in run.model.parameters():
                p.add_(torch.randn(p.shape, generator=self.generator, dtype=p.dtype) * 1e-3)
        self.steps += 1
        return {"kick": {"epoch": epoch, "steps_done": self.steps, "seconds": 0.01 * epoch}}

    def state_dict(self):
        return {"generator": self.generator.get_state(), "steps": self.steps}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])
        self.steps = int(state["steps"])


def test_a_callback_may_train_at_epoch_start_and_resume_exactly(tmp_path):
    """The loop's extension point for periodic phases: a callback that changes the model at
    every epoch start, with its generator's state in the checkpoint, gives an interrupted and
    resumed run the weights and records of an uninterrupted one."""
    cfg = tiny(epochs=3, max_batches=4, model_kwargs={"solver": "euler", "eps": 0.3})
    full, part, plain = tmp_path / "full", tmp_path / "part", tmp_path / "plain"
    train(cfg, full, callbacks=[Kick()])
    train(cfg, plain)

    class StopAfter6(Callback):
        calls = 0

        def should_stop(self, run):
            self.calls += 1
            return self.calls >= 6  # after step 1 of epoch 2 (4 steps and 1 epoch poll)

    with pytest.raises(RunInterrupted):
        train(cfg, part, callbacks=[Kick(), StopAfter6()])
    ck = load_checkpoint(part / "checkpoints" / "last.pt")
    assert (int(ck["epoch"]), int(ck["step"])) == (2, 1) and ck["callbacks"]["kick"]["steps"] == 2
    train(None, part, resume=True, callbacks=[Kick()])
    a, b, c = _weights(full), _weights(part), _weights(plain)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the phase did change the model
    records = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["kick"] for r in records] == [
        {"epoch": e, "steps_done": e, "seconds": 0.01 * e} for e in (1, 2, 3)]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "seq_per_s")}
    full_records = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [strip(r) for r in records] == [strip(r) for r in full_records]


def test_divergence_names_epoch_and_step(tmp_path):
    # a step size far outside the stable region makes the state overflow within 8 steps
    cfg = tiny(model_kwargs={"solver": "euler", "eps": 1e8, "init_std": 10.0}, epochs=2)
    with pytest.raises(DivergenceError, match=r"epoch \d+, step \d+"):
        train(cfg, tmp_path / "run")


def test_refuses_existing_run(tmp_path):
    out = tmp_path / "run"
    train(tiny(epochs=1, max_batches=2), out)
    with pytest.raises(ValueError, match="already holds"):
        train(tiny(epochs=1, max_batches=2, lr=0.5), out)
    train(tiny(epochs=1, max_batches=2, lr=0.5), out, force=True)
    assert TrainConfig.from_toml((out / "config.toml").read_text()).lr == 0.5


def test_presets_and_config_errors():
    presets = list_presets()
    for name in (
        "smnist-lipschitz-128-euler",
        "psmnist-lipschitz-64-rk2",
        "npcifar-lipschitz-256",
        "speech-lipschitz-256-euler",
        "speech-lipschitz-256-rk2",
        "speech-lstm-155",
        "ptb-char-lipschitz-256",
        "ptb-char-lstm-168",
        "digits-lipschitz",
    ):
        assert name in presets and presets[name]
    c = resolve_config(preset="smnist-lipschitz-128-euler")
    assert (c.lr, c.batch_size, c.epochs, c.lr_decay_epochs) == (0.003, 128, 100, [90])
    assert c.model_kwargs == {
        "solver": "euler",
        "eps": 0.03,
        "beta": 0.75,
        "gamma_A": 0.001,
        "gamma_W": 0.001,
        "init_std": 0.1,
    }
    p = resolve_config(preset="psmnist-lipschitz-128-rk2")
    assert p.lr == 0.0035 and p.model_kwargs["solver"] == "rk2"
    with pytest.raises(ValueError, match="preset"):
        resolve_config(preset="nope")
    for bad in (["lr"], ["lr=abc def"], ['lr="x"'], ["nokey=1"], ["=3"], ["foo.bar=1"]):
        with pytest.raises(ValueError):
            resolve_config(task="digits", model="lipschitz", overrides=parse_set(bad))
    assert parse_set(["model.solver=rk2", "lr_decay_epochs=[3, 5]"]) == {
        "model.solver": "rk2",
        "lr_decay_epochs": [3, 5],
    }


def test_cli_errors(tmp_path, capsys):
    assert (
        main(["train", "--task", "nope", "--model", "lipschitz", "--out", str(tmp_path / "a")]) == 2
    )
    assert "--task" in capsys.readouterr().out
    assert main(["train", "--task", "digits", "--model", "nope", "--out", str(tmp_path / "b")]) == 2
    assert "--model" in capsys.readouterr().out
    assert main(["train", "--preset", "nope", "--out", str(tmp_path / "c")]) == 2
    assert (
        main(
            [
                "train",
                "--task",
                "digits",
                "--model",
                "rnn",
                "--set",
                "lr",
                "--out",
                str(tmp_path / "d"),
            ]
        )
        == 2
    )
    assert main(["evaluate", str(tmp_path / "missing")]) == 2


def test_cli_train_and_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--task",
            "digits",
            "--model",
            "gru",
            "--out",
            str(out),
            "--set",
            "epochs=1",
            "--set",
            "hidden_size=8",
            "--set",
            "max_batches=3",
        ]
    )
    assert rc == 0
    assert (out / "results.json").is_file()
    assert main(["evaluate", str(out)]) == 0
    assert "accuracy" in capsys.readouterr().out
    # a second train into the same directory is refused without --force
    assert main(["train", "--task", "digits", "--model", "gru", "--out", str(out)]) == 2


def _write_tiny_mnist(folder, n_train=40, n_test=10):
    import gzip
    import struct

    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + imgs.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, n) + labels.tobytes())


def test_psmnist_permutation_saved_in_run(tmp_path):
    _write_tiny_mnist(tmp_path / "data" / "mnist")
    perms = []
    for name in ("a", "b"):
        cfg = tiny(
            "psmnist",
            task_kwargs={"valid_size": 10},
            epochs=1,
            max_batches=1,
            batch_size=8,
            hidden_size=4,
        )
        train(cfg, tmp_path / name, data_dir=tmp_path / "data")
        meta = json.loads((tmp_path / name / "task_meta.json").read_text())
        perms.append(meta["permutation"])
    assert sorted(perms[0]) == list(range(784))
    assert perms[0] == perms[1]


def test_cli_missing_data_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LIPSCHITZ_RNN_NO_DOWNLOAD", "1")
    rc = main(
        [
            "train",
            "--task",
            "smnist",
            "--model",
            "lipschitz",
            "--out",
            str(tmp_path / "r"),
            "--data-dir",
            str(tmp_path / "empty"),
        ]
    )
    assert rc == 2
    out = capsys.readouterr().out
    assert "LIPSCHITZ_RNN_DATA" in out and "train-images-idx3-ubyte" in out


def test_cli_bench_errors(capsys):
    from lipschitz_rnn.cli import main

    assert main(["bench", "--repeats", "0"]) == 2
    assert "--repeats" in capsys.readouterr().out
    if not torch.cuda.is_available():
        assert main(["bench", "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().out


def test_certify_needs_no_data(tmp_path, monkeypatch, capsys):
    """A run writes model.json; load_run(data=False) and `certify` rebuild the model from it
    without reading the data set, and the weights are those of the data-backed load."""
    import lipschitz_rnn.runs.rundir as rundir

    out = tmp_path / "run"
    train(tiny(epochs=1, max_batches=2), out)
    sizes = json.loads((out / "model.json").read_text())
    assert sizes == {"input_size": 8, "output_size": 10, "readout": "last", "vocab_size": None}
    _, _, with_data = load_run(out)
    capsys.readouterr()
    assert main(["certify", str(out)]) == 0
    expected = capsys.readouterr().out

    def no_data(*a, **k):
        raise AssertionError("the data set was read")

    monkeypatch.setattr(rundir, "TaskRunner", no_data)
    config, runner, model = load_run(out, data=False)
    assert runner is None and config.task == "digits"
    a, b = with_data.state_dict(), model.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert main(["certify", str(out)]) == 0
    assert capsys.readouterr().out == expected and "Lipschitz cell, hidden 16" in expected
    with pytest.raises(AssertionError, match="data set was read"):  # data=True still loads it
        load_run(out)
    (out / "model.json").unlink()  # an older run: falls back to the task
    with pytest.raises(AssertionError, match="data set was read"):
        load_run(out, data=False)


def test_quickstart_twice_shows_the_run_and_says_how_to_start_over(tmp_path, capsys):
    out = tmp_path / "qs"
    args = ["quickstart", "--out", str(out), "--epochs", "1"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "quick start: 8x8 UCI digits" in first and "the quick start:" not in first
    metrics = (out / "metrics.jsonl").read_text()
    acc = json.loads((out / "results.json").read_text())["test"]["accuracy"]
    # the README's command run a second time: no error, no retraining, the same numbers
    assert main(args) == 0
    second = " ".join(capsys.readouterr().out.split())
    assert "--resume" not in second and "quickstart --force" in second
    assert f"test accuracy {100 * acc:.2f}%" in second and "Theorem 1" in second
    assert (out / "metrics.jsonl").read_text() == metrics
    # other settings into the same folder: refused, naming quickstart's own options
    assert main(["quickstart", "--out", str(out), "--epochs", "2"]) == 2
    refused = " ".join(capsys.readouterr().out.split())
    assert "--resume" not in refused and "--force" in refused and "--out DIR" in refused
    # an interrupted quick start of the same settings is trained again, not refused
    (out / "results.json").unlink()
    assert main(args) == 0
    assert (out / "results.json").is_file() and "--resume" not in capsys.readouterr().out
    # --force trains again
    assert main([*args, "--force"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_ptb_preset_documents_its_initial_transient():
    """ptb-char-lipschitz-256 starts far above uniform bpc (issue 26): the preset says so, and
    says why. The why, checked on a made-up character stream: at initialisation the stable
    step's linear part has norm exactly 1 - eps gamma_A, so the state sums its input; after one
    150-character segment the logits are large, and the carried state makes the next worse."""
    import math

    from lipschitz_rnn.runs.model import build_model
    from lipschitz_rnn.train.rng import seed_everything

    desc = list_presets()["ptb-char-lipschitz-256"]
    assert "far above uniform" in desc and "ptb-char-lipschitz-256.toml" in desc
    cfg = resolve_config(preset="ptb-char-lipschitz-256")
    eps, gamma = cfg.model_kwargs["eps"], cfg.model_kwargs["gamma_A"]
    V = 50  # the PTB character vocabulary
    seed_everything(0)
    net = build_model(cfg, sizes={"input_size": V, "output_size": V, "readout": "all",
                                  "vocab_size": V})
    cell = net.rnn.cells[0]
    with torch.no_grad():
        eye = torch.eye(cfg.hidden_size, dtype=torch.float64)
        norm = torch.linalg.matrix_norm(eye + eps * cell.A.double(), ord=2)
        assert float(norm) == pytest.approx(1 - eps * gamma, abs=1e-6)
        freq = 1.0 / torch.arange(1, V + 1)  # Zipf-like character frequencies
        g = torch.Generator().manual_seed(0)
        x = torch.multinomial(freq / freq.sum(), 301 * 8, replacement=True,
                              generator=g).reshape(301, 8)
        first, h = net(x[:150], None, return_state=True)
        second, _ = net(x[150:300], h, return_state=True)

        def bits(logits, y):
            return float(torch.nn.functional.cross_entropy(
                logits.reshape(-1, V), y.reshape(-1))) / math.log(2)

        bpc1, bpc2 = bits(first, x[1:151]), bits(second, x[151:301])
        state = net.rnn(net.embedding(x[:150]))[0].pow(2).mean(-1).sqrt().mean(-1)
    assert bpc1 > math.log2(V) + 3 and bpc2 > bpc1  # far above uniform, worse when carried
    assert float(state[149]) > 5 * float(state[9])  # the state sums its input


def test_adamw_decays_the_weights_apart_from_the_gradient(tmp_path):
    """``optimizer = "adamw"`` is torch's AdamW (decoupled decay): with weight_decay 0 it is
    Adam, with weight_decay > 0 another trajectory than Adam's L2 penalty."""
    from lipschitz_rnn.train.loop import _make_optimizer

    model = torch.nn.Linear(2, 2)
    opt = _make_optimizer(tiny(optimizer="adamw", weight_decay=0.05), model)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == 0.05
    for name, wd in (("adam", 0.0), ("adamw", 0.0), ("adam", 0.05), ("adamw", 0.05)):
        train(tiny(optimizer=name, weight_decay=wd, epochs=1, max_batches=3),
              tmp_path / f"{name}{wd}")
    w = {k: _weights(tmp_path / k) for k in ("adam0.0", "adamw0.0", "adam0.05", "adamw0.05")}
    assert all(torch.equal(w["adam0.0"][k], w["adamw0.0"][k]) for k in w["adam0.0"])
    assert not all(torch.equal(w["adam0.05"][k], w["adamw0.05"][k]) for k in w["adam0.05"])
    with pytest.raises(ValueError, match="optimizer must be one of"):
        tiny(optimizer="rmsprop")
