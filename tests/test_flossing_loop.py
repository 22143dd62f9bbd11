"""The ``[flossing]`` table of a run: settings, errors before anything is written, the phases in
the loop, exact resume after a kill, and sweeps over flossing keys."""

import json

import pytest
import torch

from lipschitz_rnn._io import load_checkpoint
from lipschitz_rnn.runs.config import (
    FlossingConfig,
    TrainConfig,
    config_differences,
    parse_set,
    resolve_config,
)
from lipschitz_rnn.train.callbacks import Callback
from lipschitz_rnn.train.loop import RunInterrupted, train

FLOSS = {"k": 6, "warmup": 3, "steps": 12, "batch": 4, "before": 6, "every": 2, "during": 3,
         "lr": 0.01}


def _config(**flossing) -> TrainConfig:
    over = {"epochs": 5, "batch_size": 16, "hidden_size": 10, "lr": 0.01,
            "task.delay": 4, "task.length": 20, "task.n_train": 64, "task.n_valid": 16,
            "task.n_test": 16}
    over.update({f"flossing.{k}": v for k, v in {**FLOSS, **flossing}.items()})
    return resolve_config(task="delayed-xor", model="rnn", overrides=over)


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run):
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def test_set_keys_build_the_table_and_round_trip_through_toml():
    cfg = resolve_config(task="delayed-xor", model="rnn",
                         overrides=parse_set(["flossing.k=8", "flossing.before=500",
                                              "flossing.target=-0.1", "flossing.lr=1"]))
    assert isinstance(cfg.flossing, FlossingConfig) and cfg.flossing.enabled
    assert (cfg.flossing.k, cfg.flossing.before, cfg.flossing.target) == (8, 500, -0.1)
    assert isinstance(cfg.flossing.lr, float)
    back = TrainConfig.from_toml(cfg.to_toml())
    assert back == cfg and "[flossing]" in cfg.to_toml()
    # a configuration written before the table existed reads as flossing off
    old = {k: v for k, v in cfg.to_dict().items() if k != "flossing"}
    assert not TrainConfig.from_dict(old).flossing.enabled
    # a resume names the flossing keys that differ
    assert config_differences(back, resolve_config(
        task="delayed-xor", model="rnn", overrides={"flossing.k": 8, "flossing.before": 500,
                                                    "flossing.target": -0.1, "flossing.lr": 1.0,
                                                    "flossing.every": 2, "flossing.during": 4}
    )) == {"flossing.every": (0, 2), "flossing.during": (0, 4)}


@pytest.mark.parametrize("overrides, match", [
    ({"flossing.before": -1}, "flossing.before must be >= 0"),
    ({"flossing.steps": 0}, "flossing.steps must be >= 1"),
    ({"flossing.k": 1.5}, "flossing.k must be an int"),
    ({"flossing.every": 2}, "flossing.every and flossing.during go together"),
    ({"flossing.lr": 0}, "flossing.lr"),
    ({"flossing.params": "readout"}, "flossing.params must be one of"),
    ({"flossing.nope": 1}, r"unknown flossing keys \['nope'\]"),
    ({"floss.k": 1}, "unknown table 'floss'"),
])
def test_bad_values_name_the_key(overrides, match):
    with pytest.raises((ValueError, TypeError), match=match):
        resolve_config(task="delayed-xor", model="rnn", overrides=overrides)


@pytest.mark.parametrize("flossing, match", [
    ({"k": 11}, "flossing.k=11 is larger than the model's state size 10"),
    ({"warmup": 10, "steps": 11}, r"flossing.warmup \+ flossing.steps = 21 exceeds the task's 20"),
])
def test_checks_that_need_the_model_run_before_anything_is_written(tmp_path, flossing, match):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        train(_config(**flossing), out)
    assert not out.exists()


def test_the_phases_run_at_their_epochs_and_are_timed_apart(tmp_path):
    cfg = _config()
    results = train(cfg, tmp_path / "run")
    records = _records(tmp_path / "run")
    phases = [(r["epoch"], r["flossing"]["phase"], r["flossing"]["steps"])
              for r in records if "flossing" in r]
    # before training (epoch 1), then every 2 epochs: epochs 3 and 5
    assert phases == [(1, "before", 6), (3, "during", 3), (5, "during", 3)]
    for r in records:
        if "flossing" in r:
            f = r["flossing"]
            assert len(f["spectrum_before"]) == len(f["spectrum_after"]) == 6
            assert f["seconds"] > 0
    assert results["flossing_seconds"] == pytest.approx(
        sum(r["flossing"]["seconds"] for r in records if "flossing" in r))
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ck["callbacks"]["flossing"]["steps_done"] == 12
    # flossing off: no phase, no flossing entries, another trajectory
    plain = train(_config(before=0, every=0, during=0), tmp_path / "plain")
    assert "flossing_seconds" not in plain
    assert all("flossing" not in r for r in _records(tmp_path / "plain"))
    a, b = _weights(tmp_path / "run"), _weights(tmp_path / "plain")
    assert not torch.equal(a["rnn.weight_hh_l0"], b["rnn.weight_hh_l0"])


def test_flossing_moves_the_exponents_toward_the_target(tmp_path):
    # a contracting start (small recurrent weights): flossing lifts the first exponents toward 0
    cfg = _config(before=60, every=0, during=0, lr=0.02)
    cfg.model_kwargs["init_scale"] = 0.3
    train(cfg.validate(), tmp_path / "run")
    f = _records(tmp_path / "run")[0]["flossing"]
    size = lambda s: sum(v * v for v in s) / len(s)
    assert size(f["spectrum_after"]) < 0.5 * size(f["spectrum_before"])


@pytest.mark.parametrize("stop_after", [7, 9])
def test_a_killed_run_with_flossing_resumes_exactly(tmp_path, stop_after):
    """Stopped mid-epoch 2 (7 polls) or at the end of epoch 2, before the flossing phase of
    epoch 3 (9 polls: 4 steps and an epoch poll per epoch), then resumed: the weights and the
    records are those of an uninterrupted run."""
    cfg = _config()
    cfg.max_batches = 4
    full, part = tmp_path / "full", tmp_path / "part"
    train(cfg, full)

    class Stop(Callback):
        calls = 0

        def should_stop(self, run):
            self.calls += 1
            return self.calls >= stop_after

    with pytest.raises(RunInterrupted):
        train(cfg, part, callbacks=[Stop()])
    train(None, part, resume=True)
    a, b = _weights(full), _weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "seq_per_s")}

    def phases(run):
        out = []
        for r in _records(run):
            r = strip(r)
            if "flossing" in r:
                r["flossing"] = {k: v for k, v in r["flossing"].items() if k != "seconds"}
            out.append(r)
        return out

    assert phases(full) == phases(part)


def test_flossing_keys_can_be_swept(tmp_path):
    from lipschitz_rnn.sweep.spec import load_spec

    path = tmp_path / "spec.toml"
    path.write_text('task = "delayed-xor"\nmodel = "rnn"\n[set]\nhidden_size = 8\n'
                    '[set.task]\ndelay = 4\nlength = 20\n[set.flossing]\nk = 4\n'
                    '[grid]\n"flossing.before" = [0, 5]\nseed = [0, 1]\n')
    spec = load_spec(path)
    configs = [t.config for t in spec.trials]
    assert sorted(c.flossing.before for c in configs) == [0, 0, 5, 5]
    assert all(c.flossing.k == 4 for c in configs)
