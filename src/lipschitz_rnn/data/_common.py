"""Shared pieces of the data layer: the data directory, downloads, errors, seeding, splits.

Data directory resolution (:func:`resolve_data_dir`): an explicit ``data_dir`` argument (CLI
``--data-dir``), else the environment variable ``LIPSCHITZ_RNN_DATA``, else
``~/.cache/lipschitz_rnn``. Each data set lives in its own folder below it (``mnist/``,
``fashion-mnist/``, ``cifar-10-batches-py/``, ``ptb/``, ``speech-tts/``, ``timit/``).

Downloads: a missing file is fetched from its canonical public source, verified against a
checksum, and written atomically (temp file beside the target, then ``os.replace``). Downloads
are disabled by ``download=False`` or by the environment variable
``LIPSCHITZ_RNN_NO_DOWNLOAD=1``; :func:`open_url` is the single network entry point (tests
replace it). When files are still missing, one :class:`DataNotFoundError` says where, what, and
how to point the package at a data directory.

Local files are verified like downloads where the canonical checksum is known
(:func:`verify_local`): the first time a file is used, its checksum is computed and the result
remembered (by path, size and modification time) in ``verified.json`` of the user cache folder
(``$LIPSCHITZ_RNN_CACHE``, else ``~/.cache/lipschitz_rnn``), so later loads cost nothing.
``LIPSCHITZ_RNN_VERIFY_DATA=0`` skips the check (e.g. for a deliberately trimmed copy). A file
that fails the check or cannot be read raises :class:`DataCorruptError` naming it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import inspect
import json
import logging
import os
import pickle
import shutil
import tempfile
import urllib.request
import wave
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import check_float, check_int

__all__ = [
    "DATA_ENV",
    "NO_DOWNLOAD_ENV",
    "DataNotFoundError",
    "DataCorruptError",
    "ChecksumError",
    "DownloadError",
    "RemoteFile",
    "resolve_data_dir",
    "downloads_enabled",
    "open_url",
    "download_file",
]

log = logging.getLogger(__name__)

DATA_ENV = "LIPSCHITZ_RNN_DATA"
NO_DOWNLOAD_ENV = "LIPSCHITZ_RNN_NO_DOWNLOAD"
VERIFY_ENV = "LIPSCHITZ_RNN_VERIFY_DATA"
CACHE_ENV = "LIPSCHITZ_RNN_CACHE"
DEFAULT_DATA_DIR = Path("~/.cache/lipschitz_rnn")
_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
class DataNotFoundError(FileNotFoundError):
    """The files a task needs are not in the data directory (and could not be downloaded)."""


class ChecksumError(ValueError):
    """Downloaded bytes do not match the published checksum."""


class DataCorruptError(ValueError):
    """A local data file is damaged: unreadable, truncated, or not the canonical content."""


class DownloadError(OSError):
    """Every source of one file failed; ``failures`` lists ``(url, exception)``."""

    def __init__(self, dest: Path, failures: list[tuple[str, BaseException]]):
        self.dest = Path(dest)
        self.failures = failures
        reasons = "; ".join(f"{url}: {exc}" for url, exc in failures) or "no source known"
        super().__init__(f"could not download {self.dest.name}: {reasons}")


# --------------------------------------------------------------------------------------------
# data directory and downloads
# --------------------------------------------------------------------------------------------
def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: ``data_dir``, else ``$LIPSCHITZ_RNN_DATA``, else ``~/.cache/lipschitz_rnn``.

    The directory is not created here (only a download creates it).
    """
    if data_dir is None or str(data_dir) == "":
        env = os.environ.get(DATA_ENV, "").strip()
        data_dir = env if env else DEFAULT_DATA_DIR
    return Path(data_dir).expanduser().resolve()


def downloads_enabled(download: bool) -> bool:
    """``download`` unless ``$LIPSCHITZ_RNN_NO_DOWNLOAD`` is set to a true value."""
    flag = os.environ.get(NO_DOWNLOAD_ENV, "").strip().lower()
    return bool(download) and flag not in ("1", "true", "yes", "on")


def open_url(url: str, timeout: float = 60.0):
    """Open ``url`` for reading bytes (a context manager). The only network entry point."""
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - fixed public URLs


@dataclass(frozen=True)
class RemoteFile:
    """Where one file comes from and how to check it.

    ``check_gunzipped``: the checksum is of the gunzipped bytes (MNIST mirrors recompress).
    """

    urls: tuple[str, ...]
    sha256: str | None = None
    md5: str | None = None
    check_gunzipped: bool = False


