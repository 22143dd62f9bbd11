"""Next-frame prediction of speech spectra (the TIMIT task of the paper), MSE loss.

Sources (``source="auto"`` takes the first present):

* ``<data_dir>/timit/``: TIMIT's layout, ``TRAIN/<dialect>/<speaker>/<utt>.WAV`` and ``TEST/...``
  (folder and file names matched case-insensitively). Files may be NIST SPHERE (the original
  TIMIT format: ASCII header starting ``NIST_1A``, then raw int16) or RIFF WAV. The ``SA``
  sentences (read by every speaker) are left out unless ``include_sa=True``. Validation: a
  seeded ``valid_fraction`` of the TRAIN *speakers* (so no speaker is in both); test: TEST.
* ``<data_dir>/speech-tts/``: ``{train,valid,test}.tsv`` with the header
  ``path<TAB>voice<TAB>transcript`` (paths relative to ``speech-tts/``), WAV files. Its own
  ``valid.tsv`` is the validation split.

Features: audio scaled to [-1, 1), mixed to mono, resampled to 8 kHz with
``scipy.signal.resample_poly`` (16 kHz -> 8 kHz: decimation by 2 behind its anti-alias FIR
filter); short-time Fourier transform with a 256-sample periodic Hann window and a hop of 128
samples (32 ms frames every 16 ms, no padding: ``1 + (n - 256) // 128`` frames); features are
``log(|X| + 1e-4)`` for the 129 bins 0..4 kHz (``1e-4`` is about the 16-bit quantisation floor
of one bin). With ``normalize=True`` (default) each bin is standardised with the mean and std
over all frames of the *training* split, applied to every split (``meta["normalize"]``).
Features are computed once, kept in memory.

Items: ``x = F[:-1]``, ``y = F[1:]`` for an utterance's ``(T, 129)`` features ``F`` (predict
frame ``t + 1`` from frames up to ``t``); utterances under 2 frames are dropped.
:func:`pad_collate` batches them (see there).
"""

from __future__ import annotations

import csv
import logging
import math
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .._checks import check_bool, check_choice, check_float, check_int
from ._common import (
    DataNotFoundError,
    ensure_files,
    make_rng,
    missing_error,
    reading,
)

