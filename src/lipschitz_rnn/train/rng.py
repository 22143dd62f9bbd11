"""The random state of a training process: what a checkpoint saves and a resume restores.

A run seeds Python's, numpy's and torch's generators from its seed (:func:`seed_everything`);
a checkpoint holds their states (:func:`rng_state`; every rank's under several processes), so
that a resumed run draws exactly what an uninterrupted one would. The batch order needs no
saved state: it is drawn from a generator seeded by ``(seed, epoch)``
(:meth:`lipschitz_rnn.runs.tasks.TaskRunner.train_batches`).
"""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import torch

__all__ = ["rng_state", "set_rng_state", "seed_everything", "rank_seed"]


def rng_state(cuda_device: torch.device | None = None) -> dict[str, Any]:
    """The torch, CUDA, numpy and Python RNG states. ``cuda_device``: only that GPU's state (a
    distributed rank's own device), else every visible GPU's."""
    np_state = np.random.get_state()
    if cuda_device is not None:
        cuda = [torch.cuda.get_rng_state(cuda_device)]
    else:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],
        "python": json.dumps(random.getstate()),
    }


def set_rng_state(s: dict[str, Any], cuda_device: torch.device | None = None) -> None:
    """Restore :func:`rng_state`; ``cuda_device``: its first CUDA state goes to that GPU."""
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        if cuda_device is not None:
            torch.cuda.set_rng_state(s["cuda"][0], cuda_device)
        else:
            torch.cuda.set_rng_state_all(s["cuda"])
    np.random.set_state(
        (
            "MT19937",
            s["numpy_keys"].numpy().astype(np.uint32),
            s["numpy_pos"],
            s["numpy_gauss"][0],
            s["numpy_gauss"][1],
        )
    )
    py = json.loads(s["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators with ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int, epoch: int = 1, step: int = 0) -> int:
    """Seed of rank ``rank``'s torch RNG (dropout) where no saved state exists: ranks draw
    independent masks (rank 0 keeps the single-process stream)."""
    return (seed * 1_000_003 + rank * 7_919 + epoch * 104_729 + step) % (2**63)
