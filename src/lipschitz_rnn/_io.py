"""Atomic file writes and safe checkpoint loading.

Every file goes to a temporary file beside its target, is flushed and fsync'ed, then renamed
over the target: a crash, a full disk or an unwritable folder never leaves half a file, and the
previous version stays intact. Files get the permissions of any normal file (``0666`` minus the
process umask), not the ``0600`` of ``tempfile.mkstemp``.

Checkpoints are loaded with ``weights_only=True``; a damaged file raises
:class:`CheckpointError` naming it (and whether a previous version exists).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "WriteError",
    "atomic_write_bytes",
    "atomic_write_text",
    "write_json",
    "save_checkpoint",
    "load_checkpoint",
    "previous_path",
]

_UMASK_LOCK = threading.Lock()


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be read (truncated, empty, not a checkpoint)."""


class WriteError(OSError):
    """A file could not be written (disk full, unwritable folder); its previous version is
    intact."""


def _file_mode() -> int:
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, then rename over ``path``.

    Raises :class:`WriteError` (an OSError) naming ``path`` when that fails; the temporary file
    is removed and an existing ``path`` is left as it was.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        kept = " (its previous version is intact)" if path.exists() else ""
        raise WriteError(e.errno, f"could not write {path}{kept}: {e.strerror or e}") from e
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def previous_path(path: str | os.PathLike) -> Path:
    """Where :func:`save_checkpoint` keeps the previous version of ``path`` (``x.pt`` ->
    ``x.prev.pt``)."""
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def save_checkpoint(path: str | os.PathLike, obj: dict, *, keep_previous: bool = False) -> None:
    """``torch.save`` through a temp file and a rename, so a crash never leaves half a file.

    ``keep_previous``: the file being replaced is kept as :func:`previous_path` (one
    generation), a fallback should the new one ever be damaged.
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    if keep_previous and path.is_file():
        # the new bytes are serialised before the old file moves; a crash between the two
        # renames leaves the previous version in place and no current one, which the loader
        # of a resumed run reports
        prev = previous_path(path)
        atomic_write_bytes(prev, path.read_bytes())
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code from pickles).

    Raises FileNotFoundError when it is missing and :class:`CheckpointError` when it is damaged;
    both name the file, and the latter says whether a previous version exists.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile,
            ValueError, KeyError) as e:
        size = path.stat().st_size
        reason = "the file is empty" if size == 0 else f"{type(e).__name__}: {str(e)[:200]}"
        prev = previous_path(path)
        hint = f"; its previous version {prev.name} is still there" if prev.is_file() else ""
        raise CheckpointError(f"checkpoint {path} is damaged ({reason}){hint}") from e
    if not isinstance(ck, dict):
        raise CheckpointError(f"checkpoint {path} is damaged (holds {type(ck).__name__}, not a dict)")
    return ck
