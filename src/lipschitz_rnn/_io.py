"""Atomic file writes and safe checkpoint loading.

Every file goes to a temporary file beside its target, is flushed and fsync'ed, then renamed
over the target: a crash, a full disk or an unwritable folder never leaves half a file, and the
previous version stays intact. Files get the permissions of any normal file (``0666`` minus the
process umask), not the ``0600`` of ``tempfile.mkstemp``.

Output directories and files that cannot be created or written raise :class:`WriteError`
(an OSError) naming the path and the operating system's reason; :func:`ensure_dir` creates a
directory, :func:`check_creatable_dir` checks without writing that one could be.

Checkpoints (and a run's ``results.json``) are written with their SHA-256 in a sidecar file
``NAME.sha256`` (the format of ``sha256sum``) and verified on every load; checkpoints are loaded
with ``weights_only=True``. A damaged file raises :class:`CheckpointError` (a
:class:`DamagedFileError`) naming it (and whether a previous version exists). Crash consistency:
the sidecar is written first, listing the new checksum and those of the version being
replaced; then the file; then the sidecar again with the new checksum alone. A crash at any
point leaves a file whose checksum is listed, so a good file never looks damaged; a file
without a sidecar (written before checksums existed, or by other code) loads unverified, with
a logged note.
"""

from __future__ import annotations

import errno as _errno
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "DamagedFileError",
    "WriteError",
    "ensure_dir",
    "check_creatable_dir",
    "write_error",
    "atomic_write_bytes",
    "write_checked_bytes",
    "read_checked_bytes",
    "read_json",
    "checksum_path",
    "atomic_write_text",
    "write_json",
    "save_checkpoint",
    "load_checkpoint",
    "previous_path",
]

_UMASK_LOCK = threading.Lock()


log = logging.getLogger(__name__)


class DamagedFileError(ValueError):
    """A file exists but is damaged: its content does not match the checksum recorded when it
    was written, or it cannot be parsed. The message names the file."""


class CheckpointError(DamagedFileError):
    """A checkpoint file exists but cannot be read (damaged, truncated, empty, not a
    checkpoint)."""


class WriteError(OSError):
    """A file or directory could not be created or written (disk full, no permission, a path
    through a file): ``path`` names it, ``reason`` is the operating system's (its strerror),
    ``errno`` its number. Nothing is left half-written; a previous version is intact.

    ``str()`` is one line: ``could not write PATH: REASON`` (``action`` replaces ``write``,
    e.g. ``create directory``)."""

    def __init__(self, path: str | os.PathLike, reason: str, errno: int | None = None,
                 action: str = "write", detail: str = "") -> None:
        super().__init__(errno, reason)
        self.filename = str(path)
        self.path = Path(path)
        self.reason = reason
        self.action = action
        self.detail = detail

    def __str__(self) -> str:
        return f"could not {self.action} {self.path}{self.detail}: {self.reason}"

    def __reduce__(self):  # picklable with its fields (sent to the other ranks of a run)
        return (type(self), (self.path, self.reason, self.errno, self.action, self.detail))


def write_error(path: str | os.PathLike, e: OSError, action: str = "write",
                detail: str = "") -> WriteError:
    """``e`` (an OSError met creating or writing ``path``) as a :class:`WriteError` about
    ``path``; a path that runs through a file (which ``mkdir`` reports as "File exists") says
    "Not a directory" and names that file."""
    if isinstance(e, WriteError):
        return e
    path = Path(path)
    code, reason = e.errno, e.strerror or str(e)
    if isinstance(e, (FileExistsError, NotADirectoryError)):
        blocker = _file_on_the_way(path)
        if blocker is not None:
            code, reason = _errno.ENOTDIR, os.strerror(_errno.ENOTDIR)
            reason += f" ({blocker} is a file)" if blocker != path else " (it is a file)"
    return WriteError(path, reason, code, action, detail)


