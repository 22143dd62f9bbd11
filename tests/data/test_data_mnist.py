"""MNIST-family loaders on tiny idx files written in the real format."""

import hashlib
import io

import numpy as np
import pytest
import torch
from formats import N_TEST, N_TRAIN, idx_bytes, write_mnist

from lipschitz_rnn.data import DataNotFoundError, _common, get_task, mnist
from lipschitz_rnn.data.mnist import read_idx


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx(tmp_path, gz):
    arrays = write_mnist(tmp_path / "mnist", gz=gz)
    suffix = ".gz" if gz else ""
    im = read_idx(tmp_path / "mnist" / f"train-images-idx3-ubyte{suffix}")
    assert im.dtype == np.uint8 and im.shape == (N_TRAIN, 28, 28)
    np.testing.assert_array_equal(im, arrays["train-images-idx3-ubyte"])


def test_read_idx_rejects_truncated(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(idx_bytes(np.zeros((2, 28, 28)))[:-5])
    with pytest.raises(ValueError, match="header says"):
        read_idx(p)


def test_smnist_pixel_order_labels_and_split(tmp_path):
    arrays = write_mnist(tmp_path / "mnist")
    t = get_task("smnist", data_dir=tmp_path, valid_size=3, download=False)
    assert (t.kind, t.readout, t.metric, t.input_size, t.output_size) == (
        "classification", "last", "accuracy", 1, 10)
    assert (len(t.train), len(t.valid), len(t.test)) == (9, 3, N_TEST)
    ids = {}
    for split in ("train", "valid"):
        ds = t.split(split)
        ids[split] = set()
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (784, 1) and x.dtype == torch.float32
            assert y.dtype == torch.long and y.shape == ()
            k = round(float(x[0, 0]) * 255)  # pixel 0 identifies the image
            expected = torch.from_numpy(arrays["train-images-idx3-ubyte"][k].reshape(784)).float() / 255
            assert torch.equal(x[:, 0], expected)
            assert int(y) == k % 10
            ids[split].add(k)
    assert ids["train"].isdisjoint(ids["valid"]) and ids["train"] | ids["valid"] == set(range(N_TRAIN))
    x, y = t.test[2]
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"][2].reshape(784)).float() / 255
    assert torch.equal(x[:, 0], expected) and int(y) == 5
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # the split is seeded: same seed same split, another seed another split
    t2 = get_task("smnist", data_dir=tmp_path, valid_size=3, download=False)
    assert torch.equal(t.valid.images, t2.valid.images)
    t3 = get_task("smnist", data_dir=tmp_path, valid_size=3, download=False, seed=5)
    assert not torch.equal(t.valid.images, t3.valid.images)


def test_rmnist_rows_uncompressed(tmp_path):
    arrays = write_mnist(tmp_path / "mnist", gz=False)
    t = get_task("rmnist", data_dir=tmp_path, valid_size=0.25, download=False)
    assert t.input_size == 28 and len(t.valid) == 3
    x, y = t.test[1]
    img = arrays["t10k-images-idx3-ubyte"][1]
    assert x.shape == (28, 28)
    assert torch.equal(x, torch.from_numpy(img).float() / 255)  # step = row, features = its pixels
    assert int(y) == 4


def test_psmnist_permutation(tmp_path, assert_serialisable):
    arrays = write_mnist(tmp_path / "mnist")
    t = get_task("psmnist", data_dir=tmp_path, valid_size=2, perm_seed=7, download=False)
    perm = np.random.Generator(np.random.PCG64(7)).permutation(784)
    assert t.meta["permutation"] == perm.tolist() and t.meta["perm_seed"] == 7
    assert torch.equal(t.train.permutation, torch.from_numpy(perm))
    x, _ = t.test[0]
    flat = arrays["t10k-images-idx3-ubyte"][0].reshape(784)
    assert torch.equal(x[:, 0], torch.from_numpy(flat[perm]).float() / 255)  # step t = pixel perm[t]
    assert sorted(t.meta["permutation"]) == list(range(784))
    assert_serialisable(t.meta_to_save())
    again = get_task("psmnist", data_dir=tmp_path, valid_size=2, perm_seed=7, download=False, seed=3)
    other = get_task("psmnist", data_dir=tmp_path, valid_size=2, perm_seed=8, download=False)
    assert again.meta["permutation"] == t.meta["permutation"]
    assert other.meta["permutation"] != t.meta["permutation"]
    assert torch.equal(t.valid[0][0][:, 0], t.valid.images[0].float()[t.train.permutation] / 255)


def test_normalize_uses_train_stats(tmp_path):
    write_mnist(tmp_path / "mnist")
    t = get_task("smnist", data_dir=tmp_path, valid_size=2, normalize=True, download=False)
    px = t.train.images.double() / 255
    assert t.meta["normalize"]["mean"] == pytest.approx(float(px.mean()))
    assert t.meta["normalize"]["std"] == pytest.approx(float(px.std(correction=0)))
    x = torch.stack([t.train[i][0] for i in range(len(t.train))])
    assert float(x.mean()) == pytest.approx(0.0, abs=1e-5)


def test_fashion_variant(tmp_path):
    write_mnist(tmp_path / "fashion-mnist")
    t = get_task("fmnist", data_dir=tmp_path, valid_size=2, download=False)
    assert t.train[0][0].shape == (28, 28) and t.meta["dataset"] == "fashion"


def test_missing_mnist_error(tmp_path):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(b"")
    with pytest.raises(DataNotFoundError) as e:
        get_task("smnist", data_dir=tmp_path, download=False)
    msg = str(e.value)
    assert str(tmp_path / "mnist") in msg
    assert "train-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert "LIPSCHITZ_RNN_DATA" in msg and "disabled" in msg


def test_missing_mnist_error_env_no_download(tmp_path):
    # download=True by default, but LIPSCHITZ_RNN_NO_DOWNLOAD=1 (set for every data test) wins
    with pytest.raises(DataNotFoundError, match="LIPSCHITZ_RNN_NO_DOWNLOAD"):
        get_task("psmnist", data_dir=tmp_path)


def _serve(monkeypatch, table):
    def fake_open(url, timeout=60.0):
        for key, data in table.items():
            if url.endswith(key):
                return io.BytesIO(data)
        raise OSError(f"no route to {url}")

    monkeypatch.delenv("LIPSCHITZ_RNN_NO_DOWNLOAD")
    monkeypatch.setattr(_common, "open_url", fake_open)


def test_download_checks_uncompressed_sha256(tmp_path, monkeypatch):
    src = tmp_path / "src"
    arrays = write_mnist(src)
    served = {f"{n}.gz": (src / f"{n}.gz").read_bytes() for n in arrays}
    good = {n: hashlib.sha256(idx_bytes(a)).hexdigest() for n, a in arrays.items()}
    root = tmp_path / "root"
    _serve(monkeypatch, served)
    # published checksums (of the real MNIST) do not match the tiny files: one clear error
    with pytest.raises(DataNotFoundError) as e:
        get_task("smnist", data_dir=root, valid_size=2)
    assert "sha256 mismatch" in str(e.value) and "LIPSCHITZ_RNN_DATA" in str(e.value)
    assert list((root / "mnist").iterdir()) == []  # nothing unverified was kept
    monkeypatch.setitem(mnist.SOURCES["mnist"], "sha256", good)
    t = get_task("smnist", data_dir=root, valid_size=2)
    assert len(t.train) == N_TRAIN - 2
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(served)
