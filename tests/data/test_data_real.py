"""Smoke tests on the real benchmark data, when a data directory with it is available."""

import os
from pathlib import Path

import pytest

from lipschitz_rnn.data import get_task
from lipschitz_rnn.data.mnist import read_idx


def _root():
    """The data directory the project is pointed at (``LIPSCHITZ_RNN_DATA``; .ci/run sets it to
    ../shared/data when that exists), else None."""
    cand = os.environ.get("LIPSCHITZ_RNN_DATA", "").strip()
    return Path(cand) if cand and Path(cand).is_dir() else None


ROOT = _root()


@pytest.fixture(autouse=True)
def _verify(monkeypatch):
    # the real files are canonical: verify them as users' runs do
    monkeypatch.setenv("LIPSCHITZ_RNN_VERIFY_DATA", "1")


def need(sub):
    if ROOT is None or not (ROOT / sub).is_dir():
        pytest.skip(f"no real {sub}/ data (set LIPSCHITZ_RNN_DATA)")
    return ROOT


def test_real_mnist_sizes():
    root = need("mnist")
    assert read_idx(root / "mnist" / "train-labels-idx1-ubyte.gz").shape == (60000,)
    assert read_idx(root / "mnist" / "t10k-images-idx3-ubyte.gz").shape == (10000, 28, 28)
    t = get_task("psmnist", data_dir=root, download=False)
    assert (len(t.train), len(t.valid), len(t.test)) == (55000, 5000, 10000)
    x, y = t.train[0]
    assert x.shape == (784, 1) and 0 <= int(y) <= 9


def test_real_ptb_char():
    root = need("ptb")
    t = get_task("ptb-char", data_dir=root, download=False)
    assert len(t.meta["vocab"]) == 50
    assert t.meta["num_tokens"]["train"] > 5_000_000
    assert t.batchify("valid", 10).shape[1] == 10


def test_real_speech_tts_first_utterances():
    root = need("speech-tts")
    t = get_task("speech", data_dir=root, download=False, max_utterances=2, source="speech-tts")
    assert (len(t.train), len(t.valid), len(t.test)) == (2, 2, 2)
    x, y = t.train[0]
    assert x.shape[1] == 129 and x.shape == y.shape and x.shape[0] > 50
