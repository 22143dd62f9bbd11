"""The synthetic long-memory tasks: delayed XOR (and copy's delay key) against the formulas."""

import pytest
import torch

from lipschitz_rnn.data import get_task
from lipschitz_rnn.runs.config import TrainConfig
from lipschitz_rnn.runs.rundir import evaluate_run
from lipschitz_rnn.train.loop import train


def _reference_xor(bits, delay):
    """The target of the task written from its definition, one step at a time."""
    out = []
    for t in range(len(bits)):
        out.append(-100 if t < delay else bits[t - delay // 2] ^ bits[t - delay])
    return out


@pytest.mark.parametrize("delay,length", [(2, 3), (4, 10), (10, 57)])
def test_delayed_xor_matches_its_definition(delay, length):
    task = get_task("delayed-xor", delay=delay, length=length, n_train=20, n_valid=3, n_test=3)
    assert (task.input_size, task.output_size, task.readout) == (1, 2, "all")
    for i in range(len(task.train)):
        x, y = task.train[i]
        assert x.shape == (length, 1) and x.dtype == torch.float32 and y.shape == (length,)
        assert set(x.unique().tolist()) <= {-1.0, 1.0}
        bits = [int(v > 0) for v in x[:, 0].tolist()]
        assert y.tolist() == _reference_xor(bits, delay)
    assert task.meta["scored_steps"] == length - delay


def test_delayed_xor_is_balanced_and_seeded():
    a = get_task("delayed-xor", delay=6, n_train=400, n_valid=5, n_test=5, seed=3)
    b = get_task("delayed-xor", delay=6, n_train=400, n_valid=5, n_test=5, seed=3)
    c = get_task("delayed-xor", delay=6, n_train=400, n_valid=5, n_test=5, seed=4)
    ys = torch.stack([a.train[i][1] for i in range(400)])
    scored = ys[ys != -100].double()
    assert abs(scored.mean().item() - 0.5) < 0.02  # fair bits give a fair XOR
    assert torch.equal(a.test[0][0], b.test[0][0])
    assert not torch.equal(a.train[0][0], c.train[0][0])
    # the test split does not move when the training set grows
    d = get_task("delayed-xor", delay=6, n_train=50, n_valid=5, n_test=5, seed=3)
    assert torch.equal(a.test[4][0], d.test[4][0])


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"delay": 5}, "delay must be even"),
        ({"delay": 0}, "delay"),
        ({"delay": 10, "length": 10}, "length must be larger than delay"),
        ({"delay": 4, "length": 2.5}, "length"),
    ],
)
def test_delayed_xor_refuses_bad_keys(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        get_task("delayed-xor", **kw)


def test_copy_takes_a_delay_key():
    by_delay = get_task("copy", delay=7, n_train=2, n_valid=2, n_test=2)
    by_length = get_task("copy", length=7, n_train=2, n_valid=2, n_test=2)
    assert by_delay.meta["delay"] == by_length.meta["delay"] == 7
    assert torch.equal(by_delay.train[1][0], by_length.train[1][0])
    with pytest.raises(ValueError, match="delay=7 and length=8"):
        get_task("copy", delay=7, length=8)


def test_delayed_xor_trains_through_the_loop(tmp_path):
    cfg = TrainConfig(
        task="delayed-xor", model="gru", hidden_size=8, epochs=1, batch_size=16, max_batches=4,
        task_kwargs={"delay": 4, "length": 12, "n_train": 64, "n_valid": 32, "n_test": 32},
    ).validate()
    res = train(cfg, tmp_path / "run")
    assert set(res["test"]) == {"accuracy", "loss"}
    assert 0.0 <= res["test"]["accuracy"] <= 1.0
    # the loss is the 2-class cross-entropy over the scored steps only: near log 2 untrained
    assert 0.3 < res["test"]["loss"] < 1.5
    assert evaluate_run(tmp_path / "run")["accuracy"] == pytest.approx(res["test"]["accuracy"])