def _file_on_the_way(path: Path) -> Path | None:
    """The first of ``path`` and its ancestors that exists and is not a directory, or None."""
    for p in [*reversed(path.parents), path]:
        try:
            if p.exists() and not p.is_dir():
                return p
        except OSError:
            return None
    return None


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create directory ``path`` (and its parents) unless it exists; return it. Raises
    :class:`WriteError` naming the path and the reason when that is impossible."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path, e, "create directory") from e
    return path


def check_creatable_dir(path: str | os.PathLike) -> None:
    """Raise :class:`WriteError` when directory ``path`` neither exists nor could be created
    (a parent is a file, is not writable, or is on a read-only file system); writes nothing.
    The actual creation (:func:`ensure_dir`) reports what this check cannot foresee."""
    path = Path(path)
    blocker = _file_on_the_way(path)
    if blocker is not None:
        raise write_error(path, NotADirectoryError(_errno.ENOTDIR, "Not a directory"),
                           "create directory")
    if path.is_dir():
        return
    parent = next((p for p in path.absolute().parents if p.is_dir()), None)
    if parent is None:
        return
    try:
        read_only = bool(os.statvfs(parent).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        read_only = False
    code = (_errno.EROFS if read_only
            else _errno.EACCES if not os.access(parent, os.W_OK | os.X_OK) else None)
    if code is not None:
        raise WriteError(path, f"{os.strerror(code)} ({parent})", code, "create directory")


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
        if not path.parent.is_dir():
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
        kept = " (its previous version is intact)" if path.is_file() else ""
        raise write_error(path, e, "write", kept) from e
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, *, checksum: bool = False) -> None:
    """``obj`` as indented JSON, atomically; ``checksum``: with its SHA-256 sidecar
    (:func:`write_checked_bytes`; read it back with :func:`read_json`)."""
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8")
    if checksum:
        write_checked_bytes(path, data)
    else:
        atomic_write_bytes(path, data)


# --- checksums --------------------------------------------------------------------------------
def checksum_path(path: str | os.PathLike) -> Path:
    """The sidecar that holds ``path``'s SHA-256 (``x.pt`` -> ``x.pt.sha256``)."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_sidecar(path: Path) -> list[str] | None:
    """The checksums ``path``'s sidecar accepts (None: there is no sidecar). Raises
    :class:`DamagedFileError` when the sidecar itself is damaged."""
    side = checksum_path(path)
    try:
        text = side.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise DamagedFileError(f"the checksum file {side} of {path} cannot be read ({e}); "
                               f"delete it to load {path.name} unverified") from e
    sums = [line.split()[0].lower() for line in text.splitlines() if line.strip()]
    if not sums or not all(len(h) == 64 and all(c in "0123456789abcdef" for c in h)
                           for h in sums):
        raise DamagedFileError(f"the checksum file {side} of {path} is damaged; delete it to "
                               f"load {path.name} unverified")
    return sums


def _write_sidecar(path: Path, sums: list[str]) -> None:
    atomic_write_text(checksum_path(path), "".join(f"{h}  {path.name}\n" for h in sums))


def write_checked_bytes(path: str | os.PathLike, data: bytes) -> None:
    """:func:`atomic_write_bytes` with the SHA-256 of ``data`` recorded in
    :func:`checksum_path`, crash-consistently (see the module docstring): the sidecar first
    (the new checksum, then those recorded for the version being replaced), the file, then
    the sidecar with the new checksum alone."""
    path = Path(path)
    new = _sha256(data)
    if not path.parent.is_dir():  # an error names the file asked for, not its sidecar
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(path, e) from e
    try:
        old = _read_sidecar(path)
    except DamagedFileError:
        old = None
    if old is None:  # none recorded (an older version wrote it): the one of the file in place
        try:
            old = [_sha256(path.read_bytes())] if path.is_file() else []
        except OSError:
            old = []
    # every checksum listed so far stays listed until the new file is in place: after an
    # earlier crash the file in place may be the one of the second line
    listed = [new, *[h for h in dict.fromkeys(old) if h != new]]
    _write_sidecar(path, listed)
    atomic_write_bytes(path, data)
    if len(listed) > 1:
        _write_sidecar(path, [new])


def _verify(path: Path, data: bytes) -> bool | None:
    """True when ``data`` (the content of ``path``) matches its recorded checksum, None when
    none is recorded; raises :class:`DamagedFileError` naming the file when it does not."""
    sums = _read_sidecar(path)
    if sums is None:
        return None
    if _sha256(data) in sums:
        return True
    reason = "the file is empty" if not data else (
        f"its content ({len(data)} bytes) does not match the SHA-256 recorded when it was "
        f"written, in {checksum_path(path).name}")
    raise DamagedFileError(f"{path} is damaged ({reason})")


def read_checked_bytes(path: str | os.PathLike) -> bytes:
    """The content of ``path``, verified against its recorded checksum (a file without one is
    returned unverified, with a logged note). Raises FileNotFoundError when it is missing and
    :class:`DamagedFileError` naming it when it is damaged."""
    path = Path(path)
    data = path.read_bytes()
    if _verify(path, data) is None:
        log.info("%s has no recorded checksum (%s; written by an older version?): read "
                 "unverified", path, checksum_path(path).name)
    return data


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file written by :func:`write_json` (verified when it has a checksum). Raises
    FileNotFoundError when it is missing and :class:`DamagedFileError` naming it when it is
    damaged or not JSON."""
    path = Path(path)
    data = read_checked_bytes(path)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        reason = "the file is empty" if not data else f"not JSON: {e}"
        raise DamagedFileError(f"{path} is damaged ({reason})") from e


