"""Task names, their descriptions, and :func:`get_task`."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .._checks import check_int
from . import cifar, digits, mnist, ptb, speech, synthetic
from ._common import DataCorruptError, check_kwargs, resolve_data_dir
from .task import Task

__all__ = ["TASKS", "get_task"]


@dataclass(frozen=True)
class _Spec:
    description: str
    kind: str
    readout: str
    metric: str
    output_size: int
    builder: Callable[..., dict]
    needs_data: bool = True
    #: keyword options of the builder that users may set (None: every keyword of its signature)
    options: tuple[str, ...] | None = None


# --- builders: their keyword options (beyond root/seed/download) are the task's task_kwargs ------
_MNIST_OPTIONS = ("valid_size", "normalize", "split_seed")
#: task name -> (data set, sequence mode, permuted, description)
_MNIST_VARIANTS = {
    "smnist": ("mnist", "pixel", False, "pixel-by-pixel MNIST: 784 steps x 1 input, 10 classes"),
    "psmnist": ("mnist", "pixel", True,
                "permuted pixel-by-pixel MNIST (fixed permutation from perm_seed): 784 x 1"),
    "rmnist": ("mnist", "row", False, "row-by-row MNIST: 28 steps x 28 inputs, 10 classes"),
    "fmnist": ("fashion", "row", False, "row-by-row Fashion-MNIST: 28 steps x 28 inputs, 10 classes"),
    "sfmnist": ("fashion", "pixel", False,
                "pixel-by-pixel Fashion-MNIST: 784 steps x 1 input, 10 classes"),
}


def _scifar(*, root, seed, download, valid_size=5000, normalize=False, split_seed=None):
    return cifar.build(root=root, seed=seed, download=download, variant="scifar",
                       valid_size=valid_size, normalize=normalize, split_seed=split_seed)


def _npcifar(*, root, seed, download, valid_size=5000, normalize=True, split_seed=None):
    return cifar.build(root=root, seed=seed, download=download, variant="npcifar",
                       valid_size=valid_size, normalize=normalize, split_seed=split_seed)


def _speech(*, root, seed, download, source="auto", valid_fraction=None, include_sa=False,
            max_utterances=None, normalize=True, split_seed=None):
    return speech.build(root=root, seed=seed, download=download, source=source,
                        valid_fraction=valid_fraction, include_sa=include_sa,
                        max_utterances=max_utterances, normalize=normalize, split_seed=split_seed)


def _ptb_char(*, root, seed, download):
    return ptb.build(root=root, seed=seed, download=download)


_SPECS: dict[str, _Spec] = {
    **{
        name: _Spec(desc, "classification", "last", "accuracy", 10,
                    partial(mnist.build, which=which, mode=mode, permuted=permuted),
                    options=_MNIST_OPTIONS + (("perm_seed",) if permuted else ()))
        for name, (which, mode, permuted, desc) in _MNIST_VARIANTS.items()
    },
    "scifar": _Spec("pixel-by-pixel CIFAR-10: 1024 steps x 3 (RGB), 10 classes",
                    "classification", "last", "accuracy", 10, _scifar),
    "npcifar": _Spec("noise-padded CIFAR-10: 32 image rows (96 values) then 968 noise steps",
                     "classification", "last", "accuracy", 10, _npcifar),
    "speech": _Spec("next-frame prediction of 129-bin log-magnitude spectra (TIMIT or speech-tts)",
                    "regression", "all", "mse", speech.N_BINS, _speech),
    "ptb-char": _Spec("character-level Penn Treebank language model (bits per character)",
                      "language_model", "all", "bpc", 0, _ptb_char),
    "adding": _Spec("adding problem: sum of the two marked values of T (length) inputs",
                    "regression", "last", "mse", 1, synthetic.build_adding, needs_data=False),
    "copy": _Spec("copy memory: recall 10 symbols after a delay of T (delay) steps",
                  "classification", "all", "accuracy", synthetic.COPY_ALPHABET,
                  synthetic.build_copy, needs_data=False),
    "delayed-xor": _Spec("delayed XOR: s[t - delay/2] XOR s[t - delay] of a binary stream, "
                         "scored from step delay on", "classification", "all", "accuracy", 2,
                         synthetic.build_delayed_xor, needs_data=False),
    "digits": _Spec("8x8 UCI digits row by row (bundled with scikit-learn): 8 x 8, 10 classes",
                    "classification", "last", "accuracy", 10, digits.build, needs_data=False),
}

#: task name -> one-line description
TASKS: dict[str, str] = {name: spec.description for name, spec in _SPECS.items()}


def get_task(name: str, *, data_dir: str | os.PathLike | Path | None = None, seed: int = 0,
             download: bool = True, **task_kwargs) -> Task:
    """Build task ``name`` with its train/valid/test splits.

    ``data_dir``: see :func:`resolve_data_dir` (only file-backed tasks look at it). ``seed``
    seeds every random choice of the data (validation split, generated data, noise) unless a
    task keyword pins it (``split_seed``, ``perm_seed``). ``download``: fetch missing files
    (also disabled by ``LIPSCHITZ_RNN_NO_DOWNLOAD=1``). ``task_kwargs`` are the task's own
    options (e.g. ``length`` for adding/copy, ``perm_seed`` for psmnist); an unknown one is a
    ``ValueError``.
    """
    if not isinstance(name, str) or name not in _SPECS:
        raise ValueError(f"task name must be one of {sorted(_SPECS)}, got {name!r}")
    seed = check_int("seed", seed, ge=0)
    spec = _SPECS[name]
    check_kwargs(name, spec.builder, task_kwargs, skip=("root", "seed", "download"),
                 options=spec.options)
    ctx: dict = {"seed": seed}
    if spec.needs_data:
        ctx.update(root=resolve_data_dir(data_dir), download=download)
    try:
        parts = spec.builder(**ctx, **task_kwargs)
    except DataCorruptError as e:
        raise DataCorruptError(f"task {name!r}: {e}") from e.__cause__
    meta = {"task": name, "seed": seed, **(parts.pop("meta", None) or {})}
    given = {k: v for k, v in task_kwargs.items() if v is not None}
    if given:
        meta["task_kwargs"] = given
    return Task(
        name=name,
        kind=spec.kind,
        input_size=int(parts["input_size"]),
        output_size=int(parts.get("output_size", spec.output_size)),
        readout=spec.readout,
        metric=spec.metric,
        train=parts["train"],
        valid=parts["valid"],
        test=parts["test"],
        collate_fn=parts.get("collate_fn"),
        meta=meta,
        description=spec.description,
    )