def _digest(path: Path, algo: str, gunzip: bool) -> str:
    h = hashlib.new(algo)
    opener = gzip.open if gunzip else open
    with opener(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: Path, remote: RemoteFile) -> None:
    """Raise :class:`ChecksumError` unless ``path`` matches ``remote``'s checksums."""
    for algo, want in (("sha256", remote.sha256), ("md5", remote.md5)):
        if want is None:
            continue
        try:
            got = _digest(path, algo, remote.check_gunzipped)
        except (OSError, EOFError, zlib.error) as e:  # not gzip / truncated
            raise ChecksumError(f"{algo} check failed: {e}") from e
        if got != want.lower():
            what = " of the gunzipped bytes" if remote.check_gunzipped else ""
            raise ChecksumError(f"{algo} mismatch{what}: expected {want}, got {got}")


def _verified_cache() -> Path:
    base = os.environ.get(CACHE_ENV, "").strip()
    return Path(base or DEFAULT_DATA_DIR).expanduser() / "verified.json"


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def verify_local(path: Path, remote: RemoteFile) -> None:
    """Verify a local file against ``remote``'s checksums, once per version of the file.

    Raises :class:`DataCorruptError` naming ``path`` on a mismatch or a read error. Skipped
    when ``$LIPSCHITZ_RNN_VERIFY_DATA`` is false or ``remote`` has no checksum.
    """
    flag = os.environ.get(VERIFY_ENV, "1").strip().lower()
    if flag in ("0", "false", "no", "off") or (remote.sha256 is None and remote.md5 is None):
        return
    cache = _verified_cache()
    key = _file_key(path)
    try:
        known = json.loads(cache.read_text()) if cache.is_file() else {}
    except (OSError, ValueError):
        known = {}
    if known.get(key) == (remote.sha256 or remote.md5):
        return
    try:
        verify_file(path, remote)
    except ChecksumError as e:
        raise DataCorruptError(
            f"{path} is damaged or not the canonical file ({e}); delete it to download it "
            "again, or replace it (LIPSCHITZ_RNN_VERIFY_DATA=0 skips this check)"
        ) from None
    known[key] = remote.sha256 or remote.md5
    try:  # the record is a convenience: an unwritable cache only costs a re-check next time
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".verified.", dir=cache.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump(known, fh)
        os.replace(tmp, cache)
    except OSError as e:
        log.debug("could not record the verification in %s: %s", cache, e)


@contextlib.contextmanager
def reading(path: Path, keep: tuple[type[BaseException], ...] = ()):
    """Turn any error while reading ``path`` into a :class:`DataCorruptError` naming it (errors
    of the types in ``keep`` pass unchanged)."""
    try:
        yield
    except (DataCorruptError, DataNotFoundError, *keep):
        raise
    except (OSError, EOFError, zlib.error, ValueError, IndexError, KeyError,
            pickle.UnpicklingError, wave.Error, UnicodeDecodeError) as e:
        detail = str(e).removeprefix(f"{path}: ").removeprefix(f"{path}") or type(e).__name__
        if not isinstance(e, ValueError):
            detail = f"{type(e).__name__}: {detail}"
        raise DataCorruptError(
            f"{path} is damaged ({detail}); delete it to download it again, or replace it"
        ) from e


def download_file(remote: RemoteFile, dest: str | os.PathLike) -> Path:
    """Fetch ``dest`` from the first of ``remote.urls`` that works and verifies.

    The bytes go to a temp file in ``dest``'s folder, are verified, then renamed over ``dest``
    (atomic: no half-written or unverified file is ever visible). Raises :class:`DownloadError`
    listing every source's failure (a :class:`ChecksumError` among them for a mismatch).
    """
    dest = Path(dest)
    failures: list[tuple[str, BaseException]] = []
    for url in remote.urls:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        except OSError as e:
            failures.append((url, e))
            break
        tmp = Path(tmp_name)
        try:
            log.info("downloading %s -> %s", url, dest)
            with os.fdopen(fd, "wb") as out, contextlib.closing(open_url(url)) as src:
                shutil.copyfileobj(src, out, _CHUNK)
            verify_file(tmp, remote)
            os.replace(tmp, dest)
            return dest
        except Exception as e:  # noqa: BLE001 - every failure is reported in the error
            log.warning("download of %s failed: %s", url, e)
            failures.append((url, e))
        finally:
            tmp.unlink(missing_ok=True)
    raise DownloadError(dest, failures)


