"""Synthetic long-memory tasks, generated deterministically from the seed: adding, copy and
delayed XOR.

Each split is drawn from its own generator ``(seed, task, split)``, so changing ``n_train`` does
not change the test set, and the same seed gives the same data in any process.

* ``adding`` (Hochreiter & Schmidhuber 1997; Le et al. 2015): ``x`` ``(T, 2)``; channel 0 values
  U[0, 1), channel 1 a marker with exactly two 1s, one at a uniform step in ``[0, T // 2)``, one
  in ``[T // 2, T)``; ``y`` ``(1,)`` float32, the sum of the two marked values. MSE, read out at
  the last step (predicting 1 gives MSE about 0.167).
* ``copy`` (Arjovsky et al. 2016): symbols ``0..7`` are the alphabet, ``8`` blank, ``9`` the
  delimiter. With delay ``T = length`` the input is 10 random symbols, ``T - 1`` blanks, the
  delimiter, then 10 blanks: ``T + 20`` steps, one-hot ``x`` ``(T + 20, 10)``. ``y``
  ``(T + 20,)`` int64: ``-100`` (ignored) everywhere except the last 10 steps, which must
  reproduce the 10 symbols; 8 output classes (the alphabet). Accuracy over the scored steps;
  chance is 1/8.
* ``delayed-xor`` (the long-memory task of gradient flossing, Engelken 2023): an i.i.d. fair
  binary stream ``s_t``, fed as ``x_t = 2 s_t - 1`` (``(T, 1)``, zero mean); the target at step
  ``t >= d`` (``d = delay``, even) is ``s[t - d/2] XOR s[t - d]``, steps ``t < d`` are ignored
  (``-100``). Two output classes, so the loss is the binary cross-entropy of the logit
  difference; accuracy over the scored steps, chance 1/2. Solving it needs a memory of ``d``
  steps: the XOR of two bits is independent of each bit alone.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from .._checks import check_int
from ._common import make_rng

__all__ = ["AddingDataset", "CopyDataset", "DelayedXORDataset", "COPY_ALPHABET", "COPY_BLANK", "COPY_DELIMITER",
           "COPY_SYMBOLS", "COPY_IGNORE"]

COPY_ALPHABET = 8
COPY_BLANK = 8
COPY_DELIMITER = 9
COPY_SYMBOLS = 10  # inputs are one-hot over alphabet + blank + delimiter
COPY_SEQ = 10  # symbols to remember
COPY_IGNORE = -100  # torch's cross_entropy ignore_index


class AddingDataset(Dataset):
    """``n`` adding-problem sequences of length ``length`` drawn from ``rng``."""

    def __init__(self, n: int, length: int, rng: np.random.Generator):
        if length < 2:
            raise ValueError(f"length must be >= 2, got {length}")
        self.length = length
        self.values = torch.from_numpy(rng.random((n, length), dtype=np.float32))
        half = length // 2
        first = rng.integers(0, half, size=n)
        second = rng.integers(half, length, size=n)
        self.markers = torch.from_numpy(np.stack([first, second], axis=1).astype(np.int64))

    def __len__(self) -> int:
        return self.values.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.values[i]
        marks = self.markers[i]
        m = torch.zeros(self.length, dtype=torch.float32)
        m[marks] = 1.0
        return torch.stack([v, m], dim=1), v[marks].sum().reshape(1)


class CopyDataset(Dataset):
    """``n`` copy-task sequences with delay ``delay`` (length ``delay + 20``) drawn from ``rng``."""

    def __init__(self, n: int, delay: int, rng: np.random.Generator):
        if delay < 1:
            raise ValueError(f"length must be >= 1, got {delay}")
        self.delay = delay
        self.total = delay + 2 * COPY_SEQ
        self.symbols = torch.from_numpy(rng.integers(0, COPY_ALPHABET, size=(n, COPY_SEQ)).astype(np.int64))

    def __len__(self) -> int:
        return self.symbols.shape[0]

    def tokens(self, i: int) -> torch.Tensor:
        """The ``(T + 20,)`` input symbol ids of item ``i``."""
        s = torch.full((self.total,), COPY_BLANK, dtype=torch.long)
        s[:COPY_SEQ] = self.symbols[i]
        s[COPY_SEQ + self.delay - 1] = COPY_DELIMITER
        return s

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.one_hot(self.tokens(i), COPY_SYMBOLS).to(torch.float32)
        y = torch.full((self.total,), COPY_IGNORE, dtype=torch.long)
        y[-COPY_SEQ:] = self.symbols[i]
        return x, y


class DelayedXORDataset(Dataset):
    """``n`` delayed-XOR sequences of ``length`` steps with delay ``delay``, drawn from ``rng``."""

    def __init__(self, n: int, length: int, delay: int, rng: np.random.Generator):
        self.delay = delay
        self.bits = torch.from_numpy(rng.integers(0, 2, size=(n, length)).astype(np.int64))

    def __len__(self) -> int:
        return self.bits.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, d = self.bits[i], self.delay
        y = torch.full_like(s, COPY_IGNORE)
        y[d:] = s[d // 2 : s.shape[0] - d // 2] ^ s[: s.shape[0] - d]
        return (2.0 * s - 1.0).to(torch.float32).unsqueeze(-1), y


def _sizes(n_train, n_valid, n_test) -> dict[str, int]:
    return {"train": check_int("n_train", n_train, ge=1),
            "valid": check_int("n_valid", n_valid, ge=1),
            "test": check_int("n_test", n_test, ge=1)}


def build_adding(*, seed: int, length: int = 200, n_train: int = 10_000, n_valid: int = 1_000,
                 n_test: int = 1_000) -> dict:
    length = check_int("length", length, ge=2)
    sizes = _sizes(n_train, n_valid, n_test)
    out = {s: AddingDataset(n, length, make_rng(seed, "adding", s)) for s, n in sizes.items()}
    meta = {"length": length, "seed": seed, **{f"n_{s}": n for s, n in sizes.items()},
            "marker_ranges": [[0, length // 2], [length // 2, length]]}
    return dict(**out, input_size=2, output_size=1, meta=meta)


def build_copy(*, seed: int, delay: int | None = None, length: int | None = None,
               n_train: int = 10_000, n_valid: int = 1_000, n_test: int = 1_000) -> dict:
    """``delay`` (default 100) is the number of steps between the last symbol and the
    delimiter; ``length`` is its older name (give one of them, or both equal)."""
    if delay is not None and length is not None and delay != length:
        raise ValueError(f"copy: delay={delay} and length={length} name the same setting; give one")
    name = "delay" if delay is not None else "length"
    length = delay if delay is not None else (100 if length is None else length)
    length = check_int(name, length, ge=1)
    sizes = _sizes(n_train, n_valid, n_test)
    out = {s: CopyDataset(n, length, make_rng(seed, "copy", s)) for s, n in sizes.items()}
    meta = {"delay": length, "sequence_length": length + 2 * COPY_SEQ, "seed": seed,
            **{f"n_{s}": n for s, n in sizes.items()},
            "symbols": {"alphabet": list(range(COPY_ALPHABET)), "blank": COPY_BLANK,
                        "delimiter": COPY_DELIMITER}, "ignore_index": COPY_IGNORE}
    return dict(**out, input_size=COPY_SYMBOLS, output_size=COPY_ALPHABET, meta=meta)


def build_delayed_xor(*, seed: int, delay: int = 20, length: int | None = None,
                      n_train: int = 10_000, n_valid: int = 1_000, n_test: int = 1_000) -> dict:
    """``delay`` (even, >= 2); ``length`` (default ``delay + 100``) must exceed ``delay``, so
    that ``length - delay`` steps are scored per sequence."""
    delay = check_int("delay", delay, ge=2)
    if delay % 2:
        raise ValueError(f"delay must be even (the target uses s[t - delay/2]), got {delay}")
    length = delay + 100 if length is None else check_int("length", length, ge=1)
    if length <= delay:
        raise ValueError(f"length must be larger than delay={delay} (steps from delay on are "
                         f"scored), got {length}")
    sizes = _sizes(n_train, n_valid, n_test)
    out = {s: DelayedXORDataset(n, length, delay, make_rng(seed, "delayed-xor", s))
           for s, n in sizes.items()}
    meta = {"delay": delay, "length": length, "scored_steps": length - delay, "seed": seed,
            **{f"n_{s}": n for s, n in sizes.items()}, "ignore_index": COPY_IGNORE,
            "input": "x_t = 2 s_t - 1", "target": "s[t - delay/2] XOR s[t - delay], t >= delay"}
    return dict(**out, input_size=1, output_size=2, meta=meta)
