"""Damaged and non-canonical local data files: verified like downloads, errors name the file."""

import gzip
import hashlib
import json
import os
from pathlib import Path

import pytest
from formats import write_mnist, write_ptb

from lipschitz_rnn.data import DataCorruptError, get_task, mnist, ptb


@pytest.fixture
def verify(monkeypatch):
    monkeypatch.setenv("LIPSCHITZ_RNN_VERIFY_DATA", "1")


def _canonical_sha_of(monkeypatch, folder):
    """Declare the fixture's files canonical: their gunzipped sha256 become the known ones."""
    table = {}
    for name in mnist.FILES.values():
        table[name] = hashlib.sha256(gzip.decompress((folder / f"{name}.gz").read_bytes())).hexdigest()
    monkeypatch.setitem(mnist.SOURCES["mnist"], "sha256", table)


def test_truncated_gzip_names_file_and_task(tmp_path):
    write_mnist(tmp_path / "mnist")
    bad = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    with pytest.raises(DataCorruptError) as e:
        get_task("smnist", data_dir=tmp_path, download=False, valid_size=2)
    msg = str(e.value)
    assert "task 'smnist'" in msg and str(bad) in msg and "damaged" in msg


def test_checksum_of_local_files_is_verified_once(tmp_path, monkeypatch, verify):
    write_mnist(tmp_path / "mnist")
    _canonical_sha_of(monkeypatch, tmp_path / "mnist")
    assert len(get_task("smnist", data_dir=tmp_path, download=False, valid_size=2).test) == 5
    cache = Path(os.environ["LIPSCHITZ_RNN_CACHE"]) / "verified.json"
    assert len(json.loads(cache.read_text())) == 4  # one entry per verified file
    # a second load does not hash again: a checksum function that fails proves it
    monkeypatch.setattr("lipschitz_rnn.data._common._digest", lambda *a: pytest.fail("re-hashed"))
    get_task("smnist", data_dir=tmp_path, download=False, valid_size=2)


def test_non_canonical_file_is_refused_when_verifying(tmp_path, monkeypatch, verify):
    write_mnist(tmp_path / "mnist")
    _canonical_sha_of(monkeypatch, tmp_path / "mnist")
    # same size, other content: only the checksum can tell
    p = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(p.read_bytes()))
    raw[-1] ^= 1
    p.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataCorruptError, match="train-labels-idx1-ubyte.gz is damaged or not the"):
        get_task("smnist", data_dir=tmp_path, download=False, valid_size=2)


def test_ptb_local_checksum(tmp_path, monkeypatch, verify):
    write_ptb(tmp_path)
    with pytest.raises(DataCorruptError, match=r"ptb\.train\.txt is damaged or not the canonical"):
        get_task("ptb-char", data_dir=tmp_path, download=False)
    for s in ("train", "valid", "test"):
        digest = hashlib.sha256((tmp_path / "ptb" / f"ptb.{s}.txt").read_bytes()).hexdigest()
        monkeypatch.setitem(ptb.SHA256, s, digest)
    assert get_task("ptb-char", data_dir=tmp_path, download=False).meta["vocab_size"] > 0


def test_undecodable_text_names_file(tmp_path):
    write_ptb(tmp_path)
    (tmp_path / "ptb" / "ptb.valid.txt").write_bytes(b"\xff\xfe\xfa broken")
    with pytest.raises(DataCorruptError, match=r"task 'ptb-char': .*ptb\.valid\.txt is damaged"):
        get_task("ptb-char", data_dir=tmp_path, download=False)