# --- checkpoints ------------------------------------------------------------------------------
def previous_path(path: str | os.PathLike) -> Path:
    """Where :func:`save_checkpoint` keeps the previous version of ``path`` (``x.pt`` ->
    ``x.prev.pt``)."""
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def save_checkpoint(path: str | os.PathLike, obj: dict, *, keep_previous: bool = False) -> None:
    """``torch.save`` through a temp file and a rename, so a crash never leaves half a file,
    with its SHA-256 in :func:`checksum_path` (:func:`write_checked_bytes`).

    ``keep_previous``: the file being replaced is kept as :func:`previous_path` (one
    generation, with its checksum), a fallback should the new one ever be damaged. A file being
    replaced that is itself damaged is not kept: the previous version stays as it was.
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    if keep_previous and path.is_file():
        # the new bytes are serialised before the old file is copied; a crash between the two
        # writes leaves both versions readable
        old = path.read_bytes()
        try:
            verified = _verify(path, old)
        except DamagedFileError as e:
            log.warning("%s; not kept as %s", e, previous_path(path).name)
        else:
            if verified:
                write_checked_bytes(previous_path(path), old)
            else:  # no checksum recorded: the copy gets none either
                prev = previous_path(path)
                checksum_path(prev).unlink(missing_ok=True)
                atomic_write_bytes(prev, old)
    write_checked_bytes(path, buf.getvalue())


def _first_line(e: BaseException) -> str:
    """The first line of ``e``'s message, without terminal escapes, at most 200 characters."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(e)).strip()
    return (text.splitlines() or [""])[0][:200]


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code from pickles), after
    verifying it against its recorded SHA-256 (a checkpoint without one loads unverified, with
    a logged note).

    Raises FileNotFoundError when it is missing and :class:`CheckpointError` when it is damaged;
    both name the file, and the latter says whether a previous version exists.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    prev = previous_path(path)
    hint = f"; its previous version {prev.name} is still there" if prev.is_file() else ""
    try:
        data = read_checked_bytes(path)
    except DamagedFileError as e:
        raise CheckpointError(f"checkpoint {e}{hint}") from e
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({e.strerror or e}){hint}") from e
    try:
        # torch's warnings about a damaged file (an odd pickle protocol) would come before the
        # error that says it all: they are passed on only when the file loads
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            ck = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever the parser raises, the file is damaged
        reason = "the file is empty" if not data else f"{type(e).__name__}: {_first_line(e)}"
        raise CheckpointError(f"checkpoint {path} is damaged ({reason}){hint}") from e
    for w in seen:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not isinstance(ck, dict):
        raise CheckpointError(f"checkpoint {path} is damaged (holds {type(ck).__name__}, not a "
                              f"dict){hint}")
    return ck
