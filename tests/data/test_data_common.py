"""Data directory resolution, the task registry's argument checks, verified atomic downloads."""

import gzip
import hashlib
from pathlib import Path

import pytest

from lipschitz_rnn.data import (
    TASKS,
    ChecksumError,
    DataNotFoundError,
    DownloadError,
    RemoteFile,
    download_file,
    get_task,
    resolve_data_dir,
)
from lipschitz_rnn.data._common import downloads_enabled


def test_resolve_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPSCHITZ_RNN_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "explicit") == (tmp_path / "explicit").resolve()
    assert resolve_data_dir() == (tmp_path / "env").resolve()
    monkeypatch.delenv("LIPSCHITZ_RNN_DATA")
    assert resolve_data_dir() == (Path.home() / ".cache" / "lipschitz_rnn").resolve()
    assert not (tmp_path / "explicit").exists()  # resolving never creates anything


def test_downloads_enabled_env(monkeypatch):
    monkeypatch.delenv("LIPSCHITZ_RNN_NO_DOWNLOAD")
    assert downloads_enabled(True) and not downloads_enabled(False)
    monkeypatch.setenv("LIPSCHITZ_RNN_NO_DOWNLOAD", "1")
    assert not downloads_enabled(True)


def test_task_names_listed():
    assert {"smnist", "psmnist", "rmnist", "scifar", "npcifar", "speech", "ptb-char", "adding",
            "copy", "digits"} <= set(TASKS)
    assert all(isinstance(v, str) and v for v in TASKS.values())


def test_unknown_task_lists_names():
    with pytest.raises(ValueError, match="task name") as e:
        get_task("mnist-nope")
    assert "psmnist" in str(e.value) and "digits" in str(e.value)


@pytest.mark.parametrize("kwargs, word, error", [
    ({"length": 0}, "length", ValueError),
    ({"length": -3}, "length", ValueError),
    ({"length": 2.5}, "length", TypeError),  # a wrong type is a TypeError (one rule, _checks.py)
    ({"n_train": 0}, "n_train", ValueError),
    ({"bogus": 1}, "bogus", ValueError),
])
def test_bad_task_kwargs(kwargs, word, error):
    with pytest.raises(error, match=word):
        get_task("adding", **kwargs)


def test_bad_seed_and_file_task_kwargs(tmp_path):
    with pytest.raises(ValueError, match="seed"):
        get_task("digits", seed=-1)
    with pytest.raises(ValueError, match="perm_seed"):  # smnist has no permutation
        get_task("smnist", data_dir=tmp_path, perm_seed=3)
    with pytest.raises(ValueError, match="valid_fraction"):
        get_task("digits", valid_fraction=1.5)


def test_meta_is_serialisable(assert_serialisable):
    for name, kw in [("digits", {}), ("adding", {"length": 5}), ("copy", {"length": 3})]:
        t = get_task(name, **kw)
        assert_serialisable(t.meta_to_save())
        assert t.meta["task"] == name
    with pytest.raises(ValueError, match="language-model"):
        get_task("digits").batchify("train", 4)


def _sha(b):
    return hashlib.sha256(b).hexdigest()


def test_download_file_verifies_and_is_atomic(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload" * 100)
    dest = tmp_path / "out" / "file.bin"
    ok = RemoteFile(urls=(src.as_uri(),), sha256=_sha(src.read_bytes()))
    assert download_file(ok, dest) == dest and dest.read_bytes() == src.read_bytes()

    dest2 = tmp_path / "out" / "other.bin"
    bad = RemoteFile(urls=(src.as_uri(),), sha256="0" * 64)
    with pytest.raises(DownloadError) as e:
        download_file(bad, dest2)
    assert isinstance(e.value.failures[0][1], ChecksumError)
    assert "sha256 mismatch" in str(e.value)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.bin"]  # no partial file left


def test_download_checks_gunzipped_bytes_and_falls_back(tmp_path):
    raw = b"idx-bytes" * 50
    gz = tmp_path / "a.gz"
    gz.write_bytes(gzip.compress(raw))
    dest = tmp_path / "d" / "a.gz"
    missing = (tmp_path / "nope.gz").as_uri()
    remote = RemoteFile(urls=(missing, gz.as_uri()), sha256=_sha(raw), check_gunzipped=True)
    download_file(remote, dest)
    assert gzip.decompress(dest.read_bytes()) == raw
    # the compressed bytes' hash is not what is checked
    with pytest.raises(DownloadError, match="gunzipped"):
        download_file(RemoteFile(urls=(gz.as_uri(),), sha256=_sha(gz.read_bytes()),
                                 check_gunzipped=True), tmp_path / "d" / "b.gz")


def test_data_not_found_is_file_not_found():
    assert issubclass(DataNotFoundError, FileNotFoundError)
