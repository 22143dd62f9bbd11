"""CIFAR-10 as sequences: pixel by pixel (sCIFAR) and noise-padded rows (npCIFAR).

Files: ``<data_dir>/cifar-10-batches-py/{data_batch_1..5,test_batch}``, the python pickle
batches of the official ``cifar-10-python.tar.gz`` (dicts with ``b"data"``, ``(N, 3072)`` uint8:
the R plane, then G, then B, each 32x32 row-major; and ``b"labels"``). They are read with a
restricted unpickler that only admits the numpy array reconstructors (a pickle can otherwise run
code). A download fetches the archive (md5-checked), unpacks the six batches atomically and
deletes the archive.

* ``scifar``: ``x`` ``(1024, 3)``, step ``t = 32 * row + col``, features (R, G, B) of that
  pixel, ``/ 255`` in [0, 1] (``normalize=True``: per-channel standardisation).
* ``npcifar``: ``x`` ``(1000, 96)``; steps 0..31 are the image rows, each row's 96 values
  pixel-major ``(R, G, B)`` of pixel 0, then of pixel 1, ...; steps 32..999 are i.i.d.
  N(0, 1) noise. Pixels are standardised per channel with the mean and std of the *training
  split's* pixels (``normalize=True``, the default: the image rows and the noise then share a
  scale), stats in ``meta["normalize"]``. Training items draw fresh noise at every access from
  the dataset's own ``torch.Generator`` (seeded; ``dataset.generator`` state is the whole of
  its randomness); validation and test items use fixed noise per index (a generator reseeded
  from ``(seed, split, index)``), so evaluation is repeatable.
"""

from __future__ import annotations

import os
import pickle
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .._checks import check_bool, check_int
from ._common import (
    RemoteFile,
    derive_seed,
    download_file,
    ensure_files,
    make_rng,
    reading,
    resolve_valid_size,
    split_train_valid,
    uint8_mean_std,
)

__all__ = ["SequentialCIFAR", "NoisePaddedCIFAR", "read_cifar_batch", "load_cifar10"]

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCHES = ["test_batch"]
ARCHIVE = RemoteFile(
    urls=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
    md5="c58f30108f718f92721af3b95e74349a",
)
NP_STEPS = 1000
ROW_STEPS = 32
ROW_FEATURES = 96

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class RefusedGlobalError(pickle.UnpicklingError):
    """A CIFAR batch asked to load code (a global outside numpy's array reconstruction)."""


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise RefusedGlobalError(f"refusing to load {module}.{name} from a CIFAR batch")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(data (N, 3072) uint8, labels (N,) int64)`` of one CIFAR-10 python batch."""
    path = Path(path)
    with reading(path, keep=(RefusedGlobalError,)):
        return _parse_batch(path)


def _parse_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        d = _SafeUnpickler(f, encoding="bytes").load()
    if not isinstance(d, dict):
        raise ValueError(f"{path}: not a CIFAR batch (a {type(d).__name__}, not a dict)")
    d = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise ValueError(f"{path}: CIFAR batch without 'data'/'labels' keys (has {sorted(d)})")
    data = np.asarray(d["data"], dtype=np.uint8)
    labels = np.asarray(d["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: data {data.shape} / labels {labels.shape}, expected (N, 3072) / (N,)")
    return data, labels


def _fetch_archive(root: Path, missing: Sequence[str]) -> None:
    tar_path = download_file(ARCHIVE, root / "cifar-10-python.tar.gz")
    directory = root / FOLDER
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            for name in missing:
                member = tar.extractfile(f"{FOLDER}/{name}")
                if member is None:
                    raise ValueError(f"{tar_path.name} has no regular file {FOLDER}/{name}")
                fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=directory)
                try:
                    with os.fdopen(fd, "wb") as out:
                        out.write(member.read())
                    os.replace(tmp, directory / name)
                finally:
                    Path(tmp).unlink(missing_ok=True)
    except tarfile.TarError as e:
        raise ValueError(f"{tar_path.name} is not a readable tar.gz archive: {e}") from e
    finally:
        tar_path.unlink(missing_ok=True)


def load_cifar10(root: Path, *, download: bool = True) -> dict[str, np.ndarray]:
    """``train_images (50000, 3072)``, ``train_labels``, ``test_images``, ``test_labels``."""
    directory = root / FOLDER
    names = TRAIN_BATCHES + TEST_BATCHES
    ensure_files(
        "CIFAR-10",
        directory,
        names,
        root=root,
        download=download,
        is_present=lambda n: (directory / n).is_file(),
        remotes=None,
        fetch=lambda missing: _fetch_archive(root, missing),
    )
    out = {}
    for split, batches in (("train", TRAIN_BATCHES), ("test", TEST_BATCHES)):
        parts = [read_cifar_batch(directory / b) for b in batches]
        out[f"{split}_images"] = np.concatenate([p[0] for p in parts])
        out[f"{split}_labels"] = np.concatenate([p[1] for p in parts])
    return out


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``images / 255`` (``(N, 3072)`` uint8, planar RGB)."""
    planes = np.asarray(images, dtype=np.uint8).reshape(-1, 3, 1024)
    stats = [uint8_mean_std(planes[:, c]) for c in range(3)]
    return [m for m, _ in stats], [s for _, s in stats]


