"""The 8x8 UCI handwritten digits (bundled with scikit-learn: no download), row by row.

``sklearn.datasets.load_digits``: 1,797 images, pixel values 0..16, 10 classes. Items: ``x``
``(8, 8)`` float32 (step = image row, features = its 8 pixels), values ``/ 16`` in [0, 1];
``y`` an int64 scalar. Split: stratified by class and seeded, ``test_fraction`` (default 0.2)
and ``valid_fraction`` (default 0.1) of each class, the rest (about 70 %) for training.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .._checks import check_float, check_int
from ._common import make_rng

__all__ = ["DigitsSequence", "stratified_split"]


class DigitsSequence(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = torch.as_tensor(np.asarray(images, dtype=np.float32) / 16.0).reshape(-1, 8, 8)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]


def stratified_split(labels: np.ndarray, valid_fraction: float, test_fraction: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted (train, valid, test) indices with the given fractions of every class."""
    parts: tuple[list, list, list] = ([], [], [])
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(test_fraction * len(idx))
        n_valid = round(valid_fraction * len(idx))
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test : n_test + n_valid])
        parts[0].append(idx[n_test + n_valid :])
    return tuple(np.sort(np.concatenate(p)) for p in parts)


def build(*, seed: int, valid_fraction: float = 0.1, test_fraction: float = 0.2,
          split_seed: int | None = None) -> dict:
    """Pieces of the ``digits`` Task (used by the registry)."""
    from sklearn.datasets import load_digits

    valid_fraction = check_float("valid_fraction", valid_fraction, gt=0, lt=1)
    test_fraction = check_float("test_fraction", test_fraction, gt=0, lt=1)
    if valid_fraction + test_fraction >= 0.95:
        raise ValueError(
            f"valid_fraction + test_fraction must leave training data, got {valid_fraction} + {test_fraction}"
        )
    split_seed = seed if split_seed is None else check_int("split_seed", split_seed, ge=0)
    d = load_digits()
    images, labels = d.data, d.target
    tr, va, te = stratified_split(labels, valid_fraction, test_fraction, make_rng(split_seed, "digits"))
    meta = {"valid_fraction": valid_fraction, "test_fraction": test_fraction, "split_seed": split_seed,
            "num_train": len(tr), "num_valid": len(va), "num_test": len(te)}
    return dict(train=DigitsSequence(images[tr], labels[tr]), valid=DigitsSequence(images[va], labels[va]),
                test=DigitsSequence(images[te], labels[te]), input_size=8, output_size=10, meta=meta)
