"""CIFAR-10 loaders on tiny python-pickle batches written like the real ones."""

import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest
import torch

from lipschitz_rnn.data import DataNotFoundError, _common, cifar, get_task
from lipschitz_rnn.data.cifar import read_cifar_batch


def hwc_image(k):
    """(32, 32, 3) uint8 image k: value (3 * (32 h + w) + c + 11 k) mod 256."""
    h, w, c = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), indexing="ij")
    return ((3 * (32 * h + w) + c + 11 * k) % 256).astype(np.uint8)


def planar(img):
    return img.transpose(2, 0, 1).reshape(3072)  # R plane, G plane, B plane, each row-major


def write_batch(path, ks):
    d = {
        b"batch_label": b"training batch",
        b"labels": [int(k % 10) for k in ks],
        b"data": np.stack([planar(hwc_image(k)) for k in ks]),
        b"filenames": [f"img_{k}.png".encode() for k in ks],
    }
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


def write_cifar(root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(5):
        write_batch(folder / f"data_batch_{b + 1}", [2 * b, 2 * b + 1])
    write_batch(folder / "test_batch", [20, 21, 22])
    return folder


def test_read_batch_and_refuse_code(tmp_path):
    folder = write_cifar(tmp_path)
    data, labels = read_cifar_batch(folder / "data_batch_2")
    assert data.shape == (2, 3072) and data.dtype == np.uint8 and labels.tolist() == [2, 3]
    evil = tmp_path / "evil"
    evil.write_bytes(pickle.dumps({b"data": print, b"labels": []}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_cifar_batch(evil)


def test_scifar_pixel_and_channel_order(tmp_path):
    write_cifar(tmp_path)
    t = get_task("scifar", data_dir=tmp_path, valid_size=2, download=False)
    assert (t.input_size, t.output_size, t.readout) == (3, 10, "last")
    assert (len(t.train), len(t.valid), len(t.test)) == (8, 2, 3)
    x, y = t.test[1]
    img = torch.from_numpy(hwc_image(21)).float() / 255
    assert x.shape == (1024, 3)
    assert torch.equal(x, img.reshape(1024, 3))  # step = 32 row + col, features (R, G, B)
    assert torch.equal(x[33], img[1, 1]) and int(y) == 1
    seen = set()
    for ds in (t.train, t.valid):
        for i in range(len(ds)):
            x, y = ds[i]
            k = next(k for k in range(10) if torch.equal(x, torch.from_numpy(hwc_image(k)).float().reshape(1024, 3) / 255))
            assert int(y) == k % 10
            seen.add(k)
    assert seen == set(range(10))  # valid held out of train, disjoint


def test_npcifar_rows_normalisation_and_noise(tmp_path, assert_serialisable):
    write_cifar(tmp_path)
    t = get_task("npcifar", data_dir=tmp_path, valid_size=2, download=False, seed=1)
    assert t.input_size == 96
    assert_serialisable(t.meta_to_save())
    mean, std = t.meta["normalize"]["mean"], t.meta["normalize"]["std"]
    px = t.train.images.double().reshape(-1, 3, 1024) / 255
    np.testing.assert_allclose(mean, px.mean(dim=(0, 2)).numpy(), rtol=1e-9)
    np.testing.assert_allclose(std, px.std(dim=(0, 2), correction=0).numpy(), rtol=1e-9)

    x, y = t.test[0]
    assert x.shape == (1000, 96) and x.dtype == torch.float32 and int(y) == 0
    img = (torch.from_numpy(hwc_image(20)).double() / 255 - torch.tensor(mean)) / torch.tensor(std)
    # step r = image row r; its 96 values are pixel-major (R, G, B) of pixels 0..31
    torch.testing.assert_close(x[:32].double(), img.reshape(32, 96), rtol=1e-5, atol=1e-5)
    assert x[5, 3 * 7 + 2] == pytest.approx(float(img[5, 7, 2]), abs=1e-5)
    noise = x[32:]
    assert abs(float(noise.mean())) < 0.02 and float(noise.std()) == pytest.approx(1.0, abs=0.02)

    # training items: fresh noise at every access, same image rows
    a, b = t.train[0][0], t.train[0][0]
    assert torch.equal(a[:32], b[:32]) and not torch.equal(a[32:], b[32:])
    # ... reproducible from the seed
    t2 = get_task("npcifar", data_dir=tmp_path, valid_size=2, download=False, seed=1)
    assert torch.equal(t2.train[0][0], a) and torch.equal(t2.train[0][0], b)
    # ... and from a saved generator state
    state = t.rng_state()
    c = t.train[3][0]
    t.set_rng_state(state)
    assert torch.equal(t.train[3][0], c)
    # evaluation noise is fixed per item; another seed gives other noise
    assert torch.equal(t.test[0][0], t.test[0][0]) and torch.equal(t.valid[1][0], t.valid[1][0])
    t3 = get_task("npcifar", data_dir=tmp_path, valid_size=2, download=False, seed=2)
    assert not torch.equal(t3.test[0][0][32:], t.test[0][0][32:])


def test_missing_cifar_error(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        get_task("scifar", data_dir=tmp_path, download=False)
    msg = str(e.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "data_batch_1" in msg
    assert "test_batch" in msg and "LIPSCHITZ_RNN_DATA" in msg


def test_download_archive_md5_and_unpack(tmp_path, monkeypatch):
    src = write_cifar(tmp_path / "src")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(src.iterdir()):
            tar.add(p, arcname=f"cifar-10-batches-py/{p.name}")
    archive = buf.getvalue()
    monkeypatch.delenv("LIPSCHITZ_RNN_NO_DOWNLOAD")
    monkeypatch.setattr(_common, "open_url", lambda url, timeout=60.0: io.BytesIO(archive))
    root = tmp_path / "root"
    with pytest.raises(DataNotFoundError, match="md5 mismatch"):  # the real archive's md5
        get_task("scifar", data_dir=root, valid_size=2)
    assert not (root / "cifar-10-python.tar.gz").exists()
    good = cifar.RemoteFile(urls=cifar.ARCHIVE.urls, md5=hashlib.md5(archive).hexdigest())
    monkeypatch.setattr(cifar, "ARCHIVE", good)
    t = get_task("scifar", data_dir=root, valid_size=2)
    assert len(t.test) == 3
    assert sorted(p.name for p in (root / "cifar-10-batches-py").iterdir()) == sorted(
        p.name for p in src.iterdir())
    assert not (root / "cifar-10-python.tar.gz").exists()  # archive removed after unpacking
