"""The [flossing] settings and a flossing phase on a real task (the loop wiring is tested in
test_train)."""

import copy

import pytest
import torch

from lipschitz_rnn.data import get_task
from lipschitz_rnn.models import SequenceModel, build
from lipschitz_rnn.runs.config import FlossingConfig
from lipschitz_rnn.train.flossing import Flossing, sequence_sampler


def _setup(seed=0, **cfg):
    task = get_task("delayed-xor", delay=4, length=40, n_train=64, n_valid=8, n_test=8)
    torch.manual_seed(seed)
    rnn = build("rnn", 1, 12)
    with torch.no_grad():  # chaotic: gain 1.8
        rnn.weight_hh_l0.normal_(0.0, 1.8 / 12**0.5)
    model = SequenceModel(rnn, 2, mode="all")
    c = FlossingConfig(**{"k": 6, "warmup": 5, "steps": 30, "batch": 4, "lr": 0.01, **cfg})
    return task, model, Flossing(c.validate(), model, sequence_sampler(task), seed)


def test_a_phase_pushes_the_exponents_to_the_target_and_times_itself():
    _, model, fl = _setup()
    readout = model.readout.weight.detach().clone()
    rec = fl.phase(60)
    assert rec["steps"] == 60 and rec["seconds"] > 0 and fl.steps_done == 60
    assert len(rec["spectrum_before"]) == len(rec["spectrum_after"]) == 6
    size = lambda s: sum(v * v for v in s) / len(s)
    assert size(rec["spectrum_after"]) < 0.3 * size(rec["spectrum_before"])
    assert rec["loss_last"] < rec["loss_first"]
    # "recurrent" (the default) leaves the readout alone
    assert torch.equal(model.readout.weight.detach(), readout)


def test_state_dict_resumes_exactly():
    _, m1, a = _setup()
    a.phase(5)
    state = copy.deepcopy(a.state_dict())  # as a checkpoint would hold it
    weights = {k: v.clone() for k, v in m1.state_dict().items()}
    a.phase(5)
    _, m2, b = _setup(seed=0)
    m2.load_state_dict(weights)
    b.load_state_dict(state)
    b.phase(5)
    for (n1, p1), (_, p2) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(p1, p2), n1
    assert a.steps_done == b.steps_done == 10


def test_params_all_changes_the_readout_too():
    _, model, fl = _setup(params="all")
    before = model.readout.weight.detach().clone()
    fl.phase(3)
    # the readout does not enter the loss: its gradient is None, Adam leaves it
    assert torch.equal(model.readout.weight.detach(), before)
    assert len(fl.params) == len(list(model.parameters()))


def test_tokens_are_sampled_as_windows_of_the_stream():
    task = get_task("delayed-xor", delay=2, length=3, n_train=4)  # a stand-in
    stream = torch.arange(1000)

    class LM:
        kind = "language_model"

        def split(self, name):
            return stream

    sample = sequence_sampler(LM())
    x = sample(5, 20, torch.Generator().manual_seed(0))
    assert x.shape == (20, 5) and x.dtype == torch.long
    assert bool((x[1:] - x[:-1] == 1).all())  # consecutive tokens of the stream
    with pytest.raises(ValueError, match="flossing.warmup"):
        sequence_sampler(task)(2, 50, torch.Generator())


@pytest.mark.parametrize(
    "kw,exc,needle",
    [
        ({"k": -1}, ValueError, "flossing.k"),
        ({"steps": 0}, ValueError, "flossing.steps"),
        ({"batch": 1.5}, TypeError, "flossing.batch"),
        ({"before": -3}, ValueError, "flossing.before"),
        ({"lr": 0.0}, ValueError, "flossing.lr"),
        ({"params": "readout"}, ValueError, "flossing.params"),
        ({"every": 2}, ValueError, "every and flossing.during"),
        ({"target": "x"}, TypeError, "flossing.target"),
    ],
)
def test_bad_values_name_the_key(kw, exc, needle):
    with pytest.raises(exc, match=needle):
        FlossingConfig(**kw).validate()


def test_checks_against_the_model_and_the_task():
    c = FlossingConfig(k=30, warmup=10, steps=20).validate()
    with pytest.raises(ValueError, match="flossing.k=30 is larger than the model's state size 24"):
        c.check_against(24, 100)
    with pytest.raises(ValueError, match="exceeds the task's 25 time steps"):
        FlossingConfig(k=3, warmup=10, steps=20).validate().check_against(24, 25)
    assert not FlossingConfig().enabled and FlossingConfig(before=1).enabled
    with pytest.raises(ValueError, match="unknown flossing keys"):
        FlossingConfig.from_dict({"stepz": 3})