def missing_error(
    what: str,
    directory: Path,
    expected: Sequence[str],
    *,
    root: Path,
    reason: str,
    folders: str | None = None,
) -> DataNotFoundError:
    """The one error a loader raises for missing files.

    ``folders``: how to name the sub-folder(s) a data directory should contain (default: the
    path of ``directory`` below ``root``).
    """
    if folders is None:
        rel = directory.relative_to(root) if directory.is_relative_to(root) else directory
        folders = f"'{rel.as_posix()}/'"
    lines = [
        f"{what} not found in {str(directory)!r} (data directory {str(root)!r}).",
        "Expected files: " + ", ".join(expected) + ".",
        reason,
        f"Put the files there, pass data_dir=... (CLI --data-dir), or set the environment "
        f"variable {DATA_ENV} to a directory that contains {folders}.",
    ]
    return DataNotFoundError("\n".join(line for line in lines if line))


def ensure_files(
    what: str,
    directory: Path,
    names: Sequence[str],
    *,
    root: Path,
    download: bool,
    is_present: Callable[[str], bool],
    remotes: dict[str, RemoteFile] | None,
    expected_text: Sequence[str] | None = None,
    fetch: Callable[[Sequence[str]], None] | None = None,
) -> None:
    """Make sure every file in ``names`` is present, downloading the missing ones if allowed.

    ``fetch(missing)`` replaces the per-file download (CIFAR unpacks one archive). Raises one
    :class:`DataNotFoundError` when anything is still missing.
    """
    missing = [n for n in names if not is_present(n)]
    if not missing:
        return
    expected = list(expected_text or names)
    if not downloads_enabled(download):
        reason = f"Downloading is disabled (download=False or {NO_DOWNLOAD_ENV}=1)."
    elif remotes is None and fetch is None:
        reason = "This data set cannot be downloaded automatically."
    else:
        errors: list[str] = []
        try:
            if fetch is not None:
                fetch(missing)
            else:
                for n in missing:
                    try:
                        download_file(remotes[n], directory / n)
                    except DownloadError as e:
                        errors.append(str(e))
        except (OSError, ValueError) as e:
            errors.append(str(e))
        missing = [n for n in names if not is_present(n)]
        if not missing:
            return
        reason = "Download failed: " + (" | ".join(errors) or "files still missing afterwards") + "."
    raise missing_error(what, directory, expected, root=root, reason=reason)


# --------------------------------------------------------------------------------------------
# seeding and splits
# --------------------------------------------------------------------------------------------
def _tag(t: int | str) -> int:
    return zlib.crc32(t.encode()) if isinstance(t, str) else int(t)


def make_rng(seed: int, *tags: int | str) -> np.random.Generator:
    """An independent numpy Generator for ``(seed, *tags)`` (no global state)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), *map(_tag, tags)])))


def derive_seed(seed: int, *tags: int | str) -> int:
    """A 63-bit integer seed for ``(seed, *tags)``, e.g. for a ``torch.Generator``."""
    s = np.random.SeedSequence([int(seed), *map(_tag, tags)]).generate_state(1, np.uint64)[0]
    return int(s) & ((1 << 63) - 1)


def resolve_valid_size(valid_size: Any, n: int, *, name: str = "valid_size") -> int:
    """``valid_size`` as a count: an int in [0, n - 1] or a fraction in (0, 1)."""
    if isinstance(valid_size, float):
        k = round(check_float(name, valid_size, gt=0, lt=1) * n)
    else:
        k = check_int(name, valid_size, ge=0)
    if k > n - 1:
        raise ValueError(f"{name}={valid_size!r} leaves no training data (only {n} training items)")
    return k


def split_train_valid(n: int, n_valid: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into (train, valid) index arrays, each sorted."""
    perm = rng.permutation(n)
    return np.sort(perm[n_valid:]), np.sort(perm[:n_valid])


def uint8_mean_std(values: np.ndarray) -> tuple[float, float]:
    """Exact mean and std of ``values / 255`` from a histogram (no float copy of the data)."""
    counts = np.bincount(np.asarray(values, dtype=np.uint8).ravel(), minlength=256).astype(np.float64)
    n = counts.sum()
    if n == 0:
        return 0.0, 1.0
    v = np.arange(256, dtype=np.float64) / 255.0
    mean = float((counts * v).sum() / n)
    std = float(np.sqrt((counts * (v - mean) ** 2).sum() / n))
    return mean, (std if std > 1e-12 else 1.0)


def check_kwargs(task: str, fn: Callable, kwargs: dict[str, Any], skip: Iterable[str],
                 options: Iterable[str] | None = None) -> None:
    """ValueError naming any keyword that is not among ``options`` (default: ``fn``'s keywords
    other than ``skip``)."""
    if options is None:
        params = [p for p in inspect.signature(fn).parameters if p not in set(skip)]
    else:
        params = list(options)
    bad = sorted(set(kwargs) - set(params))
    if bad:
        raise ValueError(
            f"unknown task_kwargs {bad} for task {task!r}; valid: {params if params else 'none'}"
        )
