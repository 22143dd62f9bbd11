"""Character-level PTB: symbol mapping, vocabulary, batchify and BPTT segment continuity."""

import hashlib
import io
import math

import pytest
import torch
from formats import TEXTS, write_ptb

from lipschitz_rnn.data import DataNotFoundError, _common, batchify, bptt_segments, get_task, ptb


def test_symbols_and_vocab():
    assert ptb.text_to_symbols(" the cat \n a \n") == list("the_cat") + ["<eos>", "a", "<eos>"]
    vocab = ptb.build_vocab(TEXTS["train"])
    assert vocab == ["<eos>", "_", "a", "c", "d", "e", "g", "h", "n", "o", "r", "s", "t"]


def test_ptb_char_task(tmp_path, assert_serialisable):
    write_ptb(tmp_path)
    t = get_task("ptb-char", data_dir=tmp_path, download=False)
    assert (t.kind, t.metric, t.readout) == ("language_model", "bpc", "all")
    vocab = t.meta["vocab"]
    assert t.input_size == t.output_size == len(vocab) == 13
    assert ptb.decode(t.train, vocab) == list("the_cat_sat") + ["<eos>"] + list("a_dog_ran") + ["<eos>"]
    assert ptb.decode(t.valid, vocab) == list("the_dog") + ["<eos>"]
    assert ptb.decode(t.test, vocab) == list("a_cat") + ["<eos>"]  # empty lines add nothing
    assert t.train.dtype == torch.long and t.meta["num_tokens"]["train"] == 22
    assert t.batchify("train", 2).shape == (11, 2)
    assert_serialisable(t.meta_to_save())


def test_unknown_symbol_in_test_is_an_error(tmp_path):
    write_ptb(tmp_path, {**TEXTS, "test": " a zebra \n"})
    with pytest.raises(ValueError, match="test.*'b'"):
        get_task("ptb-char", data_dir=tmp_path, download=False)


def test_batchify_layout():
    data = batchify(torch.arange(23), 3)
    assert data.shape == (7, 3)  # the last 23 % 3 tokens are dropped
    for b in range(3):
        assert data[:, b].tolist() == list(range(7 * b, 7 * b + 7))  # each column is contiguous
    with pytest.raises(ValueError, match="batch_size"):
        batchify(torch.arange(5), 4)


def test_bptt_segments_continuity():
    data = batchify(torch.arange(101), 4)  # (25, 4)
    segs = list(bptt_segments(data, bptt=6))
    assert len(segs) == math.ceil((data.shape[0] - 1) / 6)
    for k, (x, y) in enumerate(segs):
        assert x.shape == y.shape and x.shape[1] == 4 and x.dtype == torch.long
        assert torch.equal(y[:-1], x[1:])  # target = input shifted by one
        assert torch.equal(y, x + 1)  # stream b is 25 b, 25 b + 1, ...: next token = token + 1
        if k > 0:  # segment k starts where segment k - 1 ended, per stream
            assert torch.equal(x[0], segs[k - 1][1][-1])
    assert torch.equal(torch.cat([x for x, _ in segs]), data[:-1])
    assert torch.equal(torch.cat([y for _, y in segs]), data[1:])


def test_missing_ptb_error(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        get_task("ptb-char", data_dir=tmp_path, download=False)
    msg = str(e.value)
    assert str(tmp_path / "ptb") in msg and "ptb.valid.txt" in msg and "LIPSCHITZ_RNN_DATA" in msg


def test_download_checksum_mismatch_then_success(tmp_path, monkeypatch):
    monkeypatch.delenv("LIPSCHITZ_RNN_NO_DOWNLOAD")
    served = {f"ptb.{s}.txt": t.encode() for s, t in TEXTS.items()}

    def fake_open(url, timeout=60.0):
        return io.BytesIO(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(_common, "open_url", fake_open)
    with pytest.raises(DataNotFoundError) as e:
        get_task("ptb-char", data_dir=tmp_path)
    assert "sha256 mismatch" in str(e.value) and "LIPSCHITZ_RNN_DATA" in str(e.value)
    assert list((tmp_path / "ptb").iterdir()) == []
    monkeypatch.setattr(ptb, "SHA256", {s: hashlib.sha256(t.encode()).hexdigest()
                                        for s, t in TEXTS.items()})
    t = get_task("ptb-char", data_dir=tmp_path)
    assert len(t.meta["vocab"]) == 13
    assert (tmp_path / "ptb" / "ptb.train.txt").read_text() == TEXTS["train"]
