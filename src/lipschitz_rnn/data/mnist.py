"""MNIST and Fashion-MNIST as sequences: pixel by pixel (sMNIST), permuted (psMNIST), row by row.

Files (``<data_dir>/mnist/`` or ``<data_dir>/fashion-mnist/``): the four idx files
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each gzipped (``.gz``) or not. Downloads are verified against the
sha256 of the *uncompressed* idx bytes (mirrors recompress the archives).

Items: ``x`` float32 of shape ``(784, 1)`` (pixel mode, row-major pixel order: step
``t = 28 * row + col``) or ``(28, 28)`` (row mode: step = image row, features = its 28 pixels),
pixels ``/ 255`` in [0, 1]; ``y`` an int64 scalar. ``normalize=True`` standardises with the
training split's pixel mean and std. psMNIST: step ``t`` carries the pixel at row-major index
``permutation[t]``, one fixed permutation drawn by ``Generator(PCG64(perm_seed)).permutation(784)``.
Validation: ``valid_size`` training images held out by a seeded split (never the test set).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .._checks import check_bool, check_int
from ._common import (
    RemoteFile,
    ensure_files,
    make_rng,
    reading,
    resolve_valid_size,
    split_train_valid,
    uint8_mean_std,
    verify_local,
)

__all__ = ["MNISTSequence", "read_idx", "load_mnist", "FILES"]

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# folder, mirrors, sha256 of the uncompressed idx files (from the shared data README)
SOURCES = {
    "mnist": {
        "folder": "mnist",
        "title": "MNIST",
        "urls": (
            "https://ossci-datasets.s3.amazonaws.com/mnist/{}.gz",
            "http://yann.lecun.com/exdb/mnist/{}.gz",
        ),
        "sha256": {
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        },
    },
    "fashion": {
        "folder": "fashion-mnist",
        "title": "Fashion-MNIST",
        "urls": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{}.gz",),
        "sha256": {
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        },
    },
}

NUM_PIXELS = 784


def _find(directory: Path, name: str) -> Path | None:
    for cand in (directory / f"{name}.gz", directory / name):
        if cand.is_file():
            return cand
    return None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (gzipped if the name ends in ``.gz``) of uint8 data."""
    path = Path(path)
    with reading(path):
        return _parse_idx(path)


def _parse_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        buf = f.read()
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0:
        raise ValueError(f"{path}: not an idx file (bad magic {buf[:4]!r})")
    if buf[2] != 0x08:
        raise ValueError(f"{path}: idx data type 0x{buf[2]:02x} unsupported (only uint8, 0x08)")
    ndim = buf[3]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise ValueError(f"{path}: truncated idx header")
    dims = [int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    count = int(np.prod(dims)) if dims else 1
    if len(buf) - header != count:
        raise ValueError(f"{path}: idx header says {dims} ({count} bytes), file has {len(buf) - header}")
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims).copy()


def load_mnist(root: Path, which: str = "mnist", *, download: bool = True) -> dict[str, np.ndarray]:
    """The four arrays ``train_images (N, 28, 28)``, ``train_labels (N,)``, ``test_*``, uint8."""
    src = SOURCES[which]
    directory = root / src["folder"]
    remotes = {
        f"{n}.gz": RemoteFile(
            urls=tuple(u.format(n) for u in src["urls"]), sha256=src["sha256"][n], check_gunzipped=True
        )
        for n in FILES.values()
    }
    ensure_files(
        src["title"],
        directory,
        [f"{n}.gz" for n in FILES.values()],
        root=root,
        download=download,
        is_present=lambda gz: _find(directory, gz[:-3]) is not None,
        remotes=remotes,
        expected_text=[f"{n}.gz (or uncompressed {n})" for n in FILES.values()],
    )
    out = {}
    for k, n in FILES.items():
        path = _find(directory, n)
        gz = path.suffix == ".gz"
        verify_local(path, RemoteFile(urls=(), sha256=src["sha256"][n], check_gunzipped=gz))
        out[k] = read_idx(path)
    for split in ("train", "test"):
        im, lb = out[f"{split}_images"], out[f"{split}_labels"]
        if im.ndim != 3 or im.shape[1:] != (28, 28):
            raise ValueError(f"{directory}: {split} images have shape {im.shape}, expected (N, 28, 28)")
        if lb.shape != (im.shape[0],):
            raise ValueError(f"{directory}: {split} has {im.shape[0]} images but labels {lb.shape}")
    return out


