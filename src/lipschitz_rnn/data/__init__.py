"""Data for the paper's tasks, as train/valid/test sequence datasets.

>>> from lipschitz_rnn.data import get_task, TASKS
>>> task = get_task("digits", seed=0)
>>> x, y = task.train[0]          # x: (8, 8) float32, y: int64 scalar

:func:`get_task` returns a :class:`Task` (``kind``, ``input_size``, ``output_size``,
``readout``, ``metric``, ``train``/``valid``/``test``, ``collate_fn``, ``meta``). Files are looked
up in :func:`resolve_data_dir` (``data_dir`` argument, else ``$LIPSCHITZ_RNN_DATA``, else
``~/.cache/lipschitz_rnn``); missing ones are downloaded and checksum-verified when the source is
public (``download=False`` or ``LIPSCHITZ_RNN_NO_DOWNLOAD=1`` turn that off), otherwise a
:class:`DataNotFoundError` says what is expected where. The validation split is always held out
from the training data (PTB and speech-tts ship their own validation files), never the test set.
Every module documents its choices: :mod:`.mnist`, :mod:`.cifar`, :mod:`.speech`, :mod:`.ptb`,
:mod:`.synthetic`, :mod:`.digits`.
"""

from ._common import (
    DATA_ENV,
    NO_DOWNLOAD_ENV,
    ChecksumError,
    DataCorruptError,
    DataNotFoundError,
    DownloadError,
    RemoteFile,
    download_file,
    resolve_data_dir,
)
from .registry import TASKS, get_task
from .speech import pad_collate
from .task import Task, batchify, bptt_segments

__all__ = [
    "TASKS",
    "get_task",
    "Task",
    "resolve_data_dir",
    "DataNotFoundError",
    "ChecksumError",
    "DataCorruptError",
    "DownloadError",
    "RemoteFile",
    "download_file",
    "batchify",
    "bptt_segments",
    "pad_collate",
    "DATA_ENV",
    "NO_DOWNLOAD_ENV",
]