__all__ = ["SAMPLE_RATE", "N_FFT", "HOP", "N_BINS", "LOG_EPS", "read_audio", "read_sphere",
           "read_wav", "resample", "stft_logmag", "SpeechFrames", "pad_collate"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 8000
N_FFT = 256
HOP = 128
N_BINS = N_FFT // 2 + 1
LOG_EPS = 1e-4
TSV_SPLITS = ("train", "valid", "test")


# --------------------------------------------------------------------------------------------
# audio readers
# --------------------------------------------------------------------------------------------
def _pcm_to_float(raw: bytes, width: int, channels: int, byteorder: str, path: Path) -> np.ndarray:
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width in (2, 4):
        dt = np.dtype(f"{'<' if byteorder == 'little' else '>'}i{width}")
        n = len(raw) // width
        x = np.frombuffer(raw[: n * width], dt).astype(np.float32) / float(2 ** (8 * width - 1))
    else:
        raise ValueError(f"{path}: {8 * width}-bit samples are not supported (8, 16 or 32-bit PCM)")
    if channels > 1:
        x = x[: len(x) // channels * channels].reshape(-1, channels).mean(axis=1)
    return x


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A RIFF WAV file as mono float32 in [-1, 1) and its sample rate."""
    path = Path(path)
    with wave.open(str(path), "rb") as w:
        width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
        raw = w.readframes(w.getnframes())
    return _pcm_to_float(raw, width, channels, "little", path), rate


def read_sphere(path: str | Path) -> tuple[np.ndarray, int]:
    """A NIST SPHERE file (uncompressed PCM, as in TIMIT) as mono float32 and its sample rate."""
    path = Path(path)
    data = path.read_bytes()
    if not data.startswith(b"NIST_1A"):
        raise ValueError(f"{path}: not a NIST SPHERE file")
    lines = data[:4096].split(b"\n")
    try:
        header_size = int(lines[1].strip())
    except (IndexError, ValueError) as e:
        raise ValueError(f"{path}: bad SPHERE header size line") from e
    fields: dict[str, object] = {}
    for line in data[:header_size].split(b"\n")[2:]:
        line = line.strip()
        if line == b"end_head":
            break
        parts = line.decode("ascii", "replace").split(None, 2)
        if len(parts) < 3:
            continue
        key, typ, val = parts
        fields[key] = int(val) if typ == "-i" else float(val) if typ == "-r" else val
    coding = str(fields.get("sample_coding", "pcm")).lower()
    if coding != "pcm":
        raise ValueError(
            f"{path}: SPHERE sample_coding {coding!r} is not supported (only uncompressed pcm; "
            "convert with sph2pipe)"
        )
    width = int(fields.get("sample_n_bytes", 2))
    channels = int(fields.get("channel_count", 1))
    rate = int(fields.get("sample_rate", 16000))
    order = str(fields.get("sample_byte_format", "01"))
    byteorder = "big" if order == "10" else "little"
    raw = data[header_size:]
    if "sample_count" in fields:
        raw = raw[: int(fields["sample_count"]) * width * channels]
    return _pcm_to_float(raw, width, channels, byteorder, path), rate


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """SPHERE or RIFF WAV, told apart by the file's first bytes; a file that cannot be read
    raises :class:`~lipschitz_rnn.data.DataCorruptError` naming it."""
    path = Path(path)
    with reading(path):
        return _read_audio(path)


def _read_audio(path: Path) -> tuple[np.ndarray, int]:
    with open(path, "rb") as f:
        magic = f.read(7)
    if magic.startswith(b"NIST_1A"):
        return read_sphere(path)
    if magic.startswith(b"RIFF"):
        return read_wav(path)
    raise ValueError(f"{path}: neither NIST SPHERE nor RIFF WAV (starts with {magic!r})")


def resample(x: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling with scipy's anti-alias filter (16 kHz -> 8 kHz: up 1, down 2)."""
    if rate == target:
        return x
    from scipy.signal import resample_poly

    g = math.gcd(int(rate), int(target))
    return resample_poly(x, target // g, rate // g).astype(np.float32)


def _periodic_hann(n: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


def stft_logmag(x: np.ndarray, n_fft: int = N_FFT, hop: int = HOP, eps: float = LOG_EPS) -> np.ndarray:
    """``(frames, n_fft // 2 + 1)`` float32 log-magnitude STFT, periodic Hann, no padding."""
    x = np.asarray(x, dtype=np.float32)
    if x.size < n_fft:
        return np.zeros((0, n_fft // 2 + 1), np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * _periodic_hann(n_fft)
    return np.log(np.abs(np.fft.rfft(frames, axis=1)) + eps).astype(np.float32)


def utterance_features(path: Path) -> np.ndarray:
    x, rate = read_audio(path)
    return stft_logmag(resample(x, rate))


# --------------------------------------------------------------------------------------------
# dataset and batching
# --------------------------------------------------------------------------------------------
class SpeechFrames(Dataset):
    """Utterances as ``(x, y) = (F[:-1], F[1:])``, ``F`` the ``(T, 129)`` features."""

    def __init__(self, features: Sequence[torch.Tensor], paths: Sequence[str]):
        self.features = list(features)
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features[i]
        return f[:-1], f[1:]


def pad_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pad variable-length items into a time-major batch.

    Returns ``{"x": (T, B, 129), "y": (T, B, 129), "lengths": (B,) int64, "mask": (T, B) bool}``
    with ``T`` the longest item, zeros after each item's end, ``mask[t, b] = t < lengths[b]``,
    items in the order given. For a ``PackedSequence``:
    ``torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)``; average the
    loss over ``mask`` only.
    """
    if len(batch) == 0:
        raise ValueError("pad_collate got an empty batch")
    lengths = torch.tensor([int(x.shape[0]) for x, _ in batch], dtype=torch.long)
    T, B, F = int(lengths.max()), len(batch), batch[0][0].shape[1]
    x = torch.zeros(T, B, F, dtype=torch.float32)
    y = torch.zeros(T, B, F, dtype=torch.float32)
    for b, (xi, yi) in enumerate(batch):
        x[: xi.shape[0], b] = xi
        y[: yi.shape[0], b] = yi
    mask = torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0)
    return {"x": x, "y": y, "lengths": lengths, "mask": mask}


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------
def _child(directory: Path, name: str) -> Path | None:
    """``directory/name`` matched case-insensitively."""
    if not directory.is_dir():
        return None
    for p in sorted(directory.iterdir()):
        if p.is_dir() and p.name.lower() == name.lower():
            return p
    return None


def _timit_split(folder: Path, include_sa: bool) -> list[tuple[str, Path]]:
    """``(speaker, path)`` of every utterance, one file per utterance, sorted."""
    seen: dict[tuple[str, str, str], Path] = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or not p.name.lower().endswith(".wav"):
            continue
        utt = p.name.split(".")[0].upper()
        if not include_sa and utt.startswith("SA"):
            continue
        key = (p.parent.parent.name.upper(), p.parent.name.upper(), utt)
        seen.setdefault(key, p)  # "SA1.WAV" sorts before a converted "SA1.WAV.wav"
    return [(f"{k[0]}/{k[1]}", p) for k, p in sorted(seen.items())]


def _list_timit(root: Path, *, download: bool, include_sa: bool, valid_fraction: float,
                split_seed: int) -> tuple[dict[str, list[Path]], dict]:
    directory = root / "timit"
    ensure_files("TIMIT", directory, ["TRAIN", "TEST"], root=root, download=download,
                 is_present=lambda n: _child(directory, n) is not None, remotes=None,
                 expected_text=["TRAIN/<dialect>/<speaker>/<utterance>.WAV",
                                "TEST/<dialect>/<speaker>/<utterance>.WAV"])
    train = _timit_split(_child(directory, "TRAIN"), include_sa)
    test = _timit_split(_child(directory, "TEST"), include_sa)
    if not train or not test:
        raise missing_error("TIMIT utterances", directory, ["TRAIN/.../*.WAV", "TEST/.../*.WAV"],
                            root=root, reason="The TRAIN or TEST folder has no .WAV files.")
    speakers = sorted({s for s, _ in train})
    if len(speakers) < 2:
        raise ValueError("TIMIT TRAIN needs at least 2 speakers to hold out validation speakers")
    n_valid = min(len(speakers) - 1, max(1, round(valid_fraction * len(speakers))))
    order = make_rng(split_seed, "timit-valid").permutation(len(speakers))
    valid_speakers = sorted(speakers[i] for i in order[:n_valid])
    vs = set(valid_speakers)
    files = {
        "train": [p for s, p in train if s not in vs],
        "valid": [p for s, p in train if s in vs],
        "test": [p for _, p in test],
    }
    return files, {"valid_speakers": valid_speakers, "include_sa": include_sa,
                   "valid_fraction": valid_fraction}


def _list_tts(root: Path, *, download: bool) -> dict[str, list[Path]]:
    directory = root / "speech-tts"
    names = [f"{s}.tsv" for s in TSV_SPLITS]
    ensure_files("speech-tts", directory, names, root=root, download=download,
                 is_present=lambda n: (directory / n).is_file(), remotes=None,
                 expected_text=names + ["the WAV files they list (paths relative to speech-tts/)"])
    files = {}
    for s in TSV_SPLITS:
        with reading(directory / f"{s}.tsv"), \
                open(directory / f"{s}.tsv", newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise ValueError(f"{directory / f'{s}.tsv'}: header must include 'path' "
                                 f"(path<TAB>voice<TAB>transcript), got {reader.fieldnames}")
            files[s] = [directory / row["path"] for row in reader if row.get("path")]
    return files


def _features(paths: list[Path], split: str) -> tuple[list[torch.Tensor], list[Path], int]:
    feats, kept, dropped = [], [], 0
    for p in paths:
        f = utterance_features(p)
        if f.shape[0] < 2:
            dropped += 1
            continue
        feats.append(torch.from_numpy(f))
        kept.append(p)
    if dropped:
        log.warning("speech %s: dropped %d utterances shorter than 2 frames", split, dropped)
    return feats, kept, dropped


def build(*, root: Path, seed: int, download: bool, source: str = "auto",
          valid_fraction: float | None = None, include_sa: bool = False,
          max_utterances: int | None = None, normalize: bool = True,
          split_seed: int | None = None) -> dict:
    """Pieces of the ``speech`` Task (used by the registry)."""
    check_choice("source", source, ("auto", "timit", "speech-tts"))
    check_bool("include_sa", include_sa)
    check_bool("normalize", normalize)
    if max_utterances is not None:
        max_utterances = check_int("max_utterances", max_utterances, ge=1)
    if valid_fraction is not None:
        valid_fraction = check_float("valid_fraction", valid_fraction, gt=0, lt=1)
    split_seed = seed if split_seed is None else check_int("split_seed", split_seed, ge=0)
    if source == "auto":
        if (root / "timit").is_dir():
            source = "timit"
        elif (root / "speech-tts").is_dir():
            source = "speech-tts"
        else:
            raise missing_error(
                "Speech data", root,
                ["timit/TRAIN/<dialect>/<speaker>/<utt>.WAV and timit/TEST/... (TIMIT)",
                 "or speech-tts/{train,valid,test}.tsv with their WAV files"],
                root=root, folders="'timit/' or 'speech-tts/'",
                reason="Neither timit/ nor speech-tts/ exists; they cannot be downloaded "
                       "automatically (TIMIT is licensed by the LDC).")
    meta: dict = {"source": source}
    if source == "timit":
        files, extra = _list_timit(root, download=download, include_sa=include_sa,
                                   valid_fraction=0.05 if valid_fraction is None else valid_fraction,
                                   split_seed=split_seed)
        meta.update(extra)
        meta["split_seed"] = split_seed
    else:
        if valid_fraction is not None:
            raise ValueError("valid_fraction applies to source='timit' only; speech-tts has its own valid.tsv")
        files = _list_tts(root, download=download)
    if max_utterances is not None:
        files = {s: ps[:max_utterances] for s, ps in files.items()}
    absent = [p for ps in files.values() for p in ps if not p.is_file()]
    if absent:
        raise DataNotFoundError(
            f"{len(absent)} audio files listed for the speech task are missing, e.g. "
            f"{[str(p) for p in absent[:3]]}. Check the data directory (data_dir=..., CLI "
            f"--data-dir, or the environment variable LIPSCHITZ_RNN_DATA)."
        )
    feats, kept, dropped = {}, {}, {}
    for s in TSV_SPLITS:
        feats[s], kept[s], dropped[s] = _features(files[s], s)
        if s == "train" and not feats[s]:
            raise ValueError("speech: no training utterance has 2 or more frames")
    stats = None
    if normalize:
        allf = torch.cat(feats["train"]).to(torch.float64)
        mean, std = allf.mean(0), allf.std(0, correction=0).clamp_min(1e-5)
        m32, s32 = mean.float(), std.float()
        for s in TSV_SPLITS:
            feats[s] = [(f - m32) / s32 for f in feats[s]]
        stats = {"mean": mean.tolist(), "std": std.tolist()}
    if stats is not None:
        meta["normalize"] = stats
    if max_utterances is not None:
        meta["max_utterances"] = max_utterances
    meta.update({
        "sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "hop": HOP, "window": "hann (periodic)",
        "feature": f"log(|STFT| + {LOG_EPS})", "n_bins": N_BINS,
        "num_utterances": {s: len(feats[s]) for s in TSV_SPLITS},
        "num_frames": {s: int(sum(f.shape[0] for f in feats[s])) for s in TSV_SPLITS},
        "dropped_short": dropped,
    })
    base = root / source
    datasets = {s: SpeechFrames(feats[s], [str(p.relative_to(base)) if p.is_relative_to(base) else str(p)
                                          for p in kept[s]]) for s in TSV_SPLITS}
    return dict(**datasets, input_size=N_BINS, output_size=N_BINS, meta=meta, collate_fn=pad_collate)