class MNISTSequence(Dataset):
    """uint8 images held in memory, turned into a float32 sequence per item.

    ``mode``: ``pixel`` -> ``(784, 1)``, ``row`` -> ``(28, 28)``. ``permutation`` (pixel mode):
    step ``t`` gets pixel ``permutation[t]``. ``mean``/``std``: optional standardisation.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *,
                 mode: str = "pixel", permutation: torch.Tensor | None = None,
                 mean: float | None = None, std: float | None = None):
        if mode not in ("pixel", "row"):
            raise ValueError(f"mode must be 'pixel' or 'row', got {mode!r}")
        self.images = torch.as_tensor(np.asarray(images, dtype=np.uint8)).reshape(-1, NUM_PIXELS)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.mode = mode
        self.permutation = None if permutation is None else torch.as_tensor(permutation, dtype=torch.long)
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i].to(torch.float32).div_(255.0)
        if self.permutation is not None:
            x = x[self.permutation]
        if self.mean is not None:
            x = (x - self.mean) / self.std
        x = x.reshape(NUM_PIXELS, 1) if self.mode == "pixel" else x.reshape(28, 28)
        return x, self.labels[i]


def build(*, root: Path, seed: int, download: bool, which: str, mode: str, permuted: bool,
          valid_size: int | float = 5000, normalize: bool = False, split_seed: int | None = None,
          perm_seed: int | None = 0) -> dict:
    """Pieces of a Task for one MNIST variant (used by the registry): ``which`` is ``"mnist"``
    or ``"fashion"``, ``mode`` ``"pixel"`` (784 x 1) or ``"row"`` (28 x 28); ``perm_seed`` fixes
    the pixel permutation when ``permuted``."""
    check_bool("normalize", normalize)
    split_seed = seed if split_seed is None else check_int("split_seed", split_seed, ge=0)
    arrays = load_mnist(root, which, download=download)
    n = arrays["train_images"].shape[0]
    n_valid = resolve_valid_size(valid_size, n)
    tr, va = split_train_valid(n, n_valid, make_rng(split_seed, "mnist-valid"))
    meta: dict = {"dataset": which, "mode": mode, "valid_size": int(n_valid), "split_seed": split_seed,
                  "num_train": int(len(tr)), "num_valid": int(len(va)),
                  "num_test": int(arrays["test_images"].shape[0])}
    perm = None
    if permuted:
        perm_seed = check_int("perm_seed", perm_seed, ge=0)
        perm = torch.from_numpy(np.random.Generator(np.random.PCG64(perm_seed)).permutation(NUM_PIXELS))
        meta["perm_seed"] = perm_seed
        meta["permutation"] = perm.tolist()
    train_images = arrays["train_images"][tr]
    mean = std = None
    if normalize:
        mean, std = uint8_mean_std(train_images)
        meta["normalize"] = {"mean": mean, "std": std}
    kw = dict(mode=mode, permutation=perm, mean=mean, std=std)
    return dict(
        train=MNISTSequence(train_images, arrays["train_labels"][tr], **kw),
        valid=MNISTSequence(arrays["train_images"][va], arrays["train_labels"][va], **kw),
        test=MNISTSequence(arrays["test_images"], arrays["test_labels"], **kw),
        input_size=1 if mode == "pixel" else 28,
        meta=meta,
    )
