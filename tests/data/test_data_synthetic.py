"""Adding, copy and digits: targets correct by construction, seeded, shapes and ranges."""

import numpy as np
import pytest
import torch

from lipschitz_rnn.data import get_task
from lipschitz_rnn.data._common import make_rng
from lipschitz_rnn.data.digits import stratified_split
from lipschitz_rnn.data.synthetic import COPY_BLANK, COPY_DELIMITER


def test_adding():
    T = 30
    t = get_task("adding", length=T, n_train=50, n_valid=5, n_test=7, seed=3)
    assert (t.kind, t.readout, t.metric, t.input_size, t.output_size) == ("regression", "last", "mse", 2, 1)
    assert (len(t.train), len(t.valid), len(t.test)) == (50, 5, 7)
    for i in range(len(t.train)):
        x, y = t.train[i]
        assert x.shape == (T, 2) and y.shape == (1,) and y.dtype == torch.float32
        marks = torch.nonzero(x[:, 1]).flatten().tolist()
        assert len(marks) == 2 and marks[0] < T // 2 <= marks[1]
        assert set(x[:, 1].unique().tolist()) == {0.0, 1.0}
        assert 0 <= float(x[:, 0].min()) and float(x[:, 0].max()) < 1
        assert float(y) == pytest.approx(float(x[marks, 0].sum()))
    again = get_task("adding", length=T, n_train=50, n_valid=5, n_test=7, seed=3)
    assert torch.equal(again.test[6][0], t.test[6][0])
    # the test set does not depend on the training set's size
    bigger = get_task("adding", length=T, n_train=80, n_valid=5, n_test=7, seed=3)
    assert torch.equal(bigger.test[0][0], t.test[0][0])
    other = get_task("adding", length=T, n_train=50, n_valid=5, n_test=7, seed=4)
    assert not torch.equal(other.train[0][0], t.train[0][0])
    assert not torch.equal(t.train[0][0], t.valid[0][0])


def test_copy():
    T = 7
    t = get_task("copy", length=T, n_train=20, n_valid=3, n_test=3, seed=1)
    assert (t.kind, t.readout, t.metric, t.input_size, t.output_size) == (
        "classification", "all", "accuracy", 10, 8)
    for i in range(len(t.train)):
        x, y = t.train[i]
        assert x.shape == (T + 20, 10) and y.shape == (T + 20,) and y.dtype == torch.long
        assert torch.equal(x.sum(1), torch.ones(T + 20))  # one-hot
        tok = x.argmax(1)
        seq = tok[:10]
        assert (seq < 8).all()
        assert (tok[10 : 10 + T - 1] == COPY_BLANK).all()
        assert int(tok[10 + T - 1]) == COPY_DELIMITER
        assert (tok[10 + T :] == COPY_BLANK).all()
        assert (y[:-10] == -100).all() and torch.equal(y[-10:], seq)
    assert torch.equal(get_task("copy", length=T, n_train=20, seed=1).train[5][1], t.train[5][1])
    with pytest.raises(ValueError, match="length"):
        get_task("copy", length=0)


def test_digits():
    t = get_task("digits", seed=0)
    assert (t.kind, t.readout, t.input_size, t.output_size) == ("classification", "last", 8, 10)
    n = len(t.train) + len(t.valid) + len(t.test)
    assert n == 1797 and len(t.test) == pytest.approx(0.2 * n, abs=10)
    assert len(t.valid) == pytest.approx(0.1 * n, abs=10)
    x, y = t.train[0]
    assert x.shape == (8, 8) and x.dtype == torch.float32 and y.dtype == torch.long and y.shape == ()
    for ds in (t.train, t.valid, t.test):
        assert 0.0 <= float(ds.images.min()) and float(ds.images.max()) <= 1.0
    assert float(t.train.images.max()) == 1.0
    # row by row: compare with sklearn's own 8x8 image
    from sklearn.datasets import load_digits

    d = load_digits()
    tr, va, te = stratified_split(d.target, 0.1, 0.2, make_rng(0, "digits"))
    assert torch.equal(t.train[0][0], torch.from_numpy(d.images[tr[0]] / 16).float())
    assert set(tr).isdisjoint(va) and set(tr).isdisjoint(te) and set(va).isdisjoint(te)
    assert len(set(tr) | set(va) | set(te)) == 1797
    for c in range(10):  # stratified
        assert np.sum(d.target[te] == c) == round(0.2 * np.sum(d.target == c))
    assert torch.equal(get_task("digits", seed=0).valid.images, t.valid.images)
    assert not torch.equal(get_task("digits", seed=1).valid.images, t.valid.images)