class _CIFARBase(Dataset):
    def __init__(self, images, labels, *, mean: Sequence[float] | None, std: Sequence[float] | None):
        self.images = torch.as_tensor(np.asarray(images, dtype=np.uint8)).reshape(-1, 3, 1024)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(3, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(3, 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def _planes(self, i: int) -> torch.Tensor:
        """(3, 1024) float32: channel planes of image ``i``, scaled and maybe standardised."""
        x = self.images[i].to(torch.float32).div_(255.0)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x


class SequentialCIFAR(_CIFARBase):
    """sCIFAR: ``(1024, 3)``, one pixel per step, features (R, G, B)."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._planes(i).t().contiguous(), self.labels[i]


class NoisePaddedCIFAR(_CIFARBase):
    """npCIFAR: 32 image rows (96 values each, pixel-major RGB), then 968 steps of N(0, 1) noise.

    ``fresh_noise=True``: every access draws new noise from ``self.generator``. ``False``: the
    noise of item ``i`` is fixed, drawn from a generator seeded with ``noise_seed + i``.
    """

    def __init__(self, images, labels, *, mean, std, noise_seed: int, fresh_noise: bool,
                 length: int = NP_STEPS):
        super().__init__(images, labels, mean=mean, std=std)
        self.noise_seed = int(noise_seed)
        self.fresh_noise = bool(fresh_noise)
        self.length = int(length)
        self.generator = torch.Generator().manual_seed(self.noise_seed) if self.fresh_noise else None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self._planes(i).view(3, 32, 32).permute(1, 2, 0).reshape(ROW_STEPS, ROW_FEATURES)
        if self.generator is not None:
            g = self.generator
        else:
            g = torch.Generator().manual_seed(self.noise_seed + int(i))
        noise = torch.randn(self.length - ROW_STEPS, ROW_FEATURES, generator=g)
        return torch.cat([rows, noise]), self.labels[i]


def build(*, root: Path, seed: int, download: bool, variant: str, valid_size: int | float,
          normalize: bool, split_seed: int | None) -> dict:
    """Pieces of a Task for ``scifar`` or ``npcifar`` (used by the registry)."""
    check_bool("normalize", normalize)
    split_seed = seed if split_seed is None else check_int("split_seed", split_seed, ge=0)
    arrays = load_cifar10(root, download=download)
    n = arrays["train_images"].shape[0]
    n_valid = resolve_valid_size(valid_size, n)
    tr, va = split_train_valid(n, n_valid, make_rng(split_seed, "cifar-valid"))
    train_images = arrays["train_images"][tr]
    meta: dict = {"valid_size": int(n_valid), "split_seed": split_seed, "num_train": int(len(tr)),
                  "num_valid": int(len(va)), "num_test": int(arrays["test_images"].shape[0])}
    mean = std = None
    if normalize:
        mean, std = channel_stats(train_images)
        meta["normalize"] = {"mean": mean, "std": std, "channels": ["R", "G", "B"]}
    splits = {
        "train": (train_images, arrays["train_labels"][tr]),
        "valid": (arrays["train_images"][va], arrays["train_labels"][va]),
        "test": (arrays["test_images"], arrays["test_labels"]),
    }
    out: dict = {"meta": meta}
    for s, (im, lb) in splits.items():
        if variant == "scifar":
            out[s] = SequentialCIFAR(im, lb, mean=mean, std=std)
        else:
            out[s] = NoisePaddedCIFAR(im, lb, mean=mean, std=std, noise_seed=derive_seed(seed, "npcifar", s),
                                      fresh_noise=(s == "train"))
    if variant == "npcifar":
        meta["noise"] = {"std": 1.0, "steps": NP_STEPS - ROW_STEPS, "train": "fresh per access",
                         "valid/test": "fixed per index"}
    out["input_size"] = 3 if variant == "scifar" else ROW_FEATURES
    return out
